//! coturn's own clients as reference TURN peers: `turnutils_peer` (a UDP/TCP echo peer),
//! `turnutils_uclient` (allocates, binds channels or sends indications, measures loss) and
//! `turnutils_stunclient`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A port free for TCP and UDP on 127.0.0.1 and ::1.
pub fn free_dual_port() -> u16 {
    for _ in 0..200 {
        let port = crate::free_port(&[Ipv4Addr::LOCALHOST]);
        let v6: SocketAddr = format!("[::1]:{port}").parse().expect("addr");
        if TcpListener::bind(v6).is_ok() && UdpSocket::bind(v6).is_ok() {
            return port;
        }
    }
    panic!("no port free on both families");
}

/// A running `turnutils_peer`, killed on drop.
pub struct Peer {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Peer {
    /// An echo peer on 127.0.0.1 and ::1.
    pub fn start() -> Peer {
        let port = free_dual_port();
        let child = Command::new("turnutils_peer")
            .args(["-p", &port.to_string(), "-L", "127.0.0.1", "-L", "::1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnutils_peer (Debian package coturn) must be installed: scripts/install-test-deps.sh");
        std::thread::sleep(Duration::from_millis(200));
        Peer { child, port }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a `turnutils_uclient` run reported.
#[derive(Debug)]
pub struct Run {
    /// Exit code (255: "Cannot complete Allocation" and other errors; None: killed by timeout).
    pub code: Option<i32>,
    /// Messages sent and received.
    pub sent: u64,
    pub received: u64,
    /// "Total lost packets N".
    pub lost: Option<u64>,
    /// Everything it printed.
    pub output: String,
}

fn last_number_after(text: &str, key: &str) -> Option<u64> {
    text.rmatch_indices(key).next().and_then(|(i, _)| {
        text[i + key.len()..].chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().ok()
    })
}

/// Runs `turnutils_uclient` with `args` (flags first, the server address last) under `timeout`.
pub fn uclient(args: &[&str], timeout: Duration) -> Run {
    let out: Output = Command::new("timeout")
        .arg(format!("{}", timeout.as_secs()))
        .arg("turnutils_uclient")
        .args(args)
        .output()
        .expect("turnutils_uclient (Debian package coturn) must be installed");
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let code = match out.status.code() {
        Some(124) => None,
        c => c,
    };
    Run {
        code,
        sent: last_number_after(&output, "tot_send_msgs=").unwrap_or(0),
        received: last_number_after(&output, "tot_recv_msgs=").unwrap_or(0),
        lost: last_number_after(&output, "Total lost packets "),
        output,
    }
}

/// Runs `turnutils_stunclient` against `host` on `port`; its output.
/// Runs `turnutils_natdiscovery` (RFC 5780 mapping and filtering discovery) against
/// `127.0.0.1:port`: exit code and output.
pub fn natdiscovery(port: u16) -> (Option<i32>, String) {
    let out = Command::new("timeout")
        .args(["20", "turnutils_natdiscovery", "-m", "-f", "-p", &port.to_string(), "127.0.0.1"])
        .output()
        .expect("turnutils_natdiscovery must be installed");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

pub fn stunclient(host: &str, port: u16) -> (Option<i32>, String) {
    let out = Command::new("timeout")
        .args(["10", "turnutils_stunclient", "-p", &port.to_string(), host])
        .output()
        .expect("turnutils_stunclient must be installed");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

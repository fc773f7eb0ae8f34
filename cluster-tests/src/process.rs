//! Real node processes: the binary is built once per test run (so tests never run a stale
//! one), each node gets its own data directory and log file, and dropping a node kills it.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Path of a fresh `switchboard` binary. `SWITCHBOARD_BIN` skips the build.
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("SWITCHBOARD_BIN") {
            return PathBuf::from(p);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = std::env::var("SWITCHBOARD_RELEASE").is_ok_and(|v| v == "1");
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&root).args(["build", "-q", "-p", "switchboard", "--bin", "switchboard"]);
        // Cargo sets CARGO_MANIFEST_DIR and friends for the test; build scripts (ring's) watch
        // them, so passing them on would rebuild half the tree on every test run.
        for (k, _) in std::env::vars() {
            if k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR" {
                cmd.env_remove(k);
            }
        }
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cannot run cargo to build switchboard");
        assert!(status.success(), "building switchboard failed");
        let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
        target.join(if release { "release" } else { "debug" }).join("switchboard")
    })
    .clone()
}

/// A TCP port free on every address in `ips` (and UDP too, for STUN/TURN listeners).
pub fn free_port(ips: &[Ipv4Addr]) -> u16 {
    // Below the kernel's ephemeral range, so that no outgoing connection of a test running
    // alongside (some open thousands) is given the port between this probe and the node's bind.
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32_768);
    let (lo, hi) = if ephemeral_low > 12_000 { (10_000, ephemeral_low) } else { (61_000, 65_535) };
    'outer: for _ in 0..200 {
        let port = rand::random_range(lo..hi);
        for ip in ips {
            if TcpListener::bind((*ip, port)).is_err() || UdpSocket::bind((*ip, port)).is_err() {
                continue 'outer;
            }
        }
        return port;
    }
    panic!("no free port");
}

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Address of the public HTTP listener.
    pub http: SocketAddr,
    /// `--set key=value` overrides.
    pub sets: Vec<String>,
    /// Extra environment variables; an empty value unsets the variable.
    pub env: Vec<(String, String)>,
    /// Config file, if any.
    pub config: Option<PathBuf>,
}

/// The log filter of test nodes (`SWITCHBOARD_TEST_LOG` overrides it): the shipped default of
/// `configs/single.toml`, without openraft's and the Raft log store's chatter.
pub const NODE_LOG: &str = "info,openraft=off,raft_log=warn";

/// Per-address rate limits lifted: every test client and load generator connects from the
/// same loopback address, which in production would be thousands of people. The tests of
/// those limits set their own values (a later `--set` wins).
pub const LIFTED_RATE_LIMITS: [&str; 5] = [
    "http.joins_per_second_per_ip=1000000000",
    "http.messages_per_second_per_ip=1000000000",
    "ice.credentials_per_minute=1000000000",
    "http.connections_per_ip=1000000",
    "http.sessions_per_ip=1000000",
];

impl NodeSpec {
    /// A node on a free port of 127.0.0.1, its TURN server on another (tests run side by side).
    pub fn single() -> Self {
        let ip = Ipv4Addr::LOCALHOST;
        let port = free_port(&[ip]);
        let mut turn = free_port(&[ip]);
        while turn == port {
            turn = free_port(&[ip]);
        }
        NodeSpec {
            http: SocketAddr::from((ip, port)),
            sets: std::iter::once(format!("turn.listen=[\"127.0.0.1:{turn}\"]")).chain(LIFTED_RATE_LIMITS.map(String::from)).collect(),
            env: Vec::new(),
            config: None,
        }
    }

    /// Adds `--set key=value`.
    pub fn set(mut self, kv: &str) -> Self {
        self.sets.push(kv.to_owned());
        self
    }
}

/// A running node.
pub struct NodeProcess {
    /// How it was started (to restart it the same way).
    pub spec: NodeSpec,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl NodeProcess {
    /// Starts a node and waits until `/healthz` answers.
    pub async fn start(spec: NodeSpec) -> Result<NodeProcess> {
        let dir = tempfile::Builder::new().prefix("switchboard-test-").tempdir()?;
        let mut node = NodeProcess { spec, child: None, dir };
        node.spawn()?;
        node.wait_healthy(Duration::from_secs(20)).await?;
        Ok(node)
    }

    fn spawn(&mut self) -> Result<()> {
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut cmd = Command::new(binary());
        cmd.arg("--listen").arg(self.spec.http.to_string());
        cmd.arg("--set").arg(format!("node.data_dir=\"{}\"", self.dir.path().join("data").display()));
        if let Some(c) = &self.spec.config {
            cmd.arg("--config").arg(c);
        }
        for s in &self.spec.sets {
            cmd.arg("--set").arg(s);
        }
        cmd.env("RUST_LOG", std::env::var("SWITCHBOARD_TEST_LOG").unwrap_or_else(|_| NODE_LOG.into()));
        for (k, v) in &self.spec.env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        cmd.stdout(Stdio::from(log.try_clone()?)).stderr(Stdio::from(log)).stdin(Stdio::null());
        self.child = Some(cmd.spawn().context("cannot start switchboard")?);
        Ok(())
    }

    async fn wait_healthy(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let url = format!("{}/healthz", self.base());
        crate::init_crypto();
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("node exited at start ({status}):\n{}", self.log());
            }
            if let Ok(r) = client.get(&url).timeout(Duration::from_millis(500)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("node not healthy within {within:?}:\n{}", self.log())
    }

    /// `http://ip:port`.
    pub fn base(&self) -> String {
        format!("http://{}", self.spec.http)
    }

    /// `ws://ip:port/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.spec.http)
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    /// Everything the node logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as an orderly shutdown; returns once it exited (or after `within`).
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        signal(c.id(), "TERM");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().ok();
        None
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        if let Some(c) = &self.child {
            signal(c.id(), "TERM");
        }
    }

    /// Sends SIGHUP.
    pub fn sighup(&self) {
        if let Some(c) = &self.child {
            signal(c.id(), "HUP");
        }
    }

    /// Waits (polling, without blocking the runtime) until the process exits.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(s)) = c.try_wait() {
                    self.child = None;
                    return Some(s);
                }
            } else {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Starts the node again with the same spec and data directory.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_healthy(Duration::from_secs(20)).await
    }

    /// Resident memory of the process (KiB; 0 once it is gone).
    pub fn rss_kib(&self) -> u64 {
        let Some(pid) = self.pid() else { return 0 };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
            .unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

/// Sends a signal through the `kill` command, keeping this crate free of `unsafe`.
fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() || std::env::var_os("SWITCHBOARD_TEST_DUMP_LOGS").is_some() {
            eprintln!("---- log of node {} ----\n{}", self.spec.http, self.log());
        }
    }
}

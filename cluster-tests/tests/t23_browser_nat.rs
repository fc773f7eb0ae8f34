//! NAT realism: two browsers in their own network namespaces, one behind an
//! endpoint-independent NAT (nftables masquerade), the other behind a symmetric NAT (iptables
//! MASQUERADE --random-fully); both routers drop new inbound connections. The Switchboard node
//! sits on the "internet" segment. The pages cannot reach each other directly, so the call must
//! go through the node's TURN relay — and it does, with video decoding on both sides.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster_tests::process::NODE_LOG;
use cluster_tests::{binary, fresh_room};

const INET: &str = "10.99.0.1";

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Namespaces, links and NAT rules, removed on drop.
struct Lab {
    s: String,
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("sb{role}-{}", self.s)
    }

    fn build() -> Lab {
        let s = format!("{:04x}", rand::random::<u16>());
        let lab = Lab { s: s.clone() };
        let (inet, ra, rb, ha, hb) = (lab.ns("i"), lab.ns("ra"), lab.ns("rb"), lab.ns("ha"), lab.ns("hb"));
        for ns in [&inet, &ra, &rb, &ha, &hb] {
            sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
        }
        for host in [&ha, &hb] {
            // A namespace with a default route and no resolver stalls on DNS lookups.
            sh(&format!("mkdir -p /etc/netns/{host} && echo 'nameserver 127.0.0.1' > /etc/netns/{host}/resolv.conf"));
        }
        // The internet: a bridge with the node's address; unknown destinations vanish silently.
        sh(&format!(
            "ip -n {inet} link add br0 type bridge && ip -n {inet} addr add {INET}/24 dev br0 && ip -n {inet} link set br0 up \
             && ip -n {inet} route add blackhole default"
        ));
        for (tag, router, host, wan_ip, lan) in [("a", &ra, &ha, "10.99.0.2", "192.168.1"), ("b", &rb, &hb, "10.99.0.3", "192.168.2")] {
            let (wan, wan_br, lan_r, lan_h) = (format!("w{tag}{s}"), format!("x{tag}{s}"), format!("l{tag}{s}"), format!("h{tag}{s}"));
            sh(&format!(
                "ip link add {wan} type veth peer name {wan_br} && ip link set {wan} netns {router} && ip link set {wan_br} netns {inet} \
                 && ip -n {inet} link set {wan_br} master br0 up && ip -n {router} addr add {wan_ip}/24 dev {wan} && ip -n {router} link set {wan} up \
                 && ip link add {lan_r} type veth peer name {lan_h} && ip link set {lan_r} netns {router} && ip link set {lan_h} netns {host} \
                 && ip -n {router} addr add {lan}.1/24 dev {lan_r} && ip -n {router} link set {lan_r} up \
                 && ip -n {host} addr add {lan}.2/24 dev {lan_h} && ip -n {host} link set {lan_h} up && ip -n {host} route add default via {lan}.1 \
                 && ip -n {router} route add default via {INET} \
                 && ip netns exec {router} sysctl -qw net.ipv4.ip_forward=1"
            ));
            if tag == "a" {
                // Endpoint-independent mapping: masquerade keeps the source port for every peer.
                sh(&format!(
                    "ip netns exec {router} nft add table ip nat \
                     && ip netns exec {router} nft add chain ip nat post '{{ type nat hook postrouting priority 100; }}' \
                     && ip netns exec {router} nft add rule ip nat post oifname {wan} masquerade \
                     && ip netns exec {router} nft add table ip filter \
                     && ip netns exec {router} nft add chain ip filter inbound '{{ type filter hook forward priority 0; policy accept; }}' \
                     && ip netns exec {router} nft add rule ip filter inbound iifname {wan} ct state new drop"
                ));
            } else {
                // Symmetric: a random source port for every new flow.
                sh(&format!(
                    "ip netns exec {router} iptables -t nat -A POSTROUTING -o {wan} -j MASQUERADE --random-fully \
                     && ip netns exec {router} iptables -A FORWARD -i {wan} -m conntrack --ctstate NEW -j DROP"
                ));
            }
        }
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for role in ["i", "ra", "rb", "ha", "hb"] {
            let ns = self.ns(role);
            let _ = Command::new("sh").arg("-c").arg(format!("ip netns pids {ns} | xargs -r kill -9; ip netns del {ns}; rm -rf /etc/netns/{ns}")).status();
        }
    }
}

#[test]
fn t23_browser_nat_through_relay() {
    let lab = Lab::build();
    let (inet, ha, hb) = (lab.ns("i"), lab.ns("ha"), lab.ns("hb"));
    let data = tempfile::tempdir().unwrap();
    let mut node = Command::new("ip")
        .args(["netns", "exec", &inet])
        .arg(binary())
        .args(["--listen", &format!("{INET}:8083")])
        .args(["--set", &format!("node.data_dir=\"{}\"", data.path().display())])
        .args(["--set", &format!("turn.listen=[\"{INET}:3478\"]")])
        .args(["--set", &format!("turn.relay_ip=\"{INET}\"")])
        .args(["--set", "ice.turn_secret=\"nat-secret\""])
        .args(["--set", &format!("ice.stun_urls=[\"stun:{INET}:3478\"]")])
        // This segment stands for the public internet: its addresses are ordinary peers.
        .args(["--set", "turn.allow_peers=[\"10.99.0.0/24\"]"])
        .env("RUST_LOG", NODE_LOG)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Command::new("ip").args(["netns", "exec", &inet, "curl", "-sf", &format!("http://{INET}:8083/healthz")]).output().map(|o| !o.status.success()).unwrap_or(true) {
        assert!(Instant::now() < deadline, "node did not start in the lab");
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("http://{INET}:8083/r/{}", fresh_room("nat"));
    let page = env!("CARGO_BIN_EXE_nat_page");
    let a = Command::new("ip").args(["netns", "exec", &ha, page, &url]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let b = Command::new("ip").args(["netns", "exec", &hb, page, &url]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let _ = node.kill();
    let node_log = node.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).to_string()).unwrap_or_default();
    for (name, out) in [("A (EIM NAT)", &a), ("B (symmetric NAT)", &b)] {
        assert!(
            out.status.success(),
            "page {name} did not connect:\n{}\n---- node ----\n{node_log}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        eprintln!("page {name}: {stats}");
        let relayed = stats["local"] == "relay" || stats["remote"] == "relay";
        assert!(relayed, "page {name} connected without the relay: {stats}");
        assert!(stats["framesDecoded"].as_u64().unwrap() > 0, "{name}: {stats}");
    }
    drop(lab);
}

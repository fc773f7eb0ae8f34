//! The STUN/TURN server against coturn's own clients, over real sockets: `turnutils_stunclient`
//! over IPv4 and IPv6; `turnutils_uclient` through `turnutils_peer` with REST and static
//! credentials, over UDP, TCP and TLS, with channels and Send indications, client-to-client,
//! RFC 6062 TCP relays and IPv6 relays — every run must end with rc 0 and zero loss — wrong
//! credentials ending in rc 255, and RFC 5780 NAT discovery with `turnutils_natdiscovery`. After
//! each run `/metrics` must show what was relayed (by client transport) and the failed logins.

use std::time::Duration;

use cluster_tests::coturn::{free_dual_port, natdiscovery, stunclient, uclient, Peer, Run};
use cluster_tests::{counter, NodeProcess, NodeSpec};

const SECRET: &str = "test-turn-secret";
const RUN: Duration = Duration::from_secs(60);

/// A node with TURN on UDP/TCP (127.0.0.1 and ::1) and TLS, relaying to loopback peers.
struct TurnNode {
    _node: NodeProcess,
    port: u16,
    tls_port: u16,
    _certs: tempfile::TempDir,
}

async fn turn_node(extra: &[&str]) -> TurnNode {
    let port = free_dual_port();
    let mut tls_port = free_dual_port();
    while tls_port == port {
        tls_port = free_dual_port();
    }
    let certs = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(certs.path().join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(certs.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    let mut spec = NodeSpec::single()
        .set(&format!("ice.turn_secret=\"{SECRET}\""))
        .set(&format!("turn.listen=[\"127.0.0.1:{port}\", \"[::1]:{port}\"]"))
        .set(&format!("turn.tls_listen=[\"127.0.0.1:{tls_port}\"]"))
        .set(&format!("turn.tls_cert=\"{}\"", certs.path().join("cert.pem").display()))
        .set(&format!("turn.tls_key=\"{}\"", certs.path().join("key.pem").display()))
        .set("turn.relay_ip6=\"::1\"")
        .set("turn.users=[\"alice:wonderland\"]")
        .set("turn.threads=2");
    for e in extra {
        spec = spec.set(e);
    }
    let node = NodeProcess::start(spec).await.expect("node with TURN starts");
    TurnNode { _node: node, port, tls_port, _certs: certs }
}

fn loopback_peers() -> &'static str {
    "turn.allow_peers=[\"127.0.0.0/8\", \"::1/128\"]"
}

fn assert_clean(name: &str, run: &Run) {
    assert_eq!(run.code, Some(0), "{name}: uclient failed:\n{}", run.output);
    assert!(run.sent > 0, "{name}: nothing sent:\n{}", run.output);
    assert_eq!(run.received, run.sent, "{name}: received != sent:\n{}", run.output);
    assert_eq!(run.lost, Some(0), "{name}: loss:\n{}", run.output);
}

async fn relay_run(name: &str, flags: &[&str], server: &str, tls: bool) {
    let t = turn_node(&[loopback_peers()]).await;
    let peer = Peer::start();
    let port = if tls { t.tls_port } else { t.port }.to_string();
    let peer_port = peer.port.to_string();
    let peer_addr = if server.contains(':') { "::1" } else { "127.0.0.1" };
    let mut args: Vec<&str> = flags.to_vec();
    args.extend(["-e", peer_addr, "-r", &peer_port, "-p", &port, "-n", "100", "-m", "2", "-l", "120", "-c", server]);
    let run = uclient(&args, RUN);
    assert_clean(name, &run);
    // What /metrics says was relayed, by transport of the client leg.
    let transport = if flags.contains(&"-S") { "tls" } else if flags.contains(&"-t") { "tcp" } else { "udp" };
    if !flags.contains(&"-T") && !flags.contains(&"-y") {
        let http = cluster_tests::Http::new(&t._node.base());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let m = http.get("/metrics").await.unwrap().body;
            let to_peer = counter(&m, "switchboard_turn_relayed_packets_total", &["direction=\"to_peer\"", &format!("transport=\"{transport}\"")]);
            let allocations = counter(&m, "switchboard_turn_allocations_total", &[]);
            if to_peer >= run.sent && allocations >= 2 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{name}: metrics show {to_peer} packets to peers over {transport}, {allocations} allocations; uclient sent {}:\n{m}", run.sent);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    drop(t);
}

#[test]
fn t20_stun_binding_ipv4_and_ipv6() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = rt.block_on(turn_node(&[]));
    for host in ["127.0.0.1", "::1"] {
        let (code, out) = stunclient(host, t.port);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("reflexive addr"), "{host}: {out}");
    }
}

/// RFC 5780 with coturn's `turnutils_natdiscovery`: off by default (CHANGE-REQUEST gets 420,
/// so the tool learns no other address); with `turn.alternate_ip` the node answers from both
/// IPs and both ports and loopback shows as endpoint-independent mapping and filtering.
#[test]
fn t20_nat_discovery_rfc5780() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let off = rt.block_on(turn_node(&[]));
    let (_, out) = natdiscovery(off.port);
    assert!(!out.contains("Other addr"), "RFC 5780 must be off by default: {out}");
    assert!(!out.contains("Endpoint Independent Filtering"), "{out}");

    let ips = [std::net::Ipv4Addr::new(127, 0, 0, 1), std::net::Ipv4Addr::new(127, 0, 0, 2)];
    let p1 = cluster_tests::free_port(&ips);
    let mut p2 = cluster_tests::free_port(&ips);
    while p2 == p1 {
        p2 = cluster_tests::free_port(&ips);
    }
    let spec = NodeSpec::single()
        .set(&format!("turn.listen=[\"127.0.0.1:{p1}\", \"127.0.0.1:{p2}\"]"))
        .set("turn.alternate_ip=\"127.0.0.2\"");
    let _node = rt.block_on(NodeProcess::start(spec)).unwrap();
    let (code, out) = natdiscovery(p1);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("Other addr: : 127.0.0.2:{p2}")), "{out}");
    assert!(out.contains(&format!("Response origin: : 127.0.0.2:{p1}")), "changed IP: {out}");
    assert!(out.contains(&format!("Response origin: : 127.0.0.2:{p2}")), "changed IP and port: {out}");
    assert!(out.contains("Endpoint Independent Mapping"), "{out}");
    assert!(out.contains("Endpoint Independent Filtering"), "{out}");
}

#[tokio::test]
async fn t20_uclient_udp_channels_rest() {
    relay_run("udp", &["-W", SECRET], "127.0.0.1", false).await;
}

#[tokio::test]
async fn t20_uclient_udp_static_user() {
    relay_run("static", &["-u", "alice", "-w", "wonderland"], "127.0.0.1", false).await;
}

#[tokio::test]
async fn t20_uclient_udp_send_indications() {
    relay_run("send", &["-W", SECRET, "-s"], "127.0.0.1", false).await;
}

#[tokio::test]
async fn t20_uclient_tcp() {
    relay_run("tcp", &["-W", SECRET, "-t"], "127.0.0.1", false).await;
}

#[tokio::test]
async fn t20_uclient_tls() {
    relay_run("tls", &["-W", SECRET, "-t", "-S"], "127.0.0.1", true).await;
}

#[tokio::test]
async fn t20_uclient_client_to_client() {
    relay_run("client-to-client", &["-W", SECRET, "-y"], "127.0.0.1", false).await;
}

#[tokio::test]
async fn t20_uclient_tcp_relay() {
    relay_run("rfc6062", &["-W", SECRET, "-T"], "127.0.0.1", false).await;
}

#[tokio::test]
async fn t20_uclient_tcp_relay_over_tls() {
    relay_run("rfc6062-tls", &["-W", SECRET, "-T", "-S"], "127.0.0.1", true).await;
}

#[tokio::test]
async fn t20_uclient_ipv6_relay() {
    relay_run("ipv6", &["-W", SECRET, "-x"], "::1", false).await;
    relay_run("ipv6-tcp", &["-W", SECRET, "-x", "-t"], "::1", false).await;
}

#[tokio::test]
async fn t20_wrong_credentials_end_with_255() {
    let t = turn_node(&[loopback_peers()]).await;
    let peer = Peer::start();
    let (port, peer_port) = (t.port.to_string(), peer.port.to_string());
    for creds in [vec!["-u", "alice", "-w", "nope"], vec!["-W", "not-the-secret"]] {
        let mut args = creds.clone();
        args.extend(["-e", "127.0.0.1", "-r", &peer_port, "-p", &port, "-n", "10", "-c", "127.0.0.1"]);
        let run = uclient(&args, RUN);
        assert_eq!(run.code, Some(255), "{creds:?}:\n{}", run.output);
        assert_eq!(run.received, 0);
    }
    let http = cluster_tests::Http::new(&t._node.base());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = http.get("/metrics").await.unwrap().body;
        let failures = counter(&m, "switchboard_turn_auth_failures_total", &["transport=\"udp\""]);
        if failures >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "auth failures not counted ({failures}):\n{m}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Without an allow-list, the relay refuses loopback peers: coturn's client fails on 403.
#[tokio::test]
async fn t20_loopback_peer_refused_by_default() {
    let t = turn_node(&[]).await;
    let peer = Peer::start();
    let (port, peer_port) = (t.port.to_string(), peer.port.to_string());
    let run = uclient(&["-W", SECRET, "-e", "127.0.0.1", "-r", &peer_port, "-p", &port, "-n", "10", "-c", "127.0.0.1"], RUN);
    assert_eq!(run.code, Some(255), "{}", run.output);
    assert!(run.output.contains("403"), "{}", run.output);
}

//! Attacks on the cluster port, each against a real three-node cluster: a captured link replayed,
//! frames injected after a valid handshake, an impostor listening at a member's address, and a
//! crowd of connections that trickle bytes to hold the listener's slots. The cluster must refuse
//! each, say so in its metrics and logs, and keep electing, committing and relaying calls.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_tests::calls::{self, CallSpec, Clients, Target};
use cluster_tests::cluster::{Cluster, ClusterOptions};
use cluster_tests::{free_port, fresh_room};
use serde_json::Value;
use switchboard_proto::cluster::{encode, ClusterCommand, Frame, FrameReader, Reply, Request};
use switchboard_proto::peer_security::{Acceptor, Dialler, Opener, RecordReader, Sealer, MAX_PREAUTH_RECORD};
use switchboard_proto::rooms::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const SECRET: &[u8] = b"test-cluster-secret";

/// What one proxied connection sent to node 3.
type Capture = Arc<Mutex<Vec<u8>>>;

fn raft_addr(c: &Cluster, n: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, n as u8), c.raft_port()))
}

/// A counter from a node's `/metrics` (0 when absent).
async fn metric(c: &Cluster, n: usize, series: &str) -> f64 {
    let body = c.http(n).get("/metrics").await.map(|r| r.body).unwrap_or_default();
    body.lines()
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|rest| rest.trim().parse::<f64>().ok())
        .sum()
}

const PEER_AUTH: &str = "switchboard_errors_total{kind=\"peer_auth\"}";

/// Reads until the peer closes (or `within` passes); returns what came and whether it closed.
async fn read_to_close(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

/// A test's own end of a cluster link, speaking the protocol with the real secret.
struct TestPeer {
    stream: TcpStream,
    sealer: Sealer,
    opener: Opener,
    frames: FrameReader,
}

impl TestPeer {
    async fn connect(addr: SocketAddr, secret: &[u8]) -> anyhow::Result<TestPeer> {
        let mut stream = TcpStream::connect(addr).await?;
        let (d, first) = Dialler::start(secret, rand::random())?;
        stream.write_all(&first).await?;
        let mut records = RecordReader::new(MAX_PREAUTH_RECORD);
        let mut buf = [0u8; 256];
        let answer = loop {
            if let Some(r) = records.next_record()? {
                break r.to_vec();
            }
            let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await??;
            anyhow::ensure!(n > 0, "closed during the handshake");
            records.push(&buf[..n]);
        };
        let (sealer, mut opener) = d.finish(&answer)?;
        opener.push(&records.into_rest());
        Ok(TestPeer { stream, sealer, opener, frames: FrameReader::default() })
    }

    fn sealed(&mut self, f: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        self.sealer.seal(&encode(f).unwrap(), &mut out).unwrap();
        out
    }

    async fn send(&mut self, f: &Frame) {
        let bytes = self.sealed(f);
        self.stream.write_all(&bytes).await.unwrap();
    }

    /// The next frame, `None` if the node closed the link first.
    async fn next(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = self.frames.next_frame().unwrap() {
                return Some(f);
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => {
                    self.opener.push(&buf[..n]);
                    let mut plain = Vec::new();
                    self.opener.open(&mut plain).unwrap();
                    self.frames.push(&plain);
                }
                Err(_) => panic!("no frame and no close within {within:?}"),
            }
        }
    }

    /// The next reply, skipping pings, acks and welcomes; `None` if the node closed first.
    async fn reply(&mut self, within: Duration) -> Option<(u64, Reply)> {
        loop {
            match self.next(within).await? {
                Frame::Reply { id, body } => return Some((id, body)),
                _ => continue,
            }
        }
    }
}

fn join(room: &str, client: &str) -> Request {
    Request::Propose(ClusterCommand::Room(Command::Join { room: room.into(), client: client.into(), loopback: false, now_ms: 0 }))
}

/// Whether a real client joining `room` finds it empty (is the initiator).
async fn finds_empty(c: &Cluster, n: usize, room: &str) -> bool {
    let (_, initiator, _) = c.http(n).join_ok(room).await.unwrap();
    initiator
}

fn warnings(log: &str) -> String {
    log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).take(40).collect::<Vec<_>>().join("\n")
}

async fn wait_links_up(c: &Cluster, nodes: &[usize], within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        let mut all = true;
        for &n in nodes {
            match c.status(n).await {
                Some(s) => {
                    let ok = s["members"]
                        .as_array()
                        .is_some_and(|m| m.iter().filter(|m| m["id"].as_u64() != Some(n as u64)).all(|m| m["link_up"] == true));
                    if !ok {
                        all = false;
                        last = s;
                    }
                }
                None => all = false,
            }
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("links among {nodes:?} not all up within {within:?}; last status {last}");
}

async fn whole_call(c: &Cluster, na: usize, nb: usize, prefix: &str) -> String {
    let targets: Vec<Target> = (1..=3).map(|n| Target::new(&c.base(n))).collect();
    let mut clients = Clients::new(&targets);
    let room = fresh_room(prefix);
    if let Err(e) = calls::call(&mut clients, &CallSpec::default(), &room, na - 1, nb - 1).await {
        panic!("call between nodes {na} and {nb}: {e:?}");
    }
    room
}

#[tokio::test]
async fn t68_a_captured_link_cannot_be_replayed_or_read() {
    let mut c = Cluster::start(ClusterOptions::default()).await.unwrap();
    // Put a recording proxy in front of node 3's cluster port: what nodes 1 and 2 send it is
    // what an eavesdropper on the cluster network would capture.
    let port = c.raft_port();
    let alt = free_port(&[Ipv4Addr::new(127, 0, 0, 3)]);
    c.kill(3);
    c.node(3).spec.sets.push(format!("cluster.listen=\"127.0.0.3:{alt}\""));
    let proxy = TcpListener::bind(("127.0.0.3", port)).await.unwrap();
    let captured: Arc<Mutex<Vec<Capture>>> = Arc::default();
    let cap = captured.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = proxy.accept().await {
            let Ok(outbound) = TcpStream::connect(("127.0.0.3", alt)).await else { continue };
            let log = Arc::new(Mutex::new(Vec::new()));
            cap.lock().unwrap().push(log.clone());
            let (mut ir, mut iw) = inbound.into_split();
            let (mut or, mut ow) = outbound.into_split();
            tokio::spawn(async move {
                let mut buf = [0u8; 16384];
                while let Ok(n) = ir.read(&mut buf).await {
                    if n == 0 || ow.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut or, &mut iw).await;
            });
        }
    });
    c.restart(3).await.unwrap();
    wait_links_up(&c, &[1, 2, 3], Duration::from_secs(20)).await;
    // A call with a person on node 3 sends its room name and messages over those links.
    let room = whole_call(&c, 1, 3, "eavesdrop").await;
    let room2 = whole_call(&c, 2, 3, "eavesdrop").await;

    let streams: Vec<Vec<u8>> = captured.lock().unwrap().iter().map(|l| l.lock().unwrap().clone()).collect();
    assert!(streams.iter().any(|s| s.len() > 1000), "the proxy captured the links: {:?}", streams.iter().map(Vec::len).collect::<Vec<_>>());
    let all: Vec<u8> = streams.concat();
    for secret in [room.as_bytes(), room2.as_bytes(), b"test-cluster-secret".as_slice(), b"candidate".as_slice()] {
        assert!(!all.windows(secret.len()).any(|w| w == secret), "{:?} readable on the wire", String::from_utf8_lossy(secret));
    }

    // Replay every captured stream that got past its first message, byte for byte, straight to
    // node 3.
    let before = metric(&c, 3, PEER_AUTH).await;
    let replays: Vec<&Vec<u8>> = streams.iter().filter(|s| s.len() > 50).collect();
    for (i, s) in replays.iter().enumerate() {
        println!("replay {i}: {} bytes, peer_auth so far {}", s.len(), metric(&c, 3, PEER_AUTH).await);
        let mut conn = TcpStream::connect(("127.0.0.3", alt)).await.unwrap();
        let _ = conn.write_all(s).await;
        let (answer, closed) = read_to_close(&mut conn, Duration::from_secs(5)).await;
        assert!(closed, "node 3 kept a replayed link open");
        // Its handshake answer (a 50-byte record) and nothing else: no Welcome, no replies.
        assert_eq!(answer.len(), 50, "node 3 answered a replay with {} bytes", answer.len());
    }
    let after = metric(&c, 3, PEER_AUTH).await;
    assert!(after >= before + replays.len() as f64, "peer_auth {before} -> {after}");
    assert!(c.node(3).log().contains("peer refused"), "node 3 logged the replays");
    // The cluster never noticed.
    whole_call(&c, 3, 1, "after-replay").await;
}

#[tokio::test]
async fn t68_frames_not_sealed_by_the_link_are_refused() {
    let c = Cluster::start(ClusterOptions::default()).await.unwrap();
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap() as usize;
    let addr = raft_addr(&c, leader);

    // Control: a peer holding the secret is welcomed and obeyed.
    let mut p = TestPeer::connect(addr, SECRET).await.unwrap();
    p.send(&Frame::Hello { from: 77, incarnation: 1 }).await;
    match p.next(Duration::from_secs(5)).await {
        Some(Frame::Welcome { node, .. }) => assert_eq!(node, leader as u64),
        other => panic!("expected a welcome, got {other:?}"),
    }
    let obeyed = fresh_room("sealed");
    p.send(&Frame::Request { id: 1, body: join(&obeyed, "intruder") }).await;
    let (id, reply) = p.reply(Duration::from_secs(5)).await.expect("a reply");
    assert!(id == 1 && matches!(reply, Reply::Proposed { .. }), "{reply:?}");
    assert!(!finds_empty(&c, leader, &obeyed).await, "the sealed join was applied");

    // The same request in the clear, after the valid handshake and Hello: the link closes and
    // nothing is applied.
    let before = metric(&c, leader, PEER_AUTH).await;
    let clear = fresh_room("clear");
    let raw = encode(&Frame::Request { id: 2, body: join(&clear, "intruder") }).unwrap();
    p.stream.write_all(&raw).await.unwrap();
    assert!(p.reply(Duration::from_secs(5)).await.is_none(), "an unsealed frame got a reply");

    // A sealed frame altered in flight: also closed, also not applied.
    let mut p = TestPeer::connect(addr, SECRET).await.unwrap();
    p.send(&Frame::Hello { from: 77, incarnation: 1 }).await;
    let altered = fresh_room("altered");
    let mut bytes = p.sealed(&Frame::Request { id: 3, body: join(&altered, "intruder") });
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    p.stream.write_all(&bytes).await.unwrap();
    assert!(p.reply(Duration::from_secs(5)).await.is_none(), "an altered frame got a reply");

    // The old plaintext Hello with an HMAC: no longer a way in.
    let mut old = TcpStream::connect(addr).await.unwrap();
    let mut hello = Vec::new();
    hello.extend_from_slice(&[0, 0, 0, 40]);
    hello.extend_from_slice(&[0u8; 40]);
    old.write_all(&hello).await.unwrap();
    let (answer, closed) = read_to_close(&mut old, Duration::from_secs(5)).await;
    assert!(closed && answer.is_empty(), "a plaintext hello got {} bytes", answer.len());

    assert!(finds_empty(&c, leader, &clear).await, "the unsealed join was applied");
    assert!(finds_empty(&c, leader, &altered).await, "the altered join was applied");
    let after = metric(&c, leader, PEER_AUTH).await;
    assert!(after >= before + 3.0, "peer_auth {before} -> {after}");

    // A proven link that goes silent is closed (peers ping every 100 ms).
    let mut quiet = TestPeer::connect(addr, SECRET).await.unwrap();
    quiet.send(&Frame::Hello { from: 78, incarnation: 1 }).await;
    let t = Instant::now();
    let (_, closed) = read_to_close(&mut quiet.stream, Duration::from_secs(10)).await;
    assert!(closed, "a silent link stayed open");
    assert!((4.0..8.0).contains(&t.elapsed().as_secs_f64()), "closed after {:?}", t.elapsed());
    whole_call(&c, 1, 2, "after-injection").await;
}

#[tokio::test]
async fn t68_a_node_does_not_talk_to_an_impostor_listener() {
    let mut c = Cluster::start(ClusterOptions::default()).await.unwrap();
    c.kill(3);
    // The impostor takes node 3's address; it does not hold the secret.
    let impostor = TcpListener::bind(("127.0.0.3", c.raft_port())).await.unwrap();
    let before: f64 = metric(&c, 1, PEER_AUTH).await + metric(&c, 2, PEER_AUTH).await;
    for _ in 0..2 {
        let (mut s, _) = tokio::time::timeout(Duration::from_secs(5), impostor.accept()).await.unwrap().unwrap();
        let mut first = vec![0u8; 50];
        s.read_exact(&mut first).await.unwrap();
        // A well-formed answer made with another key.
        let (_, m1) = Dialler::start(b"the impostor's guess", rand::random()).unwrap();
        let body = &m1[2..];
        let (m2, _, _) = Acceptor::new(b"the impostor's guess", rand::random()).unwrap().accept(body).unwrap();
        s.write_all(&m2).await.unwrap();
        let (more, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
        assert!(closed, "the node kept talking to an impostor");
        assert!(more.is_empty(), "the node sent {} bytes to an impostor after its handshake", more.len());
    }
    let after: f64 = metric(&c, 1, PEER_AUTH).await + metric(&c, 2, PEER_AUTH).await;
    assert!(after >= before + 2.0, "peer_auth {before} -> {after}");
    let logs = c.node(1).log() + c.node(2).log().as_str();
    assert!(logs.contains("the listener failed authentication"), "the dialler logged the impostor");

    // A listener with the secret that answers as another node: the link is not used.
    let (s, _) = tokio::time::timeout(Duration::from_secs(5), impostor.accept()).await.unwrap().unwrap();
    let mut s = s;
    let mut rec = RecordReader::new(MAX_PREAUTH_RECORD);
    let mut buf = [0u8; 256];
    let first = loop {
        if let Some(r) = rec.next_record().unwrap() {
            break r.to_vec();
        }
        let n = s.read(&mut buf).await.unwrap();
        rec.push(&buf[..n]);
    };
    let (m2, mut sealer, _) = Acceptor::new(SECRET, rand::random()).unwrap().accept(&first).unwrap();
    s.write_all(&m2).await.unwrap();
    let mut welcome = Vec::new();
    sealer.seal(&encode(&Frame::Welcome { node: 9, incarnation: 1 }).unwrap(), &mut welcome).unwrap();
    s.write_all(&welcome).await.unwrap();
    let (_, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "the node kept a link to the wrong node");
    let logs = c.node(1).log() + c.node(2).log().as_str();
    assert!(logs.contains("another node answers"), "the wrong node was logged");

    drop(impostor);
    c.restart(3).await.unwrap();
    wait_links_up(&c, &[1, 2, 3], Duration::from_secs(20)).await;
    whole_call(&c, 3, 1, "after-impostor").await;
}

#[tokio::test]
async fn t68_trickling_connections_do_not_stop_the_cluster() {
    let mut c = Cluster::start(ClusterOptions::default()).await.unwrap();
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap() as usize;
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let other = (1..=3).find(|&n| n != leader && n != follower).unwrap();
    let target = raft_addr(&c, leader);

    // 128 connections from 32 addresses, one byte every 200 ms, each reconnecting 10 ms after
    // the node drops it: more than the node's 64 handshake slots, all the time.
    let stop = Arc::new(AtomicBool::new(false));
    let closed_by_node = Arc::new(AtomicU64::new(0));
    let longest_ms = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..128u32 {
        let ip = Ipv4Addr::new(127, 0, 1, 1 + (i % 32) as u8);
        let (stop, closed_by_node, longest_ms) = (stop.clone(), closed_by_node.clone(), longest_ms.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sock = TcpSocket::new_v4().unwrap();
                sock.bind(SocketAddr::from((ip, 0))).unwrap();
                let Ok(mut s) = sock.connect(target).await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let opened = Instant::now();
                let mut buf = [0u8; 64];
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if s.write_all(&[0]).await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        _ => {}
                    }
                }
                closed_by_node.fetch_add(1, Ordering::Relaxed);
                longest_ms.fetch_max(opened.elapsed().as_millis() as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // During the attack a follower restarts: it must handshake with the leader again.
    c.kill(follower);
    c.restart(follower).await.unwrap();
    wait_links_up(&c, &[1, 2, 3], Duration::from_secs(20)).await;
    for n in 1..=3 {
        let j = c.http(n).join(&fresh_room("trickle")).await.unwrap();
        if j["result"] != "SUCCESS" {
            let logs: String = (1..=3).map(|i| format!("--- node {i}\n{}", warnings(&c.node(i).log()))).collect();
            panic!("join through node {n} during the attack: {j}\n{logs}");
        }
    }
    whole_call(&c, follower, other, "trickle").await;
    whole_call(&c, leader, follower, "trickle").await;
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", c.node(leader).pid().unwrap()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
        .unwrap_or(0);
    let evicted = metric(&c, leader, "switchboard_errors_total{kind=\"peer_handshake_evicted\"}").await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let closed = closed_by_node.load(Ordering::Relaxed);
    let longest = longest_ms.load(Ordering::Relaxed);
    println!("trickle: {closed} connections dropped by the leader, {evicted} evicted, longest held {longest} ms, leader RSS {rss_kib} KiB");
    assert!(closed >= 128, "the leader dropped only {closed} trickling connections");
    assert!(evicted > 0.0, "no handshake was evicted though 128 waited for 64 slots");
    assert!(longest < 3000, "a trickling connection was held {longest} ms (handshake deadline 2 s)");
}

//! What one address can hold of a node's HTTP listener: connections past `http.connections_per_ip`
//! are closed as they are accepted, and a request body must arrive within
//! `http.body_timeout_secs`. A call from another address goes on meanwhile.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use cluster_tests::calls::{self, CallSpec, Clients, Target};
use cluster_tests::{connect_from, counter, fresh_room, Http, NodeProcess, NodeSpec};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 77);

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// `holdconns`: a process holding `count` idle connections from `from` to `to`.
struct Holder {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Holder {
    async fn start(from: Ipv4Addr, to: SocketAddr, count: usize) -> Holder {
        let mut child = Command::new(env!("CARGO_BIN_EXE_holdconns"))
            .args(["--from", &from.to_string(), "--to", &to.to_string(), "--count", &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("holdconns starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Holder { child, stdin, stdout }
    }

    /// Waits for its next line, `word A [B]`, and returns the numbers.
    async fn answer(&mut self, word: &str) -> Vec<usize> {
        let line = tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line())
            .await
            .expect("holdconns answers within 60 s")
            .unwrap()
            .expect("holdconns is running");
        let rest = line.strip_prefix(word).unwrap_or_else(|| panic!("holdconns said {line:?}"));
        rest.split_whitespace().map(|n| n.parse().unwrap()).collect()
    }

    /// (closed by the server, answered by it) of the held connections.
    async fn check(&mut self) -> (usize, usize) {
        self.stdin.write_all(b"check\n").await.unwrap();
        let a = self.answer("closed").await;
        (a[0], a[1])
    }
}

/// 20 000 idle connections from one address (two processes of 10 000), opened and held while
/// two people from another make call after call. Without the per-address cap they took the
/// node's descriptors (20 000 here): its accept queue stalled and connections timed out.
#[tokio::test]
async fn t27_idle_sockets_from_one_address_do_not_stop_a_call() {
    let n = NodeProcess::start(NodeSpec::single().set("http.connections_per_ip=500")).await.unwrap();
    let pid = n.pid().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let node_limit = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or("").split_whitespace().nth(3).unwrap_or("?").to_owned();
    let addr = n.spec.http;
    let rss_before = n.rss_kib();

    let started = Instant::now();
    let mut holders = vec![Holder::start(ATTACKER, addr, 10_000).await, Holder::start(ATTACKER, addr, 10_000).await];
    // Calls from 127.0.0.1, one after another, while the connections are opened and held.
    let base = n.base();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calling = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut clients = Clients::new(&[Target::new(&base)]);
            let mut results = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                results.push(calls::call(&mut clients, &CallSpec::default(), &fresh_room("calm"), 0, 0).await.map(|_| ()));
            }
            results
        }
    });
    let (mut opened, mut failed) = (0, 0);
    for h in &mut holders {
        let a = h.answer("opened").await;
        opened += a[0];
        failed += a[1];
    }
    let fds_during = open_fds(pid);
    let rss_during = n.rss_kib();
    let mut clients = Clients::new(&[Target::new(&n.base())]);
    calls::call(&mut clients, &CallSpec::default(), &fresh_room("calm"), 0, 0).await.expect("a call while all are held");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results = calling.await.unwrap();
    let failed_calls: Vec<String> = results.iter().filter_map(|r| r.as_ref().err().map(|e| e.to_string())).collect();
    eprintln!("{} calls while the connections were opened, {} failed {:?}", results.len(), failed_calls.len(), failed_calls.first());
    assert!(failed_calls.is_empty(), "calls failed during the attack: {failed_calls:?}");
    assert!(results.len() >= 3, "only {} calls ran during the attack", results.len());

    // The node holds at most 500 of them: the rest it closed at once, or answered 408 after
    // 10 s without a request (which let in another 500 of the idle ones).
    let (mut closed, mut answered) = (0, 0);
    for h in &mut holders {
        let (c, a) = h.check().await;
        closed += c;
        answered += a;
    }
    let still_held = opened - closed - answered;
    let metrics = Http::new(&n.base()).get("/metrics").await.unwrap().body;
    let refused = counter(&metrics, "switchboard_http_connections_refused_total", &[]);
    eprintln!(
        "{opened} connections held from {ATTACKER} ({failed} failed) in {:?}; node (limit {node_limit} descriptors): \
         {fds_during} descriptors, RSS {rss_before} → {rss_during} KiB; {closed} closed by the node at once, {answered} answered 408, \
         {still_held} held open; refused counter {refused}",
        started.elapsed()
    );
    assert_eq!(failed, 0, "connections to the listener failed: its accept queue stalled");
    assert!(fds_during < 2_000, "the node holds {fds_during} descriptors for one address");
    assert!(still_held <= 500, "the node holds {still_held} idle connections from one address");
    assert_eq!(refused, closed as u64, "every connection closed at once is counted as refused");
    assert!(closed >= opened / 2, "only {closed} of {opened} connections were refused");
    assert!(n.log().contains("http.connections_per_ip"), "the refusal is logged");

    // Once they go, the address may connect again.
    for mut h in holders {
        drop(h.stdin);
        let _ = h.child.wait().await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect_from(ATTACKER.into(), addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
        if out.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "the address is still refused after its connections closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `head` and then its body one byte every 300 ms; returns what the node answered and when.
async fn trickle(addr: SocketAddr, head: String, body_len: usize) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let start = Instant::now();
    let mut sent = 0;
    let mut out = vec![0u8; 4096];
    loop {
        tokio::select! {
            r = s.read(&mut out) => {
                let n = r.unwrap_or(0);
                return (String::from_utf8_lossy(&out[..n]).into_owned(), start.elapsed());
            }
            _ = tokio::time::sleep(Duration::from_millis(300)) => {
                if sent < body_len {
                    let _ = s.write_all(b"x").await;
                    sent += 1;
                }
                assert!(start.elapsed() < Duration::from_secs(15), "no answer to a trickled body after 15 s");
            }
        }
    }
}

/// Bodies trickled to the room server's `/message` and Collider's POST are answered 408 at the
/// deadline (before, the handler waited as long as the client kept sending); others are served.
#[tokio::test]
async fn t27_a_trickled_body_is_answered_408_at_its_deadline() {
    let n = NodeProcess::start(NodeSpec::single().set("http.body_timeout_secs=2")).await.unwrap();
    let addr = n.spec.http;
    let room = fresh_room("slow");
    let head = |path: &str| format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n");
    let slow_message = trickle(addr, head(&format!("/message/{room}/12345678")), 1000);
    let slow_collider = trickle(addr, head(&format!("/{room}/12345678")), 1000);
    let call = async {
        let mut clients = Clients::new(&[Target::new(&n.base())]);
        calls::call(&mut clients, &CallSpec::default(), &fresh_room("calm"), 0, 0).await
    };
    let ((message, t1), (collider, t2), called) = tokio::join!(slow_message, slow_collider, call);
    eprintln!("room server: {:?} after {t1:?}; Collider: {:?} after {t2:?}", message.lines().next(), collider.lines().next());
    called.expect("a call while two bodies trickle");
    for (what, answer, after) in [("/message", &message, t1), ("Collider POST", &collider, t2)] {
        assert!(answer.starts_with("HTTP/1.1 408"), "{what}: {answer:?}");
        assert!(after >= Duration::from_millis(1_900) && after < Duration::from_secs(5), "{what} answered after {after:?}");
    }
}

/// A WebSocket upgrade from `from`; the status it got and the connection (held open to keep
/// the session).
async fn upgrade(from: Ipv4Addr, to: SocketAddr) -> (String, TcpStream) {
    let mut s = connect_from(from.into(), to).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("an answer to the upgrade").unwrap();
    let status = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned();
    (status, s)
}

/// `http.sessions_per_ip`: past it a WebSocket upgrade from that address is answered 429 (not
/// a bare close), another address still gets its sessions, and a closed one frees its slot.
#[tokio::test]
async fn t27_sessions_per_address_are_limited_with_429() {
    let n = NodeProcess::start(NodeSpec::single().set("http.sessions_per_ip=3")).await.unwrap();
    let addr = n.spec.http;
    let (a, b) = (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2));
    let mut held = Vec::new();
    for i in 0..3 {
        let (status, s) = upgrade(a, addr).await;
        assert!(status.starts_with("HTTP/1.1 101"), "session {i}: {status}");
        held.push(s);
    }
    let (status, _) = upgrade(a, addr).await;
    assert!(status.starts_with("HTTP/1.1 429"), "a fourth session from one address: {status}");
    let (status, _other) = upgrade(b, addr).await;
    assert!(status.starts_with("HTTP/1.1 101"), "another address: {status}");
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, s) = upgrade(a, addr).await;
        if status.starts_with("HTTP/1.1 101") {
            held.push(s);
            break;
        }
        assert!(Instant::now() < deadline, "the closed session's slot did not come back: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

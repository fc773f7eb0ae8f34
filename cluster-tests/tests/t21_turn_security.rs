//! TURN security checks over real sockets (the TURN notes' checklist): credentials (bad
//! password, expired REST username), the peer policy for every loopback, unspecified and
//! IPv4-in-IPv6 spelling, the node's own listeners, quotas (486), relay ports running out (508)
//! and EVEN-PORT reservations, stateless nonces, and malformed input that must not disturb
//! anyone else.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use cluster_tests::coturn::free_dual_port;
use cluster_tests::turn_client::TurnClient;
use cluster_tests::{NodeProcess, NodeSpec};
use hmac::{Hmac, Mac};

const SECRET: &str = "security-secret";

struct Node {
    n: NodeProcess,
    turn: SocketAddr,
    turn6: SocketAddr,
}

async fn node(extra: &[&str]) -> Node {
    let port = free_dual_port();
    let mut spec = NodeSpec::single()
        .set(&format!("ice.turn_secret=\"{SECRET}\""))
        .set(&format!("turn.listen=[\"127.0.0.1:{port}\", \"[::1]:{port}\"]"))
        .set("turn.relay_ip6=\"::1\"")
        .set("turn.users=[\"alice:wonderland\", \"bob:builder\"]");
    for e in extra {
        spec = spec.set(e);
    }
    let n = NodeProcess::start(spec).await.unwrap();
    Node { n, turn: format!("127.0.0.1:{port}").parse().unwrap(), turn6: format!("[::1]:{port}").parse().unwrap() }
}

fn rest(user: &str, expiry: u64) -> (String, String) {
    let username = format!("{expiry}:{user}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    (username, base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn t21_credentials() {
    let n = node(&[]).await;
    let mut good = TurnClient::udp(n.turn, "alice", "wonderland").await.unwrap();
    assert_eq!(good.allocate().await.unwrap().code, 0);
    let mut bad = TurnClient::udp(n.turn, "alice", "nope").await.unwrap();
    assert_eq!(bad.allocate().await.unwrap().code, 401);
    let (u, p) = rest("carol", now() + 600);
    assert_eq!(TurnClient::udp(n.turn, &u, &p).await.unwrap().allocate().await.unwrap().code, 0);
    let (u, p) = rest("carol", now() - 1);
    assert_eq!(TurnClient::udp(n.turn, &u, &p).await.unwrap().allocate().await.unwrap().code, 401, "expired REST username");
    let (u, _) = rest("carol", now() + 600);
    assert_eq!(TurnClient::udp(n.turn, &u, "forged").await.unwrap().allocate().await.unwrap().code, 401);
    // Binding needs no credentials.
    assert_eq!(TurnClient::udp(n.turn, "", "").await.unwrap().binding().await.unwrap().code, 0);
}

/// Without an allow-list: every loopback, unspecified, private, link-local and mapped form is
/// 403, on CreatePermission and ChannelBind, over IPv4 and IPv6 relays.
#[tokio::test]
async fn t21_peer_policy_without_allow_list() {
    let n = node(&[]).await;
    let mut c = TurnClient::udp(n.turn, "alice", "wonderland").await.unwrap();
    assert_eq!(c.allocate().await.unwrap().code, 0);
    for peer in ["127.0.0.1:9", "0.0.0.0:9", "127.255.255.254:9", "10.0.0.1:9", "192.168.1.1:9", "169.254.169.254:80", "224.0.0.1:9", "255.255.255.255:9"] {
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(c.permit(peer).await.unwrap().code, 403, "CreatePermission {peer}");
        assert_eq!(c.bind(0x4001, peer).await.unwrap().code, 403, "ChannelBind {peer}");
    }
    assert_eq!(c.permit("8.8.8.8:53".parse().unwrap()).await.unwrap().code, 0, "a public peer is fine");
    let mut v6 = TurnClient::udp(n.turn6, "bob", "builder").await.unwrap();
    let a = v6
        .request(turn_types::message::ALLOCATE, &|b, _| {
            use stun_types::message::MessageWriteExt;
            let _ = b.add_attribute(&turn_types::attribute::RequestedTransport::new(17));
            let _ = b.add_attribute(&turn_types::attribute::RequestedAddressFamily::new(turn_types::AddressFamily::IPV6));
        })
        .await
        .unwrap();
    assert_eq!(a.code, 0);
    assert!(a.relayed().unwrap().is_ipv6());
    for peer in ["[::1]:9", "[::]:9", "[::ffff:127.0.0.1]:9", "[::127.0.0.1]:9", "[::ffff:0.0.0.0]:9", "[::ffff:10.0.0.1]:9", "[fe80::1]:9", "[fd00::1]:9", "[64:ff9b::7f00:1]:9", "[2002:7f00:1::]:9"] {
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(v6.permit(peer).await.unwrap().code, 403, "CreatePermission {peer}");
        assert_eq!(v6.bind(0x4002, peer).await.unwrap().code, 403, "ChannelBind {peer}");
    }
    assert!(n.n.log().contains("STUN/TURN server running"));
}

/// With 127.0.0.0/8 allowed (tests), loopback peers pass — but never the node's own listeners.
#[tokio::test]
async fn t21_own_listeners_never_peers() {
    let n = node(&["turn.allow_peers=[\"127.0.0.0/8\"]"]).await;
    let mut c = TurnClient::udp(n.turn, "alice", "wonderland").await.unwrap();
    assert_eq!(c.allocate().await.unwrap().code, 0);
    assert_eq!(c.permit("127.0.0.9:5000".parse().unwrap()).await.unwrap().code, 0);
    assert_eq!(c.permit(n.turn).await.unwrap().code, 403, "the TURN listener");
    assert_eq!(c.permit(n.n.spec.http).await.unwrap().code, 403, "the HTTP listener");
    assert_eq!(c.permit("10.0.0.1:1".parse().unwrap()).await.unwrap().code, 403, "other private ranges stay refused");
}

#[tokio::test]
async fn t21_quota_486() {
    let n = node(&["turn.user_quota=2"]).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TurnClient::udp(n.turn, "alice", "wonderland").await.unwrap();
        assert_eq!(c.allocate().await.unwrap().code, 0);
        held.push(c);
    }
    let mut third = TurnClient::udp(n.turn, "alice", "wonderland").await.unwrap();
    assert_eq!(third.allocate().await.unwrap().code, 486);
    let mut other = TurnClient::udp(n.turn, "bob", "builder").await.unwrap();
    assert_eq!(other.allocate().await.unwrap().code, 0, "the quota is per user");
    // Deleting one frees a slot.
    assert_eq!(held[0].refresh(0).await.unwrap().code, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(third.allocate().await.unwrap().code, 0);
    // A second Allocate on the same 5-tuple is a mismatch.
    let mut dup = TurnClient::udp(n.turn, "bob", "builder").await.unwrap();
    assert_eq!(dup.allocate().await.unwrap().code, 0);
    let again = dup.allocate().await.unwrap();
    assert_eq!(again.code, 437);
}

/// Nonces carry no per-client state: one learned on one socket authenticates another socket of
/// the same host; from another address it is stale (438) and the client gets a fresh one.
#[tokio::test]
async fn t21_stateless_nonces() {
    let n = node(&[]).await;
    let mut a = TurnClient::udp(n.turn, "alice", "wonderland").await.unwrap();
    assert_eq!(a.allocate().await.unwrap().code, 0);
    let (realm, nonce) = a.nonce().unwrap();
    let mut b = TurnClient::udp(n.turn, "alice", "wonderland").await.unwrap();
    b.set_nonce(&realm, &nonce);
    assert_eq!(b.allocate().await.unwrap().code, 0, "the nonce works from another port of this host");
    assert!(b.challenges.is_empty(), "no challenge: {:?}", b.challenges);
    // From 127.0.0.2 the same nonce is stale (438), then the fresh one works.
    let mut c = TurnClient::udp_from("127.0.0.2:0".parse().unwrap(), n.turn, "alice", "wonderland").await.unwrap();
    c.set_nonce(&realm, &nonce);
    assert_eq!(c.allocate().await.unwrap().code, 0);
    assert_eq!(c.challenges, vec![438]);
}

/// Garbage, truncated and oversized datagrams get nothing or 400 and disturb no one.
#[tokio::test]
async fn t21_malformed_input() {
    let n = node(&["turn.allow_peers=[\"127.0.0.0/8\"]"]).await;
    let mut c = TurnClient::udp(n.turn, "alice", "wonderland").await.unwrap();
    assert_eq!(c.allocate().await.unwrap().code, 0);
    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut truncated_allocate = vec![0x00, 0x03, 0x00, 0x40, 0x21, 0x12, 0xa4, 0x42];
    truncated_allocate.extend_from_slice(&[7; 12]);
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 1],
        vec![0x40, 0x00, 0xff, 0xff, 1, 2, 3],
        truncated_allocate.clone(),
        vec![0u8; 1400],
        (0..2000).map(|i| i as u8).collect(),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ];
    for case in &cases {
        let _ = junk.send_to(case, n.turn).await;
    }
    let mut buf = [0u8; 2048];
    let mut answers = 0;
    while let Ok(Ok((len, _))) = tokio::time::timeout(Duration::from_millis(300), junk.recv_from(&mut buf)).await {
        answers += 1;
        let m = stun_types::message::Message::from_bytes(&buf[..len]).expect("only well-formed STUN comes back");
        let code = m.attribute::<stun_types::attribute::ErrorCode>().map(|e| e.code()).unwrap_or(0);
        assert_eq!(code, 400, "a readable but truncated request gets 400");
    }
    assert!(answers <= 1, "garbage gets no answer");
    // Still serving the well-behaved client.
    assert_eq!(c.permit("127.0.0.9:1".parse().unwrap()).await.unwrap().code, 0);
    let mut tcp = TurnClient::tcp(n.turn, "bob", "builder").await.unwrap();
    assert_eq!(tcp.allocate().await.unwrap().code, 0);
    assert!(!n.n.log().contains("panicked"));
}

/// An Allocate claiming the port reserved under `token`.
async fn allocate_reserved(c: &mut TurnClient, token: u64) -> cluster_tests::turn_client::Answer {
    use stun_types::message::MessageWriteExt;
    use turn_types::attribute::{RequestedTransport, ReservationToken};
    c.request(turn_types::message::ALLOCATE, &|m, _| {
        let _ = m.add_attribute(&RequestedTransport::new(RequestedTransport::UDP));
        let _ = m.add_attribute(&ReservationToken::new(token));
    })
    .await
    .unwrap()
}

/// RFC 8656 §7.2 and §14.6 on a two-port relay range: EVEN-PORT with R takes the even port and
/// reserves the odd one; with both ports held, an Allocate gets 508 Insufficient Capacity; the
/// RESERVATION-TOKEN claims the reserved port; deleting an allocation frees its port again.
#[tokio::test]
async fn t21_even_port_reservation_and_508() {
    use stun_types::message::MessageWriteExt;
    use turn_types::attribute::{EvenPort, RequestedTransport, ReservationToken};
    // A relay address no other test uses, so the tiny range is ours alone.
    let n = node(&["turn.relay_ip=\"127.0.0.77\"", "turn.min_port=50000", "turn.max_port=50001"]).await;
    let mut a = TurnClient::udp(n.turn, "alice", "wonderland").await.unwrap();
    let even = a
        .request(turn_types::message::ALLOCATE, &|b, _| {
            let _ = b.add_attribute(&RequestedTransport::new(RequestedTransport::UDP));
            let _ = b.add_attribute(&EvenPort::new(true));
        })
        .await
        .unwrap();
    assert_eq!(even.code, 0);
    assert_eq!(even.relayed().unwrap(), "127.0.0.77:50000".parse().unwrap());
    let token = stun_types::message::Message::from_bytes(&even.bytes)
        .unwrap()
        .attribute::<ReservationToken>()
        .expect("EVEN-PORT with R answers a RESERVATION-TOKEN")
        .token();

    let mut b = TurnClient::udp(n.turn, "bob", "builder").await.unwrap();
    assert_eq!(b.allocate().await.unwrap().code, 508, "50000 in use, 50001 reserved");

    let mut c = TurnClient::udp(n.turn, "bob", "builder").await.unwrap();
    let claimed = allocate_reserved(&mut c, token).await;
    assert_eq!(claimed.code, 0);
    assert_eq!(claimed.relayed().unwrap(), "127.0.0.77:50001".parse().unwrap());
    let mut d = TurnClient::udp(n.turn, "bob", "builder").await.unwrap();
    let reused = allocate_reserved(&mut d, token).await;
    assert_ne!(reused.code, 0, "a token is good once");

    assert_eq!(a.refresh(0).await.unwrap().code, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = b.allocate().await.unwrap();
    assert_eq!(again.code, 0, "the deleted allocation's port is free again");
    assert_eq!(again.relayed().unwrap(), "127.0.0.77:50000".parse().unwrap());
    // The node kept serving throughout.
    assert_eq!(TurnClient::udp(n.turn, "", "").await.unwrap().binding().await.unwrap().code, 0);
}

/// `turn.max_bps` caps what one allocation relays: a burst beyond one second's budget is cut,
/// and the budget comes back with time.
#[tokio::test]
async fn t21_bandwidth_cap() {
    let n = node(&["turn.max_bps=2000", "turn.allow_peers=[\"127.0.0.0/8\"]"]).await;
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut c = TurnClient::udp(n.turn, "alice", "wonderland").await.unwrap();
    assert_eq!(c.allocate().await.unwrap().code, 0);
    assert_eq!(c.bind(0x4000, peer_addr).await.unwrap().code, 0);
    let count = |peer: &tokio::net::UdpSocket| {
        let mut buf = [0u8; 2048];
        let mut got = 0;
        while peer.try_recv_from(&mut buf).is_ok() {
            got += 1;
        }
        got
    };
    for _ in 0..50 {
        c.send_channel(0x4000, &[7u8; 200]).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let burst = count(&peer);
    assert!((1..=13).contains(&burst), "2 000 B/s lets about 10 of 50 × 200 B through at once, got {burst}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..5 {
        c.send_channel(0x4000, &[7u8; 200]).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&peer), 5, "the budget refilled");
}

/// `turn.max_bps` at 100 Mbit/s (12.5 MB/s), beyond where `rate × elapsed` once overflowed:
/// a client offering twice that gets it relayed at the cap, in a debug build, and the shard is
/// alive afterwards.
#[tokio::test]
async fn t21_bandwidth_cap_at_100_mbit() {
    const RATE: f64 = 12_500_000.0;
    let n = node(&["turn.max_bps=12500000", "turn.allow_peers=[\"127.0.0.0/8\"]", "turn.threads=1"]).await;
    let peer = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let _ = socket2::SockRef::from(&*peer).set_recv_buffer_size(8 << 20);
    let peer_addr = peer.local_addr().unwrap();
    let mut c = TurnClient::udp(n.turn, "alice", "wonderland").await.unwrap();
    assert_eq!(c.allocate().await.unwrap().code, 0);
    assert_eq!(c.bind(0x4000, peer_addr).await.unwrap().code, 0);

    // The peer counts bytes per 100 ms slot.
    let slots = std::sync::Arc::new(std::sync::Mutex::new(vec![0u64; 60]));
    let start = tokio::time::Instant::now();
    let (p, s) = (peer.clone(), slots.clone());
    let counter = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok(Ok(len)) = tokio::time::timeout(Duration::from_millis(500), p.recv(&mut buf)).await {
            let slot = (start.elapsed().as_millis() / 100) as usize;
            if let Some(v) = s.lock().unwrap().get_mut(slot) {
                *v += len as u64;
            }
        }
    });
    // Offer about twice the cap for 4 s, in 1 ms steps.
    let payload = [7u8; 1200];
    let mut offered = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while start.elapsed() < Duration::from_secs(4) {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * RATE * 2.0) as u64;
        while offered < due {
            c.send_channel(0x4000, &payload).await.unwrap();
            offered += payload.len() as u64;
        }
    }
    let _ = counter.await;
    let slots = slots.lock().unwrap().clone();
    // The first second's budget drains in the first second; from 1.5 s on, the steady rate.
    let steady: u64 = slots[15..40].iter().sum();
    let rate = steady as f64 / 2.5;
    println!("offered {:.1} MB/s, relayed {:.2} MB/s steady (cap {:.1} MB/s)", offered as f64 / 4.0 / 1e6, rate / 1e6, RATE / 1e6);
    assert!(offered as f64 / 4.0 > RATE * 1.5, "the client could not offer more than the cap");
    assert!((0.8 * RATE..=1.1 * RATE).contains(&rate), "relayed {rate:.0} B/s under a cap of {RATE} B/s");
    // The shard that did it still answers.
    assert_eq!(TurnClient::udp(n.turn, "", "").await.unwrap().binding().await.unwrap().code, 0);
}

/// A TURN/TCP client that stops reading while its peer keeps sending: the node's writes to it
/// stall, and within the write deadline the connection ends and its allocation with it, so the
/// user's quota slot (and the relay port) come back — while the client still holds the socket.
#[tokio::test]
async fn t21_tcp_client_that_stops_reading_loses_its_allocation() {
    let n = node(&["turn.user_quota=1", "turn.allow_peers=[\"127.0.0.0/8\"]"]).await;
    let peer = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let mut c = TurnClient::tcp(n.turn, "alice", "wonderland").await.unwrap();
    let a = c.allocate().await.unwrap();
    assert_eq!(a.code, 0);
    let relay = a.relayed().unwrap();
    assert_eq!(c.permit(peer.local_addr().unwrap()).await.unwrap().code, 0);
    let mut other = TurnClient::udp(n.turn, "alice", "wonderland").await.unwrap();
    assert_eq!(other.allocate().await.unwrap().code, 486, "the quota of one is held");

    // The peer sends for as long as the test runs; the client never reads again.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (p, s) = (peer.clone(), stop.clone());
    let flood = tokio::spawn(async move {
        let data = [9u8; 1200];
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            for _ in 0..64 {
                let _ = p.send_to(&data, relay).await;
            }
            tokio::task::yield_now().await;
        }
    });
    let start = std::time::Instant::now();
    let mut code = 486;
    while start.elapsed() < Duration::from_secs(20) {
        code = other.allocate().await.unwrap().code;
        if code == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = flood.await;
    println!("quota back after {:?}", start.elapsed());
    assert_eq!(code, 0, "the stalled client's allocation never ended");
    assert!(start.elapsed() < Duration::from_secs(12), "took {:?} (write deadline 5 s)", start.elapsed());
    let m = reqwest::get(format!("{}/metrics", n.n.base())).await.unwrap().text().await.unwrap();
    assert!(m.contains("switchboard_errors_total{kind=\"turn_write_deadline\"} 1"), "the stall is counted");
    drop(c);
}

/// RFC 6062: a data connection ends with the allocation that made it (RFC 6062 §5: deleted
/// here with a Refresh of lifetime 0; before, the pipe lived on until 300 s without traffic),
/// and it is paced to `turn.max_bps` like any relay.
#[tokio::test]
async fn t21_tcp_relay_data_connection_ends_with_its_allocation() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const RATE: u64 = 200_000;
    let n = node(&["turn.allow_peers=[\"127.0.0.0/8\"]", &format!("turn.max_bps={RATE}")]).await;
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut control = TurnClient::tcp(n.turn, "alice", "wonderland").await.unwrap();
    assert_eq!(control.allocate_tcp().await.unwrap().code, 0);
    assert_eq!(control.permit(peer_addr).await.unwrap().code, 0);
    let (connected, accepted) = tokio::join!(control.connect(peer_addr), peer.accept());
    let id = connected.unwrap().connection_id().expect("Connect answers a CONNECTION-ID");
    let (mut at_peer, _) = accepted.unwrap();
    let (bound, mut data) = TurnClient::tcp(n.turn, "alice", "wonderland").await.unwrap().connection_bind(id).await.unwrap();
    assert_eq!(bound.code, 0);

    // Two seconds' worth of the cap: the first second's is in the bucket, the rest waits.
    let start = std::time::Instant::now();
    let payload = vec![7u8; 2 * RATE as usize];
    let writer = tokio::spawn(async move {
        data.write_all(&payload).await.unwrap();
        data
    });
    let mut got = vec![0u8; 2 * RATE as usize];
    tokio::time::timeout(Duration::from_secs(10), at_peer.read_exact(&mut got)).await.expect("relayed within 10 s").unwrap();
    let took = start.elapsed();
    let mut data = writer.await.unwrap();
    println!("{} bytes through the data connection in {took:?} (cap {RATE} B/s)", got.len());
    assert!(got.iter().all(|b| *b == 7));
    assert!(took >= Duration::from_millis(800) && took < Duration::from_secs(4), "took {took:?} at a cap of {RATE} B/s");
    at_peer.write_all(b"pong").await.unwrap();
    let mut pong = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(3), data.read_exact(&mut pong)).await.unwrap().unwrap();
    assert_eq!(&pong, b"pong");

    // The allocation ends: both ends of its data connection are closed.
    assert_eq!(control.refresh(0).await.unwrap().code, 0);
    let mut b = [0u8; 1];
    let client_end = tokio::time::timeout(Duration::from_secs(3), data.read(&mut b)).await;
    let peer_end = tokio::time::timeout(Duration::from_secs(3), at_peer.read(&mut b)).await;
    assert!(matches!(client_end, Ok(Ok(0)) | Ok(Err(_))), "the client's data connection outlived its allocation: {client_end:?}");
    assert!(matches!(peer_end, Ok(Ok(0)) | Ok(Err(_))), "the peer's connection outlived the allocation: {peer_end:?}");
}

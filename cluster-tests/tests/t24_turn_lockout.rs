//! The TURN login limiter cannot be turned against the people it protects: spoofed packets
//! (raw sockets, in a network namespace of the test's own) carrying a victim's address and a
//! wrong realm do not lock the victim out, while real failures from one address count across
//! UDP and TCP and across reconnections, and lock only that address out.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use cluster_tests::netns::rerun_in_netns;
use cluster_tests::turn_client::TurnClient;
use cluster_tests::calls::{self, CallSpec, Clients, Target};
use cluster_tests::{fresh_room, free_port, NodeProcess, NodeSpec};
use socket2::{Domain, Protocol, Socket, Type};
use stun_types::attribute::{Nonce, Realm, Username};
use stun_types::message::{IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageWrite, MessageWriteExt, MessageWriteVec};
use turn_types::attribute::RequestedTransport;

async fn node(ip: Ipv4Addr, extra: &[&str]) -> (NodeProcess, SocketAddr) {
    let port = free_port(&[ip]);
    let turn = SocketAddr::from((ip, port));
    let mut spec = NodeSpec::single()
        .set(&format!("turn.listen=[\"{turn}\"]"))
        .set(&format!("turn.relay_ip=\"{ip}\""))
        .set("turn.users=[\"alice:wonderland\"]");
    for e in extra {
        spec = spec.set(e);
    }
    (NodeProcess::start(spec).await.unwrap(), turn)
}

/// An authenticated-looking Allocate with a wrong realm and a made-up nonce.
fn forged_allocate() -> Vec<u8> {
    let mut b = Message::builder_request(turn_types::message::ALLOCATE, MessageWriteVec::new());
    b.add_attribute(&RequestedTransport::new(RequestedTransport::UDP)).unwrap();
    b.add_attribute(&Username::new("alice").unwrap()).unwrap();
    b.add_attribute(&Realm::new("not-this-realm").unwrap()).unwrap();
    b.add_attribute(&Nonce::new("0123456789abcdef0123456789abcdef").unwrap()).unwrap();
    let creds = LongTermKeyCredentials::new("alice".into(), "guess".into(), "not-this-realm".into());
    b.add_message_integrity(&creds.into(), IntegrityAlgorithm::Sha1).unwrap();
    b.add_fingerprint().unwrap();
    b.finish()
}

/// An IPv4/UDP datagram from `src` to `dst`, header and all (the kernel fills the checksums
/// it must; a UDP checksum of 0 means none).
fn datagram(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    let udp_len = 8 + payload.len();
    p.extend_from_slice(&src.port().to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&[(udp_len >> 8) as u8, udp_len as u8, 0, 0]);
    p.extend_from_slice(payload);
    p
}

#[tokio::test]
async fn t24_spoofed_wrong_realm_flood_does_not_lock_out_its_victim() {
    if rerun_in_netns("t24_spoofed_wrong_realm_flood_does_not_lock_out_its_victim") {
        return;
    }
    let server_ip = Ipv4Addr::new(127, 0, 0, 1);
    let victim_ip = Ipv4Addr::new(127, 0, 0, 5);
    let (n, turn) = node(server_ip, &["turn.auth_failures_per_minute=5"]).await;
    let SocketAddr::V4(dst) = turn else { unreachable!() };

    // 2 000 forged requests "from" the victim's address, from many ports. One port is really
    // the victim's: what the node answers there shows what it made of them.
    let witness = tokio::net::UdpSocket::bind((victim_ip, 20_000)).await.unwrap();
    let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)).expect("raw sockets need root");
    raw.set_header_included_v4(true).unwrap();
    let forged = forged_allocate();
    let rss_before = n.rss_kib();
    // A call's signaling goes on meanwhile (the flood is sent from another task).
    let base = n.base();
    let call = tokio::spawn(async move {
        let mut clients = Clients::new(&[Target::new(&base)]);
        calls::call(&mut clients, &CallSpec::default(), &fresh_room("calm"), 0, 0).await
    });
    for i in 0..2000u16 {
        let src = SocketAddrV4::new(victim_ip, 20_000 + i);
        raw.send_to(&datagram(src, dst, &forged), &SocketAddr::V4(dst).into()).unwrap();
    }
    call.await.unwrap().expect("a call during the flood");
    println!("2 000 forged requests: node RSS {rss_before} → {} KiB", n.rss_kib());
    let mut buf = [0u8; 1500];
    let len = tokio::time::timeout(Duration::from_secs(3), witness.recv(&mut buf)).await.expect("the node answered the forged request").unwrap();
    let answer = Message::from_bytes(&buf[..len]).unwrap();
    let code = answer.attribute::<stun_types::attribute::ErrorCode>().unwrap().code();
    assert_eq!(code, 438, "a forged nonce is a stale-nonce challenge, not a counted failure");
    assert!(!n.log().contains("panicked"));

    // The victim logs in at once.
    let mut victim = TurnClient::udp_from(SocketAddr::from((victim_ip, 0)), turn, "alice", "wonderland").await.unwrap();
    let a = victim.allocate().await.unwrap();
    assert_eq!(a.code, 0, "the victim was locked out by forged packets");
}

#[tokio::test]
async fn t24_failures_count_per_address_across_transports_and_reconnections() {
    let ip = Ipv4Addr::new(127, 0, 0, 1);
    let (_n, turn) = node(ip, &["turn.auth_failures_per_minute=4"]).await;
    let mut failures = 0;
    // One failure over UDP, then one per new TCP connection.
    let mut udp = TurnClient::udp(turn, "alice", "wrong").await.unwrap();
    assert_eq!(udp.allocate().await.unwrap().code, 401);
    failures += 1;
    while failures < 4 {
        let mut tcp = TurnClient::tcp(turn, "alice", "wrong").await.unwrap();
        assert_eq!(tcp.allocate().await.unwrap().code, 401);
        failures += 1;
    }
    // A fresh TCP connection from the same address, now with the right password: refused
    // with a final 401 (no nonce to retry with) until the minute is over.
    let mut tcp = TurnClient::tcp(turn, "alice", "wonderland").await.unwrap();
    let locked = tcp.allocate().await.unwrap();
    assert_eq!(locked.code, 401, "reconnecting reset the count");
    assert!(Message::from_bytes(&locked.bytes).unwrap().attribute::<Nonce>().is_err(), "a final answer, not a challenge");
    let mut udp = TurnClient::udp(turn, "alice", "wonderland").await.unwrap();
    assert_eq!(udp.allocate().await.unwrap().code, 401, "switching to UDP reset the count");
    // Another address is not affected.
    let mut other = TurnClient::udp_from("127.0.0.2:0".parse().unwrap(), turn, "alice", "wonderland").await.unwrap();
    assert_eq!(other.allocate().await.unwrap().code, 0);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

//! Bad input gets the protocol's own error and the node keeps serving everyone else: malformed
//! and oversized frames and bodies, ids outside `[A-Za-z0-9_-]{1,64}`, floods of sockets and
//! messages, the room limit. After each test the node is still up and never panicked.

use std::time::Duration;

use cluster_tests::{fresh_room, Http, NodeProcess, NodeSpec, WsClient};

const WAIT: Duration = Duration::from_secs(3);

/// A registered pair that must keep working while others misbehave.
struct Bystanders {
    a: WsClient,
    b: WsClient,
}

impl Bystanders {
    async fn new(n: &NodeProcess) -> Self {
        let r = fresh_room("ok");
        let mut a = WsClient::connect(&n.ws_url()).await.unwrap();
        a.register(&r, "a").await.unwrap();
        let mut b = WsClient::connect(&n.ws_url()).await.unwrap();
        b.register(&r, "b").await.unwrap();
        let mut s = Bystanders { a, b };
        s.check().await;
        s
    }

    async fn check(&mut self) {
        self.a.send_msg("ping").await.unwrap();
        assert_eq!(self.b.expect_msg(WAIT).await.unwrap(), "ping");
        self.b.send_msg("pong").await.unwrap();
        assert_eq!(self.a.expect_msg(WAIT).await.unwrap(), "pong");
    }
}

async fn assert_healthy(n: &mut NodeProcess) {
    assert!(n.is_running(), "node died:\n{}", n.log());
    assert_eq!(Http::new(&n.base()).get("/healthz").await.unwrap().status, 200);
    assert!(!n.log().contains("panicked"), "node panicked:\n{}", n.log());
}

#[tokio::test]
async fn t12_malformed_frames() {
    let mut n = NodeProcess::start(NodeSpec::single()).await.unwrap();
    let mut ok = Bystanders::new(&n).await;
    let cases: &[&[u8]] = &[
        b"",
        b"null",
        b"[]",
        b"{\"cmd\":1}",
        b"{\"cmd\":\"register\",\"roomid\":[],\"clientid\":\"x\"}",
        b"{\"cmd\":\"send\",\"msg\":{\"type\":\"offer\"}}",
        b"\"just a string\"",
        b"{\"cmd\":\"register\",\"roomid\":\"r\",\"clientid\":\"c\"",
    ];
    for raw in cases {
        let mut s = WsClient::connect(&n.ws_url()).await.unwrap();
        s.send_text(&String::from_utf8_lossy(raw)).await.unwrap();
        let e = s.recv(WAIT).await.unwrap();
        assert!(e.error().is_some(), "{:?} → {e:?}", String::from_utf8_lossy(raw));
        s.expect_closed(WAIT).await.unwrap();
    }
    ok.check().await;
    assert_healthy(&mut n).await;
}

#[tokio::test]
async fn t12_oversized_messages() {
    let mut n = NodeProcess::start(NodeSpec::single().set("http.max_message_bytes=4096")).await.unwrap();
    let http = Http::new(&n.base());
    let mut ok = Bystanders::new(&n).await;
    // WebSocket frame over the cap: error frame, then close 1009.
    let mut s = WsClient::connect(&n.ws_url()).await.unwrap();
    s.register(&fresh_room("big"), "x").await.unwrap();
    s.send_msg(&"x".repeat(5000)).await.unwrap();
    let e = s.recv(WAIT).await.unwrap();
    assert!(e.error().is_some_and(|t| t.contains("too large")), "{e:?}");
    assert_eq!(s.expect_closed(WAIT).await.unwrap(), Some(1009));
    // HTTP bodies over the cap: 413 with the protocol's error.
    let r = fresh_room("big");
    let (c1, _, _) = http.join_ok(&r).await.unwrap();
    let big = "y".repeat(5000);
    let reply = http.post(&format!("/message/{r}/{c1}"), big.clone()).await.unwrap();
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["result"], "ERROR");
    let reply = http.collider_post(&r, "b", &big).await.unwrap();
    assert_eq!(reply.status, 413);
    // Exactly at the cap is fine.
    assert_eq!(http.message(&r, &c1, &"z".repeat(4096)).await.unwrap(), "SUCCESS");
    ok.check().await;
    assert_healthy(&mut n).await;
}

#[tokio::test]
async fn t12_bad_ids() {
    let mut n = NodeProcess::start(NodeSpec::single()).await.unwrap();
    let http = Http::new(&n.base());
    let long = "r".repeat(65);
    for path in ["/join/bad.id", &format!("/join/{long}"), "/join/%C3%A9", "/r/bad.id"] {
        let r = if path.starts_with("/r/") { http.get(path).await.unwrap() } else { http.post(path, "").await.unwrap() };
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert!(r.body.contains("[A-Za-z0-9_-]"), "{path}: {}", r.body);
    }
    let r = fresh_room("ids");
    let (c1, _, _) = http.join_ok(&r).await.unwrap();
    assert_eq!(http.post(&format!("/message/{r}/bad!id"), "x").await.unwrap().status, 404);
    assert_eq!(http.post(&format!("/message/{r}/{c1}"), vec![0xff, 0xfe]).await.unwrap().json()["result"], "ERROR");
    let reply = http.collider_post("bad.room", "x", "m").await.unwrap();
    assert_eq!(reply.status, 400);
    assert!(reply.body.starts_with("Invalid room or client id"), "{}", reply.body);
    let mut s = WsClient::connect(&n.ws_url()).await.unwrap();
    s.register("room with spaces", "c").await.unwrap();
    let e = s.recv(WAIT).await.unwrap();
    assert!(e.error().is_some_and(|t| t.starts_with("Invalid register request")), "{e:?}");
    s.expect_closed(WAIT).await.unwrap();
    assert_healthy(&mut n).await;
}

/// More sockets than the node allows: the extra ones are refused with 503, the rest keep working,
/// and closed ones free their slots.
#[tokio::test]
async fn t12_socket_flood() {
    let mut n = NodeProcess::start(NodeSpec::single().set("http.max_sessions=40")).await.unwrap();
    let mut ok = Bystanders::new(&n).await;
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        match WsClient::connect(&n.ws_url()).await {
            Ok(s) => open.push(s),
            Err(e) => {
                assert!(format!("{e:#}").contains("503"), "{e:#}");
                refused += 1;
            }
        }
    }
    assert_eq!(open.len(), 38, "40 slots, 2 taken by the bystanders");
    assert_eq!(refused, 22);
    ok.check().await;
    for s in open.drain(..10) {
        s.close().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..10 {
        open.push(WsClient::connect(&n.ws_url()).await.expect("freed slots are reusable"));
    }
    assert_healthy(&mut n).await;
}

/// A client that never reads its socket while its peer floods it: the node keeps a bounded
/// backlog, then closes that socket (1008) and serves everyone else.
#[tokio::test]
async fn t12_slow_consumer_is_cut_off() {
    let mut n = NodeProcess::start(NodeSpec::single().set("http.session_send_queue=16")).await.unwrap();
    let mut ok = Bystanders::new(&n).await;
    let r = fresh_room("slow");
    let mut sender = WsClient::connect(&n.ws_url()).await.unwrap();
    sender.register(&r, "fast").await.unwrap();
    let mut sleeper = WsClient::connect(&n.ws_url()).await.unwrap();
    sleeper.register(&r, "slow").await.unwrap();
    let chunk = "x".repeat(60_000);
    for _ in 0..400 {
        if sender.send_msg(&chunk).await.is_err() {
            break;
        }
    }
    let mut closed = None;
    for _ in 0..2000 {
        match sleeper.recv(WAIT).await {
            Some(cluster_tests::WsEvent::Close(code)) => {
                closed = code;
                break;
            }
            Some(cluster_tests::WsEvent::Eof) | None => break,
            Some(_) => continue,
        }
    }
    assert_eq!(closed, Some(1008), "the slow socket is closed with policy violation");
    ok.check().await;
    assert_healthy(&mut n).await;
}

#[tokio::test]
async fn t12_room_limit() {
    let mut n = NodeProcess::start(NodeSpec::single().set("rooms.max_rooms=3")).await.unwrap();
    let http = Http::new(&n.base());
    for i in 0..3 {
        http.join_ok(&format!("limit{i}")).await.unwrap();
    }
    assert_eq!(http.join("limit3").await.unwrap()["result"], "ERROR");
    let mut s = WsClient::connect(&n.ws_url()).await.unwrap();
    s.register("limit4", "c").await.unwrap();
    assert_eq!(s.recv(WAIT).await.unwrap().error(), Some("Too many rooms"));
    let reply = http.collider_post("limit5", "c", "x").await.unwrap();
    assert_eq!(reply.status, 500);
    assert!(reply.body.contains("Too many rooms"));
    // Existing rooms keep working.
    let (_, init, _) = http.join_ok("limit0").await.unwrap();
    assert!(!init);
    assert_healthy(&mut n).await;
}

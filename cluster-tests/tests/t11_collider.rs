//! Collider signaling on one node, over real sockets: acceptance rows 17-38 of the protocol
//! notes (§7) and Collider's own black-box tests (§6.1).

use std::time::Duration;

use cluster_tests::faults::SlowSyscalls;
use cluster_tests::ws::stream_across_registration;
use cluster_tests::{fresh_room, Http, NodeProcess, NodeSpec, WsClient};

const WAIT: Duration = Duration::from_secs(3);
const QUIET: Duration = Duration::from_millis(300);

/// A node whose register grace is 1 s, as Collider's tests run it.
async fn node() -> (NodeProcess, Http) {
    let n = NodeProcess::start(NodeSpec::single().set("rooms.register_grace_ms=1000")).await.expect("node starts");
    let http = Http::new(&n.base());
    (n, http)
}

async fn registered(n: &NodeProcess, room: &str, client: &str) -> WsClient {
    let mut ws = WsClient::connect(&n.ws_url()).await.unwrap();
    ws.register(room, client).await.unwrap();
    ws
}

/// Row 17 / §6.1 TestWsForwardServer.
#[tokio::test]
async fn t11_forward_between_sockets() {
    let (n, _) = node().await;
    let r = fresh_room("fw");
    let mut a = registered(&n, &r, "a").await;
    let mut b = registered(&n, &r, "b").await;
    a.send_msg("hello").await.unwrap();
    assert_eq!(b.expect_msg(WAIT).await.unwrap(), "hello");
    b.expect_silence(QUIET).await.unwrap();
    a.expect_silence(QUIET).await.unwrap();
    b.send_msg("back").await.unwrap();
    assert_eq!(a.expect_msg(WAIT).await.unwrap(), "back");
}

/// Row 18 / §6.1 TestWsForwardServerDuplicatedID.
#[tokio::test]
async fn t11_register_twice_on_one_socket() {
    let (n, _) = node().await;
    let r = fresh_room("dup");
    let mut a = registered(&n, &r, "a").await;
    a.register(&r, "a").await.unwrap();
    let e = a.recv(WAIT).await.unwrap();
    assert_eq!(e.error(), Some("Duplicated register request"), "{e:?}");
    assert_eq!(a.expect_closed(WAIT).await.unwrap(), Some(1000));
}

/// Row 19: a second socket for a bound id is refused; the first is unaffected.
#[tokio::test]
async fn t11_duplicated_registration() {
    let (n, http) = node().await;
    let r = fresh_room("dup2");
    let mut first = registered(&n, &r, "a").await;
    // Prove the first registration is applied before the second arrives.
    assert_eq!(http.collider_post(&r, "b", "probe").await.unwrap().status, 200);
    assert_eq!(first.expect_msg(WAIT).await.unwrap(), "probe");
    let mut second = registered(&n, &r, "a").await;
    let e = second.recv(WAIT).await.unwrap();
    assert_eq!(e.error(), Some("Duplicated registration"), "{e:?}");
    second.expect_closed(WAIT).await.unwrap();
    http.collider_post(&r, "b", "still here").await.unwrap();
    assert_eq!(first.expect_msg(WAIT).await.unwrap(), "still here");
}

/// Row 20.
#[tokio::test]
async fn t11_room_capacity() {
    let (n, _) = node().await;
    let r = fresh_room("cap");
    let mut a = registered(&n, &r, "a").await;
    let mut b = registered(&n, &r, "b").await;
    // Collider does not acknowledge register; b's frames are handled in order, so once a has
    // b's message both are registered.
    b.send_msg("sync").await.unwrap();
    assert_eq!(a.expect_msg(WAIT).await.unwrap(), "sync");
    let mut c = registered(&n, &r, "c").await;
    let e = c.recv(WAIT).await.unwrap();
    assert_eq!(e.error(), Some("Max room capacity reached"), "{e:?}");
    c.expect_closed(WAIT).await.unwrap();
}

/// Rows 21-24: bad frames get Collider's error texts.
#[tokio::test]
async fn t11_bad_frames() {
    let (n, _) = node().await;
    let r = fresh_room("bad");
    let mut s = WsClient::connect(&n.ws_url()).await.unwrap();
    s.send_msg("x").await.unwrap();
    assert_eq!(s.recv(WAIT).await.unwrap().error(), Some("Client not registered"));
    s.expect_closed(WAIT).await.unwrap();

    let mut s = WsClient::connect(&n.ws_url()).await.unwrap();
    s.send_text(r#"{"cmd":"register","roomid":"","clientid":"c"}"#).await.unwrap();
    assert_eq!(s.recv(WAIT).await.unwrap().error(), Some("Invalid register request: missing 'clientid' or 'roomid'"));
    s.expect_closed(WAIT).await.unwrap();

    let mut s = WsClient::connect(&n.ws_url()).await.unwrap();
    s.send_text("{this is not json").await.unwrap();
    let e = s.recv(WAIT).await.unwrap();
    assert!(e.error().is_some_and(|t| t.starts_with("websocket.JSON.Receive error")), "{e:?}");
    s.expect_closed(WAIT).await.unwrap();

    let mut s = registered(&n, &r, "a").await;
    s.send_text(r#"{"cmd":"foo"}"#).await.unwrap();
    assert_eq!(s.recv(WAIT).await.unwrap().error(), Some("Invalid message: unexpected 'cmd'"));
    s.expect_silence(QUIET).await.unwrap(); // stays open
    let mut b = registered(&n, &r, "b").await;
    s.send_msg("alive").await.unwrap();
    assert_eq!(b.expect_msg(WAIT).await.unwrap(), "alive");
}

/// Row 25 / §6.1 TestHttpHandlerSend.
#[tokio::test]
async fn t11_http_post_reaches_socket() {
    let (n, http) = node().await;
    let r = fresh_room("post");
    let mut a = registered(&n, &r, "a").await;
    let reply = http.collider_post(&r, "b", "hello!").await.unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, "OK\n"));
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    assert_eq!(a.expect_msg(WAIT).await.unwrap(), "hello!");
}

/// Row 26 / §6.1 TestHttpHandlerSendCached: queued in order, flushed on register.
#[tokio::test]
async fn t11_queued_until_register() {
    let (n, http) = node().await;
    let r = fresh_room("queue");
    for m in ["m1", "m2"] {
        assert_eq!(http.collider_post(&r, "b", m).await.unwrap().body, "OK\n");
    }
    let mut a = registered(&n, &r, "a").await;
    assert_eq!(a.expect_msg(WAIT).await.unwrap(), "m1");
    assert_eq!(a.expect_msg(WAIT).await.unwrap(), "m2");
    a.expect_silence(QUIET).await.unwrap();
}

/// Rows 27-29: HTTP errors are 500 with Go's `text\n` bodies.
#[tokio::test]
async fn t11_http_errors() {
    let (n, http) = node().await;
    let r = fresh_room("err");
    let empty = http.collider_post(&r, "b", "").await.unwrap();
    assert_eq!((empty.status, empty.body.as_str()), (500, "Empty request body\n"));

    let _a = registered(&n, &r, "a").await;
    let _b = registered(&n, &r, "b").await;
    // Wait until both registrations are applied.
    for _ in 0..50 {
        if http.status().await.unwrap()["openws"].as_u64() >= Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let full = http.collider_post(&r, "x", "hi").await.unwrap();
    assert_eq!(full.status, 500);
    assert!(full.body.starts_with("Failed to send the message: Max room capacity reached"), "{}", full.body);

    for path in ["/onlyone", "/a/b/c"] {
        let r = http.post(path, "x").await.unwrap();
        assert_eq!(r.status, 500, "{path}");
        assert!(r.body.starts_with("Invalid path:"), "{path}: {}", r.body);
    }
    let status = http.status().await.unwrap();
    assert!(status["httperrors"].as_u64().unwrap() >= 4);
}

/// Row 30 / §6.1 TestHttpHandlerDeleteConnection: DELETE closes the socket and frees the room.
#[tokio::test]
async fn t11_delete_closes_and_frees() {
    let (n, http) = node().await;
    let r = fresh_room("del");
    let (c1, _, _) = http.join_ok(&r).await.unwrap();
    let mut a = registered(&n, &r, &c1).await;
    http.collider_post(&r, "probe", "p").await.unwrap();
    assert_eq!(a.expect_msg(WAIT).await.unwrap(), "p");
    let del = http.collider_delete(&r, &c1).await.unwrap();
    assert_eq!((del.status, del.body.as_str()), (200, "OK\n"));
    a.expect_closed(WAIT).await.unwrap();
    // The room-server slot is free as well: the next joiner is the initiator... of a room that
    // only holds it (the probe client was never a member).
    let (_, init, _) = http.join_ok(&r).await.unwrap();
    assert!(init, "DELETE also left the room-server room");
    let unknown = http.collider_delete(&r, "nobody").await.unwrap();
    assert_eq!((unknown.status, unknown.body.as_str()), (200, "OK\n"));
}

/// Row 31: the CORS preflight.
#[tokio::test]
async fn t11_options_preflight() {
    let (_n, http) = node().await;
    let r = http.request("OPTIONS", "/R/a", "").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-methods"), Some("POST, DELETE"));
}

/// Row 32: `/status` counters.
#[tokio::test]
async fn t11_status() {
    let (n, http) = node().await;
    let s = http.status().await.unwrap();
    assert!(s["upsec"].is_f64());
    for k in ["openws", "totalws", "wserrors", "httperrors"] {
        assert!(s[k].is_u64(), "{k}: {s}");
    }
    let r = fresh_room("st");
    let mut a = registered(&n, &r, "a").await;
    let _b = registered(&n, &r, "b").await;
    a.send_msg("sync").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = http.status().await.unwrap();
    assert_eq!(s["openws"], 2);
    assert!(s["totalws"].as_u64().unwrap() >= 2);
    let g = http.get("/status").await.unwrap();
    assert_eq!(g.header("access-control-allow-methods"), Some("GET"));
}

/// Row 33 / §6.1 TestRoomCleanedUpAfterTimeout.
#[tokio::test]
async fn t11_unregistered_client_times_out() {
    let (_n, http) = node().await;
    let r = fresh_room("to");
    assert_eq!(http.collider_post(&r, "b", "hi").await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(http.collider_post(&r, "c", "x").await.unwrap().status, 200);
    assert_eq!(http.collider_post(&r, "d", "x").await.unwrap().status, 200, "b was removed after the grace");
}

/// Row 34 / §6.1 TestReregisterClientBeforeTimeout: a re-register within the grace keeps state.
#[tokio::test]
async fn t11_reregister_within_grace() {
    let (n, http) = node().await;
    let r = fresh_room("rr");
    let mut a = registered(&n, &r, "a").await;
    http.collider_post(&r, "b", "p").await.unwrap();
    // Registering has no answer: "p" may have been stored before the socket counted as
    // registered. Once A holds it, nothing of "p" is left to replay after the re-register.
    assert_eq!(a.expect_msg(WAIT).await.unwrap(), "p");
    a.drop_connection();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(http.collider_post(&r, "b", "m").await.unwrap().status, 200);
    let mut again = None;
    for _ in 0..30 {
        let mut ws = registered(&n, &r, "a").await;
        match ws.recv(Duration::from_millis(300)).await {
            Some(e) if e.error() == Some("Duplicated registration") => tokio::time::sleep(Duration::from_millis(100)).await,
            Some(e) => {
                assert_eq!(e.msg(), Some("m"), "{e:?}");
                again = Some(ws);
                break;
            }
            None => panic!("re-registered socket got nothing"),
        }
    }
    let mut ws = again.expect("re-register succeeded");
    tokio::time::sleep(Duration::from_millis(1500)).await; // past the old grace
    http.collider_post(&r, "b", "later").await.unwrap();
    assert_eq!(ws.expect_msg(WAIT).await.unwrap(), "later", "the grace timer was cancelled");
}

/// Row 35 / §6.1 TestDeregisteredClientNotRemovedUntilTimeout: without a re-register the
/// client leaves Collider and the room-server room.
#[tokio::test]
async fn t11_dropped_socket_leaves_after_grace() {
    let (n, http) = node().await;
    let r = fresh_room("gone");
    let (c1, _, _) = http.join_ok(&r).await.unwrap();
    let (c2, _, _) = http.join_ok(&r).await.unwrap();
    let a = registered(&n, &r, &c1).await;
    let mut b = registered(&n, &r, &c2).await;
    http.message(&r, &c1, "hi").await.unwrap();
    assert_eq!(b.expect_msg(WAIT).await.unwrap(), "hi");
    a.drop_connection();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(http.join(&r).await.unwrap()["result"], "FULL", "kept during the grace");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, init, _) = http.join_ok(&r).await.unwrap();
    assert!(!init, "c1 left; c2 remains as initiator and the newcomer is not");
    b.expect_silence(QUIET).await.unwrap(); // the server sent no bye of its own
}

/// Rows 36-37: pretty-printed frames, handshakes with and without Origin.
#[tokio::test]
async fn t11_pretty_frames_and_origin() {
    let (n, _) = node().await;
    let r = fresh_room("ios");
    let mut a = WsClient::connect_with(&n.ws_url(), Some("https://appr.tc")).await.unwrap();
    a.send_text(&format!("{{\n  \"cmd\" : \"register\",\n  \"roomid\" : \"{r}\",\n  \"clientid\" : \"a\"\n}}")).await.unwrap();
    let mut b = WsClient::connect(&n.ws_url()).await.unwrap();
    b.register(&r, "b").await.unwrap();
    b.send_text("{\n  \"cmd\" : \"send\",\n  \"msg\" : \"{\\\"type\\\": \\\"bye\\\"}\"\n}").await.unwrap();
    assert_eq!(a.expect_msg(WAIT).await.unwrap(), "{\"type\": \"bye\"}");
}

/// Row 38: 1024 queued messages, the 1025th refused.
#[tokio::test]
async fn t11_queue_cap() {
    let n = NodeProcess::start(NodeSpec::single()).await.unwrap();
    let http = Http::new(&n.base());
    let r = fresh_room("cap1024");
    for i in 1..=1024 {
        let reply = http.collider_post(&r, "b", &format!("m{i}")).await.unwrap();
        assert_eq!(reply.body, "OK\n", "post {i}");
    }
    let over = http.collider_post(&r, "b", "m1025").await.unwrap();
    assert_eq!(over.status, 500);
    assert!(over.body.starts_with("Failed to send the message: Too many messages queued for the client"), "{}", over.body);
    let mut a = registered(&n, &r, "a").await;
    for i in 1..=1024 {
        assert_eq!(a.expect_msg(WAIT).await.unwrap(), format!("m{i}"));
    }
}

/// The server closes TCP right after the closing handshake (RFC 6455 7.1.1: the client waits for
/// it), registered or not, instead of holding the connection until the client gives up.
#[tokio::test]
async fn t11_tcp_closed_after_closing_handshake() {
    use cluster_tests::lean::{Frame, WsConn};
    let (n, _) = node().await;
    for registered in [false, true] {
        let mut ws = WsConn::connect(&n.base()).await.unwrap();
        if registered {
            let r = fresh_room("tcpclose");
            ws.send_text(format!(r#"{{"cmd":"register","roomid":"{r}","clientid":"a"}}"#).as_bytes()).await.unwrap();
        }
        ws.send_close().await.unwrap();
        let started = std::time::Instant::now();
        // The server's close frame, then the end of the stream.
        let mut saw_close = false;
        let ended = loop {
            match tokio::time::timeout(WAIT, ws.recv()).await.expect("the server closes") {
                Ok(Frame::Close(code)) => {
                    assert_eq!(code, Some(1000));
                    saw_close = true;
                }
                Ok(_) => {}
                Err(_) => break started.elapsed(),
            }
        };
        assert!(saw_close, "no close frame before the end (registered: {registered})");
        // The HTTP server's own linger is a second; a prompt close is a few ms even here.
        assert!(ended < Duration::from_millis(500), "TCP closed {ended:?} after the handshake (registered: {registered})");
    }
}

/// What a client sent just before its close frame reaches the peer even when its `DELETE`
/// follows the server's close reply at once (as Collider: frames read before the close are
/// delivered before the socket is gone). Many sockets at once, where the race showed.
#[tokio::test]
async fn t11_last_message_before_close_survives_delete() {
    use cluster_tests::lean::{Frame, HttpConn, WsConn};
    let (n, _) = node().await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let base = n.base();
        tasks.push(tokio::spawn(async move {
            let mut http = HttpConn::new(&base).unwrap();
            let mut lost = Vec::new();
            for _ in 0..25 {
                let r = fresh_room("lastmsg");
                let mut a = WsConn::connect(&base).await.unwrap();
                let mut b = WsConn::connect(&base).await.unwrap();
                a.send_text(format!(r#"{{"cmd":"register","roomid":"{r}","clientid":"a"}}"#).as_bytes()).await.unwrap();
                b.send_text(format!(r#"{{"cmd":"register","roomid":"{r}","clientid":"b"}}"#).as_bytes()).await.unwrap();
                b.send_text(br#"{"cmd":"send","msg":"hi"}"#).await.unwrap();
                match tokio::time::timeout(WAIT, a.recv()).await {
                    Ok(Ok(Frame::Data(d))) => assert!(String::from_utf8_lossy(&d).contains("hi")),
                    other => panic!("first message: {other:?}"),
                }
                b.send_text(br#"{"cmd":"send","msg":"bye"}"#).await.unwrap();
                b.send_close().await.unwrap();
                while let Ok(Ok(f)) = tokio::time::timeout(WAIT, b.recv()).await {
                    if matches!(f, Frame::Close(_)) {
                        break;
                    }
                }
                assert_eq!(http.request("DELETE", &format!("/{r}/b"), b"").await.unwrap().status, 200);
                match tokio::time::timeout(WAIT, a.recv()).await {
                    Ok(Ok(Frame::Data(d))) if String::from_utf8_lossy(&d).contains("bye") => {}
                    other => lost.push(format!("{r}: {other:?}")),
                }
            }
            lost
        }));
    }
    let mut lost = Vec::new();
    for t in tasks {
        lost.extend(t.await.unwrap());
    }
    assert!(lost.is_empty(), "{} of 200 last messages lost: {:?}", lost.len(), &lost[..lost.len().min(5)]);
}

/// A socket that never registers is closed with 1008 once `http.register_timeout_secs` pass
/// (it would hold a session slot forever, since it answers pings); a registered one stays.
#[tokio::test]
async fn t11_unregistered_socket_is_closed_after_its_deadline() {
    let n = NodeProcess::start(NodeSpec::single().set("http.register_timeout_secs=1")).await.unwrap();
    let mut idle = WsClient::connect(&n.ws_url()).await.unwrap();
    let r = fresh_room("deadline");
    let mut talker = registered(&n, &r, "a").await;
    let start = std::time::Instant::now();
    match idle.recv(Duration::from_secs(5)).await {
        Some(cluster_tests::WsEvent::Close(code)) => assert_eq!(code, Some(1008)),
        other => panic!("expected a 1008 close, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(3), "closed after {:?}", start.elapsed());
    // The registered socket is still served.
    let mut b = registered(&n, &r, "b").await;
    talker.send_msg("still here").await.unwrap();
    assert_eq!(b.expect_msg(WAIT).await.unwrap(), "still here");
}

/// A socket that registers while its peer is sending gets, in order and once each, the messages
/// queued for it before it registered and those sent after. Those before come with its
/// registration (through the room state), those after go straight to it; the second must wait
/// behind the first. The node's system calls are slowed (strace) to widen the window: before the
/// fix this failed on every run.
#[tokio::test]
async fn t11_registering_during_a_stream_keeps_order() {
    let n = NodeProcess::start(NodeSpec::single()).await.expect("node starts");
    let _slow = SlowSyscalls::attach(n.pid().expect("node pid")).await.unwrap();
    stream_across_registration(&n.ws_url(), &n.ws_url(), 200, 600).await.unwrap();
}

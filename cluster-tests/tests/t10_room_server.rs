//! AppRTC room server on one node, over real sockets: acceptance rows 1-16 of the protocol
//! notes (§7), the pages (§6.3 item 24) and the query parameters that change the answer (§1.8).

use std::time::Duration;

use base64::Engine;
use cluster_tests::{fresh_room, Http, NodeProcess, NodeSpec, WsClient};
use hmac::{Hmac, Mac};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(3);

async fn node() -> (NodeProcess, Http) {
    let n = NodeProcess::start(NodeSpec::single()).await.expect("node starts");
    let http = Http::new(&n.base());
    (n, http)
}

fn pc_config(j: &Value) -> Value {
    serde_json::from_str(j["params"]["pc_config"].as_str().expect("pc_config is a string")).expect("pc_config holds JSON")
}

/// Rows 1-3 and §6.3 testJoinAndLeave.
#[tokio::test]
async fn t10_join_join_full() {
    let (_n, http) = node().await;
    let r = fresh_room("r");
    let first = http.join(&r).await.unwrap();
    assert_eq!(first["result"], "SUCCESS");
    let p = &first["params"];
    assert_eq!(p["is_initiator"], "true");
    let c1 = p["client_id"].as_str().unwrap();
    assert!(c1.len() == 8 && c1.bytes().all(|b| b.is_ascii_digit()), "8 digits: {c1}");
    assert_eq!(p["messages"], serde_json::json!([]));
    assert_eq!(p["room_id"], r.as_str());
    assert_eq!(p["error_messages"], serde_json::json!([]));
    assert_eq!(p["warning_messages"], serde_json::json!([]));
    for key in ["wss_url", "wss_post_url", "ice_server_url", "pc_constraints", "media_constraints", "offer_options", "is_loopback", "bypass_join_confirmation", "version_info", "room_link", "ice_server_transports", "include_loopback_js"] {
        assert!(p[key].is_string(), "{key} is a string: {p}");
    }
    assert!(pc_config(&first)["iceServers"].is_array());

    let second = http.join(&r).await.unwrap();
    assert_eq!(second["result"], "SUCCESS");
    assert_eq!(second["params"]["is_initiator"], "false");
    assert_ne!(second["params"]["client_id"], p["client_id"]);

    let third = http.join(&r).await.unwrap();
    assert_eq!(third, serde_json::json!({"result": "FULL", "params": {"messages": []}}));
}

/// Row 4 and §6.3 item 24: the pages.
#[tokio::test]
async fn t10_pages() {
    let (_n, http) = node().await;
    let index = http.get("/").await.unwrap();
    assert_eq!(index.status, 200);
    assert!(!index.body.contains("roomId:"), "the landing page has no room");
    let page = http.get("/r/testRoom").await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page.body.contains("roomId: 'testRoom'"));
    let r = fresh_room("full");
    http.join(&r).await.unwrap();
    http.join(&r).await.unwrap();
    let full = http.get(&format!("/r/{r}")).await.unwrap();
    assert_eq!(full.status, 200);
    assert!(full.body.contains("Sorry, this room is full."), "{}", full.body);
    for asset in ["/js/app.js", "/js/loopback.js", "/css/main.css"] {
        assert_eq!(http.get(asset).await.unwrap().status, 200, "{asset}");
    }
}

/// Rows 5-7 and §6.3 testCallerMessagesForwardedToCallee.
#[tokio::test]
async fn t10_stored_messages_handed_over_once() {
    let (_n, http) = node().await;
    let r = fresh_room("store");
    let (c1, _, _) = http.join_ok(&r).await.unwrap();
    let offer = r#"{"type":"offer","sdp":"x"}"#;
    assert_eq!(http.message(&r, &c1, offer).await.unwrap(), "SUCCESS");
    for m in ["1", "2", "3"] {
        assert_eq!(http.message(&r, &c1, m).await.unwrap(), "SUCCESS");
    }
    let (_c2, init, msgs) = http.join_ok(&r).await.unwrap();
    assert!(!init);
    assert_eq!(msgs, vec![offer, "1", "2", "3"]);
    assert_eq!(http.join(&r).await.unwrap()["result"], "FULL");
    assert_eq!(http.join(&r).await.unwrap()["params"]["messages"], serde_json::json!([]));
}

/// Rows 8-9.
#[tokio::test]
async fn t10_unknown_room_and_client() {
    let (_n, http) = node().await;
    assert_eq!(http.message("NOPE", "123", "x").await.unwrap(), "UNKNOWN_ROOM");
    let r = fresh_room("u");
    http.join_ok(&r).await.unwrap();
    assert_eq!(http.message(&r, "99999999", "x").await.unwrap(), "UNKNOWN_CLIENT");
}

/// Row 10: with two members, `/message` reaches the other member's socket.
#[tokio::test]
async fn t10_message_reaches_registered_peer() {
    let (n, http) = node().await;
    let r = fresh_room("fwd");
    let (c1, _, _) = http.join_ok(&r).await.unwrap();
    let (c2, _, _) = http.join_ok(&r).await.unwrap();
    let mut ws2 = WsClient::connect(&n.ws_url()).await.unwrap();
    ws2.register(&r, &c2).await.unwrap();
    // Registration has no reply; the first delivery proves it.
    let body = r#"{"type":"candidate","label":0,"id":"0","candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host"}"#;
    let mut delivered = false;
    for _ in 0..20 {
        assert_eq!(http.message(&r, &c1, body).await.unwrap(), "SUCCESS");
        if let Some(e) = ws2.recv(Duration::from_millis(200)).await {
            assert_eq!(e.msg(), Some(body), "{e:?}");
            delivered = true;
            break;
        }
    }
    assert!(delivered, "message never reached the registered peer");
    // Every frame carries both keys, Go-style.
    assert_eq!(http.message(&r, &c1, "<&>").await.unwrap(), "SUCCESS");
    match ws2.recv(WAIT).await {
        Some(cluster_tests::WsEvent::Frame { raw, .. }) => assert_eq!(raw, "{\"msg\":\"\\u003c\\u0026\\u003e\",\"error\":\"\"}\n"),
        other => panic!("{other:?}"),
    }
}

/// Rows 11-13: leave hands the initiator over; an empty room is deleted; unknown leave is 200.
#[tokio::test]
async fn t10_leave() {
    let (_n, http) = node().await;
    let r = fresh_room("leave");
    let (c1, _, _) = http.join_ok(&r).await.unwrap();
    let (c2, _, _) = http.join_ok(&r).await.unwrap();
    let leave = http.leave(&r, &c1).await.unwrap();
    assert_eq!((leave.status, leave.body.as_str()), (200, ""));
    let (c3, init, _) = http.join_ok(&r).await.unwrap();
    assert!(!init, "room held c2, who became the initiator");
    http.leave(&r, &c2).await.unwrap();
    http.leave(&r, &c3).await.unwrap();
    let (_, init, _) = http.join_ok(&r).await.unwrap();
    assert!(init, "the room was deleted and recreated");
    let nope = http.leave("NOPE", "1").await.unwrap();
    assert_eq!((nope.status, nope.body.as_str()), (200, ""));
    // AppRTC's old name still works.
    let bye = http.post(&format!("/bye/{r}/12345678"), "").await.unwrap();
    assert_eq!(bye.status, 200);
}

/// Row 14: loopback fills the room.
#[tokio::test]
async fn t10_loopback() {
    let (_n, http) = node().await;
    let r = fresh_room("loop");
    let j = http.post(&format!("/join/{r}?debug=loopback"), "").await.unwrap().json();
    assert_eq!(j["result"], "SUCCESS");
    assert_eq!(j["params"]["is_initiator"], "true");
    assert_eq!(j["params"]["is_loopback"], "true");
    assert!(j["params"]["include_loopback_js"].as_str().unwrap().contains("loopback.js"));
    assert_eq!(http.join(&r).await.unwrap()["result"], "FULL");
}

/// Row 15 and §1.8.
#[tokio::test]
async fn t10_params_and_query() {
    let (n, http) = node().await;
    let p = http.get("/params").await.unwrap().json();
    for key in ["ice_server_url", "wss_url", "wss_post_url", "pc_config"] {
        assert!(p[key].is_string(), "{key}");
    }
    for key in ["client_id", "room_id", "room_link", "is_initiator", "messages"] {
        assert!(p.get(key).is_none(), "{key} must be absent");
    }
    assert_eq!(p["wss_url"], format!("ws://{}/ws", n.spec.http));
    let r = fresh_room("q");
    let j = http
        .post(&format!("/join/{r}?wshpp=sig.example:9443&wstls=true&it=relay&tt=udp&ts=https://ice.example&apikey=K"), "")
        .await
        .unwrap()
        .json();
    let p = &j["params"];
    assert_eq!(p["wss_url"], "wss://sig.example:9443/ws");
    assert_eq!(p["wss_post_url"], "https://sig.example:9443");
    assert_eq!(p["ice_server_url"], "https://ice.example/v1alpha/iceconfig?key=K");
    assert_eq!(p["ice_server_transports"], "udp");
    assert_eq!(pc_config(&j)["iceTransports"], "relay");
    assert!(p["room_link"].as_str().unwrap().contains("/r/"));
    // No User-Agent header is needed (upstream failed with 500 without one).
    let bare = http.get("/params").await.unwrap();
    assert_eq!(bare.status, 200);
}

/// Row 16: ICE configuration with TURN REST credentials (coturn `use-auth-secret`).
#[tokio::test]
async fn t10_iceconfig_credentials() {
    let spec = NodeSpec::single()
        .set("ice.turn_secret=\"s3cr3t\"")
        .set("ice.turn_urls=[\"turn:{host}:3478?transport=udp\",\"turn:{host}:3478?transport=tcp\"]");
    let n = NodeProcess::start(spec).await.unwrap();
    let http = Http::new(&n.base());
    let join = http.join(&fresh_room("ice")).await.unwrap();
    let url = join["params"]["ice_server_url"].as_str().unwrap().to_owned();
    let path = url.strip_prefix(&n.base()).expect("ice_server_url points at this node");
    let r = http.post(path, "").await.unwrap();
    assert_eq!(r.status, 200);
    let servers = r.json()["iceServers"].as_array().unwrap().clone();
    assert!(servers.iter().all(|s| s["urls"].is_array()), "every urls is an array: {servers:?}");
    let turn = servers.iter().find(|s| s["urls"][0].as_str().unwrap().starts_with("turn:")).expect("a TURN entry");
    assert_eq!(turn["urls"][0], "turn:127.0.0.1:3478?transport=udp");
    let user = turn["username"].as_str().unwrap();
    let (ts, _) = user.split_once(':').unwrap();
    let expiry: u64 = ts.parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(expiry > now && expiry <= now + 86_400 + 5, "expiry {expiry} is now + ttl");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"s3cr3t").unwrap();
    mac.update(user.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(turn["credential"], expected);
    assert!(servers.iter().any(|s| s["urls"][0].as_str().unwrap().starts_with("stun:")));
    // The draft REST format answers too.
    let rest = http.get("/turn?service=turn&username=alice").await.unwrap().json();
    assert!(rest["username"].as_str().unwrap().ends_with(":alice"));
    assert_eq!(rest["ttl"], 86_400);
    assert!(rest["uris"].is_array());
    assert_eq!(http.get("/turn?service=stun").await.unwrap().status, 400);
}

/// `/a/` (analytics) answers SUCCESS; wrong methods get 405.
#[tokio::test]
async fn t10_analytics_and_methods() {
    let (_n, http) = node().await;
    assert_eq!(http.post("/a/", "{}").await.unwrap().json()["result"], "SUCCESS");
    assert_eq!(http.get("/join/x").await.unwrap().status, 405);
    assert_eq!(http.get("/message/x/y").await.unwrap().status, 405);
}

/// The room-server API answers any origin (a page whose node died talks to the live nodes
/// cross-origin), with a preflight for JSON bodies; the pages themselves stay same-origin.
#[tokio::test]
async fn t10_api_cross_origin() {
    let (_n, http) = node().await;
    let r = fresh_room("cors");
    let joined = http.post(&format!("/join/{r}"), "").await.unwrap();
    assert_eq!(joined.headers.get("access-control-allow-origin").map(|v| v.to_str().unwrap()), Some("*"));
    let client = serde_json::from_str::<Value>(&joined.body).unwrap()["params"]["client_id"].as_str().unwrap().to_owned();
    for path in [format!("/message/{r}/{client}"), format!("/leave/{r}/{client}")] {
        let reply = http.post(&path, "{\"type\":\"x\"}").await.unwrap();
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.headers.get("access-control-allow-origin").map(|v| v.to_str().unwrap()), Some("*"), "{path}");
    }
    // TURN credentials are for this deployment's pages only: never `*` (t25 covers origins).
    let ice = http.post("/v1alpha/iceconfig", "").await.unwrap();
    assert_eq!(ice.status, 200);
    assert!(ice.headers.get("access-control-allow-origin").is_none(), "no Origin, no grant");
    let pre = http.request("OPTIONS", &format!("/join/{r}"), "").await.unwrap();
    assert_eq!(pre.status, 204);
    assert!(pre.headers.get("access-control-allow-methods").unwrap().to_str().unwrap().contains("POST"));
    assert_eq!(pre.headers.get("access-control-allow-headers").map(|v| v.to_str().unwrap()), Some("content-type"));
    let page = http.get(&format!("/r/{r}")).await.unwrap();
    assert!(page.headers.get("access-control-allow-origin").is_none(), "pages are not for other origins");
}

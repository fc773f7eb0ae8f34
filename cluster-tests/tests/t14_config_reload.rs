//! Configuration reload (SIGHUP and `POST /admin/reload`) with a call in progress: a TURN
//! secret rotation, a limit and the log level change live; what needs a restart is named; a
//! broken file keeps the running configuration. The call's messages never stop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster_tests::turn_client::TurnClient;
use cluster_tests::{free_port, fresh_room, Http, NodeProcess, NodeSpec, WsClient};

const TOKEN: &str = "reload-admin-token";
const WAIT: Duration = Duration::from_secs(5);

/// The node's config file with these TURN secrets, message cap and log filter.
fn config(secret: &str, extra: &[&str], max_message_bytes: usize, filter: &str, queue_cap: usize) -> String {
    let extra: Vec<String> = extra.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "[http]\nmax_message_bytes = {max_message_bytes}\n\n[rooms]\nqueue_cap = {queue_cap}\n\n[ice]\nturn_secret = {secret:?}\n\n\
         [turn]\nextra_secrets = [{}]\n\n[cluster]\nadmin_token = {TOKEN:?}\n\n[log]\nfilter = {filter:?}\n",
        extra.join(", ")
    )
}

/// Waits until the node's log holds `needle` `count` times.
async fn logged(n: &NodeProcess, needle: &str, count: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while n.log().matches(needle).count() < count {
        assert!(tokio::time::Instant::now() < deadline, "no {needle:?} (×{count}) in the log:\n{}", n.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fresh TURN REST credentials from the node.
async fn credentials(http: &Http) -> (String, String) {
    let r = http.get("/turn?service=turn&username=reload").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    (j["username"].as_str().unwrap().to_owned(), j["password"].as_str().unwrap().to_owned())
}

async fn allocates(turn: SocketAddr, (user, pass): &(String, String)) -> u16 {
    TurnClient::udp(turn, user, pass).await.unwrap().allocate().await.unwrap().code
}

/// A call's signaling: `a` sends numbered messages over its socket every 10 ms until `stop`;
/// returns how many were sent and the numbers `b` received (`received` counts them as they come).
fn call(mut a: WsClient, mut b: WsClient, stop: Arc<AtomicBool>, received: Arc<AtomicU32>) -> tokio::task::JoinHandle<(u32, Vec<u32>)> {
    tokio::spawn(async move {
        let mut sent = 0u32;
        let mut got = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            a.send_msg(&sent.to_string()).await.unwrap();
            sent += 1;
            let m = b.expect_msg(WAIT).await.unwrap_or_else(|e| panic!("message {} of the call: {e}", sent - 1));
            got.push(m.parse().unwrap());
            received.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (sent, got)
    })
}

/// Waits until the call has carried three more messages.
async fn flowing(received: &AtomicU32) {
    let from = received.load(Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + WAIT;
    while received.load(Ordering::Relaxed) < from + 3 {
        assert!(tokio::time::Instant::now() < deadline, "the call stopped after {from} messages");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t14_reload_rotates_secrets_and_changes_limits_during_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchboard.toml");
    std::fs::write(&file, config("first-secret", &[], 65_536, "info", 1024)).unwrap();
    let turn_port = free_port(&[std::net::Ipv4Addr::LOCALHOST]);
    let turn: SocketAddr = format!("127.0.0.1:{turn_port}").parse().unwrap();
    let mut spec = NodeSpec::single().set(&format!("turn.listen=[\"{turn}\"]"));
    spec.config = Some(file.clone());
    // `log.filter` decides, not the harness's RUST_LOG.
    spec.env.push(("RUST_LOG".into(), String::new()));
    let n = NodeProcess::start(spec).await.unwrap();
    let http = Http::new(&n.base());

    // The call, exchanging messages through every reload below.
    let room = fresh_room("reload");
    let (c1, _, _) = http.join_ok(&room).await.unwrap();
    let (c2, _, _) = http.join_ok(&room).await.unwrap();
    assert!(!n.log().contains(" joined"), "no debug lines at log.filter = info");
    let mut a = WsClient::connect(&n.ws_url()).await.unwrap();
    a.register(&room, &c1).await.unwrap();
    let mut b = WsClient::connect(&n.ws_url()).await.unwrap();
    b.register(&room, &c2).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU32::new(0));
    let the_call = call(a, b, stop.clone(), received.clone());
    flowing(&received).await;

    let old = credentials(&http).await;
    assert_eq!(allocates(turn, &old).await, 0);
    // A lone member's stored messages, to see the message cap.
    let lone = fresh_room("reload-lone");
    let (c3, _, _) = http.join_ok(&lone).await.unwrap();
    let store = format!("/message/{lone}/{c3}");
    let body = "m".repeat(3000);
    assert_eq!(http.post(&store, body.clone()).await.unwrap().status, 200);

    // 1. SIGHUP: the secret rotates (the old one kept as an extra), a smaller message cap, debug
    //    logging, and a room rule that needs a restart.
    std::fs::write(&file, config("second-secret", &["first-secret"], 2048, "info,switchboard=debug", 512)).unwrap();
    n.sighup();
    logged(&n, "configuration reloaded", 1).await;
    let log = n.log();
    assert!(log.contains("rooms.queue_cap") && log.contains("needs a restart"), "the restart-only change is named:\n{log}");
    let new = credentials(&http).await;
    assert_eq!(allocates(turn, &new).await, 0, "credentials of the new secret");
    assert_eq!(allocates(turn, &old).await, 0, "credentials of the old secret, kept in extra_secrets");
    let r = http.post(&store, body.clone()).await.unwrap();
    assert_eq!(r.status, 413, "the lowered http.max_message_bytes holds: {}", r.body);
    let other = fresh_room("reload-debug");
    http.join_ok(&other).await.unwrap();
    logged(&n, &format!("room={other}"), 1).await;
    flowing(&received).await;

    // 2. The admin API: the old secret dropped. The answer lists what changed.
    std::fs::write(&file, config("second-secret", &[], 2048, "info,switchboard=debug", 512)).unwrap();
    let r = http.admin("POST", "/admin/reload", TOKEN).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(j["applied"], serde_json::json!(["turn.extra_secrets"]), "{j}");
    assert_eq!(j["not_applied"][0]["setting"], "rooms.queue_cap", "{j}");
    assert_eq!(allocates(turn, &old).await, 401, "the dropped secret's credentials are refused");
    assert_eq!(allocates(turn, &new).await, 0);
    assert_eq!(http.admin("POST", "/admin/reload", "wrong").await.unwrap().status, 401);
    flowing(&received).await;

    // 3. Broken files: refused with a clear log line and answer; everything stays as it was.
    std::fs::write(&file, "[http\nmax_message_bytes = ").unwrap();
    n.sighup();
    logged(&n, "configuration reload refused", 1).await;
    assert!(n.log().contains("is not valid TOML"), "{}", n.log());
    std::fs::write(&file, config("second-secret", &[], 1_000_000, "info", 1024).replace("[http]\n", "[http]\nmax_mesage_bytes = 1\n")).unwrap();
    let r = http.admin("POST", "/admin/reload", TOKEN).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("unknown field `max_mesage_bytes`"), "{}", r.body);
    assert_eq!(http.get("/readyz").await.unwrap().status, 200);
    assert_eq!(http.post(&store, body.clone()).await.unwrap().status, 413, "the cap in force stays");
    assert_eq!(allocates(turn, &new).await, 0);
    assert_eq!(allocates(turn, &old).await, 401);
    flowing(&received).await;

    // 4. `switchboard ctl reload`, with the admin token taken from the node's own file.
    std::fs::write(&file, config("second-secret", &[], 4096, "info,switchboard=debug", 512)).unwrap();
    let out = tokio::process::Command::new(cluster_tests::binary())
        .args(["ctl", "--url", &n.base(), "--config"])
        .arg(&file)
        .arg("reload")
        .env_remove("SWITCHBOARD_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}{}", String::from_utf8_lossy(&out.stderr));
    assert!(printed.starts_with("applied: http.max_message_bytes\nnot applied: rooms.queue_cap (needs a restart"), "{printed}");
    assert_eq!(http.post(&store, body.clone()).await.unwrap().status, 200, "3000 bytes fit the new cap");
    flowing(&received).await;

    stop.store(true, Ordering::Relaxed);
    let (sent, got) = the_call.await.unwrap();
    println!("the call exchanged {sent} messages across four reloads and two refused ones");
    assert_eq!(got, (0..sent).collect::<Vec<_>>(), "every message once, in order");
}

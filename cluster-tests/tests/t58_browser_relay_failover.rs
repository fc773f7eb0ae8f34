//! Real browsers relayed by a cluster's TURN servers: pages on nodes 1 and 2 with
//! `iceTransportPolicy: 'relay'` get two nodes' TURN servers from `/v1alpha/iceconfig`; the
//! node whose relay carries the call is killed and video flows again through a live node's
//! relay. Runs in a private network namespace (only `lo`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cluster_tests::browser::{rerun_in_netns, Browser};
use cluster_tests::cluster::{Cluster, ClusterOptions};
use cluster_tests::fresh_room;
use serde_json::Value;

const CONNECT: Duration = Duration::from_secs(40);

/// The node (1-based) whose relay address is the page's selected local candidate.
fn relay_node(stats: &Value) -> u8 {
    assert_eq!(stats["local"], "relay", "relay-only call: {stats}");
    let addr: SocketAddr = stats["localAddress"].as_str().unwrap().parse().unwrap();
    match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.octets()[3],
        other => panic!("relay on {other}"),
    }
}

#[tokio::test]
async fn t58_browser_relay_failover() {
    if rerun_in_netns("t58_browser_relay_failover") {
        return;
    }
    let mut c = Cluster::start(ClusterOptions {
        sets: vec!["cluster.node_down_after_ms=600".into(), "ice.stun_urls=[]".into()], ..Default::default()
    })
    .await
    .unwrap();
    // Every node has reported its TURN server: iceconfig names two nodes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let j = c.http(1).post("/v1alpha/iceconfig", "").await.unwrap().json();
        if j["iceServers"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "iceconfig never named two TURN nodes: {j}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let room = fresh_room("relayfail");
    let a = Browser::launch().await.unwrap();
    a.open(&format!("{}/r/{room}?it=relay", c.base(1))).await.unwrap();
    a.wait_until("window.switchboard.state === 'waiting'", CONNECT).await.unwrap();
    let b = Browser::launch().await.unwrap();
    b.open(&format!("{}/r/{room}?it=relay", c.base(2))).await.unwrap();
    for p in [&a, &b] {
        p.wait_until("window.switchboard.state === 'connected'", CONNECT).await.unwrap();
        let s = p.wait_frames(0, CONNECT).await.unwrap();
        assert_eq!(s["remote"], "relay", "{s}");
    }
    let victim = relay_node(&a.stats().await.unwrap());
    assert!((1..=3).contains(&victim), "relay on node {victim}");

    c.kill(victim as usize);
    let killed = Instant::now();
    for (name, p) in [("A", &a), ("B", &b)] {
        let moved = loop {
            let s = p.stats().await.unwrap();
            if s["local"] == "relay" && s["remote"] == "relay" && relay_node(&s) != victim && p.eval("window.switchboard.state").await.unwrap() == "connected" {
                break s;
            }
            assert!(killed.elapsed() < CONNECT, "page {name} still on node {victim}'s relay: {s}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let frames = moved["framesDecoded"].as_u64().unwrap();
        let s = p.wait_frames(frames, CONNECT).await.unwrap_or_else(|e| panic!("page {name}: {e:#}"));
        eprintln!("page {name}: video through node {}'s relay {:?} after node {victim} was killed", relay_node(&s), killed.elapsed());
    }
    if std::env::var_os("SHOW_PAGE_LOG").is_some() {
        for p in [&a, &b] {
            eprintln!("{}", p.eval("window.switchboard.log.join('\\n')").await.unwrap().as_str().unwrap_or_default());
        }
    }
    a.quit().await;
    b.quit().await;
}

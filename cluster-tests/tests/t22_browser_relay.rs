//! A real browser call relayed by the built-in TURN server: two headless Chromium pages with
//! `iceTransportPolicy: 'relay'` (AppRTC's `?it=relay`) take credentials from
//! `/v1alpha/iceconfig`; the selected candidate pair is relay/relay and video decodes. Runs in
//! a private network namespace (only `lo`).

use std::time::Duration;

use cluster_tests::browser::{rerun_in_netns, Browser};
use cluster_tests::coturn::free_dual_port;
use cluster_tests::{fresh_room, NodeProcess, NodeSpec};

const CONNECT: Duration = Duration::from_secs(40);

#[tokio::test]
async fn t22_browser_call_through_relay() {
    if rerun_in_netns("t22_browser_call_through_relay") {
        return;
    }
    let port = free_dual_port();
    let node = NodeProcess::start(
        NodeSpec::single()
            .set("ice.turn_secret=\"browser-secret\"")
            .set(&format!("turn.listen=[\"127.0.0.1:{port}\"]"))
            .set("ice.stun_urls=[]")
            // The relay addresses of this node are the peers of a relay-only call.
            .set("turn.allow_peers=[\"127.0.0.1/32\"]"),
    )
    .await
    .unwrap();
    let url = format!("{}/r/{}?it=relay", node.base(), fresh_room("relay"));
    let a = Browser::launch().await.unwrap();
    a.open(&url).await.unwrap();
    a.wait_until("window.switchboard.state === 'waiting'", CONNECT).await.unwrap();
    let b = Browser::launch().await.unwrap();
    b.open(&url).await.unwrap();
    for (name, p) in [("A", &a), ("B", &b)] {
        p.wait_until("window.switchboard.state === 'connected'", CONNECT)
            .await
            .unwrap_or_else(|e| panic!("page {name}: {e:#}"));
        let s = p.wait_frames(0, CONNECT).await.unwrap();
        assert_eq!(s["local"], "relay", "page {name} selected a non-relay local candidate: {s}");
        assert_eq!(s["remote"], "relay", "page {name} selected a non-relay remote candidate: {s}");
    }
    let m = cluster_tests::Http::new(&node.base()).get("/metrics").await.unwrap().body;
    assert!(m.contains("switchboard_turn_allocations"), "allocations are reported");
    a.quit().await;
    b.quit().await;
}

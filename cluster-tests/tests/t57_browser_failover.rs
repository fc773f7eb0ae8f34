//! Real browsers on a cluster: page A on node 1, page B on node 2 in a call; node 1 is killed.
//! Page A's signaling socket reconnects to a live node with the same room and client id, the
//! call survives, and signaling works again (an ICE restart goes through). Runs in a private
//! network namespace (only `lo`).

use std::time::{Duration, Instant};

use cluster_tests::browser::{rerun_in_netns, Browser};
use cluster_tests::cluster::{Cluster, ClusterOptions};
use cluster_tests::fresh_room;

const CONNECT: Duration = Duration::from_secs(40);

#[tokio::test]
async fn t57_browser_failover() {
    if rerun_in_netns("t57_browser_failover") {
        return;
    }
    let mut c = Cluster::start(ClusterOptions { sets: vec!["cluster.node_down_after_ms=600".into()], ..Default::default() }).await.unwrap();
    let room = fresh_room("fail");
    let a = Browser::launch().await.unwrap();
    a.open(&format!("{}/r/{room}", c.base(1))).await.unwrap();
    a.wait_until("window.switchboard.state === 'waiting'", CONNECT).await.unwrap();
    let b = Browser::launch().await.unwrap();
    b.open(&format!("{}/r/{room}", c.base(2))).await.unwrap();
    for p in [&a, &b] {
        p.wait_until("window.switchboard.state === 'connected'", CONNECT).await.unwrap();
    }
    a.wait_frames(0, CONNECT).await.unwrap();
    let client = a.eval("window.switchboard.clientId").await.unwrap();
    let nodes = a.eval("window.switchboard.call.nodes").await.unwrap();
    assert_eq!(nodes.as_array().map(|n| n.len()), Some(3), "the page knows every node: {nodes}");

    let killed = Instant::now();
    c.kill(1);
    a.wait_until("window.switchboard.signaling === 'reconnecting'", Duration::from_secs(5)).await.unwrap();
    a.wait_until("window.switchboard.signaling === 'registered' && window.switchboard.call.nodeIndex > 0", Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(a.eval("window.switchboard.clientId").await.unwrap(), client, "same client id");
    // Signaling through the new node: A (the initiator) restarts ICE; its offer goes through a
    // live room server and B answers through its socket on node 2.
    let ufrag = "(window.switchboard.pc.remoteDescription.sdp.match(/a=ice-ufrag:(\\S+)/) || [])[1]";
    let b_before = b.eval(ufrag).await.unwrap();
    let frames = a.stats().await.unwrap()["framesDecoded"].as_u64().unwrap();
    a.eval("window.switchboard.call.restartIce(), true").await.unwrap();
    b.wait_until(&format!("{ufrag} !== {b_before}"), Duration::from_secs(15)).await.expect("B got A's restart offer");
    a.wait_until("window.switchboard.pc.signalingState === 'stable' && window.switchboard.state === 'connected'", CONNECT)
        .await
        .unwrap();
    a.wait_frames(frames, CONNECT).await.expect("video keeps decoding");
    eprintln!("page A signaling again and video decoding {:?} after node 1 was killed", killed.elapsed());
    a.quit().await;
    b.quit().await;
}

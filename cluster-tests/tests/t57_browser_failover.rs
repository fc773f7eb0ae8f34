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

/// A rolling upgrade under a browser call: each node in turn is drained (SIGTERM) and started
/// again while page A (node 1) and page B (node 2) are in a call. Each page's signaling moves
/// to a live node when its node drains; the remote video of both pages keeps decoding, or
/// stalls less than 3 s at each step.
#[tokio::test]
async fn t57_browser_rolling_upgrade() {
    if rerun_in_netns("t57_browser_rolling_upgrade") {
        return;
    }
    let mut c = Cluster::start(ClusterOptions { sets: vec!["cluster.node_down_after_ms=600".into()], ..Default::default() }).await.unwrap();
    let room = fresh_room("upgrade");
    let a = std::sync::Arc::new(Browser::launch().await.unwrap());
    a.open(&format!("{}/r/{room}", c.base(1))).await.unwrap();
    a.wait_until("window.switchboard.state === 'waiting'", CONNECT).await.unwrap();
    let b = std::sync::Arc::new(Browser::launch().await.unwrap());
    b.open(&format!("{}/r/{room}", c.base(2))).await.unwrap();
    for p in [&a, &b] {
        p.wait_until("window.switchboard.state === 'connected'", CONNECT).await.unwrap();
        p.wait_frames(0, CONNECT).await.unwrap();
    }
    // Both pages' decoded-frame counts, every 100 ms, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sample = |p: std::sync::Arc<Browser>| {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen: Vec<(Instant, u64)> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(s) = p.stats().await {
                    seen.push((Instant::now(), s["framesDecoded"].as_u64().unwrap_or(0)));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen
        })
    };
    let (sa, sb) = (sample(a.clone()), sample(b.clone()));
    let mut steps = Vec::new();
    for n in 1..=3 {
        let from = Instant::now();
        c.node(n).sigterm();
        let exit = c.node(n).wait_exit(Duration::from_secs(20)).await;
        assert!(exit.is_some_and(|s| s.success()), "node {n} drained and exited 0: {exit:?}");
        c.restart(n).await.unwrap();
        cluster_tests::chaos::wait_live(&c, n, Duration::from_secs(30)).await.unwrap();
        for p in [&a, &b] {
            p.wait_until("window.switchboard.signaling === 'registered'", Duration::from_secs(15)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        steps.push((n, from, Instant::now()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (seen_a, seen_b) = (sa.await.unwrap(), sb.await.unwrap());
    // The longest time within [from, to] between two samples that saw the frame count grow
    // (samples are ~100 ms apart, so a video that never stops shows about that).
    let stall = |seen: &[(Instant, u64)], from: Instant, to: Instant| {
        let mut longest = Duration::ZERO;
        let mut since = from;
        let mut last = seen.iter().filter(|(t, _)| *t <= from).map(|(_, f)| *f).next_back().unwrap_or(0);
        for (t, f) in seen.iter().filter(|(t, _)| *t > from && *t <= to) {
            longest = longest.max(*t - since);
            if *f > last {
                last = *f;
                since = *t;
            }
        }
        longest.max(to - since)
    };
    eprintln!("{} and {} samples; | step | page A video stall | page B video stall |", seen_a.len(), seen_b.len());
    for (n, from, to) in &steps {
        let (ga, gb) = (stall(&seen_a, *from, *to), stall(&seen_b, *from, *to));
        eprintln!("| node {n} | {ga:.1?} | {gb:.1?} |");
        assert!(ga < Duration::from_secs(3) && gb < Duration::from_secs(3), "node {n}: video stalled {ga:?} / {gb:?}");
    }
    for p in [a, b] {
        if let Ok(p) = std::sync::Arc::try_unwrap(p) {
            p.quit().await;
        }
    }
}

//! Without a majority, a call already set up keeps exchanging messages while the rooms around
//! it time out: two of three nodes are paused, the call's two sockets on the remaining node
//! keep their round trips (p99 added latency under 50 ms; one leg through the node's room registry), while 40 other rooms' sockets close
//! and their proposals (the register grace of a closed socket) wait in vain for a majority.

use std::time::{Duration, Instant};

use cluster_tests::calls::quantile;
use cluster_tests::chaos::fault_options;
use cluster_tests::cluster::Cluster;
use cluster_tests::{fresh_room, Http, WsClient};

/// Round trips A → B (Collider HTTP POST, which goes through the node's room registry, as
/// forwards from other nodes do) → A (B's socket); milliseconds each.
async fn round_trips(http: &Http, room: &str, from: &str, a: &mut WsClient, b: &mut WsClient, n: usize, tag: &str) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let r = http.collider_post(room, from, &format!("{tag}-ping-{i}")).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(b.expect_msg(Duration::from_secs(5)).await.unwrap(), format!("{tag}-ping-{i}"));
        b.send_msg(&format!("{tag}-pong-{i}")).await.unwrap();
        assert_eq!(a.expect_msg(Duration::from_secs(5)).await.unwrap(), format!("{tag}-pong-{i}"));
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out
}

#[tokio::test]
async fn t65_calls_go_on_without_a_majority() {
    let c = Cluster::start(fault_options(&[])).await.unwrap();
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap() as usize;
    // The call and the idle rooms sit on a follower, so the majority is lost twice over: the
    // leader is gone as well.
    let n = (1..=3).find(|n| *n != leader).unwrap();
    let others: Vec<usize> = (1..=3).filter(|m| *m != n).collect();
    let http = Http::new(&c.base(n));
    let room = fresh_room("nomaj");
    let (a, _, _) = http.join_ok(&room).await.unwrap();
    let (b, _, _) = http.join_ok(&room).await.unwrap();
    let mut wa = WsClient::connect(&c.ws_url(n)).await.unwrap();
    let mut wb = WsClient::connect(&c.ws_url(n)).await.unwrap();
    wa.register(&room, &a).await.unwrap();
    wb.register(&room, &b).await.unwrap();
    // Registered when a message gets through.
    wa.send_msg("hello").await.unwrap();
    assert_eq!(wb.expect_msg(Duration::from_secs(5)).await.unwrap(), "hello");
    let mut idle = Vec::new();
    for i in 0..40 {
        let r = fresh_room(&format!("idle{i}"));
        let (id, _, _) = http.join_ok(&r).await.unwrap();
        let mut ws = WsClient::connect(&c.ws_url(n)).await.unwrap();
        ws.register(&r, &id).await.unwrap();
        idle.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut before = round_trips(&http, &room, &a, &mut wa, &mut wb, 200, "before").await;
    for m in &others {
        c.pause(*m).unwrap();
    }
    // The node knows it has no majority: not ready for new work.
    let deadline = Instant::now() + Duration::from_secs(5);
    while http.get("/readyz").await.unwrap().status != 503 {
        assert!(Instant::now() < deadline, "node {n} still ready without a majority");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The idle rooms' sockets close meanwhile: each close proposes an unbind that cannot commit.
    let closer = tokio::spawn(async move {
        for ws in idle {
            ws.close().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut during = round_trips(&http, &room, &a, &mut wa, &mut wb, 200, "during").await;
    closer.await.unwrap();
    assert_eq!(http.get("/readyz").await.unwrap().status, 503, "still no majority");
    for m in &others {
        c.resume(*m).unwrap();
    }
    let (b50, b99) = (quantile(&mut before, 0.5), quantile(&mut before, 0.99));
    let (d50, d99) = (quantile(&mut during, 0.5), quantile(&mut during, 0.99));
    eprintln!("round trip with a majority: p50 {b50:.2} ms, p99 {b99:.2} ms; without: p50 {d50:.2} ms, p99 {d99:.2} ms");
    assert!(d99 < b99 + 50.0, "p99 round trip without a majority {d99:.2} ms vs {b99:.2} ms with one");
    // And the majority back: the closed sockets' graces apply, the call still works.
    c.wait_converged(&[1, 2, 3], Duration::from_secs(30)).await.unwrap();
    round_trips(&http, &room, &a, &mut wa, &mut wb, 10, "after").await;
}

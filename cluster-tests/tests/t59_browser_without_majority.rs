//! A page on a cluster node that has lost its majority (the other two nodes paused): its join
//! and its signaling messages are answered ERROR (or not at all); the page tries again, in
//! order, and once the majority is back it joins, and the message it could not store reaches
//! the next person who joins. Runs in a private network namespace (only `lo`).

use std::time::Duration;

use cluster_tests::browser::{rerun_in_netns, Browser};
use cluster_tests::chaos::fault_options;
use cluster_tests::cluster::Cluster;
use cluster_tests::fresh_room;

const CONNECT: Duration = Duration::from_secs(40);

#[tokio::test]
async fn t59_browser_retries_without_a_majority() {
    if rerun_in_netns("t59_browser_retries_without_a_majority") {
        return;
    }
    let c = Cluster::start(fault_options(&[])).await.unwrap();
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap() as usize;
    let n = (1..=3).find(|m| *m != leader).unwrap();
    let others: Vec<usize> = (1..=3).filter(|m| *m != n).collect();
    let room = fresh_room("nomaj");

    // The join is answered ERROR (no majority): the page keeps trying and joins once it is back.
    for m in &others {
        c.pause(*m).unwrap();
    }
    let a = Browser::launch().await.unwrap();
    a.open(&format!("{}/r/{room}", c.base(n))).await.unwrap();
    a.wait_until("window.switchboard.log.some(function (l) { return l.indexOf('join failed') >= 0; })", Duration::from_secs(20))
        .await
        .expect("the first join failed");
    for m in &others {
        c.resume(*m).unwrap();
    }
    a.wait_until("window.switchboard.state === 'waiting'", CONNECT).await.expect("A joined once the majority was back");

    // A message the initiator makes while the majority is gone is not lost: it is stored once
    // the majority is back, before the next person joins.
    for m in &others {
        c.pause(*m).unwrap();
    }
    a.eval("window.switchboard.call.send({ type: 'probe' }), true").await.unwrap();
    a.wait_until("window.switchboard.log.some(function (l) { return l.indexOf('message answered ERROR') >= 0 || l.indexOf('failed') >= 0; })", Duration::from_secs(20))
        .await
        .expect("the first post of the probe failed");
    for m in &others {
        c.resume(*m).unwrap();
    }
    a.wait_until("window.switchboard.call.outbox.length === 0", Duration::from_secs(30)).await.expect("A's messages went out");
    let b = Browser::launch().await.unwrap();
    b.open(&format!("{}/r/{room}", c.base(leader))).await.unwrap();
    for p in [&a, &b] {
        p.wait_until("window.switchboard.state === 'connected'", CONNECT).await.unwrap();
    }
    b.wait_until("window.switchboard.log.some(function (l) { return l.indexOf('unknown message type probe') >= 0; })", Duration::from_secs(5))
        .await
        .expect("B got the probe A stored while the majority was gone");
    a.quit().await;
    b.quit().await;
}

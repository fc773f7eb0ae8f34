//! Snapshots survive a crash while they are written: a node killed half-way through writing
//! its snapshot file (a test hook leaves the file torn and aborts the process) starts again from
//! the previous good snapshot and the log after it, never from the torn file, and catches up.

use std::time::Duration;

use cluster_tests::cluster::{Cluster, ClusterOptions};
use cluster_tests::{fresh_room, Http};

/// Joins and leaves `rooms` rooms through `node`: two log entries each.
async fn churn(c: &Cluster, node: usize, rooms: usize) {
    let http = Http::new(&c.base(node));
    for _ in 0..rooms {
        let room = fresh_room("snap");
        let (client, _, _) = http.join_ok(&room).await.unwrap();
        http.leave(&room, &client).await.unwrap();
    }
}

#[tokio::test]
async fn t66_torn_snapshot_falls_back() {
    let mut c = Cluster::start(ClusterOptions { sets: vec!["cluster.snapshot_logs=40".into()], ..Default::default() }).await.unwrap();
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap() as usize;
    let victim = (1..=3).find(|n| *n != leader).unwrap();
    churn(&c, leader, 60).await;
    c.wait_converged(&[1, 2, 3], Duration::from_secs(20)).await.unwrap();
    let raft_dir = c.node(victim).data_dir().join("raft");
    assert!(raft_dir.join("snapshot.bin").exists() && raft_dir.join("snapshot.prev.bin").exists(), "two snapshots taken");

    // Restarted with the hook, the victim dies writing its next snapshot.
    c.node(victim).spec.env.push(("SWITCHBOARD_FAILPOINT".into(), "snapshot-torn-write".into()));
    // It may die at once, should a snapshot be due as it replays its log.
    let _ = c.restart(victim).await;
    churn(&c, leader, 50).await;
    assert!(c.node(victim).wait_exit(Duration::from_secs(20)).await.is_some(), "the hook killed the node mid-write");
    let torn = std::fs::metadata(raft_dir.join("snapshot.bin")).unwrap().len();
    let prev = std::fs::metadata(raft_dir.join("snapshot.prev.bin")).unwrap().len();
    assert!(torn < prev, "the current snapshot is torn ({torn} bytes, previous {prev})");

    churn(&c, leader, 10).await;
    c.node(victim).spec.env.clear();
    c.restart(victim).await.unwrap();
    let digest = c.wait_converged(&[1, 2, 3], Duration::from_secs(30)).await.unwrap();
    let log = c.node(victim).log();
    assert!(log.contains("snapshot unusable; trying an older one"), "the torn file was noticed:\n{log}");
    assert!(log.contains("state restored from snapshot"), "started from the previous snapshot:\n{log}");
    eprintln!("victim {victim} restarted from its previous snapshot and converged on {digest}");
    // It serves joins again.
    churn(&c, victim, 3).await;
}

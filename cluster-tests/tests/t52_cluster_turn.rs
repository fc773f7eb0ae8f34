//! TURN across a real three-node cluster: any node hands out the two least-loaded live nodes'
//! TURN servers under one credential that every node accepts; relays on different nodes reach
//! each other (their addresses are private, yet they are the cluster's own); a node that gains
//! allocations moves down the list and a dead node leaves it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cluster_tests::cluster::{Cluster, ClusterOptions};
use cluster_tests::turn_client::TurnClient;
use serde_json::Value;

/// The TURN entries of node `n`'s `/v1alpha/iceconfig`.
async fn turn_sets(c: &Cluster, n: usize) -> Vec<Value> {
    let r = c.http(n).post("/v1alpha/iceconfig", "").await.unwrap();
    assert_eq!(r.status, 200);
    r.json()["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["urls"][0].as_str().is_some_and(|u| u.starts_with("turn")))
        .cloned()
        .collect()
}

/// The host every URI of a TURN entry names (they must agree: one entry, one node).
fn host(set: &Value) -> String {
    let hosts: Vec<&str> =
        set["urls"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().split(':').nth(1).unwrap()).collect();
    assert!(hosts.windows(2).all(|w| w[0] == w[1]), "one entry names one node: {set}");
    hosts[0].to_owned()
}

/// Polls node `n` until its TURN entries name `want` in that order.
async fn wait_placement(c: &Cluster, n: usize, want: &[&str], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let sets = turn_sets(c, n).await;
        let got: Vec<String> = sets.iter().map(host).collect();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "node {n} hands out {got:?}, expected {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn t52_cluster_turn_placement_and_relaying() {
    let mut c = Cluster::start(ClusterOptions { sets: vec!["cluster.node_down_after_ms=600".into()], ..Default::default() }).await.unwrap();
    // No load anywhere: ties go to the lowest id. Every node waits to have applied the others'
    // reports, which also carry the relay addresses each node lets its clients reach.
    for n in 1..=3 {
        wait_placement(&c, n, &["127.0.0.1", "127.0.0.2"], Duration::from_secs(10)).await;
    }
    let sets = turn_sets(&c, 3).await;
    assert_eq!(sets[0]["username"], sets[1]["username"], "one credential for both entries");
    for s in &sets {
        let urls: Vec<&str> = s["urls"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
        assert!(urls.iter().any(|u| u.ends_with("?transport=udp")) && urls.iter().any(|u| u.ends_with("?transport=tcp")), "{urls:?}");
        assert!(urls.iter().all(|u| u.contains(&format!(":{}?", c.turn_addr(1).port()))), "{urls:?}");
    }
    let user = sets[0]["username"].as_str().unwrap().to_owned();
    let pass = sets[0]["credential"].as_str().unwrap().to_owned();

    // Node 3's credential is good on every node; each relays from its own address.
    let mut clients = Vec::new();
    for n in 1..=3 {
        let mut t = TurnClient::udp(c.turn_addr(n), &user, &pass).await.unwrap();
        let a = t.allocate().await.unwrap();
        assert_eq!(a.code, 0, "allocate on node {n} with node 3's credential");
        let relay = a.relayed().unwrap();
        assert_eq!(relay.ip(), c.turn_addr(n).ip(), "node {n} relays from its own address");
        clients.push((t, relay));
    }
    let (mut b, relay_b) = clients.remove(1);
    let (mut a, relay_a) = clients.remove(0);

    // Another node's relay is a peer; its other ports and this host's other addresses are not.
    let http2: SocketAddr = c.base(2).trim_start_matches("http://").parse().unwrap();
    assert_eq!(a.permit(http2).await.unwrap().code, 403, "node 2's HTTP port is no relay");
    assert_eq!(a.permit("127.0.0.9:60000".parse().unwrap()).await.unwrap().code, 403, "not a node");
    assert_eq!(a.bind(0x4000, relay_b).await.unwrap().code, 0, "node 2's relay is a peer of node 1's");
    assert_eq!(b.bind(0x4001, relay_a).await.unwrap().code, 0, "and the other way round");
    a.send_channel(0x4000, b"from node 1's relay").await.unwrap();
    assert_eq!(b.recv_channel(Duration::from_secs(3)).await.unwrap(), (0x4001, b"from node 1's relay".to_vec()));
    b.send_channel(0x4001, b"back from node 2's").await.unwrap();
    assert_eq!(a.recv_channel(Duration::from_secs(3)).await.unwrap(), (0x4000, b"back from node 2's".to_vec()));

    // Three more allocations on node 1 (four there, one on 2 and 3): node 1 goes last.
    let mut more = Vec::new();
    for _ in 0..3 {
        let mut t = TurnClient::udp(c.turn_addr(1), &user, &pass).await.unwrap();
        assert_eq!(t.allocate().await.unwrap().code, 0);
        more.push(t);
    }
    wait_placement(&c, 2, &["127.0.0.2", "127.0.0.3"], Duration::from_secs(10)).await;

    // Node 3 dies: it leaves every node's list.
    c.kill(3);
    let killed = Instant::now();
    wait_placement(&c, 1, &["127.0.0.2", "127.0.0.1"], Duration::from_secs(10)).await;
    eprintln!("node 3 left the TURN placement {:?} after it was killed", killed.elapsed());
    // The survivors still relay to each other.
    a.send_channel(0x4000, b"still here").await.unwrap();
    assert_eq!(b.recv_channel(Duration::from_secs(3)).await.unwrap(), (0x4001, b"still here".to_vec()));
}

//! Budgets an anonymous client cannot get past: the bytes of messages stored for the next
//! joiner (per room, and in all rooms, held by every node of a cluster), and joins and
//! `/message` posts per source address. Each refusal is a clear error, and a legitimate call
//! from elsewhere goes on meanwhile.

use std::net::{IpAddr, Ipv4Addr};

use cluster_tests::calls::{self, CallSpec, Clients, Target};
use cluster_tests::cluster::{Cluster, ClusterOptions};
use cluster_tests::{fresh_room, NodeProcess, NodeSpec};
use serde_json::Value;

async fn post(client: &reqwest::Client, url: impl AsRef<str>, body: Vec<u8>) -> (u16, Value) {
    let r = client.post(url.as_ref()).body(body).timeout(std::time::Duration::from_secs(10)).send().await.unwrap_or_else(|e| panic!("{}: {e}", url.as_ref()));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// One anonymous join, then 60 000-byte messages, through every node: once the room holds its
/// 256 KiB, every further message is `ERROR` and nothing more is kept anywhere, and a call
/// between two other people works meanwhile.
#[tokio::test]
async fn t26_stored_messages_are_refused_past_their_budget() {
    let mut c = Cluster::start(ClusterOptions::default()).await.unwrap();
    let http = reqwest::Client::new();
    let room = fresh_room("hoard");
    let (_, joined) = post(&http, &format!("{}/join/{room}", c.base(1)), Vec::new()).await;
    let client = joined["params"]["client_id"].as_str().unwrap().to_owned();
    let before: Vec<u64> = (1..=3).map(|n| c.nodes[n - 1].rss_kib()).collect();

    let mut stored = 0;
    let mut refused = 0;
    for i in 0..24 {
        let (status, r) = post(&http, &format!("{}/message/{room}/{client}", c.base(1 + i % 3)), vec![b'x'; 60_000]).await;
        assert_eq!(status, 200);
        match r["result"].as_str() {
            Some("SUCCESS") => {
                assert_eq!(refused, 0, "stored again after a refusal");
                stored += 1;
            }
            Some("ERROR") => refused += 1,
            other => panic!("message {i}: {other:?}"),
        }
        if i == 12 {
            let targets: Vec<Target> = (1..=3).map(|n| Target::new(&c.base(n))).collect();
            let mut clients = Clients::new(&targets);
            calls::call(&mut clients, &CallSpec::default(), &fresh_room("bystander"), 0, 2).await.expect("a call during the attack");
        }
    }
    assert_eq!(stored, 4, "4 × 60 000 bytes fit in 256 KiB, a fifth does not");
    assert_eq!(refused, 20);
    let after: Vec<u64> = (1..=3).map(|n| c.nodes[n - 1].rss_kib()).collect();
    println!("stored {stored}, refused {refused}; RSS KiB before {before:?}, after {after:?} (1.4 MB offered)");
    let m = c.http(1).get("/metrics").await.unwrap().body;
    assert!(m.contains("switchboard_errors_total{kind=\"stored_bytes_room\"}"), "the refusals are counted");
    assert!(c.node(1).log().contains("byte budget reached"));
    // The next joiner gets exactly what was stored.
    let (_, second) = post(&http, &format!("{}/join/{room}", c.base(2)), Vec::new()).await;
    assert_eq!(second["params"]["messages"].as_array().unwrap().len(), 4);
    c.wait_converged(&[1, 2, 3], std::time::Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn t26_all_rooms_together_have_a_budget() {
    let n = NodeProcess::start(NodeSpec::single().set("rooms.stored_bytes_total=500000")).await.unwrap();
    let http = reqwest::Client::new();
    let mut results = Vec::new();
    for _ in 0..4 {
        let room = fresh_room("many");
        let (_, joined) = post(&http, &format!("{}/join/{room}", n.base()), Vec::new()).await;
        let client = joined["params"]["client_id"].as_str().unwrap().to_owned();
        for _ in 0..3 {
            let (_, r) = post(&http, &format!("{}/message/{room}/{client}", n.base()), vec![b'y'; 60_000]).await;
            results.push(r["result"].as_str().unwrap().to_owned());
        }
    }
    let ok = results.iter().filter(|r| *r == "SUCCESS").count();
    assert_eq!(ok, 8, "500 000 bytes hold 8 × 60 000: {results:?}");
    assert!(n.log().contains("rooms.stored_bytes_total"));
}

#[tokio::test]
async fn t26_joins_and_messages_are_rate_limited_per_address() {
    let n = NodeProcess::start(
        NodeSpec::single().set("http.joins_per_second_per_ip=10").set("http.messages_per_second_per_ip=20"),
    )
    .await
    .unwrap();
    let from = |ip: [u8; 4]| reqwest::Client::builder().local_address(IpAddr::V4(Ipv4Addr::from(ip))).build().unwrap();
    let (flood, other) = (from([127, 0, 0, 1]), from([127, 0, 0, 2]));
    // 40 joins at once from one address: at most 10 per second get through, the rest 429.
    let joins = futures_util::future::join_all((0..40).map(|_| post(&flood, format!("{}/join/{}", n.base(), fresh_room("flood")), Vec::new()))).await;
    let limited = joins.iter().filter(|(s, _)| *s == 429).count();
    assert!(limited >= 20, "only {limited} of 40 joins were limited");
    assert!(joins.iter().filter(|(s, _)| *s == 429).all(|(_, b)| b["result"] == "ERROR"));
    // Another address joins and talks meanwhile.
    let room = fresh_room("calm");
    let (status, j) = post(&other, &format!("{}/join/{room}", n.base()), Vec::new()).await;
    assert_eq!((status, j["result"].as_str()), (200, Some("SUCCESS")));
    let client = j["params"]["client_id"].as_str().unwrap().to_owned();
    let (status, m) = post(&other, &format!("{}/message/{room}/{client}", n.base()), b"{}".to_vec()).await;
    assert_eq!((status, m["result"].as_str()), (200, Some("SUCCESS")));
    // Messages from the flooding address: limited too.
    let msgs = futures_util::future::join_all((0..60).map(|_| post(&flood, format!("{}/message/{room}/{client}", n.base()), b"{}".to_vec()))).await;
    assert!(msgs.iter().filter(|(s, _)| *s == 429).count() >= 30);
}

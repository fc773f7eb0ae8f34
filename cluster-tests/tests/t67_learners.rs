//! Learners: nodes beyond the three voters join as non-voting members. They serve clients,
//! signaling and TURN like any node and are handed out, placed and failed over like voters;
//! commits wait only for the voters; a learner can be promoted to voter.

use std::time::{Duration, Instant};

use cluster_tests::calls::{self, CallSpec, Clients, Target};
use cluster_tests::cluster::{Cluster, ClusterOptions, ADMIN_TOKEN};
use cluster_tests::fresh_room;
use serde_json::Value;

async fn wait_status(c: &Cluster, n: usize, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Some(s) = c.status(n).await {
            if ok(&s) {
                return s;
            }
            last = s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("node {n}: {what} not seen within 15 s; last status {last}");
}

fn voters(s: &Value) -> Vec<u64> {
    s["members"].as_array().into_iter().flatten().filter(|m| m["voter"] == true).filter_map(|m| m["id"].as_u64()).collect()
}

async fn whole_call(clients: &mut Clients, na: usize, nb: usize) {
    let room = fresh_room("learner");
    if let Err(e) = calls::call(clients, &CallSpec::default(), &room, na, nb).await {
        panic!("call between nodes {} and {}: {e:?}", na + 1, nb + 1);
    }
}

#[tokio::test]
async fn t67_learners_serve_calls_and_can_be_promoted() {
    let mut c = Cluster::start(ClusterOptions { sets: vec!["cluster.node_down_after_ms=600".into()], learners: 2, ..Default::default() })
        .await
        .unwrap();
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap() as usize;
    let s = wait_status(&c, leader, "five members", |s| s["members"].as_array().is_some_and(|m| m.len() == 5)).await;
    assert_eq!(voters(&s), vec![1, 2, 3], "{s}");
    // Learners know the leader, hand out every live node and take TURN allocations.
    for n in [4, 5] {
        let s = wait_status(&c, n, "all five live and placed", |s| {
            s["leader"].as_u64() == Some(leader as u64)
                && s["live"].as_array().is_some_and(|l| l.len() == 5)
                && s["turn_placement"].as_array().is_some_and(|p| p.len() == 5)
        })
        .await;
        assert_eq!(s["state"], "Learner", "{s}");
    }

    // Whole calls: both people on learners, a learner and a voter, either way round.
    let targets: Vec<Target> = (1..=5).map(|n| Target::new(&c.base(n))).collect();
    let mut clients = Clients::new(&targets);
    for (na, nb) in [(3, 4), (4, 0), (1, 3)] {
        whole_call(&mut clients, na, nb).await;
    }

    // Commits do not wait for learners: with both down, calls go on among the voters.
    c.kill(4);
    c.kill(5);
    whole_call(&mut clients, 0, 2).await;
    // A voter down too still leaves a majority of the voters.
    c.kill(3);
    whole_call(&mut clients, 0, 1).await;
    c.restart(3).await.unwrap();
    c.restart(4).await.unwrap();

    // Promotion: node 4 votes from now on.
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap() as usize;
    let r = reqwest::Client::new()
        .post(format!("{}/admin/cluster/nodes/4/promote", c.base(leader)))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "promote: {} {}", r.status(), r.text().await.unwrap_or_default());
    wait_status(&c, leader, "node 4 a voter", |s| voters(s) == vec![1, 2, 3, 4]).await;
    // Promoting a node that is not a member is refused with a reason.
    let r = reqwest::Client::new()
        .post(format!("{}/admin/cluster/nodes/9/promote", c.base(leader)))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("not a member"));
    whole_call(&mut clients, 3, 1).await;
}

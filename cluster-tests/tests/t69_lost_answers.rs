//! A join forwarded to a leader that stops (SIGSTOP) with the request in its socket: the
//! follower's link gives up on the answer, yet the leader applies the join when it runs again.
//! The client must be told what happened: SUCCESS with exactly its own membership, or ERROR and
//! no member left behind (a member no one holds would take one of the room's two places).

use std::time::{Duration, Instant};

use cluster_tests::chaos::fault_options;
use cluster_tests::cluster::{Cluster, ADMIN_TOKEN};
use cluster_tests::{fresh_room, Http};
use serde_json::Value;

/// The members of `room` as node `n` has them.
async fn members(c: &Cluster, n: usize, room: &str) -> Vec<String> {
    let v: Value = reqwest::Client::new()
        .get(format!("{}/admin/rooms?prefix={room}&limit=10", c.base(n)))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["room"] == room || r["id"] == room)
        .flat_map(|r| r["members"].as_array().cloned().unwrap_or_default())
        .map(|m| m.as_str().map(str::to_owned).unwrap_or_else(|| m["client"].as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// Pauses the leader and the other follower, joins through `n` at once (the forward lands in
/// the stopped leader's socket), resumes both after `resume_after`; returns the join's answer
/// and the members every node holds once they agree.
async fn join_across_a_stop(c: &Cluster, n: usize, resume_after: Duration) -> (Value, Vec<String>, String) {
    let others: Vec<usize> = (1..=3).filter(|m| *m != n).collect();
    let room = fresh_room("lost");
    for m in &others {
        c.pause(*m).unwrap();
    }
    let started = Instant::now();
    let http = Http::new(&c.base(n));
    let join = {
        let room = room.clone();
        tokio::spawn(async move { http.join(&room).await })
    };
    tokio::time::sleep(resume_after).await;
    for m in &others {
        c.resume(*m).unwrap();
    }
    let answer = join.await.unwrap().expect("the join is answered");
    eprintln!("join answered after {:?} (resumed after {resume_after:?}): {}", started.elapsed(), answer["result"]);
    c.wait_converged(&[1, 2, 3], Duration::from_secs(20)).await.expect("the nodes agree again");
    let mut seen = Vec::new();
    for m in 1..=3 {
        seen.push(members(c, m, &room).await);
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "the nodes disagree on {room}: {seen:?}");
    (answer, seen.remove(0), room)
}

#[tokio::test]
async fn t69_a_join_whose_answer_was_lost_is_answered_as_it_was_applied() {
    // propose_timeout_ms 3000 (fault options): the follower tries for 3 s, then settles.
    let c = Cluster::start(fault_options(&[])).await.unwrap();
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap() as usize;
    let n = (1..=3).find(|m| *m != leader).unwrap();

    // Back within the follower's timeout: the copy sent again finds the join applied once.
    let (answer, members, room) = join_across_a_stop(&c, n, Duration::from_millis(1_800)).await;
    assert_eq!(answer["result"], "SUCCESS", "{answer}");
    let client = answer["params"]["client_id"].as_str().unwrap().to_owned();
    assert_eq!(members, vec![client], "{room}: one member, the one the client was told it is");

    // Back only after the follower answered: the join waiting in the leader is not applied.
    let (answer, members, room) = join_across_a_stop(&c, n, Duration::from_secs(9)).await;
    assert_ne!(answer["result"], "SUCCESS", "{answer}");
    assert!(members.is_empty(), "{room}: the client was told {} yet has members {members:?}", answer["result"]);

    // The room is usable: two people join it.
    let http = Http::new(&c.base(n));
    http.join_ok(&room).await.unwrap();
    Http::new(&c.base(leader)).join_ok(&room).await.unwrap();
}

//! One fault each, on a real three-node cluster under a load of whole calls (`calls`): pauses
//! of a follower and of the leader longer than the node-down timeout, a symmetric partition of
//! one node, a one-way one, 20 % loss on one node's cluster link, and a slow restart (down past
//! the node-loss grace). Each asserts the rules of `chaos` and that the node is live again
//! (state, links, node list, TURN placement) within `chaos::RECOVERY` of healing.
//!
//! Partitions and loss are nftables rules, so every test runs inside a private network
//! namespace (root, as CI is).

use std::time::Duration;

use cluster_tests::calls::{self, CallSpec, Placement, RoomAudit, RunSpec};
use cluster_tests::chaos::{self, fault_options, Chaos, Fault, NODE_LOSS_GRACE_MS, RECOVERY};
use cluster_tests::cluster::ADMIN_TOKEN;
use cluster_tests::netns::rerun_in_netns;

/// What a fault did beyond the rules every fault is held to.
struct Outcome {
    /// Healing → live again everywhere.
    recovery: Duration,
    /// Raft's term before the fault and once the node is live again.
    terms: (u64, u64),
}

/// Raft's term as the leader every node agrees on reports it (waiting for them to agree).
async fn term(chaos: &Chaos) -> u64 {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Some(leader) = chaos.leader().await {
            if let Some(t) = chaos.cluster.status(leader).await.and_then(|s| s["term"].as_u64()) {
                return t;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the nodes agree on no leader within 10 s");
}

/// Runs calls for `load` while `pick(leader, follower)` is injected 3 s in, then checks every
/// rule.
async fn under_fault(name: &str, load: Duration, pick: impl FnOnce(usize, usize) -> Fault) -> Outcome {
    let mut chaos = Chaos::start(fault_options(&[])).await.expect("cluster starts");
    let prefix = format!("{name}{:x}", rand::random::<u16>());
    let spec = RunSpec {
        call: CallSpec { k: 5, step_timeout: Duration::from_secs(20), placement: Placement::Random, prefix: prefix.clone() },
        concurrency: 6,
        calls: 0,
        duration: load,
        seed: rand::random(),
    };
    let audit = RoomAudit::default();
    let load = tokio::spawn(calls::run(chaos.targets(), spec, chaos.allowed(), audit.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = chaos.leader().await.expect("a leader");
    let fault = pick(leader, chaos.other_than(leader));
    let term_before = term(&chaos).await;
    eprintln!("{name}: injecting {fault:?} (leader {leader})");
    if let Err(e) = chaos.inject(fault).await {
        chaos.heal_all();
        panic!("injecting the fault failed: {e:#}");
    }
    let term_after = term(&chaos).await;
    let records = load.await.expect("load ran");
    let verdict = chaos::judge(&records, &chaos.log);
    let injected = &chaos.log[0];
    eprintln!(
        "{name}: {} calls: {} completed, {} refused, {} excused, {} violations; recovery {:?}; term {term_before} → {term_after}",
        records.len(),
        verdict.completed,
        verdict.refused,
        verdict.excused,
        verdict.violations.len(),
        injected.recovery
    );
    for r in records.iter().filter(|r| r.result.is_err()).take(5) {
        eprintln!("{name}: {} (nodes {}→{}): {}", r.room, r.nodes.0 + 1, r.nodes.1 + 1, r.result.as_ref().err().map(|e| e.to_string()).unwrap_or_default());
    }
    let mut problems = verdict.violations.clone();
    problems.extend(chaos.problems.iter().cloned());
    problems.extend(chaos::check_state(&chaos.cluster, &prefix).await);
    for n in 1..=3 {
        if let Err(e) = audit.check(&chaos.cluster.base(n), ADMIN_TOKEN, &prefix, Duration::from_secs(1)).await {
            problems.push(format!("room audit on node {n}: {e:#}"));
        }
    }
    problems.extend(audit.violations());
    assert!(problems.is_empty(), "{name}: {} problems:\n{}", problems.len(), problems.join("\n"));
    assert!(verdict.completed >= 10, "{name}: too few calls completed to mean anything: {}", verdict.completed);
    Outcome { recovery: injected.recovery.expect("the node is live again"), terms: (term_before, term_after) }
}

#[tokio::test]
async fn t61_pause_follower() {
    if rerun_in_netns("t61_pause_follower") {
        return;
    }
    let r = under_fault("pausef", Duration::from_secs(14), |_, follower| Fault::Pause { node: follower, dur: Duration::from_secs(3) }).await;
    assert!(r.recovery <= RECOVERY, "live again after {:?}", r.recovery);
}

#[tokio::test]
async fn t61_pause_leader() {
    if rerun_in_netns("t61_pause_leader") {
        return;
    }
    let r = under_fault("pausel", Duration::from_secs(14), |leader, _| Fault::Pause { node: leader, dur: Duration::from_secs(3) }).await;
    assert!(r.recovery <= RECOVERY, "live again after {:?}", r.recovery);
}

#[tokio::test]
async fn t62_partition_of_one_node() {
    if rerun_in_netns("t62_partition_of_one_node") {
        return;
    }
    let r = under_fault("isolate", Duration::from_secs(15), |_, follower| Fault::Isolate { node: follower, dur: Duration::from_secs(5) }).await;
    assert!(r.recovery <= RECOVERY, "live again after {:?}", r.recovery);
    // Cut off, the follower cannot win an election, so it must not stand for one: a term raised
    // meanwhile would depose the leader on healing and stall every join for an election.
    assert_eq!(r.terms.0, r.terms.1, "the healed follower deposed the leader (term {} → {})", r.terms.0, r.terms.1);
}

/// The leader cannot reach a follower's cluster port (the follower still reaches the leader):
/// the follower gets no appends, yet is heard, so it is not declared down and its calls go on.
#[tokio::test]
async fn t62_one_way_partition() {
    if rerun_in_netns("t62_one_way_partition") {
        return;
    }
    let r = under_fault("oneway", Duration::from_secs(15), |leader, follower| Fault::OneWay {
        from: leader,
        to: follower,
        dur: Duration::from_secs(5),
    })
    .await;
    assert!(r.recovery <= RECOVERY, "live again after {:?}", r.recovery);
}

#[tokio::test]
async fn t63_loss_on_a_cluster_link() {
    if rerun_in_netns("t63_loss_on_a_cluster_link") {
        return;
    }
    let r = under_fault("loss", Duration::from_secs(18), |_, follower| Fault::Loss {
        node: follower,
        percent: 20,
        dur: Duration::from_secs(10),
    })
    .await;
    assert!(r.recovery <= RECOVERY, "live again after {:?}", r.recovery);
}

/// Down longer than the node-loss grace, then restarted from its data directory: its members
/// were evicted meanwhile (checked while it is down), and it catches up and serves again.
#[tokio::test]
async fn t64_slow_restart() {
    if rerun_in_netns("t64_slow_restart") {
        return;
    }
    let down = Duration::from_millis(NODE_LOSS_GRACE_MS + 2_000);
    let r = under_fault("slow", Duration::from_secs(20), move |_, follower| Fault::Kill { node: follower, down }).await;
    assert!(r.recovery <= RECOVERY, "live again {:?} after it was healthy", r.recovery);
}

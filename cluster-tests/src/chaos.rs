//! Faults injected into a running three-node cluster under a load of whole calls, and the rules
//! that must hold afterwards. The fault tests inject one fault each; the chaos test and
//! `scripts/chaos.sh` run a random schedule of the whole menu from a seed (printed, and given
//! again to replay the same schedule).
//!
//! The rules: no message delivered twice or out of order (a [`CallError::Violation`]); no stored
//! message lost whose `/message` answered SUCCESS; no message lost to a registered peer on a live
//! node (a [`CallError::Lost`] is excused only when a node of the call was killed during it); no
//! room over two members; no member on a dead node past the grace; every node's state digest
//! equal once healed; joins work on every node; every call completes or fails with a clear
//! error, never hangs; a node paused or cut off is live again (node list, TURN placement) within
//! [`RECOVERY`] of healing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::calls::{Allowed, CallError, CallRecord, Target};
use crate::cluster::{Cluster, ClusterOptions, ADMIN_TOKEN};
use crate::faults::{LinkFault, Links};
use crate::Http;

/// A node paused or cut off must be live again everywhere this soon after healing.
pub const RECOVERY: Duration = Duration::from_secs(2);

/// Timing of the clusters faults run against: a lost node's clients keep their place longer
/// than any pause or partition of the menu, and a slow restart outlasts it.
pub const NODE_LOSS_GRACE_MS: u64 = 8_000;

/// One fault of the menu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, restarted from its data directory after `down` (a slow restart when `down`
    /// outlasts the node-loss grace).
    Kill { node: usize, down: Duration },
    /// SIGSTOP for `dur`, then SIGCONT.
    Pause { node: usize, dur: Duration },
    /// The node's cluster links cut both ways for `dur`.
    Isolate { node: usize, dur: Duration },
    /// `from` cannot reach `to`'s cluster port for `dur` (`to` still reaches `from`).
    OneWay { from: usize, to: usize, dur: Duration },
    /// `percent` of the node's cluster-link packets dropped for `dur`.
    Loss { node: usize, percent: u8, dur: Duration },
}

impl Fault {
    /// The node the fault is about.
    pub fn node(&self) -> usize {
        match self {
            Fault::Kill { node, .. } | Fault::Pause { node, .. } | Fault::Isolate { node, .. } | Fault::Loss { node, .. } => *node,
            Fault::OneWay { from, .. } => *from,
        }
    }

    fn kills(&self) -> bool {
        matches!(self, Fault::Kill { .. })
    }
}

/// What happened when a fault was injected.
#[derive(Debug, Clone)]
pub struct Injected {
    pub fault: Fault,
    pub started: Instant,
    pub healed: Instant,
    /// Healing → the node live again on every node (None: not within 10 s).
    pub recovery: Option<Duration>,
}

/// A three-node cluster, the link-fault table, and which nodes are running.
pub struct Chaos {
    pub cluster: Cluster,
    links: Links,
    running: Arc<Vec<AtomicBool>>,
    /// Every fault injected so far.
    pub log: Vec<Injected>,
    /// Problems found while injecting (a lost node's members kept past the grace…).
    pub problems: Vec<String>,
}

/// The `--set`s of a cluster faults run against.
pub fn fault_options(extra: &[String]) -> ClusterOptions {
    let mut sets = vec![
        "cluster.node_down_after_ms=1000".to_owned(),
        format!("cluster.node_loss_grace_ms={NODE_LOSS_GRACE_MS}"),
        "cluster.propose_timeout_ms=3000".to_owned(),
        "http.max_sessions=30000".to_owned(),
    ];
    sets.extend(extra.iter().cloned());
    ClusterOptions { sets, ..Default::default() }
}

impl Chaos {
    /// Starts the cluster. Must run inside a private network namespace (link faults).
    pub async fn start(opts: ClusterOptions) -> Result<Chaos> {
        let cluster = Cluster::start(opts).await?;
        let links = Links::new(cluster.raft_port())?;
        let running = Arc::new((0..3).map(|_| AtomicBool::new(true)).collect());
        Ok(Chaos { cluster, links, running, log: Vec::new(), problems: Vec::new() })
    }

    /// The nodes as call targets.
    pub fn targets(&self) -> Vec<Target> {
        (1..=3).map(|n| Target::new(&self.cluster.base(n))).collect()
    }

    /// The nodes new calls may use: the running ones (0-based).
    pub fn allowed(&self) -> Allowed {
        let running = self.running.clone();
        Arc::new(move || (0..3).filter(|i| running[*i].load(Ordering::Relaxed)).collect())
    }

    /// The current leader (1-based), as the running nodes agree.
    pub async fn leader(&self) -> Option<usize> {
        self.cluster.leader().await.map(|l| l as usize)
    }

    /// A running node other than `not`.
    pub fn other_than(&self, not: usize) -> usize {
        (1..=3).find(|n| *n != not).unwrap_or(1)
    }

    /// Injects `fault`, waits its duration, heals it, and measures how long the node took to
    /// be live again everywhere.
    pub async fn inject(&mut self, fault: Fault) -> Result<()> {
        let started = Instant::now();
        match &fault {
            Fault::Kill { node, down } => {
                self.running[node - 1].store(false, Ordering::Relaxed);
                self.cluster.kill(*node);
                tokio::time::sleep(*down).await;
                if down.as_millis() as u64 > NODE_LOSS_GRACE_MS + 1_000 {
                    self.check_released(*node).await;
                }
                self.cluster.restart(*node).await?;
                self.running[node - 1].store(true, Ordering::Relaxed);
            }
            Fault::Pause { node, dur } => {
                self.cluster.pause(*node)?;
                tokio::time::sleep(*dur).await;
                self.cluster.resume(*node)?;
            }
            Fault::Isolate { node, dur } => {
                let cuts = self.links.isolate(*node, 3)?;
                tokio::time::sleep(*dur).await;
                for c in &cuts {
                    self.links.remove(c)?;
                }
            }
            Fault::OneWay { from, to, dur } => {
                let f = LinkFault::OneWay { from: *from, to: *to };
                self.links.add(f.clone())?;
                tokio::time::sleep(*dur).await;
                self.links.remove(&f)?;
            }
            Fault::Loss { node, percent, dur } => {
                let f = LinkFault::Loss { node: *node, percent: *percent };
                self.links.add(f.clone())?;
                tokio::time::sleep(*dur).await;
                self.links.remove(&f)?;
            }
        }
        let healed = Instant::now();
        print_healed(&fault);
        let recovery = wait_live(&self.cluster, fault.node(), Duration::from_secs(10)).await.ok();
        self.log.push(Injected { fault, started, healed, recovery });
        Ok(())
    }

    /// While `node` is dead and past its grace, no live node may still hold a member on it.
    async fn check_released(&mut self, node: usize) {
        for n in (1..=3).filter(|n| *n != node) {
            if let Some(s) = self.cluster.status(n).await {
                let bindings = s["members"]
                    .as_array()
                    .and_then(|m| m.iter().find(|m| m["id"] == node as u64))
                    .and_then(|m| m["bindings"].as_u64())
                    .unwrap_or(0);
                if bindings > 0 {
                    self.problems.push(format!("node {n} still binds {bindings} sockets to node {node}, dead past its grace"));
                }
            }
        }
    }

    /// Ends every link fault and resumes every node (after a failed test step).
    pub fn heal_all(&mut self) {
        let _ = self.links.heal();
        for n in 1..=3 {
            let _ = self.cluster.resume(n);
        }
    }
}

/// Waits until every running node sees `node` live: up in the state, its link up, in the node
/// list handed to clients and in TURN placement. Returns how long that took.
pub async fn wait_live(cluster: &Cluster, node: usize, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    let url = cluster.base(node);
    while start.elapsed() < within {
        let mut all = true;
        for n in 1..=3 {
            let Some(s) = cluster.status(n).await else {
                all = false;
                continue;
            };
            let member = s["members"].as_array().and_then(|m| m.iter().find(|m| m["id"] == node as u64)).cloned();
            let ok = member.is_some_and(|m| m["up"] == true && m["link_up"] == true)
                && s["live"].as_array().is_some_and(|l| l.iter().any(|u| u.as_str() == Some(url.as_str())))
                && s["turn_placement"].as_array().is_some_and(|p| p.iter().any(|x| x == node as u64));
            all &= ok;
        }
        if all {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("node {node} not live everywhere within {within:?}")
}

/// A random schedule of faults from `seed`: one at a time, with gaps, over `total`.
pub fn schedule(seed: u64, total: Duration) -> Vec<(Duration, Fault)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut at = Duration::from_secs(2);
    let mut out = Vec::new();
    let ms = |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..hi));
    while at < total {
        let node = rng.random_range(1..=3);
        let fault = match rng.random_range(0..6) {
            0 => Fault::Kill { node, down: ms(&mut rng, 500, 3_000) },
            1 => Fault::Kill { node, down: ms(&mut rng, NODE_LOSS_GRACE_MS + 1_500, NODE_LOSS_GRACE_MS + 3_000) },
            2 => Fault::Pause { node, dur: ms(&mut rng, 1_500, 4_000) },
            3 => Fault::Isolate { node, dur: ms(&mut rng, 2_000, 5_000) },
            4 => Fault::OneWay { from: node, to: node % 3 + 1, dur: ms(&mut rng, 2_000, 5_000) },
            _ => Fault::Loss { node, percent: 20, dur: ms(&mut rng, 3_000, 8_000) },
        };
        let length = match &fault {
            Fault::Kill { down, .. } => *down + Duration::from_secs(2),
            Fault::Pause { dur, .. } | Fault::Isolate { dur, .. } | Fault::OneWay { dur, .. } | Fault::Loss { dur, .. } => *dur,
        };
        out.push((at, fault));
        at += length + ms(&mut rng, 1_500, 4_000);
    }
    out
}

/// Sorts call records against the fault log.
#[derive(Debug, Default)]
pub struct Verdict {
    pub completed: usize,
    /// Failed with a clear answer (ERROR, refused connection…) while a fault made that right.
    pub refused: usize,
    /// Lost, with a node of the call killed meanwhile.
    pub excused: usize,
    pub violations: Vec<String>,
}

/// Judges every call: violations always count; a lost message only when no node of the call
/// was killed while it ran.
pub fn judge(records: &[CallRecord], log: &[Injected]) -> Verdict {
    let mut v = Verdict::default();
    for r in records {
        match &r.result {
            Ok(_) => v.completed += 1,
            Err(CallError::Refused(_)) => v.refused += 1,
            Err(CallError::Violation(e)) => v.violations.push(format!("{} (nodes {}→{}): {e}", r.room, r.nodes.0 + 1, r.nodes.1 + 1)),
            Err(CallError::Lost(e)) => {
                let killed = log.iter().any(|i| {
                    i.fault.kills()
                        && [r.nodes.0 + 1, r.nodes.1 + 1].contains(&i.fault.node())
                        && i.started <= r.ended
                        && i.healed + Duration::from_secs(2) >= r.started
                });
                if killed {
                    v.excused += 1;
                } else {
                    v.violations.push(format!("{} (nodes {}→{}): lost: {e}", r.room, r.nodes.0 + 1, r.nodes.1 + 1));
                }
            }
        }
    }
    v
}

/// The rules on the state once every fault is healed: the nodes converge on one digest, joins
/// work on each node, and no room holds more than two members or clients.
pub async fn check_state(cluster: &Cluster, prefix: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = cluster.wait_converged(&[1, 2, 3], Duration::from_secs(30)).await {
        problems.push(format!("{e:#}"));
    }
    for n in 1..=3 {
        let room = crate::fresh_room(&format!("{prefix}-probe{n}"));
        match Http::new(&cluster.base(n)).join_ok(&room).await {
            Ok((client, _, _)) => {
                let _ = Http::new(&cluster.base(n)).leave(&room, &client).await;
            }
            Err(e) => problems.push(format!("join on node {n} failed after healing: {e:#}")),
        }
        let client = reqwest::Client::new();
        let rooms: Option<Value> = match client
            .get(format!("{}/admin/rooms?prefix={prefix}&limit=100000", cluster.base(n)))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
        {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        for room in rooms.as_ref().and_then(|v| v["rooms"].as_array()).into_iter().flatten() {
            let members = room["members"].as_array().map_or(0, Vec::len);
            let clients = room["clients"].as_array().map_or(0, Vec::len);
            if members > 2 || clients > 2 {
                problems.push(format!("node {n}: room over capacity: {room}"));
            }
        }
    }
    problems
}

/// Says when a fault was healed in wall-clock time, to line the schedule up with the nodes' logs
/// (`SWITCHBOARD_TEST_DUMP_LOGS=1` prints them).
fn print_healed(fault: &Fault) {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    eprintln!("healed {fault:?} at unix time {}.{:03}", t.as_secs(), t.subsec_millis());
}

//! The leader's duties: declare members that went silent both ways down, release the bindings of
//! nodes that left the membership, and apply the room timers (register graces, idle rooms) that
//! are due, for every node. It also moves cluster time on at least once a second, so that a new
//! leader continues from a recent time.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_proto::cluster::ClusterCommand;
use switchboard_proto::rooms::{Command, NodeId};
use tracing::warn;

use super::Cluster;

/// How often the leader checks liveness and due timers.
const DUTY_INTERVAL: Duration = Duration::from_millis(100);
/// Cluster time is carried forward by a `Tick` at least this often.
const CLOCK_TICK: Duration = Duration::from_secs(1);

impl Cluster {
    /// The leader's periodic work.
    pub(super) fn leader_duties(self: Arc<Self>) {
        actix::spawn(async move {
            let mut interval = tokio::time::interval(DUTY_INTERVAL);
            let down_after = Duration::from_millis(self.cfg.node_down_after_ms);
            let mut last_tick = Instant::now();
            loop {
                interval.tick().await;
                if !self.is_leader() || self.draining.load(Ordering::Acquire) {
                    continue;
                }
                // Voters and learners alike serve clients.
                let members: BTreeSet<NodeId> = self.raft.metrics().borrow().membership_config.nodes().map(|(id, _)| *id).collect();
                let (up, known): (BTreeSet<NodeId>, BTreeSet<NodeId>) = {
                    let state = self.state.read().unwrap_or_else(|p| p.into_inner());
                    let nodes = state.nodes();
                    (nodes.iter().filter(|(_, s)| s.up).map(|(id, _)| *id).collect(), nodes.keys().copied().collect())
                };
                for &n in members.iter().filter(|n| **n != self.id) {
                    let silent = !self.links.alive(n, down_after);
                    if silent && up.contains(&n) {
                        warn!(node = n, "node is silent; declaring it down");
                        let cmd = ClusterCommand::NodeDown { node: n, now_ms: 0, grace_ms: self.cfg.node_loss_grace_ms };
                        if let Err(e) = self.propose(cmd).await {
                            warn!(error = %e, "cannot declare node {n} down");
                        }
                    }
                }
                for &n in known.difference(&members) {
                    warn!(node = n, "node left the membership; releasing its sockets");
                    let cmd = ClusterCommand::NodeRemoved { node: n, now_ms: 0, grace_ms: self.cfg.node_loss_grace_ms };
                    if let Err(e) = self.propose(cmd).await {
                        warn!(error = %e, "cannot release node {n}");
                    }
                }
                let now = self.cluster_now();
                let due = self.state.read().unwrap_or_else(|p| p.into_inner()).rooms.next_deadline().is_some_and(|d| d <= now);
                if due || last_tick.elapsed() >= CLOCK_TICK {
                    last_tick = Instant::now();
                    if let Err(e) = self.propose(ClusterCommand::Room(Command::Tick { now_ms: now })).await {
                        warn!(error = %e, "tick failed");
                    }
                }
            }
        });
    }
}

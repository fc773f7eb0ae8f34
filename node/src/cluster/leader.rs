//! The leader's duties: declare members whose links went silent down, and apply the room
//! timers (register graces, idle rooms) that are due, for every node.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use switchboard_proto::cluster::ClusterCommand;
use switchboard_proto::rooms::NodeId;
use tracing::warn;

use super::Cluster;
use crate::rooms::now_ms;

/// How often the leader checks liveness and due timers.
const DUTY_INTERVAL: Duration = Duration::from_millis(100);

impl Cluster {
    /// The leader's periodic work: declare silent nodes down, apply due timers.
    pub(super) fn leader_duties(self: Arc<Self>) {
        actix::spawn(async move {
            let mut interval = tokio::time::interval(DUTY_INTERVAL);
            let down_after = Duration::from_millis(self.cfg.node_down_after_ms);
            loop {
                interval.tick().await;
                if !self.is_leader() || self.draining.load(Ordering::Acquire) {
                    continue;
                }
                let voters: Vec<NodeId> = self.raft.metrics().borrow().membership_config.voter_ids().collect();
                for n in voters.into_iter().filter(|n| *n != self.id) {
                    let silent = self.links.health(n).is_none_or(|h| !h.up && h.since.elapsed() >= down_after);
                    let up = self.state.read().unwrap_or_else(|p| p.into_inner()).is_up(n);
                    if silent && up {
                        warn!(node = n, "node is silent; declaring it down");
                        let cmd = ClusterCommand::NodeDown { node: n, now_ms: now_ms(), grace_ms: self.cfg.node_loss_grace_ms };
                        if let Err(e) = self.propose(cmd).await {
                            warn!(error = %e, "cannot declare node {n} down");
                        }
                    }
                }
                let now = now_ms();
                let due = self.state.read().unwrap_or_else(|p| p.into_inner()).rooms.next_deadline().is_some_and(|d| d <= now);
                if due {
                    let cmd = ClusterCommand::Room(switchboard_proto::rooms::Command::Tick { now_ms: now });
                    if let Err(e) = self.propose(cmd).await {
                        warn!(error = %e, "tick failed");
                    }
                }
            }
        });
    }
}

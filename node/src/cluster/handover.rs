//! Leaving the cluster in order: hand Raft leadership to the most caught-up follower before this
//! node drains, then stop Raft.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use switchboard_proto::cluster::Request;
use switchboard_proto::rooms::NodeId;
use tracing::{info, warn};

use super::Cluster;

impl Cluster {
    /// Leaves leadership to another member before this node stops: stop heartbeats, let the most
    /// caught-up follower run an election, wait until someone else leads.
    pub async fn hand_over(&self, within: Duration) {
        self.draining.store(true, Ordering::Release);
        if !self.is_leader() {
            return;
        }
        self.raft.runtime_config().heartbeat(false);
        self.raft.runtime_config().elect(false);
        let m = self.raft.metrics().borrow().clone();
        let mut candidates: Vec<(u64, NodeId)> = m
            .replication
            .iter()
            .flatten()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, matched)| (matched.map(|l| l.index).unwrap_or(0), *id))
            .collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        let deadline = Instant::now() + within;
        'outer: for (_, target) in candidates {
            while Instant::now() < deadline {
                let _ = self.links.call(target, Request::TriggerElect, Duration::from_millis(300)).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
                let now_leader = self.raft.metrics().borrow().current_leader;
                if now_leader.is_some_and(|l| l != self.id) {
                    info!(new_leader = ?now_leader, "leadership handed over");
                    break 'outer;
                }
                if self.links.health(target).is_none_or(|h| !h.up) {
                    continue 'outer;
                }
            }
        }
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            warn!(error = %e, "Raft did not stop cleanly");
        }
    }
}

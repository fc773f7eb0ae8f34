//! The watcher: follows Raft's metrics and the applied state, keeps peer links and gauges in
//! step, re-registers this node's sockets when its bindings were released, and sends again what
//! was forwarded to a node declared down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use actix::Addr;
use openraft::ServerState;
use switchboard_proto::cluster::ClusterCommand;
use switchboard_proto::rooms::{Command, NodeId};
use tracing::{info, warn};

use super::types::PeerInfo;
use super::Cluster;
use crate::rooms::{now_ms, RebindAll, RoomRegistry};

impl Cluster {
    /// Keeps links and metrics in step with Raft's view.
    pub(super) fn watch_metrics(self: Arc<Self>, registry: Addr<RoomRegistry>) {
        let mut rx = self.raft.metrics();
        actix::spawn(async move {
            let mut was_up_here = true;
            let mut leader = None;
            let mut down: BTreeSet<NodeId> = BTreeSet::new();
            loop {
                let m = rx.borrow_and_update().clone();
                if m.current_leader != leader {
                    info!(leader = ?m.current_leader, term = m.current_term, "Raft leader changed");
                    leader = m.current_leader;
                }
                let members: BTreeMap<NodeId, PeerInfo> =
                    m.membership_config.nodes().map(|(id, n)| (*id, n.clone())).collect();
                self.links.set_members(&members);
                metrics::gauge!("switchboard_raft_term").set(m.current_term as f64);
                metrics::gauge!("switchboard_raft_leader").set(m.current_leader.map_or(0.0, |l| l as f64));
                metrics::gauge!("switchboard_raft_is_leader").set(if m.state == ServerState::Leader { 1.0 } else { 0.0 });
                if let Some(age) = m.millis_since_quorum_ack {
                    metrics::gauge!("switchboard_raft_quorum_ack_age_ms").set(age as f64);
                }
                // Declared down while alive (a pause, a partition), or up again after a restart:
                // the bindings of this node were released, so register its live sockets again.
                let (up_here, now_down) = {
                    let state = self.state.read().unwrap_or_else(|p| p.into_inner());
                    let down: BTreeSet<NodeId> =
                        state.nodes().iter().filter(|(id, s)| **id != self.id && !s.up).map(|(id, _)| *id).collect();
                    (state.is_up(self.id), down)
                };
                if up_here != was_up_here {
                    was_up_here = up_here;
                    registry.do_send(RebindAll);
                }
                // A node declared down: what was forwarded to it and never acknowledged goes
                // again through the log, which now queues it for the client's next registration.
                for node in now_down.difference(&down) {
                    self.clone().resend_unacknowledged(*node);
                }
                down = now_down;
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Sends again, through the log, the messages forwarded to `node` that it never
    /// acknowledged (in their order), so that a client whose node died gets them once it
    /// registers elsewhere.
    fn resend_unacknowledged(self: Arc<Self>, node: NodeId) {
        actix::spawn(async move {
            let unacked = self.links.reclaim(node).await;
            if unacked.is_empty() {
                return;
            }
            let count: usize = unacked.iter().map(|u| u.messages.len()).sum();
            info!(node, messages = count, "sending again what the lost node never acknowledged");
            metrics::counter!("switchboard_forwards_resent_total").increment(count as u64);
            for u in unacked {
                for body in u.messages {
                    let cmd = Command::Send { room: u.room.clone(), client: u.from.clone(), body, now_ms: now_ms() };
                    if let Err(e) = self.propose(ClusterCommand::Room(cmd)).await {
                        warn!(node, room = %u.room, error = %e, "could not send a lost node's message again");
                    }
                }
            }
        });
    }
}

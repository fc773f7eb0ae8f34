//! The watcher: follows Raft's metrics and the applied state, keeps peer links and gauges in
//! step, and acts when liveness changes: this node declared down while alive re-registers its
//! sockets and declares itself up again; another node declared down gets back, through the log,
//! what was forwarded to it and never acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::Addr;
use openraft::ServerState;
use switchboard_proto::rooms::NodeId;
use tracing::{info, warn};

use super::types::PeerInfo;
use super::Cluster;
use crate::rooms::{RebindAll, RoomRegistry};

impl Cluster {
    /// Keeps links and metrics in step with Raft's view.
    pub(super) fn watch(self: Arc<Self>, registry: Addr<RoomRegistry>) {
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
                let (up_here, announced, now_down) = {
                    let state = self.state.read().unwrap_or_else(|p| p.into_inner());
                    let down: BTreeSet<NodeId> =
                        state.nodes().iter().filter(|(id, s)| **id != self.id && !s.up).map(|(id, _)| *id).collect();
                    let announced = state.node(self.id).is_some_and(|s| s.incarnation == self.links.incarnation());
                    (state.is_up(self.id), announced, down)
                };
                // Declared down while alive (a pause, a partition): the bindings of this node
                // were released. Register its live sockets again at once (their clients are in
                // their grace), and say it is up again, as the same life.
                if !up_here && was_up_here && announced && !self.draining.load(Ordering::Acquire) {
                    warn!("this node was declared down while alive; registering its sockets again");
                    registry.do_send(RebindAll);
                    self.clone().announce_up(registry.clone(), false);
                }
                was_up_here = up_here;
                for node in now_down.difference(&down) {
                    self.reclaim_from(*node);
                }
                down = now_down;
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

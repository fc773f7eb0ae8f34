//! What the cluster looks like from this node: whether it can change membership now, the live
//! members' public URLs, and the status the admin API and `scripts/cluster-status.sh` show.

use std::sync::atomic::Ordering;

use serde::Serialize;
use switchboard_proto::rooms::NodeId;

use super::Cluster;

/// What `/admin/cluster/status` shows about one member.
#[derive(Debug, Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub public_url: String,
    pub raft_addr: String,
    pub voter: bool,
    /// Live in the replicated state (not declared down).
    pub up: bool,
    /// This node's link to it is up (always true for this node).
    pub link_up: bool,
    pub link_rtt_ms: Option<f64>,
    /// Sockets bound on it.
    pub bindings: usize,
}

/// `/admin/cluster/status`.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub node: NodeId,
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub last_log: Option<u64>,
    pub millis_since_quorum_ack: Option<u64>,
    pub rooms: usize,
    pub digest: String,
    pub draining: bool,
    pub members: Vec<MemberStatus>,
    /// The public URLs this node hands to clients as live (`signaling_nodes`).
    pub live: Vec<String>,
    /// The nodes ICE configuration would place a TURN allocation on, best first.
    pub turn_placement: Vec<NodeId>,
}

impl Cluster {
    /// Whether this node leads right now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Whether membership changes can go through now: this node leads and a majority
    /// acknowledged it recently, or it follows a leader its link reaches.
    pub fn has_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        match m.current_leader {
            Some(l) if l == self.id => {
                m.millis_since_quorum_ack.is_some_and(|age| age <= 2 * self.cfg.election_timeout_ms)
            }
            Some(l) => self.links.health(l).is_some_and(|h| h.up),
            None => false,
        }
    }

    /// Public URLs of every member, up or not: this deployment's own pages.
    pub fn member_public_urls(&self) -> Vec<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.nodes().map(|(_, n)| n.public_url.clone()).collect()
    }

    /// Public URLs of the members that are up, this node first.
    pub fn live_public_urls(&self) -> Vec<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(bool, String)> = m
            .nodes()
            .filter(|(id, _)| **id == self.id || (state.is_up(**id) && self.links.health(**id).is_some_and(|h| h.up)))
            .map(|(id, n)| (*id != self.id, n.public_url.clone()))
            .collect();
        out.sort();
        out.into_iter().map(|(_, u)| u).collect()
    }

    /// The status shown by the admin API and `scripts/cluster-status.sh`.
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        // Read before the state lock is taken below (these take it themselves).
        let live = self.live_public_urls();
        let turn_placement = self.turn_placement().into_iter().map(|(id, _)| id).collect();
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let voters: Vec<NodeId> = m.membership_config.voter_ids().collect();
        let members = m
            .membership_config
            .nodes()
            .map(|(id, n)| {
                let h = self.links.health(*id);
                MemberStatus {
                    id: *id,
                    public_url: n.public_url.clone(),
                    raft_addr: n.raft_addr.clone(),
                    voter: voters.contains(id),
                    up: state.is_up(*id),
                    link_up: *id == self.id || h.is_some_and(|h| h.up),
                    link_rtt_ms: h.and_then(|h| h.rtt).map(|d| d.as_secs_f64() * 1000.0),
                    bindings: state.rooms.bindings_on(*id).len(),
                }
            })
            .collect();
        ClusterStatus {
            node: self.id,
            state: format!("{:?}", m.state),
            leader: m.current_leader,
            term: m.current_term,
            last_applied: m.last_applied.map(|l| l.index),
            last_log: m.last_log_index,
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            rooms: state.rooms.room_count(),
            digest: state.digest(),
            draining: self.draining.load(Ordering::Acquire),
            members,
            live,
            turn_placement,
        }
    }
}

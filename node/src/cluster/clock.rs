//! Cluster time: the leader stamps every command with the time it proposes it, counted from the
//! cluster time it found when it became leader plus its own monotonic clock since. Wall clocks
//! that disagree between nodes therefore move no grace or expiry; only the first leader of a new
//! cluster reads its wall clock, to start from.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use switchboard_proto::cluster::ClusterCommand;
use switchboard_proto::rooms::NodeId;

use super::state_machine::SharedState;
use super::types::Raft;
use crate::rooms::now_ms;

/// What stamps commands with cluster time: this node's clock, and its Raft and state to know
/// whether it leads and what time its state is at. Shared by proposals made here and those a
/// follower forwards, which the leader stamps again when it takes them (a copy that waited in a
/// stopped leader's socket gets the time it was taken, not the time it was sent).
#[derive(Clone)]
pub struct Stamper {
    me: NodeId,
    raft: Raft,
    state: SharedState,
    clock: Arc<ClusterClock>,
}

impl Stamper {
    pub fn new(me: NodeId, raft: Raft, state: SharedState) -> Self {
        Stamper { me, raft, state, clock: Arc::new(ClusterClock::default()) }
    }

    /// Cluster time for a command proposed now.
    pub fn now(&self) -> u64 {
        let leading = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_leader == Some(self.me)).then_some(m.current_term)
        };
        let applied = self.state.read().unwrap_or_else(|p| p.into_inner()).clock_ms();
        self.clock.now(leading, applied)
    }

    /// Sets the time `cmd` carries to cluster time now.
    pub fn stamp(&self, cmd: &mut ClusterCommand) {
        if let Some(t) = cmd.now_ms_mut() {
            *t = self.now();
        }
    }
}

/// This node's view of cluster time while it leads.
#[derive(Default)]
pub struct ClusterClock {
    /// (term it leads in, cluster time then, when).
    base: Mutex<Option<(u64, u64, Instant)>>,
}

impl ClusterClock {
    /// Cluster time now, for a command this node proposes. `leading_term` is the term this node
    /// leads in (if it does); `applied` is the cluster time of its applied state.
    pub fn now(&self, leading_term: Option<u64>, applied: u64) -> u64 {
        let mut base = self.base.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(term) = leading_term {
            if base.is_none_or(|(t, _, _)| t != term) {
                let from = if applied == 0 { now_ms() } else { applied };
                *base = Some((term, from, Instant::now()));
            }
        }
        match *base {
            Some((_, from, at)) => applied.max(from + at.elapsed().as_millis() as u64),
            // Not the leader: the leader stamps the command again.
            None => applied.max(now_ms()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_leader_continues_from_cluster_time() {
        let c = ClusterClock::default();
        let t = c.now(Some(3), 1_000);
        assert!((1_000..1_100).contains(&t), "{t}");
        // Applied time ahead of this leader's count (its predecessor stamped later): never back.
        assert!(c.now(Some(3), 5_000) >= 5_000);
        // A new term starts from the applied time again, whatever the wall clock says.
        let t = c.now(Some(4), 2_000);
        assert!((2_000..2_100).contains(&t), "{t}");
    }
}

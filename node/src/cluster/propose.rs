//! Proposals: a command goes to Raft here if this node leads, otherwise to the leader over a
//! peer link, retried while no leader is known, and given up after `propose_timeout_ms`. The
//! leader stamps it with cluster time. A proposal returns once this node has applied it too, so
//! whatever the caller does next (route a message, answer a client) sees its effect.

use std::time::{Duration, Instant};

use switchboard_proto::cluster::{ClusterCommand, Reply, Request};
use switchboard_proto::rooms::Outcome;
use thiserror::Error;

use super::batcher::WriteError;
use super::{peer_link, Cluster};

/// Why a command could not be applied.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// No majority of the cluster is reachable; membership cannot change now.
    #[error("no quorum: room membership cannot change until a majority of nodes is reachable")]
    NoQuorum,
    /// Raft refused the command.
    #[error("membership change failed: {0}")]
    Failed(String),
}

/// How long a proposal that committed may wait for this node to apply it.
const APPLY_WAIT: Duration = Duration::from_secs(1);

impl Cluster {
    /// Cluster time for a command proposed now (see `clock`).
    pub fn cluster_now(&self) -> u64 {
        let leading = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_leader == Some(self.id)).then_some(m.current_term)
        };
        let applied = self.state.read().unwrap_or_else(|p| p.into_inner()).clock_ms();
        self.clock.now(leading, applied)
    }

    /// Sets the time `cmd` carries to cluster time (the leader's stamp wins).
    pub fn stamp(&self, cmd: &mut ClusterCommand) {
        if let Some(t) = cmd.now_ms_mut() {
            *t = self.cluster_now();
        }
    }

    /// Applies `cmd` through Raft: here if this node leads, otherwise at the leader over a link.
    /// Gives up with [`ProposeError::NoQuorum`] when nothing commits within the timeout.
    pub async fn propose(&self, mut cmd: ClusterCommand) -> Result<Outcome, ProposeError> {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.propose_timeout_ms);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProposeError::NoQuorum);
            }
            self.stamp(&mut cmd);
            // A follower that knows the leader sends it there at once: asking its own Raft
            // first would only hear "forward to the leader" back.
            let known = self.raft.metrics().borrow().current_leader.filter(|l| *l != self.id);
            let leader = match known {
                Some(l) => Some(l),
                None => match tokio::time::timeout(left, self.batcher.write(cmd.clone())).await {
                    Err(_) => return Err(ProposeError::NoQuorum),
                    Ok(Ok((outcome, _))) => return Ok(outcome),
                    Ok(Err(WriteError::NotLeader(leader))) => leader,
                    // Replaced by a new leader's entry before it committed: not applied.
                    Ok(Err(WriteError::Replaced)) => None,
                    Ok(Err(WriteError::Failed(e))) => return Err(ProposeError::Failed(e)),
                },
            };
            match leader {
                Some(l) if l != self.id => {
                    match self.links.call(l, Request::Propose(cmd.clone()), left).await {
                        Ok(Reply::Proposed { outcome, index }) => {
                            self.wait_applied(index).await;
                            return Ok(outcome);
                        }
                        // Not applied: safe to try again once a leader is known.
                        Ok(Reply::NotLeader { .. }) | Err(peer_link::LinkError::Unreachable(_)) => {}
                        Ok(Reply::Failed(e)) => return Err(ProposeError::Failed(e)),
                        Ok(other) => return Err(ProposeError::Failed(format!("unexpected reply {other:?}"))),
                        // Sent but unanswered: it may have been applied; do not apply it twice.
                        Err(e) => return Err(ProposeError::Failed(e.to_string())),
                    }
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits (a little) until this node applied log entry `index`: then its own state shows
    /// what the leader answered. A node that cannot apply (cut off right after the commit)
    /// answers anyway; its state catches up later.
    async fn wait_applied(&self, index: u64) {
        let mut applied = self.applied.clone();
        let _ = tokio::time::timeout(APPLY_WAIT, applied.wait_for(|a| *a >= index)).await;
    }
}

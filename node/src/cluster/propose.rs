//! Proposals: a command goes to Raft here if this node leads, otherwise to the leader over a
//! peer link, retried while no leader is known, and given up after `propose_timeout_ms`.

use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use switchboard_proto::cluster::{ClusterCommand, Reply, Request};
use switchboard_proto::rooms::Outcome;
use thiserror::Error;

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

impl Cluster {
    /// Applies `cmd` through Raft: here if this node leads, otherwise at the leader over a link.
    /// Gives up with [`ProposeError::NoQuorum`] when nothing commits within the timeout.
    pub async fn propose(&self, cmd: ClusterCommand) -> Result<Outcome, ProposeError> {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.propose_timeout_ms);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProposeError::NoQuorum);
            }
            let leader = match tokio::time::timeout(left, self.raft.client_write(cmd.clone())).await {
                Err(_) => return Err(ProposeError::NoQuorum),
                Ok(Ok(r)) => return Ok(r.data),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => f.leader_id,
                Ok(Err(e)) => return Err(ProposeError::Failed(e.to_string())),
            };
            match leader {
                Some(l) if l != self.id => {
                    match self.links.call(l, Request::Propose(cmd.clone()), left).await {
                        Ok(Reply::Proposed(o)) => return Ok(o),
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
}

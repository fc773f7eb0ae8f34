//! Proposals: a command goes to Raft here if this node leads, otherwise to the leader over a
//! peer link, retried while no leader is known, and given up after `propose_timeout_ms`. The
//! leader stamps it with cluster time. A proposal returns once this node has applied it too, so
//! whatever the caller does next (route a message, answer a client) sees its effect.

use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use switchboard_proto::cluster::{ClusterCommand, ProposalId, Reply, Request, Settled};
use switchboard_proto::rooms::Outcome;
use thiserror::Error;

use tracing::{debug, warn};

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
        self.stamper.now()
    }

    /// Sets the time `cmd` carries to cluster time (the leader stamps it again).
    pub fn stamp(&self, cmd: &mut ClusterCommand) {
        self.stamper.stamp(cmd);
    }

    /// Applies `cmd` through Raft: here if this node leads, otherwise at the leader over a link.
    /// Gives up with [`ProposeError::NoQuorum`] when nothing commits within the timeout.
    ///
    /// A forward whose answer is lost may have been applied: it is sent again as the same
    /// once-only proposal ([`ClusterCommand::Once`]) until the timeout, and if no answer came
    /// by then, this node's own state says whether it was applied once cluster time has passed
    /// the proposal's expiry. So a client is never told ERROR for a join that happened (a
    /// member no one holds would take a place in the room) or a message that was stored.
    pub async fn propose(&self, mut cmd: ClusterCommand) -> Result<Outcome, ProposeError> {
        let timeout = Duration::from_millis(self.cfg.propose_timeout_ms);
        let deadline = Instant::now() + timeout;
        let id = ProposalId { node: self.id, seq: self.proposal_seq.fetch_add(1, Ordering::Relaxed) };
        let expires_ms = self.cluster_now() + self.cfg.propose_timeout_ms;
        // Kept past expiry for as long as this node may take to settle it (below).
        let keep_until_ms = expires_ms + 2 * self.cfg.propose_timeout_ms;
        let mut unanswered = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return if unanswered { self.settle(id, expires_ms, timeout).await } else { Err(ProposeError::NoQuorum) };
            }
            self.stamp(&mut cmd);
            // Forwarded, and written here once a forward went unanswered, the command goes as a
            // once-only proposal; a first write to this node's own Raft is answered for sure.
            let once = || ClusterCommand::Once { id, expires_ms, keep_until_ms, cmd: Box::new(cmd.clone()) };
            // A follower that knows the leader sends it there at once: asking its own Raft
            // first would only hear "forward to the leader" back.
            let known = self.raft.metrics().borrow().current_leader.filter(|l| *l != self.id);
            let leader = match known {
                Some(l) => Some(l),
                None => {
                    let write = if unanswered { once() } else { cmd.clone() };
                    match tokio::time::timeout(left, self.batcher.write(write)).await {
                        Err(_) if unanswered => None,
                        Err(_) => return Err(ProposeError::NoQuorum),
                        Ok(Ok((Outcome::Expired, _))) => return Err(ProposeError::NoQuorum),
                        Ok(Ok((outcome, _))) => return Ok(outcome),
                        Ok(Err(WriteError::NotLeader(leader))) => leader,
                        // Replaced by a new leader's entry before it committed: not applied.
                        Ok(Err(WriteError::Replaced)) => None,
                        Ok(Err(WriteError::Failed(e))) => return Err(ProposeError::Failed(e)),
                    }
                }
            };
            match leader {
                Some(l) if l != self.id => match self.links.call(l, Request::Propose(once()), left).await {
                    Ok(Reply::Proposed { outcome: Outcome::Expired, .. }) => return Err(ProposeError::NoQuorum),
                    Ok(Reply::Proposed { outcome, index }) => {
                        self.wait_applied(index).await;
                        return Ok(outcome);
                    }
                    // Not applied: safe to try again once a leader is known.
                    Ok(Reply::NotLeader { .. }) | Err(peer_link::LinkError::Unreachable(_)) => {}
                    Ok(other @ (Reply::Raft(_) | Reply::Done)) => {
                        return Err(ProposeError::Failed(format!("unexpected reply {other:?}")));
                    }
                    // Sent but unanswered, or the leader gave up waiting for its commit: it may
                    // have been applied, or be yet. Again under the same id, which the state
                    // machine applies once at most.
                    Ok(Reply::Failed(e)) => unanswered = self.unanswered(unanswered, id, &e),
                    Err(e) => unanswered = self.unanswered(unanswered, id, &e.to_string()),
                },
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Notes that proposal `id` went unanswered (`why`), logging the first time.
    fn unanswered(&self, before: bool, id: ProposalId, why: &str) -> bool {
        if !before {
            debug!(error = why, ?id, "a forwarded proposal went unanswered; sending it again as the same proposal");
        }
        true
    }

    /// The outcome of once-only proposal `id` that no answer told: this node's state knows it
    /// once cluster time there has passed `expires_ms` (waited for up to `within`).
    async fn settle(&self, id: ProposalId, expires_ms: u64, within: Duration) -> Result<Outcome, ProposeError> {
        let mut applied = self.applied.clone();
        let until = Instant::now() + within;
        loop {
            let known = match self.state.read().unwrap_or_else(|p| p.into_inner()).settled(id, expires_ms) {
                Settled::Applied(o) => Some(Some(o.clone())),
                Settled::Never => Some(None),
                Settled::NotYet => None,
            };
            match known {
                Some(Some(outcome)) => {
                    debug!(?id, "an unanswered proposal was applied");
                    return Ok(outcome);
                }
                Some(None) => return Err(ProposeError::NoQuorum),
                None => {}
            }
            let left = until.saturating_duration_since(Instant::now());
            if !matches!(tokio::time::timeout(left, applied.changed()).await, Ok(Ok(()))) {
                warn!(?id, "a forwarded proposal went unanswered and this node cannot yet tell whether it was applied");
                return Err(ProposeError::Failed("the leader did not answer; the change may still be applied".into()));
            }
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

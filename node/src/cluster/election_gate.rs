//! The election gate: this node stands for election only while its links reach a majority of the
//! voters. openraft 0.9 has no pre-vote, so a node cut off from the others would raise its term
//! on every timeout and, once healed, depose the leader the rest of the cluster kept working under.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::Cluster;

/// How often link health is looked at; well under an election timeout.
const CHECK_INTERVAL: Duration = Duration::from_millis(25);

impl Cluster {
    /// Voters this node heard within `window` on its links (itself included) and the voters
    /// there are.
    fn reachable_voters(&self, window: Duration) -> (usize, usize) {
        let voters: Vec<_> = self.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        let reached = voters
            .iter()
            .filter(|v| **v == self.id || self.links.health(**v).is_some_and(|h| h.up && h.heard.elapsed() < window))
            .count();
        (reached, voters.len())
    }

    /// Closes elections while a majority is out of reach and opens them again a few election
    /// timeouts after it is back (at once when no leader is known), so a leader that is still
    /// there is heard before this node's stale timer fires.
    pub(super) fn gate_elections(self: Arc<Self>) {
        let settle = Duration::from_millis(self.cfg.election_timeout_ms * 4);
        // The longest election timeout: openraft waits at least this plus its leader lease
        // after the leader was last heard, so a cut is seen here before the first election.
        let window = Duration::from_millis(self.cfg.election_timeout_ms * 2);
        actix::spawn(async move {
            let mut interval = tokio::time::interval(CHECK_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut open = true;
            let mut majority_since: Option<Instant> = Some(Instant::now());
            loop {
                interval.tick().await;
                if self.draining.load(Ordering::Acquire) {
                    // Handing over decides elections itself.
                    continue;
                }
                let (reached, voters) = self.reachable_voters(window);
                if voters == 0 {
                    // No membership yet (a node waiting to be added): nothing to stand for.
                    continue;
                }
                let majority = reached * 2 > voters;
                if !majority {
                    majority_since = None;
                    if open {
                        open = false;
                        self.raft.runtime_config().elect(false);
                        info!(reached, voters, "a majority of voters is out of reach; not standing for election");
                    }
                    continue;
                }
                let since = *majority_since.get_or_insert_with(Instant::now);
                let leaderless = self.raft.metrics().borrow().current_leader.is_none();
                if !open && (leaderless || since.elapsed() >= settle) {
                    open = true;
                    self.raft.runtime_config().elect(true);
                    debug!(reached, voters, "a majority of voters is reachable again; elections open");
                }
            }
        });
    }
}

//! Messages forwarded towards a node that was lost (declared down, or back as a new life whose
//! sockets are gone) and never acknowledged go again through the log: before anything their
//! sender queued since, so that the client gets them, in order, once it registers again. Each
//! carries the tag of its forward, so the node it was meant for writes it once should the
//! forward have reached it after all.

use std::sync::Arc;
use std::time::Duration;

use switchboard_proto::cluster::ClusterCommand;
use switchboard_proto::rooms::{Binding, Command, NodeId};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::peer_link::{HandBack, Unacked};
use super::Cluster;

/// Attempts for one reclaimed run (a second apart) while there is no majority.
const ATTEMPTS: usize = 10;

impl Cluster {
    /// Takes back what was forwarded to `node` (declared down) to send it through the log.
    pub(super) fn reclaim_from(&self, node: NodeId) {
        self.links.reclaim(node);
    }

    /// Sends through the log what links hand back, one hand-back after the other: a link's
    /// forwards must apply in the order it sent them (the state machine drops, as a copy, a
    /// run older than one it applied).
    pub(super) fn serve_reclaims(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<HandBack>) {
        actix::spawn(async move {
            while let Some(back) = rx.recv().await {
                self.resend(back).await;
            }
        });
    }

    async fn resend(&self, back: HandBack) {
        let HandBack { node, unacked, sockets_gone } = back;
        if unacked.is_empty() {
            return;
        }
        let count: usize = unacked.iter().map(|u| u.messages.len()).sum();
        info!(node, messages = count, "sending again what a lost node never acknowledged");
        metrics::counter!("switchboard_forwards_resent_total").increment(count as u64);
        // All the forwards of one sender in one room travel as one command, in the order they
        // were sent (frames of several rooms interleave on a link).
        let mut runs: Vec<(Unacked, Vec<Binding>)> = Vec::new();
        for u in unacked {
            match runs.iter_mut().find(|(run, _)| run.room == u.room && run.from == u.from) {
                Some((run, gone)) => {
                    if !gone.contains(&u.to) {
                        gone.push(u.to);
                    }
                    run.messages.extend(u.messages);
                }
                None => {
                    let gone = vec![u.to];
                    runs.push((u, gone));
                }
            }
        }
        // A node declared down while alive registers its sockets again, as they were: the
        // messages go to such a socket once it is bound again. Only a new life's are gone.
        let proposals = runs.into_iter().map(|(u, gone)| {
            let gone = if sockets_gone { gone } else { Vec::new() };
            let cmd = Command::Reclaim { room: u.room.clone(), client: u.from, messages: u.messages, gone, now_ms: 0 };
            async move {
                for attempt in 1..=ATTEMPTS {
                    match self.propose(ClusterCommand::Room(cmd.clone())).await {
                        Ok(_) => break,
                        Err(e) if attempt == ATTEMPTS => {
                            warn!(node, room = %u.room, error = %e, "could not send a lost node's messages again")
                        }
                        Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                    }
                }
            }
        });
        // Runs of different senders are independent: proposed together.
        futures_util::future::join_all(proposals).await;
    }
}

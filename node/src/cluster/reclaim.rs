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

use super::peer_link::Unacked;
use super::Cluster;

/// Attempts for one reclaimed run (a second apart) while there is no majority.
const ATTEMPTS: usize = 10;

impl Cluster {
    /// Takes back what was forwarded to `node` (declared down) and sends it through the log.
    pub(super) fn reclaim_from(self: Arc<Self>, node: NodeId) {
        actix::spawn(async move {
            let unacked = self.links.reclaim(node).await;
            self.resend(node, unacked).await;
        });
    }

    /// Sends through the log what links hand back (their peer came back as a new life).
    pub(super) fn serve_reclaims(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<(NodeId, Vec<Unacked>)>) {
        actix::spawn(async move {
            while let Some((node, unacked)) = rx.recv().await {
                self.resend(node, unacked).await;
            }
        });
    }

    async fn resend(&self, node: NodeId, unacked: Vec<Unacked>) {
        if unacked.is_empty() {
            return;
        }
        let count: usize = unacked.iter().map(|u| u.messages.len()).sum();
        info!(node, messages = count, "sending again what a lost node never acknowledged");
        metrics::counter!("switchboard_forwards_resent_total").increment(count as u64);
        // Consecutive forwards of one sender in one room travel as one command.
        let mut runs: Vec<(Unacked, Vec<Binding>)> = Vec::new();
        for u in unacked {
            match runs.last_mut() {
                Some((last, gone)) if last.room == u.room && last.from == u.from => {
                    if !gone.contains(&u.to) {
                        gone.push(u.to);
                    }
                    last.messages.extend(u.messages);
                }
                _ => {
                    let gone = vec![u.to];
                    runs.push((u, gone));
                }
            }
        }
        for (u, gone) in runs {
            let cmd = Command::Reclaim { room: u.room.clone(), client: u.from, messages: u.messages, gone, now_ms: 0 };
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
    }
}

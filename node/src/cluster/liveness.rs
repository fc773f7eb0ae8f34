//! This node's own liveness: it declares itself up when it starts (releasing bindings of an
//! earlier life), and tells how long a client taking over from an unreachable node may wait.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use switchboard_proto::cluster::ClusterCommand;
use switchboard_proto::rooms::NodeId;
use tracing::info;

use super::Cluster;
use crate::rooms::{now_ms, RebindAll, RoomRegistry};

impl Cluster {
    /// How long a client re-registering elsewhere may wait for its old node, unreachable from
    /// here, to be declared down (which releases the old registration): detection, plus an
    /// election should the lost node have led, plus a margin.
    pub fn takeover_wait(&self, holder: NodeId) -> Option<Duration> {
        let reachable = holder == self.id || self.links.health(holder).is_some_and(|h| h.up);
        (!reachable).then(|| Duration::from_millis(self.cfg.node_down_after_ms + 2 * self.cfg.election_timeout_ms + 1000))
    }

    /// Declares this node up (releasing bindings of an earlier life), retrying until applied.
    /// Sockets that registered before `NodeUp` applied lost their binding to it (it cannot
    /// tell them from an earlier life's), so they register again afterwards.
    pub(super) fn announce_up(self: Arc<Self>, registry: Addr<RoomRegistry>) {
        actix::spawn(async move {
            loop {
                let cmd = ClusterCommand::NodeUp { node: self.id, now_ms: now_ms(), grace_ms: self.cfg.node_loss_grace_ms };
                match self.propose(cmd).await {
                    Ok(_) => {
                        info!(node = self.id, "announced to the cluster");
                        registry.do_send(RebindAll);
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot announce this node yet");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
    }
}

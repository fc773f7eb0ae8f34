//! This node's own liveness: it declares itself up when it starts (a new life: bindings of an
//! earlier one are released), declares itself up again when it finds it was declared down while
//! alive (a pause, a partition: same life, its sockets kept), and tells how long a client taking
//! over from an unreachable node may wait.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use switchboard_proto::cluster::ClusterCommand;
use switchboard_proto::rooms::NodeId;
use tracing::{debug, info};

use super::Cluster;
use crate::rooms::{RebindAll, RoomRegistry};

impl Cluster {
    /// How long a client re-registering elsewhere may wait for its old node, unreachable from
    /// here, to be declared down (which releases the old registration): detection, plus an
    /// election should the lost node have led, plus a margin.
    pub fn takeover_wait(&self, holder: NodeId) -> Option<Duration> {
        let reachable = holder == self.id || self.links.health(holder).is_some_and(|h| h.up);
        (!reachable).then(|| Duration::from_millis(self.cfg.node_down_after_ms + 2 * self.cfg.election_timeout_ms + 1000))
    }

    /// Declares this node up, retrying until applied. At start (`rebind`), sockets that
    /// registered before `NodeUp` applied lost their binding to it (it cannot tell them from an
    /// earlier life's), so they register again afterwards. Only one announcement runs at once.
    pub(super) fn announce_up(self: Arc<Self>, registry: Addr<RoomRegistry>, rebind: bool) {
        if self.announcing.swap(true, Ordering::AcqRel) {
            return;
        }
        actix::spawn(async move {
            loop {
                if self.draining.load(Ordering::Acquire) {
                    break;
                }
                let cmd = ClusterCommand::NodeUp {
                    node: self.id,
                    incarnation: self.links.incarnation(),
                    now_ms: 0,
                    grace_ms: self.cfg.node_loss_grace_ms,
                };
                match self.propose(cmd).await {
                    Ok(_) => {
                        info!(node = self.id, "announced to the cluster");
                        if rebind {
                            registry.do_send(RebindAll);
                        }
                        break;
                    }
                    Err(e) => {
                        debug!(error = %e, "cannot announce this node yet");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            self.announcing.store(false, Ordering::Release);
        });
    }
}

//! Load reports and TURN placement: each node puts its load and TURN URIs into the replicated
//! state; ICE configuration lists the least-loaded live node first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_proto::cluster::ClusterCommand;
use switchboard_proto::rooms::NodeId;

use super::Cluster;

impl Cluster {
    /// Reports this node's load every few seconds (when it changed, else every 30 s), and tells
    /// `on_relays` the cluster's relay addresses whenever an applied entry changes them.
    pub fn report_load(
        self: Arc<Self>,
        measure: impl Fn() -> switchboard_proto::cluster::LoadReport + 'static,
        on_relays: impl Fn(Vec<(std::net::IpAddr, u16, u16)>) + 'static,
    ) {
        let me = self.clone();
        actix::spawn(async move {
            let mut last: Option<(switchboard_proto::cluster::LoadReport, Instant)> = None;
            let mut interval = tokio::time::interval(Duration::from_secs(2));
            loop {
                interval.tick().await;
                let report = measure();
                let stale = last.as_ref().is_none_or(|(r, at)| *r != report || at.elapsed() > Duration::from_secs(30));
                let recorded = me.state.read().unwrap_or_else(|p| p.into_inner()).node(me.id).map(|n| n.load.clone());
                if stale || recorded.as_ref() != Some(&report) {
                    let cmd = ClusterCommand::Load { node: me.id, report: report.clone() };
                    if me.propose(cmd).await.is_ok() {
                        last = Some((report, Instant::now()));
                    }
                }
            }
        });
        // Raft's metrics change with every applied entry: the moment to look again.
        actix::spawn(async move {
            let mut metrics = self.raft.metrics();
            let mut told: Option<Vec<(std::net::IpAddr, u16, u16)>> = None;
            loop {
                let relays: Vec<_> = {
                    let state = self.state.read().unwrap_or_else(|p| p.into_inner());
                    state
                        .nodes()
                        .values()
                        .flat_map(|n| n.load.relay_ips.iter().map(|ip| (*ip, n.load.relay_min_port, n.load.relay_max_port)))
                        .collect()
                };
                if told.as_ref() != Some(&relays) {
                    on_relays(relays.clone());
                    told = Some(relays);
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// TURN nodes for a client, best first: live (this node, or one whose link is up), least
    /// loaded.
    pub fn turn_placement(&self) -> Vec<(NodeId, Vec<String>)> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state
            .turn_placement(|id| id == self.id || self.links.health(id).is_some_and(|h| h.up))
            .into_iter()
            .map(|(id, l)| (id, l.turn_uris.clone()))
            .collect()
    }
}

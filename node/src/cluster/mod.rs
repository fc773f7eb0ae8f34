//! The cluster: openraft replicates `ClusterState` (rooms and node liveness) between nodes that
//! talk over peer links on an internal listener. Every node applies every command; each acts on
//! the effects that name its own sockets. Proposals from followers go to the leader over a link.
//!
//! Failure model: a majority applies membership changes; without one, proposals time out with
//! [`ProposeError::NoQuorum`] while direct forwarding between live nodes keeps calls going. The
//! leader declares a node silent both ways down (`NodeDown`) so its clients may register
//! elsewhere; a node that starts declares itself up as a new life (`NodeUp`) so bindings of its
//! earlier one are released, and a node declared down while alive declares itself up again as
//! the same life, keeping its sockets.
//!
//! Files by duty: `propose` (proposals, read-your-writes), `clock` (cluster time), `leader`
//! (liveness and timers), `liveness` (this node's announcements), `watch` (acting on applied
//! liveness), `reclaim` (forwards to lost nodes sent through the log), `ledger` (forwards
//! received, once-only, acknowledgements), `peer_link`/`network`/`inbound` (the links), `link_stream` (their
//! mutual authentication and sealing),
//! `state_machine`/`log_store` (Raft storage), `status`, `members`, `handover`, `load`.

pub mod clock;
mod election_gate;
pub mod handover;
pub mod inbound;
pub mod leader;
pub mod ledger;
pub mod link_stream;
pub mod liveness;
pub mod load;
mod batcher;
pub mod log_store;
pub mod members;
pub mod network;
pub mod peer_link;
pub mod propose;
pub mod reclaim;
pub mod state_machine;
pub mod status;
pub mod types;
pub mod watch;

pub use propose::ProposeError;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::{Addr, Arbiter};
use anyhow::{Context as _, Result};
use openraft::SnapshotPolicy;
use switchboard_proto::cluster::ClusterState;
use switchboard_proto::rooms::{Limits, NodeId};
use tokio::net::TcpListener;
use tracing::{info, warn};

use self::clock::Stamper;
use self::ledger::Ledger;
use self::network::PeerLinks;
use self::batcher::Batcher;
use self::state_machine::{SharedState, StateMachine};
use self::types::{PeerInfo, Raft};
use crate::config::ClusterSection;
use crate::rooms::RoomRegistry;

/// This process's life: a random number drawn once at start. Peers tell a restarted node from
/// the one before by it, and the sessions this node makes carry it in their ids.
pub fn life() -> u64 {
    static LIFE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIFE.get_or_init(rand::random)
}

/// A running cluster member.
pub struct Cluster {
    /// This node.
    pub id: NodeId,
    /// The Raft handle.
    pub raft: Raft,
    /// Proposals to this node's Raft, batched.
    batcher: Batcher,
    /// Links to the other members.
    pub links: PeerLinks,
    /// The applied state.
    pub state: SharedState,
    /// Forwards this node received, for once-only delivery and acknowledgements.
    pub ledger: Arc<Ledger>,
    /// The last applied log index.
    applied: tokio::sync::watch::Receiver<u64>,
    stamper: Stamper,
    cfg: ClusterSection,
    draining: AtomicBool,
    /// A `NodeUp` of this node is being proposed.
    announcing: AtomicBool,
    /// Numbers this node's once-only proposals (random start: never reused by a later life).
    proposal_seq: AtomicU64,
}

impl Cluster {
    /// Opens the node's Raft state, starts its listener and links, and bootstraps the group if
    /// configured to and nothing was ever stored.
    pub async fn start(
        id: NodeId,
        cfg: ClusterSection,
        data_dir: &std::path::Path,
        limits: Limits,
        registry: Addr<RoomRegistry>,
    ) -> Result<Arc<Cluster>> {
        let state: SharedState = Arc::new(RwLock::new(ClusterState::new(limits)));
        let raft_dir = data_dir.join("raft");
        let log_store = log_store::LogStore::open(&raft_dir)
            .with_context(|| format!("cannot open the Raft log in {}", raft_dir.display()))?;
        let on_apply = Arc::new(|applied: &Option<types::LogId>| {
            if let Some(l) = applied {
                metrics::gauge!("switchboard_raft_last_applied").set(l.index as f64);
            }
        });
        let (applied_tx, applied) = tokio::sync::watch::channel(0);
        let sm = StateMachine::open(id, raft_dir.clone(), state.clone(), registry.clone().recipient(), applied_tx, on_apply)?;
        let incarnation = life();
        let (reclaims, reclaimed) = tokio::sync::mpsc::unbounded_channel();
        let links = PeerLinks::new(
            id,
            cfg.secret.as_bytes().to_vec(),
            incarnation,
            cfg.listen.parse::<SocketAddr>().ok().map(|a| a.ip()).filter(|ip| !ip.is_unspecified()),
            Duration::from_millis(cfg.node_down_after_ms),
            Arbiter::current(),
            reclaims,
        );
        let raft_config = openraft::Config {
            cluster_name: "switchboard".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_ms,
            election_timeout_max: cfg.election_timeout_ms * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs),
            // The log since before the previous snapshot stays: a node whose latest snapshot is
            // torn starts from the previous one and replays from there.
            max_in_snapshot_log_to_keep: cfg.snapshot_logs * 2,
            ..Default::default()
        }
        .validate()
        .context("invalid Raft timing in [cluster]")?;
        let raft = Raft::new(id, Arc::new(raft_config), links.clone(), log_store, sm)
            .await
            .context("cannot start Raft")?;
        let batcher = Batcher::start(raft.clone());

        let listen: SocketAddr = cfg.listen.parse().with_context(|| format!("cluster.listen {:?}", cfg.listen))?;
        let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen} (cluster)"))?;
        info!(node = id, "cluster listener on {listen}");
        let ledger = Arc::new(Ledger::new(id, incarnation));
        let stamper = Stamper::new(id, raft.clone(), state.clone());
        actix::spawn(inbound::serve(
            listener,
            inbound::InboundContext {
                raft: raft.clone(),
                batcher: batcher.clone(),
                registry: registry.clone(),
                secret: cfg.secret.as_bytes().to_vec(),
                ledger: ledger.clone(),
                me: id,
                incarnation,
                propose_timeout: Duration::from_millis(cfg.propose_timeout_ms),
                links: links.clone(),
                stamper: stamper.clone(),
            },
        ));

        let peers: BTreeMap<NodeId, PeerInfo> = cfg
            .peers
            .iter()
            .map(|p| (p.id, PeerInfo { raft_addr: p.raft_addr.clone(), public_url: p.public_url.clone() }))
            .collect();
        links.set_members(&peers);
        if cfg.bootstrap && !raft.is_initialized().await.unwrap_or(true) {
            info!(node = id, members = ?peers.keys().collect::<Vec<_>>(), "initialising the Raft group");
            if let Err(e) = raft.initialize(peers.clone()).await {
                warn!(error = %e, "Raft group not initialised here (another member may have done it)");
            }
        }

        let cluster = Arc::new(Cluster {
            id,
            raft,
            batcher,
            links,
            state,
            ledger,
            applied,
            stamper,
            cfg,
            draining: AtomicBool::new(false),
            announcing: AtomicBool::new(false),
            proposal_seq: AtomicU64::new(rand::random::<u64>() >> 1),
        });
        cluster.clone().watch(registry.clone());
        cluster.clone().serve_reclaims(reclaimed);
        cluster.clone().announce_up(registry.clone(), true);
        cluster.clone().leader_duties();
        cluster.clone().gate_elections();
        Ok(cluster)
    }
}

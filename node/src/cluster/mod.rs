//! The cluster: openraft replicates `ClusterState` (rooms and node liveness) between nodes that
//! talk over peer links on an internal listener. Every node applies every command; each acts on
//! the effects that name its own sockets. Proposals from followers go to the leader over a link.
//!
//! Failure model: a majority applies membership changes; without one, proposals time out with
//! [`ProposeError::NoQuorum`] while direct forwarding between live nodes keeps calls going. The
//! leader declares a silent node down (`NodeDown`) so its clients may register elsewhere; a
//! node that starts declares itself up (`NodeUp`) so bindings of its earlier life are released.

pub mod inbound;
pub mod log_store;
pub mod network;
pub mod peer_link;
pub mod state_machine;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix::{Addr, Arbiter};
use anyhow::{Context as _, Result};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use serde::Serialize;
use switchboard_proto::cluster::{ClusterCommand, ClusterState, Reply, Request};
use switchboard_proto::rooms::{Command, Limits, NodeId, Outcome};
use tokio::net::TcpListener;
use tracing::{info, warn};

use self::network::PeerLinks;
use self::state_machine::{SharedState, StateMachine};
use self::types::{PeerInfo, Raft};
use crate::config::ClusterSection;
use crate::membership::ProposeError;
use crate::rooms::{now_ms, RebindAll, RoomRegistry};

/// How often the leader checks liveness and due timers.
const DUTY_INTERVAL: Duration = Duration::from_millis(100);

/// A running cluster member.
pub struct Cluster {
    /// This node.
    pub id: NodeId,
    /// The Raft handle.
    pub raft: Raft,
    /// Links to the other members.
    pub links: PeerLinks,
    /// The applied state.
    pub state: SharedState,
    cfg: ClusterSection,
    draining: AtomicBool,
}

/// What `/admin/cluster/status` shows about one member.
#[derive(Debug, Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub public_url: String,
    pub raft_addr: String,
    pub voter: bool,
    /// Live in the replicated state (not declared down).
    pub up: bool,
    /// This node's link to it is up (always true for this node).
    pub link_up: bool,
    pub link_rtt_ms: Option<f64>,
    /// Sockets bound on it.
    pub bindings: usize,
}

/// `/admin/cluster/status`.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub node: NodeId,
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub last_log: Option<u64>,
    pub millis_since_quorum_ack: Option<u64>,
    pub rooms: usize,
    pub digest: String,
    pub draining: bool,
    pub members: Vec<MemberStatus>,
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
        let sm = StateMachine::open(id, raft_dir.clone(), state.clone(), registry.clone().recipient(), on_apply)?;
        let incarnation: u64 = rand::random();
        let links = PeerLinks::new(
            id,
            cfg.secret.as_bytes().to_vec(),
            incarnation,
            Duration::from_millis(cfg.node_down_after_ms),
            Arbiter::current(),
        );
        let raft_config = openraft::Config {
            cluster_name: "switchboard".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_ms,
            election_timeout_max: cfg.election_timeout_ms * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs),
            max_in_snapshot_log_to_keep: 1000,
            ..Default::default()
        }
        .validate()
        .context("invalid Raft timing in [cluster]")?;
        let raft = Raft::new(id, Arc::new(raft_config), links.clone(), log_store, sm)
            .await
            .context("cannot start Raft")?;

        let listen: SocketAddr = cfg.listen.parse().with_context(|| format!("cluster.listen {:?}", cfg.listen))?;
        let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen} (cluster)"))?;
        info!(node = id, "cluster listener on {listen}");
        actix::spawn(inbound::serve(
            listener,
            inbound::InboundContext { raft: raft.clone(), registry: registry.clone(), secret: cfg.secret.as_bytes().to_vec() },
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

        let cluster = Arc::new(Cluster { id, raft, links, state, cfg, draining: AtomicBool::new(false) });
        cluster.clone().watch_metrics(registry.clone());
        cluster.clone().announce_up(registry.clone());
        cluster.clone().leader_duties();
        Ok(cluster)
    }

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

    /// Whether this node leads right now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Whether membership changes can go through now: this node leads and a majority
    /// acknowledged it recently, or it follows a leader its link reaches.
    pub fn has_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        match m.current_leader {
            Some(l) if l == self.id => {
                m.millis_since_quorum_ack.is_some_and(|age| age <= 2 * self.cfg.election_timeout_ms)
            }
            Some(l) => self.links.health(l).is_some_and(|h| h.up),
            None => false,
        }
    }

    /// Public URLs of the members that are up, this node first.
    pub fn live_public_urls(&self) -> Vec<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(bool, String)> = m
            .nodes()
            .filter(|(id, _)| **id == self.id || (state.is_up(**id) && self.links.health(**id).is_some_and(|h| h.up)))
            .map(|(id, n)| (*id != self.id, n.public_url.clone()))
            .collect();
        out.sort();
        out.into_iter().map(|(_, u)| u).collect()
    }

    /// The status shown by the admin API and `scripts/cluster-status.sh`.
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let voters: Vec<NodeId> = m.membership_config.voter_ids().collect();
        let members = m
            .membership_config
            .nodes()
            .map(|(id, n)| {
                let h = self.links.health(*id);
                MemberStatus {
                    id: *id,
                    public_url: n.public_url.clone(),
                    raft_addr: n.raft_addr.clone(),
                    voter: voters.contains(id),
                    up: state.is_up(*id),
                    link_up: *id == self.id || h.is_some_and(|h| h.up),
                    link_rtt_ms: h.and_then(|h| h.rtt).map(|d| d.as_secs_f64() * 1000.0),
                    bindings: state.rooms.bindings_on(*id).len(),
                }
            })
            .collect();
        ClusterStatus {
            node: self.id,
            state: format!("{:?}", m.state),
            leader: m.current_leader,
            term: m.current_term,
            last_applied: m.last_applied.map(|l| l.index),
            last_log: m.last_log_index,
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            rooms: state.rooms.room_count(),
            digest: state.digest(),
            draining: self.draining.load(Ordering::Acquire),
            members,
        }
    }

    /// Adds a node: first as a learner (it catches up), then as a voter.
    pub async fn add_node(&self, id: NodeId, info: PeerInfo) -> Result<(), String> {
        self.links.link(id, Some(&info));
        self.raft.add_learner(id, info, true).await.map_err(|e| e.to_string())?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds([id].into_iter().collect()), false)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Removes a node from the voters and the membership.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), String> {
        self.raft
            .change_membership(ChangeMembers::RemoveVoters([id].into_iter().collect()), false)
            .await
            .map_err(|e| e.to_string())?;
        self.raft
            .change_membership(ChangeMembers::RemoveNodes([id].into_iter().collect()), false)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Leaves leadership to another member before this node stops: stop heartbeats, let the most
    /// caught-up follower run an election, wait until someone else leads.
    pub async fn hand_over(&self, within: Duration) {
        self.draining.store(true, Ordering::Release);
        if !self.is_leader() {
            return;
        }
        self.raft.runtime_config().heartbeat(false);
        self.raft.runtime_config().elect(false);
        let m = self.raft.metrics().borrow().clone();
        let mut candidates: Vec<(u64, NodeId)> = m
            .replication
            .iter()
            .flatten()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, matched)| (matched.map(|l| l.index).unwrap_or(0), *id))
            .collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        let deadline = Instant::now() + within;
        'outer: for (_, target) in candidates {
            while Instant::now() < deadline {
                let _ = self.links.call(target, Request::TriggerElect, Duration::from_millis(300)).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
                let now_leader = self.raft.metrics().borrow().current_leader;
                if now_leader.is_some_and(|l| l != self.id) {
                    info!(new_leader = ?now_leader, "leadership handed over");
                    break 'outer;
                }
                if self.links.health(target).is_none_or(|h| !h.up) {
                    continue 'outer;
                }
            }
        }
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            warn!(error = %e, "Raft did not stop cleanly");
        }
    }

    /// Keeps links and metrics in step with Raft's view.
    fn watch_metrics(self: Arc<Self>, registry: Addr<RoomRegistry>) {
        let mut rx = self.raft.metrics();
        actix::spawn(async move {
            let mut was_up_here = true;
            let mut leader = None;
            let mut down: BTreeSet<NodeId> = BTreeSet::new();
            loop {
                let m = rx.borrow_and_update().clone();
                if m.current_leader != leader {
                    info!(leader = ?m.current_leader, term = m.current_term, "Raft leader changed");
                    leader = m.current_leader;
                }
                let members: BTreeMap<NodeId, PeerInfo> =
                    m.membership_config.nodes().map(|(id, n)| (*id, n.clone())).collect();
                self.links.set_members(&members);
                metrics::gauge!("switchboard_raft_term").set(m.current_term as f64);
                metrics::gauge!("switchboard_raft_leader").set(m.current_leader.map_or(0.0, |l| l as f64));
                metrics::gauge!("switchboard_raft_is_leader").set(if m.state == ServerState::Leader { 1.0 } else { 0.0 });
                if let Some(age) = m.millis_since_quorum_ack {
                    metrics::gauge!("switchboard_raft_quorum_ack_age_ms").set(age as f64);
                }
                // Declared down while alive (a pause, a partition), or up again after a restart:
                // the bindings of this node were released, so register its live sockets again.
                let (up_here, now_down) = {
                    let state = self.state.read().unwrap_or_else(|p| p.into_inner());
                    let down: BTreeSet<NodeId> =
                        state.nodes().iter().filter(|(id, s)| **id != self.id && !s.up).map(|(id, _)| *id).collect();
                    (state.is_up(self.id), down)
                };
                if up_here != was_up_here {
                    was_up_here = up_here;
                    registry.do_send(RebindAll);
                }
                // A node declared down: what was forwarded to it and never acknowledged goes
                // again through the log, which now queues it for the client's next registration.
                for node in now_down.difference(&down) {
                    self.clone().resend_unacknowledged(*node);
                }
                down = now_down;
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Sends again, through the log, the messages forwarded to `node` that it never
    /// acknowledged (in their order), so that a client whose node died gets them once it
    /// registers elsewhere.
    fn resend_unacknowledged(self: Arc<Self>, node: NodeId) {
        actix::spawn(async move {
            let unacked = self.links.reclaim(node).await;
            if unacked.is_empty() {
                return;
            }
            let count: usize = unacked.iter().map(|u| u.messages.len()).sum();
            info!(node, messages = count, "sending again what the lost node never acknowledged");
            metrics::counter!("switchboard_forwards_resent_total").increment(count as u64);
            for u in unacked {
                for body in u.messages {
                    let cmd = Command::Send { room: u.room.clone(), client: u.from.clone(), body, now_ms: now_ms() };
                    if let Err(e) = self.propose(ClusterCommand::Room(cmd)).await {
                        warn!(node, room = %u.room, error = %e, "could not send a lost node's message again");
                    }
                }
            }
        });
    }

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

    /// How long a client re-registering elsewhere may wait for its old node, unreachable from
    /// here, to be declared down (which releases the old registration): detection, plus an
    /// election should the lost node have led, plus a margin.
    pub fn takeover_wait(&self, holder: NodeId) -> Option<Duration> {
        let reachable = holder == self.id || self.links.health(holder).is_some_and(|h| h.up);
        (!reachable).then(|| Duration::from_millis(self.cfg.node_down_after_ms + 2 * self.cfg.election_timeout_ms + 1000))
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

    /// Declares this node up (releasing bindings of an earlier life), retrying until applied.
    /// Sockets that registered before `NodeUp` applied lost their binding to it (it cannot
    /// tell them from an earlier life's), so they register again afterwards.
    fn announce_up(self: Arc<Self>, registry: Addr<RoomRegistry>) {
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

    /// The leader's periodic work: declare silent nodes down, apply due timers.
    fn leader_duties(self: Arc<Self>) {
        actix::spawn(async move {
            let mut interval = tokio::time::interval(DUTY_INTERVAL);
            let down_after = Duration::from_millis(self.cfg.node_down_after_ms);
            loop {
                interval.tick().await;
                if !self.is_leader() || self.draining.load(Ordering::Acquire) {
                    continue;
                }
                let voters: Vec<NodeId> = self.raft.metrics().borrow().membership_config.voter_ids().collect();
                for n in voters.into_iter().filter(|n| *n != self.id) {
                    let silent = self.links.health(n).is_none_or(|h| !h.up && h.since.elapsed() >= down_after);
                    let up = self.state.read().unwrap_or_else(|p| p.into_inner()).is_up(n);
                    if silent && up {
                        warn!(node = n, "node is silent; declaring it down");
                        let cmd = ClusterCommand::NodeDown { node: n, now_ms: now_ms(), grace_ms: self.cfg.node_loss_grace_ms };
                        if let Err(e) = self.propose(cmd).await {
                            warn!(error = %e, "cannot declare node {n} down");
                        }
                    }
                }
                let now = now_ms();
                let due = self.state.read().unwrap_or_else(|p| p.into_inner()).rooms.next_deadline().is_some_and(|d| d <= now);
                if due {
                    let cmd = ClusterCommand::Room(switchboard_proto::rooms::Command::Tick { now_ms: now });
                    if let Err(e) = self.propose(cmd).await {
                        warn!(error = %e, "tick failed");
                    }
                }
            }
        });
    }
}

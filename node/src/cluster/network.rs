//! openraft's network over peer links: each Raft RPC is a postcard payload in a `Request`
//! frame, answered by the peer's Raft through its inbound listener.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::{Actor, Addr, ArbiterHandle};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use switchboard_proto::cluster::{RaftRpc, Reply, Request};
use switchboard_proto::rooms::{NodeId, SessionId};

use super::peer_link::{Call, Forward, HealthTable, LinkContext, LinkError, LinkHealth, PeerLink, Reclaim, ReclaimSink};
use super::types::{PeerInfo, TypeConfig};

/// This node's links to every other member, created as members appear.
#[derive(Clone)]
pub struct PeerLinks {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: LinkContext,
    arbiter: ArbiterHandle,
    links: Mutex<HashMap<NodeId, (PeerInfo, Addr<PeerLink>)>>,
    /// When each node was last heard on its own connection to this one (inbound).
    heard: Mutex<HashMap<NodeId, Instant>>,
}

impl PeerLinks {
    /// Links of node `me` (whose life is `incarnation`), started on `arbiter`. Forwards meant
    /// for a peer's earlier life are handed to `reclaims`.
    pub fn new(
        me: NodeId,
        secret: Vec<u8>,
        incarnation: u64,
        bind_ip: Option<std::net::IpAddr>,
        down_after: Duration,
        arbiter: ArbiterHandle,
        reclaims: ReclaimSink,
    ) -> Self {
        let ctx = LinkContext { me, secret, incarnation, bind_ip, down_after, health: HealthTable::default(), reclaims };
        PeerLinks { inner: Arc::new(Inner { ctx, arbiter, links: Mutex::new(HashMap::new()), heard: Mutex::new(HashMap::new()) }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, (PeerInfo, Addr<PeerLink>)>> {
        self.inner.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The link to `node`, started if `info` is known and it has none (or its address changed).
    pub fn link(&self, node: NodeId, info: Option<&PeerInfo>) -> Option<Addr<PeerLink>> {
        if node == self.inner.ctx.me {
            return None;
        }
        let mut links = self.lock();
        if let Some((known, addr)) = links.get(&node) {
            if info.is_none_or(|i| i == known) {
                return Some(addr.clone());
            }
        }
        let info = info?.clone();
        let (ctx, link_info) = (self.inner.ctx.clone(), info.clone());
        let addr = PeerLink::start_in_arbiter(&self.inner.arbiter, move |_| PeerLink::new(ctx, node, link_info));
        links.insert(node, (info, addr.clone()));
        Some(addr)
    }

    /// Keeps one link per member; members that left lose theirs.
    pub fn set_members(&self, members: &BTreeMap<NodeId, PeerInfo>) {
        for (id, info) in members {
            self.link(*id, Some(info));
        }
        self.lock().retain(|id, _| members.contains_key(id));
    }

    /// Sends a request to `node` and waits for its reply.
    pub async fn call(&self, node: NodeId, body: Request, timeout: Duration) -> Result<Reply, LinkError> {
        let Some(link) = self.link(node, None) else { return Err(LinkError::Unreachable(node)) };
        link.send(Call { body, timeout }).await.unwrap_or(Err(LinkError::Unreachable(node)))
    }

    /// Forwards signaling messages from client `from` to a session on `node`, to be written
    /// there once `node` applied the log up to `barrier`.
    pub fn forward(&self, node: NodeId, room: String, from: String, session: SessionId, messages: Vec<String>, barrier: u64) -> bool {
        match self.link(node, None) {
            Some(l) => {
                l.do_send(Forward { room, from, session, messages, barrier });
                true
            }
            None => false,
        }
    }

    /// This node's life.
    pub fn incarnation(&self) -> u64 {
        self.inner.ctx.incarnation
    }

    /// Takes back what was forwarded to `node` and never acknowledged: the link hands it to
    /// the reclaim sink.
    pub fn reclaim(&self, node: NodeId) {
        if let Some(l) = self.link(node, None) {
            l.do_send(Reclaim);
        }
    }

    /// `node` was heard on its connection to this node.
    pub fn heard_from(&self, node: NodeId) {
        self.inner.heard.lock().unwrap_or_else(|p| p.into_inner()).insert(node, Instant::now());
    }

    /// Whether `node` was heard within `window`, on this node's link to it or its own to this
    /// node: a one-way partition leaves one of the two, and the node is alive.
    pub fn alive(&self, node: NodeId, window: Duration) -> bool {
        let out = self.health(node).is_some_and(|h| h.up || h.since.elapsed() < window);
        out || self.inner.heard.lock().unwrap_or_else(|p| p.into_inner()).get(&node).is_some_and(|t| t.elapsed() < window)
    }

    /// What the link to `node` knows of it.
    pub fn health(&self, node: NodeId) -> Option<LinkHealth> {
        self.inner.ctx.health.read().unwrap_or_else(|p| p.into_inner()).get(&node).copied()
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerLinks {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &PeerInfo) -> PeerNetwork {
        self.link(target, Some(node));
        PeerNetwork { target, links: self.clone() }
    }
}

/// The network to one Raft peer.
pub struct PeerNetwork {
    target: NodeId,
    links: PeerLinks,
}

impl PeerNetwork {
    async fn rpc<Req, Resp, E>(
        &mut self,
        kind: RaftRpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, PeerInfo, RaftError<NodeId, E>>>
    where
        Req: serde::Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = postcard::to_allocvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let reply = self
            .links
            .call(self.target, Request::Raft { kind, payload }, option.hard_ttl())
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        match reply {
            Reply::Raft(bytes) => {
                let res: Result<Resp, RaftError<NodeId, E>> =
                    postcard::from_bytes(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
                res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => {
                let e = std::io::Error::other(format!("unexpected reply {other:?}"));
                Err(RPCError::Network(NetworkError::new(&e)))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    /// Retry an unreachable peer soon: a restarted node should catch up within a second, and
    /// the link itself reconnects with its own backoff.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerInfo, RaftError<NodeId>>> {
        self.rpc(RaftRpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, PeerInfo, RaftError<NodeId, InstallSnapshotError>>> {
        self.rpc(RaftRpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerInfo, RaftError<NodeId>>> {
        self.rpc(RaftRpc::Vote, &rpc, &option).await
    }
}

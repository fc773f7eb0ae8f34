//! The one door to the room state: propose a [`Command`], read what has been applied.
//! A single node applies commands in place; a cluster member proposes them through Raft. The
//! effects of every applied command (deliveries, socket closes) go to the room registry, which
//! owns this node's sockets.

use std::sync::{Arc, RwLock};

use actix::Recipient;
use switchboard_proto::cluster::ClusterCommand;
use switchboard_proto::rooms::{Command, Effect, Limits, NodeId, Outcome, Rooms};

use crate::cluster::{Cluster, ProposeError};
use crate::rooms::ApplyEffects;

/// A single node's state and the position of the last command applied to it. Positions play
/// the part of a cluster's log indexes: a direct message waits behind the deliveries of every
/// earlier command (a socket registering gets its stored messages before a message sent to it
/// right after), which the registry and rooms order by position.
struct Local {
    rooms: Rooms,
    applied: u64,
}

/// Handle to the room state; cheap to clone.
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeId,
    backend: Backend,
}

enum Backend {
    /// One node: the state lives here and commands apply in place.
    Local { state: RwLock<Local>, effects: Recipient<ApplyEffects> },
    /// A cluster member: commands go through Raft; the state machine dispatches effects.
    Cluster(Arc<Cluster>),
}

impl Membership {
    /// State applied in place on this node alone.
    pub fn local(node: NodeId, limits: Limits, effects: Recipient<ApplyEffects>) -> Self {
        Membership {
            inner: Arc::new(Inner { node, backend: Backend::Local { state: RwLock::new(Local { rooms: Rooms::new(limits), applied: 0 }), effects } }),
        }
    }

    /// State replicated by `cluster`.
    pub fn cluster(cluster: Arc<Cluster>) -> Self {
        Membership { inner: Arc::new(Inner { node: cluster.id, backend: Backend::Cluster(cluster) }) }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node
    }

    /// The cluster, when this node is a member of one.
    pub fn as_cluster(&self) -> Option<&Arc<Cluster>> {
        match &self.inner.backend {
            Backend::Cluster(c) => Some(c),
            Backend::Local { .. } => None,
        }
    }

    /// Applies `cmd` and returns its outcome once applied. On a single node its effects are
    /// dispatched before this returns, so a caller that answers afterwards never overtakes them.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        match &self.inner.backend {
            Backend::Local { state, effects } => {
                // A poisoned lock means a panic while applying; the state machine has no panics
                // on input, so keep serving with the state as it is.
                let mut local = state.write().unwrap_or_else(|p| p.into_inner());
                local.applied += 1;
                let pos = local.applied;
                let applied = local.rooms.apply_at(pos, cmd);
                // Dispatched under the lock: HTTP workers propose from several threads, and the
                // registry must hear of positions in order.
                self.dispatch(effects, pos, applied.effects);
                Ok(applied.outcome)
            }
            Backend::Cluster(c) => {
                let started = std::time::Instant::now();
                let result = c.propose(ClusterCommand::Room(cmd)).await;
                metrics::histogram!("switchboard_raft_commit_seconds").record(started.elapsed().as_secs_f64());
                result
            }
        }
    }

    /// Reads the applied state (on a cluster follower it may lag the leader a little).
    pub fn read<R>(&self, f: impl FnOnce(&Rooms) -> R) -> R {
        match &self.inner.backend {
            Backend::Local { state, .. } => f(&state.read().unwrap_or_else(|p| p.into_inner()).rooms),
            Backend::Cluster(c) => f(&c.state.read().unwrap_or_else(|p| p.into_inner()).rooms),
        }
    }

    /// Whether this node should apply due timers (the cluster leader does it for everyone).
    pub fn runs_timers(&self) -> bool {
        matches!(self.inner.backend, Backend::Local { .. })
    }

    /// Whether membership changes can be applied now.
    pub fn ready(&self) -> bool {
        match &self.inner.backend {
            Backend::Local { .. } => true,
            Backend::Cluster(c) => c.has_leader(),
        }
    }

    /// Public URLs of every member (empty on a single node).
    pub fn member_urls(&self) -> Vec<String> {
        match &self.inner.backend {
            Backend::Local { .. } => Vec::new(),
            Backend::Cluster(c) => c.member_public_urls(),
        }
    }

    /// Public URLs of the live nodes, this one first (empty on a single node).
    pub fn live_nodes(&self) -> Vec<String> {
        match &self.inner.backend {
            Backend::Local { .. } => Vec::new(),
            Backend::Cluster(c) => c.live_public_urls(),
        }
    }

    /// Hands the effects of the command at `pos` to the registry. A command without effects
    /// here is not sent: a room only waits for a position that delivered a message in it, and on
    /// one node every delivery is to a socket here.
    fn dispatch(&self, sink: &Recipient<ApplyEffects>, pos: u64, effects: Vec<Effect>) {
        let mine: Vec<(u64, Effect)> = effects
            .into_iter()
            .filter(|e| match e {
                Effect::Deliver { at, .. } | Effect::Close { at, .. } => at.node == self.inner.node,
            })
            .map(|e| (pos, e))
            .collect();
        if !mine.is_empty() {
            sink.do_send(ApplyEffects { through: pos, effects: mine, resync: false });
        }
    }
}

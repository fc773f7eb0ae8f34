//! The one door to the room state: propose a [`Command`], read what has been applied.
//! A single node applies commands in place; the effects of every applied command (deliveries,
//! socket closes) are handed to the room registry, which owns this node's sockets.

use std::sync::{Arc, RwLock};

use actix::Recipient;
use switchboard_proto::rooms::{Command, Effect, Limits, NodeId, Outcome, Rooms};
use thiserror::Error;

use crate::rooms::ApplyEffects;

/// Why a command could not be applied.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// No majority of the cluster is reachable; membership cannot change now.
    #[allow(dead_code)] // the Raft backend of the cluster answers this
    #[error("no quorum: room membership cannot change until a majority of nodes is reachable")]
    NoQuorum,
    /// The node is shutting down.
    #[allow(dead_code)] // the Raft backend of the cluster answers this
    #[error("node is shutting down")]
    ShuttingDown,
}

/// Handle to the room state; cheap to clone.
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeId,
    rooms: RwLock<Rooms>,
    effects: Recipient<ApplyEffects>,
}

impl Membership {
    /// State applied in place on this node alone.
    pub fn local(node: NodeId, limits: Limits, effects: Recipient<ApplyEffects>) -> Self {
        Membership {
            inner: Arc::new(Inner { node, rooms: RwLock::new(Rooms::new(limits)), effects }),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node
    }

    /// Applies `cmd` and returns its outcome once applied; its effects are dispatched to the
    /// sockets before this returns, so a caller that answers afterwards never overtakes them.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        let applied = {
            // A poisoned lock means a panic while applying; the state machine has no panics on
            // input, so keep serving with the state as it is.
            let mut rooms = self.inner.rooms.write().unwrap_or_else(|p| p.into_inner());
            rooms.apply(cmd)
        };
        self.dispatch(applied.effects);
        Ok(applied.outcome)
    }

    /// Reads the applied state.
    pub fn read<R>(&self, f: impl FnOnce(&Rooms) -> R) -> R {
        let rooms = self.inner.rooms.read().unwrap_or_else(|p| p.into_inner());
        f(&rooms)
    }

    fn dispatch(&self, effects: Vec<Effect>) {
        let mine: Vec<Effect> = effects
            .into_iter()
            .filter(|e| match e {
                Effect::Deliver { at, .. } | Effect::Close { at, .. } => at.node == self.inner.node,
            })
            .collect();
        if !mine.is_empty() {
            self.inner.effects.do_send(ApplyEffects(mine));
        }
    }
}

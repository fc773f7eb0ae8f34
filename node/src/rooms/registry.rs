//! `RoomRegistry`: room id → the `RoomActor` holding this node's sockets of that room. Rooms are
//! started when a socket registers and stopped when their last local socket is gone.

use std::collections::HashMap;

use actix::prelude::*;
use switchboard_proto::rooms::{Effect, SessionId};
use tracing::debug;

use super::room::{Attach, AttachError, RoomActor, StopIfIdle};
use crate::membership::Membership;

/// Effects of applied commands that concern this node's sockets.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ApplyEffects(pub Vec<Effect>);

/// A delivery decided outside the room actor (HTTP `POST /message` or Collider `POST`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ToRoom {
    /// The room.
    pub room: String,
    /// The local session to write to.
    pub session: SessionId,
    /// Messages, in order.
    pub messages: Vec<String>,
}

/// A session registers as `client` in `room`; answered with the room actor to relay through.
#[derive(Debug, Message)]
#[rtype(result = "Result<Addr<RoomActor>, AttachError>")]
pub struct RegisterSession {
    /// The registration.
    pub attach: Attach,
    /// The arbiter (thread) of the session: a new room starts there, so the sockets of a room
    /// on one thread exchange messages without waking another thread.
    pub arbiter: actix::ArbiterHandle,
}

/// This node's bindings were released by the cluster (it was declared down while alive, or
/// came up again): every room registers its live sockets again.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RebindAll;

/// Sent by a room that has no local socket left.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct RoomIdle {
    pub room: String,
}

/// One per node.
pub struct RoomRegistry {
    membership: Membership,
    rooms: HashMap<String, Addr<RoomActor>>,
}

impl RoomRegistry {
    /// A registry whose rooms use `membership`.
    pub fn new(membership: Membership) -> Self {
        RoomRegistry { membership, rooms: HashMap::new() }
    }

    fn room(&mut self, name: &str, arbiter: &actix::ArbiterHandle, ctx: &mut Context<Self>) -> Addr<RoomActor> {
        if let Some(addr) = self.rooms.get(name) {
            return addr.clone();
        }
        let room = RoomActor::new(name.to_owned(), self.membership.clone(), ctx.address());
        let addr = RoomActor::start_in_arbiter(arbiter, move |_| room);
        self.rooms.insert(name.to_owned(), addr.clone());
        addr
    }

    /// Number of rooms with a socket on this node.
    fn local_rooms(&self) -> usize {
        self.rooms.len()
    }
}

impl Actor for RoomRegistry {
    type Context = Context<Self>;
}

impl Handler<RegisterSession> for RoomRegistry {
    type Result = ResponseFuture<Result<Addr<RoomActor>, AttachError>>;

    fn handle(&mut self, msg: RegisterSession, ctx: &mut Context<Self>) -> Self::Result {
        let RegisterSession { attach: msg, arbiter } = msg;
        let room = self.room(&msg.room, &arbiter, ctx);
        Box::pin(async move {
            match room.send(msg).await {
                Ok(Ok(())) => Ok(room),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(AttachError::Unavailable),
            }
        })
    }
}

impl Handler<ApplyEffects> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: ApplyEffects, _: &mut Context<Self>) {
        for effect in msg.0 {
            let room = match &effect {
                Effect::Deliver { room, .. } | Effect::Close { room, .. } => room,
            };
            match self.rooms.get(room) {
                Some(addr) => addr.do_send(super::room::RoomEffect(effect)),
                // No socket of that room here (it closed meanwhile): nothing to write to.
                None => debug!(?effect, "effect for a room without local sockets dropped"),
            }
        }
    }
}

impl Handler<ToRoom> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: ToRoom, _: &mut Context<Self>) {
        match self.rooms.get(&msg.room) {
            Some(addr) => addr.do_send(super::room::DeliverLocal { session: msg.session, messages: msg.messages }),
            None => debug!(room = %msg.room, "delivery to a room without local sockets dropped"),
        }
    }
}

impl Handler<RebindAll> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, _: RebindAll, _: &mut Context<Self>) {
        for addr in self.rooms.values() {
            addr.do_send(super::room::Rebind);
        }
    }
}

impl Handler<RoomIdle> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: RoomIdle, ctx: &mut Context<Self>) {
        let Some(addr) = self.rooms.get(&msg.room).cloned() else { return };
        // Block this registry until the room answers: any Attach routed to it earlier is ahead
        // of StopIfIdle in its mailbox, so "idle" really means no socket will arrive.
        addr.send(StopIfIdle)
            .into_actor(self)
            .map(move |res, act, _| {
                if res.unwrap_or(true) {
                    act.rooms.remove(&msg.room);
                    metrics::gauge!("switchboard_local_rooms").set(act.local_rooms() as f64);
                }
            })
            .wait(ctx);
    }
}

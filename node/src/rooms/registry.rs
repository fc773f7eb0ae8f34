//! `RoomRegistry`: room id → the `RoomActor` holding this node's sockets of that room. Rooms are
//! started when a socket registers and stopped when their last local socket is gone. Applied
//! effects and direct deliveries pass through here in order, so a room can tell when every
//! effect up to a log index has reached it. The registry never waits on a room's proposals.

use std::collections::{BTreeMap, HashMap};

use actix::prelude::*;
use switchboard_proto::rooms::{Effect, SessionId};
use tracing::debug;

use super::room::{Attach, AttachError, DeliverLocal, Resync, RoomActor, RoomEffect, StopIfIdle, Synced};
use crate::cluster::ledger::FrameAck;
use crate::membership::Membership;

/// What one applied batch of commands did to this node's sockets: the effects with their log
/// index, and the last index of the batch (on a single node, the position of the command).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ApplyEffects {
    /// Every command up to this log index has been applied.
    pub through: u64,
    /// Effects that name this node's sockets, with the index of the command that made each.
    pub effects: Vec<(u64, Effect)>,
    /// The state jumped to `through` (a snapshot was installed): the effects in between were
    /// never seen here, so every room checks its sockets against the state.
    pub resync: bool,
}

/// A delivery decided outside the room actor (HTTP `POST /message`, Collider `POST`, or a
/// forward from another node).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ToRoom {
    /// The room.
    pub room: String,
    /// The local session to write to.
    pub session: SessionId,
    /// Messages, in order.
    pub messages: Vec<String>,
    /// Written only after every effect up to this log index (see `Frame::Forward`).
    pub barrier: u64,
    /// The forward frame to acknowledge once written.
    pub ack: Option<FrameAck>,
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

/// Answered at once: the registry's mailbox is being served (the systemd watchdog asks).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Heartbeat;

/// Sent by a room that has no local socket left.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct RoomIdle {
    pub room: String,
}

/// Asked by a room holding a direct delivery: answer with [`Synced`] once every effect up to
/// `index` went to the room.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct Sync {
    pub room: String,
    pub index: u64,
}

/// One per node.
pub struct RoomRegistry {
    membership: Membership,
    rooms: HashMap<String, Addr<RoomActor>>,
    /// Every applied effect up to this log index has been passed to its room.
    dispatched: u64,
    /// Rooms waiting for `dispatched` to reach an index.
    syncs: BTreeMap<u64, Vec<String>>,
}

impl RoomRegistry {
    /// A registry whose rooms use `membership`.
    pub fn new(membership: Membership) -> Self {
        RoomRegistry { membership, rooms: HashMap::new(), dispatched: 0, syncs: BTreeMap::new() }
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

    fn release_syncs(&mut self) {
        while let Some(entry) = self.syncs.first_entry() {
            if *entry.key() > self.dispatched {
                break;
            }
            for room in entry.remove() {
                if let Some(addr) = self.rooms.get(&room) {
                    addr.do_send(Synced { through: self.dispatched });
                }
            }
        }
    }

    fn ack(&self, ack: Option<FrameAck>) {
        if let (Some(ack), Some(c)) = (ack, self.membership.as_cluster()) {
            c.ledger.done(ack);
        }
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
        // A room may see several effects of one entry (a batch): only after the last of them
        // is everything up to that entry written.
        let last_of_entry: Vec<bool> = (0..msg.effects.len())
            .map(|i| {
                let (index, e) = &msg.effects[i];
                !msg.effects[i + 1..].iter().take_while(|(j, _)| j == index).any(|(_, f)| f.room() == e.room())
            })
            .collect();
        for ((index, effect), last) in msg.effects.into_iter().zip(last_of_entry) {
            let through = if last { index } else { index.saturating_sub(1) };
            match self.rooms.get(effect.room()) {
                Some(addr) => addr.do_send(RoomEffect { index, through, effect }),
                // No socket of that room here (it closed meanwhile): nothing to write to.
                None => debug!(?effect, "effect for a room without local sockets dropped"),
            }
        }
        self.dispatched = self.dispatched.max(msg.through);
        if msg.resync {
            for addr in self.rooms.values() {
                addr.do_send(Resync { through: msg.through });
            }
        }
        self.release_syncs();
    }
}

impl Handler<ToRoom> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: ToRoom, _: &mut Context<Self>) {
        match self.rooms.get(&msg.room) {
            Some(addr) => addr.do_send(DeliverLocal {
                session: msg.session,
                messages: msg.messages,
                barrier: msg.barrier,
                watermark: self.dispatched,
                ack: msg.ack,
            }),
            None => {
                debug!(room = %msg.room, "delivery to a room without local sockets dropped");
                self.ack(msg.ack);
            }
        }
    }
}

impl Handler<Sync> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: Sync, _: &mut Context<Self>) {
        if msg.index <= self.dispatched {
            if let Some(addr) = self.rooms.get(&msg.room) {
                addr.do_send(Synced { through: self.dispatched });
            }
        } else {
            self.syncs.entry(msg.index).or_default().push(msg.room);
        }
    }
}

impl Handler<Heartbeat> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, _: Heartbeat, _: &mut Context<Self>) {}
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
        // Wait for the room's answer before routing anything else: any Attach routed to it
        // earlier is ahead of StopIfIdle in its mailbox, so "idle" really means no socket will
        // arrive. Rooms answer at once (they never wait on a proposal), so this is short.
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

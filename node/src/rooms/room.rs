//! `RoomActor`: the sockets of one room on this node. A socket's messages leave in the order it
//! sent them: straight to the peer's socket (here or over a peer link) when nothing needs to
//! change, otherwise as one run through the membership, behind which the socket's later messages
//! wait. Messages for this room's sockets are written in log order: a direct one waits until every
//! applied effect up to its barrier (the last log entry that delivered in the room, as its sender
//! saw it) has been written here. The actor never blocks on a proposal.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use switchboard_proto::rooms::{
    Binding, Command, Effect, Origin, Outcome, RegisterError, Route, SessionId,
};
use thiserror::Error;
use tracing::{debug, warn};

use super::registry::{RoomIdle, RoomRegistry, Sync};
use super::{SessionRecipient, ToSession};
use crate::cluster::ledger::FrameAck;
use crate::cluster::ProposeError;
use crate::membership::Membership;

/// Messages a room may have waiting in its mailbox; beyond it, a socket's messages are dropped
/// (and counted), as Collider drops what it cannot queue.
pub const ROOM_MAILBOX: usize = 1024;
/// Most messages of one socket in one proposal.
const MAX_RUN: usize = 256;
/// Delays before a run whose proposal failed is proposed again.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Attempts for a run whose socket has already closed.
const CLOSED_ATTEMPTS: u32 = 5;
/// Direct deliveries a room may hold while this node catches up with the log. Beyond it (a node
/// cut off from the leader for long, with forwards still coming in) the oldest goes out without
/// waiting: a message out of order beats an unbounded queue.
const MAX_HELD: usize = 4096;

/// Milliseconds since the Unix epoch: the time a command carries when it is proposed (in a
/// cluster the leader stamps its own before it is applied).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A session registers as `client` in `room`.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), AttachError>")]
pub struct Attach {
    pub room: String,
    pub client: String,
    pub session: SessionId,
    pub to: SessionRecipient,
}

/// Why a registration failed. `Display` is the Collider error text sent to the client.
#[derive(Debug, Error)]
pub enum AttachError {
    /// Collider refused it (room full, id already bound).
    #[error(transparent)]
    Refused(#[from] RegisterError),
    /// Membership cannot change right now.
    #[error("Service unavailable: {0}")]
    Propose(#[from] ProposeError),
    /// The room actor went away (node shutting down).
    #[error("Service unavailable")]
    Unavailable,
}

/// The session's socket ended.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Detach {
    pub session: SessionId,
}

/// The node drains: release the session's binding, then tell the session to go away.
///
/// Closing first and releasing after (as a socket's own end does) would leave the client bound
/// to a dead socket for a moment, and messages routed to it straight (no log entry) in that
/// moment would be written to nothing. Released first, the state queues what is sent to the
/// client from then on, for its next socket, while whatever was already routed to this socket
/// still reaches it during [`RELEASE_LINGER`].
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Release {
    pub session: SessionId,
}

/// The release of a session's binding has been applied (or failed).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Released {
    session: SessionId,
}

/// How long a released socket stays open for messages routed to it before the release was
/// applied on every node (a follower applies a commit within a heartbeat or two).
const RELEASE_LINGER: Duration = Duration::from_millis(250);

/// A `send` frame from a registered session.
/// Answers once everything `session` has sent so far is on its way to the peer (written,
/// forwarded or applied by the log). A socket that the client closes waits for it before it
/// answers the close: once the client sees the answer, a `DELETE` cannot overtake its last
/// message (Collider reads a socket's frames one after the other, so the same holds there).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Flush {
    pub session: SessionId,
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Relay {
    pub session: SessionId,
    pub msg: String,
}

/// Write messages to a local session once every effect up to `barrier` has been written;
/// `watermark` is how far the registry had passed effects on when it sent this.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct DeliverLocal {
    pub session: SessionId,
    pub messages: Vec<String>,
    pub barrier: u64,
    pub watermark: u64,
    pub ack: Option<FrameAck>,
}

/// An applied command's effect on one of this room's sockets, with the command's log index.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct RoomEffect {
    pub index: u64,
    /// Everything up to here is written once this effect is (`index`, unless more effects of
    /// the same entry follow for this room).
    pub through: u64,
    pub effect: Effect,
}

/// Every effect up to `through` has been passed to this room.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct Synced {
    pub through: u64,
}

/// Register every local session again (the cluster released this node's bindings).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct Rebind;

/// The state jumped to `through` (a snapshot): check every socket against it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct Resync {
    pub through: u64,
}

/// Asked by the registry before it forgets an idle room; `true` means the room stopped.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub(super) struct StopIfIdle;

/// A socket's run of messages was applied (or its proposal failed).
#[derive(Message)]
#[rtype(result = "()")]
struct RunApplied {
    session: SessionId,
    result: Result<Outcome, ProposeError>,
}

/// A session's register-again finished.
#[derive(Message)]
#[rtype(result = "()")]
struct Rebound {
    session: SessionId,
    result: Result<Outcome, ProposeError>,
}

/// A socket's messages on their way out, in the order it sent them.
struct Outbox {
    /// Not yet sent; the first one has number `next` (numbers count from 1 per socket).
    queue: VecDeque<String>,
    next: u64,
    /// A run being applied: its first number and its messages.
    in_flight: Option<(u64, Vec<String>)>,
    retry: Duration,
    attempts: u32,
}

impl Outbox {
    /// Nothing queued and nothing on its way through the log.
    fn drained(&self) -> bool {
        self.in_flight.is_none() && self.queue.is_empty()
    }
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox { queue: VecDeque::new(), next: 1, in_flight: None, retry: RETRY_MIN, attempts: 0 }
    }
}

struct Local {
    client: String,
    to: SessionRecipient,
    outbox: Outbox,
    /// The socket is still open (a closed one stays until its outbox is empty).
    open: bool,
    /// Waiting for the outbox to empty (see [`Flush`]); dropped with the session.
    flushed: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Its registration is being proposed: the state cannot tell yet whether it is bound.
    registering: bool,
    /// A check against the state came while it registered: check again once it has.
    recheck: bool,
    /// Its binding is being released before it closes (see [`Release`]): not registered again.
    leaving: bool,
}

/// A direct delivery waiting for the effects before it.
struct Held {
    barrier: u64,
    session: SessionId,
    messages: Vec<String>,
    ack: Option<FrameAck>,
}

/// One per room with a socket on this node.
pub struct RoomActor {
    name: String,
    membership: Membership,
    registry: Addr<RoomRegistry>,
    sessions: HashMap<SessionId, Local>,
    queue_cap: usize,
    /// Every effect on this room's sockets up to this log index has been written.
    effects_through: u64,
    held: VecDeque<Held>,
    /// The highest index a `Sync` was asked for.
    asked: u64,
}

impl RoomActor {
    pub(super) fn new(name: String, membership: Membership, registry: Addr<RoomRegistry>) -> Self {
        let queue_cap = membership.read(|r| r.limits().queue_cap);
        RoomActor {
            name,
            membership,
            registry,
            sessions: HashMap::new(),
            queue_cap,
            effects_through: 0,
            held: VecDeque::new(),
            asked: 0,
        }
    }

    fn binding(&self, session: SessionId) -> Binding {
        Binding { node: self.membership.node_id(), session }
    }

    fn write(&self, session: SessionId, messages: impl IntoIterator<Item = String>) {
        match self.sessions.get(&session).filter(|l| l.open) {
            Some(local) => {
                for m in messages {
                    local.to.do_send(ToSession::Deliver(m));
                }
            }
            None => debug!(room = %self.name, %session, "delivery to a session that is gone"),
        }
    }

    fn ack(&self, ack: Option<FrameAck>) {
        if let (Some(ack), Some(c)) = (ack, self.membership.as_cluster()) {
            c.ledger.done(ack);
        }
    }

    /// Writes `messages` to `session` once every effect up to `barrier` has been written here.
    fn deliver_after(&mut self, barrier: u64, session: SessionId, messages: Vec<String>, ack: Option<FrameAck>) {
        if barrier <= self.effects_through && self.held.is_empty() {
            self.write(session, messages);
            self.ack(ack);
            return;
        }
        self.held.push_back(Held { barrier, session, messages, ack });
        if self.held.len() > MAX_HELD {
            if let Some(h) = self.held.pop_front() {
                warn!(room = %self.name, "too many messages waiting for the log; writing the oldest without waiting");
                metrics::counter!("switchboard_errors_total", "kind" => "held_overflow").increment(1);
                self.write(h.session, h.messages);
                self.ack(h.ack);
            }
        }
        if barrier > self.asked {
            self.asked = barrier;
            self.registry.do_send(Sync { room: self.name.clone(), index: barrier });
        }
    }

    /// Every effect up to `through` has been written: release what waited for it, in order.
    fn advance(&mut self, through: u64) {
        self.effects_through = self.effects_through.max(through);
        while self.held.front().is_some_and(|h| h.barrier <= self.effects_through) {
            if let Some(h) = self.held.pop_front() {
                self.write(h.session, h.messages);
                self.ack(h.ack);
            }
        }
    }

    /// Sends what `session` has queued: straight to the peer while that changes nothing, else
    /// one run through the membership (the rest waits behind it).
    fn pump(&mut self, session: SessionId, ctx: &mut Context<Self>) {
        let me = self.membership.node_id();
        loop {
            let Some(local) = self.sessions.get_mut(&session) else { return };
            if local.outbox.in_flight.is_some() {
                return;
            }
            if local.outbox.queue.is_empty() {
                for w in local.flushed.drain(..) {
                    let _ = w.send(());
                }
                if !local.open {
                    self.sessions.remove(&session);
                    self.idle_check();
                }
                return;
            }
            let client = local.client.clone();
            let (route, barrier) =
                self.membership.read(|r| (r.collider_route(&self.name, &client), r.delivered_at(&self.name)));
            let direct = match route {
                Route::Direct(at) if at.node == me => self.sessions.contains_key(&at.session).then_some(at),
                Route::Direct(at) => Some(at),
                Route::ViaLog => None,
            };
            if let Some(at) = direct {
                let Some(local) = self.sessions.get_mut(&session) else { return };
                let messages: Vec<String> = local.outbox.queue.drain(..).collect();
                local.outbox.next += messages.len() as u64;
                let n = messages.len() as u64;
                if at.node == me {
                    metrics::counter!("switchboard_messages_total", "path" => "direct").increment(n);
                    self.deliver_after(barrier, at.session, messages, None);
                    continue;
                }
                if let Some(c) = self.membership.as_cluster() {
                    if c.links.forward(at.node, self.name.clone(), client.clone(), at.session, messages.clone(), barrier) {
                        metrics::counter!("switchboard_messages_total", "path" => "forwarded").increment(n);
                        continue;
                    }
                }
                // No link to that node: the log it is.
                let Some(local) = self.sessions.get_mut(&session) else { return };
                local.outbox.next -= n;
                for m in messages.into_iter().rev() {
                    local.outbox.queue.push_front(m);
                }
            }
            let Some(local) = self.sessions.get_mut(&session) else { return };
            let n = local.outbox.queue.len().min(MAX_RUN);
            let run: Vec<String> = local.outbox.queue.drain(..n).collect();
            let first = local.outbox.next;
            local.outbox.next += n as u64;
            local.outbox.in_flight = Some((first, run.clone()));
            metrics::counter!("switchboard_messages_total", "path" => "log").increment(n as u64);
            self.propose_run(session, client, first, run, ctx);
            return;
        }
    }

    fn propose_run(&self, session: SessionId, client: String, first: u64, bodies: Vec<String>, ctx: &mut Context<Self>) {
        let cmd = Command::Relay {
            room: self.name.clone(),
            client,
            bodies,
            origin: Origin { session, first },
            now_ms: now_ms(),
        };
        let membership = self.membership.clone();
        let me = ctx.address();
        // Not tied to the actor: a run handed to Raft is applied whether or not the room stops.
        actix::spawn(async move {
            let result = membership.propose(cmd).await;
            me.do_send(RunApplied { session, result });
        });
    }

    fn propose_register(&self, session: SessionId, client: String, ctx: &mut Context<Self>) {
        let cmd = Command::Register { room: self.name.clone(), client, at: self.binding(session), now_ms: now_ms() };
        let membership = self.membership.clone();
        let me = ctx.address();
        actix::spawn(async move {
            let result = membership.propose(cmd).await;
            me.do_send(Rebound { session, result });
        });
    }

    /// Checks every open socket against the state: still bound here, nothing to do; its client
    /// unbound, register it again; its client gone (removed, or evicted while this node was
    /// cut off), close it.
    fn rebind(&mut self, ctx: &mut Context<Self>) {
        let clients = self.membership.read(|r| r.clients(&self.name));
        // A socket whose registration is still on its way is checked once it has applied: until
        // then the state shows its client as absent or unbound, and closing it would refuse a
        // registration that is about to succeed (seen on a node just started, whose own NodeUp
        // makes every room check its sockets).
        for local in self.sessions.values_mut().filter(|l| l.registering) {
            local.recheck = true;
        }
        let open: Vec<(SessionId, String)> = self
            .sessions
            .iter()
            .filter(|(_, l)| l.open && !l.registering && !l.leaving)
            .map(|(s, l)| (*s, l.client.clone()))
            .collect();
        for (session, client) in open {
            match clients.iter().find(|(id, _)| *id == client) {
                Some((_, Some(b))) if *b == self.binding(session) => {}
                Some(_) => self.propose_register(session, client, ctx),
                None => {
                    debug!(room = %self.name, %client, "client gone from the room; closing its socket");
                    self.close(session);
                }
            }
        }
    }

    /// Closes a socket whose client is no longer bound to it.
    fn close(&mut self, session: SessionId) {
        if let Some(local) = self.sessions.remove(&session) {
            local.to.do_send(ToSession::Close);
        }
        self.idle_check();
    }

    fn idle_check(&self) {
        if self.sessions.is_empty() {
            self.registry.do_send(RoomIdle { room: self.name.clone() });
        }
    }
}

impl Actor for RoomActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(ROOM_MAILBOX);
    }
}

impl Handler<Attach> for RoomActor {
    type Result = ResponseActFuture<Self, Result<(), AttachError>>;

    fn handle(&mut self, msg: Attach, _: &mut Context<Self>) -> Self::Result {
        // Known before the command applies, so the flush of queued messages finds the socket.
        self.sessions.insert(
            msg.session,
            Local {
                client: msg.client.clone(),
                to: msg.to,
                outbox: Outbox::default(),
                open: true,
                flushed: Vec::new(),
                registering: true,
                recheck: false,
                leaving: false,
            },
        );
        let (room, client) = (self.name.clone(), msg.client.clone());
        let cmd = Command::Register {
            room: self.name.clone(),
            client: msg.client,
            at: self.binding(msg.session),
            now_ms: now_ms(),
        };
        let membership = self.membership.clone();
        let session = msg.session;
        Box::pin(async move { register_or_wait_for_takeover(&membership, cmd, &room, &client).await }.into_actor(self).map(
            move |res, act, ctx| {
                let res = match res {
                    Ok(Outcome::Register(Ok(()))) => Ok(()),
                    Ok(Outcome::Register(Err(e))) => Err(AttachError::Refused(e)),
                    Ok(other) => {
                        warn!(?other, "register answered with another outcome");
                        Err(AttachError::Unavailable)
                    }
                    Err(e) => Err(AttachError::Propose(e)),
                };
                if res.is_err() {
                    act.sessions.remove(&session);
                    act.idle_check();
                } else if let Some(local) = act.sessions.get_mut(&session) {
                    local.registering = false;
                    if std::mem::take(&mut local.recheck) {
                        act.rebind(ctx);
                    }
                }
                res
            },
        ))
    }
}

/// Registers; when the client is still registered on a node this one cannot reach (it died a
/// moment ago and is not yet declared down), waits for the cluster to release that registration
/// instead of refusing: AppRTC clients do not retry a `Duplicated registration`.
async fn register_or_wait_for_takeover(
    membership: &Membership,
    cmd: Command,
    room: &str,
    client: &str,
) -> Result<Outcome, ProposeError> {
    let start = std::time::Instant::now();
    loop {
        let res = membership.propose(cmd.clone()).await;
        if let Ok(Outcome::Register(Err(RegisterError::Duplicated))) = &res {
            let holder = membership
                .read(|r| r.clients(room))
                .into_iter()
                .find(|(id, _)| id == client)
                .and_then(|(_, b)| b)
                .map(|b| b.node);
            let wait = holder.zip(membership.as_cluster()).and_then(|(node, c)| c.takeover_wait(node));
            if wait.is_some_and(|w| start.elapsed() < w) {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        }
        return res;
    }
}

impl Handler<Detach> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Detach, ctx: &mut Context<Self>) {
        let Some(local) = self.sessions.get_mut(&msg.session) else { return };
        local.open = false;
        let cmd = Command::Unbind {
            room: self.name.clone(),
            client: local.client.clone(),
            at: self.binding(msg.session),
            now_ms: now_ms(),
        };
        let membership = self.membership.clone();
        // Not tied to the actor: the room may stop before it applies, and the binding must
        // still be released, or the client could never register again.
        actix::spawn(async move {
            if let Err(e) = membership.propose(cmd).await {
                warn!(error = %e, "could not start the reconnect grace of a closed socket");
            }
        });
        // What the socket sent before it closed still goes out.
        self.pump(msg.session, ctx);
    }
}

impl Handler<Release> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Release, ctx: &mut Context<Self>) {
        let Some(local) = self.sessions.get_mut(&msg.session).filter(|l| l.open && !l.leaving) else { return };
        local.leaving = true;
        let cmd = Command::Unbind {
            room: self.name.clone(),
            client: local.client.clone(),
            at: self.binding(msg.session),
            now_ms: now_ms(),
        };
        let membership = self.membership.clone();
        let me = ctx.address();
        actix::spawn(async move {
            if let Err(e) = membership.propose(cmd).await {
                warn!(error = %e, "could not release a draining socket's binding; closing it anyway");
            }
            me.do_send(Released { session: msg.session });
        });
    }
}

impl Handler<Released> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Released, ctx: &mut Context<Self>) {
        ctx.run_later(RELEASE_LINGER, move |act, _| {
            if let Some(local) = act.sessions.get(&msg.session).filter(|l| l.open) {
                local.to.do_send(ToSession::GoAway);
            }
        });
    }
}

impl Handler<Flush> for RoomActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Flush, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        match self.sessions.get_mut(&msg.session) {
            Some(local) if !local.outbox.drained() => local.flushed.push(tx),
            _ => {
                let _ = tx.send(());
            }
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<Relay> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Relay, ctx: &mut Context<Self>) {
        let cap = self.queue_cap;
        let Some(local) = self.sessions.get_mut(&msg.session).filter(|l| l.open) else { return };
        if local.outbox.queue.len() >= cap {
            // Collider drops what it cannot queue, without an error frame.
            debug!(room = %self.name, "socket's outgoing queue full; message dropped");
            metrics::counter!("switchboard_errors_total", "kind" => "queue_full").increment(1);
            return;
        }
        local.outbox.queue.push_back(msg.msg);
        self.pump(msg.session, ctx);
    }
}

impl Handler<RunApplied> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: RunApplied, ctx: &mut Context<Self>) {
        let Some(local) = self.sessions.get_mut(&msg.session) else { return };
        match msg.result {
            Ok(outcome) => {
                if let Outcome::Relayed { dropped, .. } = outcome {
                    if dropped > 0 {
                        debug!(room = %self.name, dropped, "messages beyond the queue cap dropped");
                    }
                }
                local.outbox.in_flight = None;
                local.outbox.retry = RETRY_MIN;
                local.outbox.attempts = 0;
                self.pump(msg.session, ctx);
            }
            Err(e) => {
                local.outbox.attempts += 1;
                if !local.open && local.outbox.attempts >= CLOSED_ATTEMPTS {
                    warn!(room = %self.name, error = %e, "messages of a closed socket dropped");
                    self.sessions.remove(&msg.session);
                    self.idle_check();
                    return;
                }
                // Proposed again with the same numbers: applied once even if the first try
                // committed after all.
                let delay = local.outbox.retry;
                local.outbox.retry = (delay * 2).min(RETRY_MAX);
                debug!(room = %self.name, error = %e, ?delay, "run not applied; trying again");
                let session = msg.session;
                ctx.run_later(delay, move |act, ctx| {
                    let Some(local) = act.sessions.get(&session) else { return };
                    if let Some((first, run)) = local.outbox.in_flight.clone() {
                        let client = local.client.clone();
                        act.propose_run(session, client, first, run, ctx);
                    }
                });
            }
        }
    }
}

impl Handler<DeliverLocal> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: DeliverLocal, _: &mut Context<Self>) {
        self.advance(msg.watermark);
        self.deliver_after(msg.barrier, msg.session, msg.messages, msg.ack);
    }
}

impl Handler<RoomEffect> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: RoomEffect, _: &mut Context<Self>) {
        // Effects come in log order: everything before this one has been written.
        self.advance(msg.index.saturating_sub(1));
        match msg.effect {
            Effect::Deliver { at, messages, .. } => {
                let ledger = self.membership.as_cluster().map(|c| c.ledger.clone());
                let bodies: Vec<String> = messages
                    .into_iter()
                    .filter(|m| match (&m.tag, &ledger) {
                        // Sent again after its forward was given up on: once, if that forward
                        // reached this node after all.
                        (Some(tag), Some(l)) => l.first_time(tag),
                        _ => true,
                    })
                    .map(|m| m.body)
                    .collect();
                self.write(at.session, bodies);
            }
            Effect::Close { at, .. } => self.close(at.session),
        }
        self.advance(msg.through);
    }
}

impl Handler<Synced> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Synced, _: &mut Context<Self>) {
        self.advance(msg.through);
    }
}

impl Handler<Rebind> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: Rebind, ctx: &mut Context<Self>) {
        self.rebind(ctx);
    }
}

impl Handler<Resync> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Resync, ctx: &mut Context<Self>) {
        self.advance(msg.through);
        self.rebind(ctx);
    }
}

impl Handler<Rebound> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Rebound, ctx: &mut Context<Self>) {
        let Some(local) = self.sessions.get(&msg.session).filter(|l| l.open) else { return };
        match msg.result {
            Ok(Outcome::Register(Ok(()))) => debug!(room = %self.name, "socket registered again"),
            // Someone else holds the client now (it registered elsewhere meanwhile), or the room
            // has no place for it: this socket is stale, as Collider would have closed it.
            Ok(Outcome::Register(Err(e))) => {
                debug!(room = %self.name, error = %e, "socket could not register again; closing it");
                self.close(msg.session);
            }
            Ok(other) => warn!(room = %self.name, ?other, "register answered with another outcome"),
            Err(e) => {
                debug!(room = %self.name, error = %e, "could not register a live socket again; retrying");
                let (session, client) = (msg.session, local.client.clone());
                ctx.run_later(Duration::from_millis(500), move |act, ctx| {
                    if act.sessions.get(&session).is_some_and(|l| l.open) {
                        act.propose_register(session, client, ctx);
                    }
                });
            }
        }
    }
}

impl Handler<StopIfIdle> for RoomActor {
    type Result = bool;

    fn handle(&mut self, _: StopIfIdle, ctx: &mut Context<Self>) -> bool {
        if self.sessions.is_empty() {
            // What waited was for sockets that are gone.
            for h in std::mem::take(&mut self.held) {
                self.ack(h.ack);
            }
            ctx.stop();
            true
        } else {
            false
        }
    }
}

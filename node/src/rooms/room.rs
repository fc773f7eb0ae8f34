//! `RoomActor`: the sockets of one room on this node. It relays a registered client's messages
//! straight to the peer's socket when nothing needs to change, and otherwise applies a command.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use switchboard_proto::rooms::{
    Binding, Command, Effect, Outcome, RegisterError, Route, SendOutcome, SessionId,
};
use thiserror::Error;
use tracing::{debug, warn};

use super::registry::{RoomIdle, RoomRegistry};
use super::{SessionRecipient, ToSession};
use crate::cluster::ProposeError;
use crate::membership::Membership;

/// Messages a room may have waiting before senders are told to slow down.
pub const ROOM_MAILBOX: usize = 1024;

/// Milliseconds since the Unix epoch, the clock of every command.
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

/// A `send` frame from a registered session.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Relay {
    pub session: SessionId,
    pub msg: String,
}

/// Write messages to a local session.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct DeliverLocal {
    pub session: SessionId,
    pub messages: Vec<String>,
}

/// An applied command's effect on one of this room's sockets.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct RoomEffect(pub Effect);

/// Register every local session again (the cluster released this node's bindings).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct Rebind;

/// Asked by the registry before it forgets an idle room; `true` means the room stopped.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub(super) struct StopIfIdle;

struct Local {
    client: String,
    to: SessionRecipient,
}

/// One per room with a socket on this node.
pub struct RoomActor {
    name: String,
    membership: Membership,
    registry: Addr<RoomRegistry>,
    sessions: HashMap<SessionId, Local>,
}

impl RoomActor {
    pub(super) fn new(name: String, membership: Membership, registry: Addr<RoomRegistry>) -> Self {
        RoomActor { name, membership, registry, sessions: HashMap::new() }
    }

    fn binding(&self, session: SessionId) -> Binding {
        Binding { node: self.membership.node_id(), session }
    }

    fn deliver(&self, session: SessionId, messages: impl IntoIterator<Item = String>) {
        match self.sessions.get(&session) {
            Some(local) => {
                for m in messages {
                    local.to.do_send(ToSession::Deliver(m));
                }
            }
            None => debug!(room = %self.name, %session, "delivery to a session that is gone"),
        }
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
        self.sessions.insert(msg.session, Local { client: msg.client.clone(), to: msg.to });
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
            move |res, act, _| {
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
        let Some(local) = self.sessions.remove(&msg.session) else { return };
        let cmd = Command::Unbind {
            room: self.name.clone(),
            client: local.client,
            at: self.binding(msg.session),
            now_ms: now_ms(),
        };
        let membership = self.membership.clone();
        // `wait`, not `spawn`: the room must not stop (and drop the proposal) before the
        // binding is released, or the client could never register again.
        async move {
            if let Err(e) = membership.propose(cmd).await {
                warn!(error = %e, "could not start the reconnect grace of a closed socket");
            }
        }
        .into_actor(self)
        .wait(ctx);
        self.idle_check();
    }
}

impl Handler<Relay> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Relay, ctx: &mut Context<Self>) {
        let Some(client) = self.sessions.get(&msg.session).map(|l| l.client.clone()) else {
            return;
        };
        let route = self.membership.read(|r| r.collider_route(&self.name, &client));
        if let Route::Direct(at) = route {
            if at.node == self.membership.node_id() && self.sessions.contains_key(&at.session) {
                metrics::counter!("switchboard_messages_total", "path" => "direct").increment(1);
                self.deliver(at.session, [msg.msg]);
                return;
            }
            if at.node != self.membership.node_id() {
                if let Some(c) = self.membership.as_cluster() {
                    if c.links.forward(at.node, self.name.clone(), client.clone(), at.session, vec![msg.msg.clone()]) {
                        metrics::counter!("switchboard_messages_total", "path" => "forwarded").increment(1);
                        return;
                    }
                }
            }
        }
        // State must change (queue for a peer that has not registered). Block this room's
        // mailbox until it has: a later direct message must not overtake this one.
        metrics::counter!("switchboard_messages_total", "path" => "log").increment(1);
        let cmd = Command::Send { room: self.name.clone(), client, body: msg.msg, now_ms: now_ms() };
        let membership = self.membership.clone();
        let room = self.name.clone();
        async move { membership.propose(cmd).await }
            .into_actor(self)
            .map(move |res, _, _| match res {
                Ok(Outcome::Send(Ok(SendOutcome::Delivered | SendOutcome::Queued))) => {}
                // Collider ignores send errors on the socket path; we log them.
                Ok(other) => debug!(%room, ?other, "send refused"),
                Err(e) => warn!(%room, error = %e, "send failed"),
            })
            .wait(ctx);
    }
}

impl Handler<DeliverLocal> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: DeliverLocal, _: &mut Context<Self>) {
        self.deliver(msg.session, msg.messages);
    }
}

impl Handler<RoomEffect> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: RoomEffect, _: &mut Context<Self>) {
        match msg.0 {
            Effect::Deliver { at, messages, .. } => self.deliver(at.session, messages),
            Effect::Close { at, .. } => {
                if let Some(local) = self.sessions.remove(&at.session) {
                    local.to.do_send(ToSession::Close);
                }
                self.idle_check();
            }
        }
    }
}

impl Handler<Rebind> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: Rebind, ctx: &mut Context<Self>) {
        for (session, local) in &self.sessions {
            let cmd = Command::Register {
                room: self.name.clone(),
                client: local.client.clone(),
                at: self.binding(*session),
                now_ms: now_ms(),
            };
            let membership = self.membership.clone();
            let room = self.name.clone();
            ctx.spawn(
                async move {
                    match membership.propose(cmd).await {
                        Ok(Outcome::Register(Ok(()))) => debug!(%room, "socket registered again"),
                        // Still bound to this very socket: nothing was lost.
                        Ok(Outcome::Register(Err(RegisterError::Duplicated))) => {}
                        other => warn!(%room, ?other, "could not register a live socket again"),
                    }
                }
                .into_actor(self),
            );
        }
    }
}

impl Handler<StopIfIdle> for RoomActor {
    type Result = bool;

    fn handle(&mut self, _: StopIfIdle, ctx: &mut Context<Self>) -> bool {
        if self.sessions.is_empty() {
            ctx.stop();
            true
        } else {
            false
        }
    }
}

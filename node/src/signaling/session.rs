//! `SignalingSession`: one actor per Collider WebSocket. It decodes `register`/`send` frames,
//! answers errors with Collider's texts, and writes peer messages back through a bounded backlog.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Message, ProtocolError};
use futures_util::Sink;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use bytes::Bytes;
use switchboard_proto::collider::{self, ClientFrame, FrameError};
use switchboard_proto::rooms::SessionId;
use tracing::{debug, info, warn};

use super::directory::{Full, Reservation};
use crate::http::close::CloseOnDrop;
use crate::node::Node;
use crate::rooms::{Attach, Detach, Flush, RegisterSession, Relay, Release, RoomActor, ToSession};

/// How often a session pings its client.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// A client silent for this long (no frame, no pong) is dropped.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a draining node's socket waits for its room to release it before it closes anyway.
const GO_AWAY_WITHIN: Duration = Duration::from_secs(3);

/// How long a close from the client waits for the room to take what the socket sent.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Tells a session the node is shutting down: close with 1001 Going Away.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct GoingAway;

/// An operator closes the session (`DELETE /admin/sessions/{id}`): 1008.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Kick;

struct Registered {
    room: String,
    client: String,
    addr: Addr<RoomActor>,
}

/// One per WebSocket.
pub struct SignalingSession {
    id: SessionId,
    node: web::Data<Node>,
    ws: actix_ws::Session,
    registered: Option<Registered>,
    registering: bool,
    backlog: VecDeque<Message>,
    /// `http.session_send_queue` when the session opened.
    send_queue: usize,
    writing: bool,
    close: Option<CloseReason>,
    close_sent: bool,
    client_closed: bool,
    last_seen: Instant,
    _slot: Reservation,
    /// Ends the TCP connection's reading side when the session is gone, so it closes at once.
    _conn: Option<CloseOnDrop>,
}

/// `GET /ws`: upgrades to a Collider WebSocket. No `Origin` is required (AppRTC's Collider
/// refused handshakes without one; native clients may not send it).
pub async fn ws_handler(
    req: HttpRequest,
    body: web::Payload,
    node: web::Data<Node>,
) -> Result<HttpResponse, actix_web::Error> {
    if node.is_draining() {
        return Ok(HttpResponse::ServiceUnavailable().body("node is shutting down\n"));
    }
    let remote = req.peer_addr();
    let ip = remote.map(|a| a.ip());
    let slot = match node.sessions.reserve(ip) {
        Ok(slot) => slot,
        Err(Full::Node) => {
            warn!("WebSocket refused: session limit reached");
            metrics::counter!("switchboard_errors_total", "kind" => "session_limit").increment(1);
            return Ok(HttpResponse::ServiceUnavailable().body("too many sessions\n"));
        }
        Err(Full::Address) => {
            debug!(?ip, "WebSocket refused: http.sessions_per_ip reached");
            metrics::counter!("switchboard_errors_total", "kind" => "sessions_per_ip").increment(1);
            return Ok(HttpResponse::TooManyRequests().body("too many sessions from this address\n"));
        }
    };
    let (resp, ws, stream) = actix_ws::handle(&req, body)?;
    let conn = CloseOnDrop::of(&req);
    let config = node.config();
    let max = config.http.max_message_bytes;
    let send_queue = config.http.session_send_queue;
    let stream = stream.max_frame_size(max).aggregate_continuations().max_continuation_size(max);
    let id = SessionId::in_life(crate::cluster::life());
    SignalingSession::create(move |ctx| {
        ctx.add_stream(stream);
        node.sessions.insert(id, ctx.address(), remote);
        SignalingSession {
            id,
            node,
            ws,
            registered: None,
            registering: false,
            backlog: VecDeque::new(),
            send_queue,
            writing: false,
            close: None,
            close_sent: false,
            client_closed: false,
            last_seen: Instant::now(),
            _slot: slot,
            _conn: conn,
        }
    });
    Ok(resp)
}

impl SignalingSession {
    fn push(&mut self, out: Message, ctx: &mut Context<Self>) {
        if self.close.is_some() {
            return;
        }
        if self.backlog.len() >= self.send_queue {
            warn!(session = %self.id, "client does not read its socket; closing it");
            metrics::counter!("switchboard_errors_total", "kind" => "slow_consumer").increment(1);
            self.backlog.clear();
            self.close_with(CloseCode::Policy, "send queue full", ctx);
            return;
        }
        self.backlog.push_back(out);
        self.pump(ctx);
    }

    fn send_error(&mut self, error: &str, fatal: bool, ctx: &mut Context<Self>) {
        self.node.stats.wserror();
        self.push(Message::Text(collider::error_frame(error).into()), ctx);
        if fatal {
            // Collider: the error frame, then a close frame with status 1000, then TCP close.
            self.close_with(CloseCode::Normal, "", ctx);
        }
    }

    fn close_with(&mut self, code: CloseCode, reason: &str, ctx: &mut Context<Self>) {
        if self.close.is_none() {
            let description = (!reason.is_empty()).then(|| reason.to_owned());
            self.close = Some(CloseReason { code, description });
            self.pump(ctx);
        }
    }

    /// Hands `msg` to the socket's writer if its channel has room now, without waiting.
    fn write_now(&mut self, msg: Message) -> Write {
        let mut cx = TaskContext::from_waker(futures_util::task::noop_waker_ref());
        match Pin::new(&mut self.ws).poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => match Pin::new(&mut self.ws).start_send(msg) {
                Ok(()) => Write::Done,
                Err(_) => Write::Closed,
            },
            Poll::Ready(Err(_)) => Write::Closed,
            Poll::Pending => Write::Full(msg),
        }
    }

    /// Writes the backlog, then the close frame if one is due. Frames go straight into the
    /// socket's channel while it has room; when it is full, one writer future waits for room, so
    /// frames keep their order.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.writing {
            return;
        }
        while let Some(msg) = self.backlog.pop_front() {
            match self.write_now(msg) {
                Write::Done => {}
                Write::Closed => {
                    ctx.stop();
                    return;
                }
                Write::Full(msg) => {
                    self.backlog.push_front(msg);
                    return self.wait_for_room(ctx);
                }
            }
        }
        if self.close_sent {
            return;
        }
        if let Some(reason) = self.close.clone() {
            match self.write_now(Message::Close(Some(reason))) {
                Write::Done | Write::Closed => {
                    self.close_sent = true;
                    ctx.stop();
                }
                Write::Full(msg) => {
                    self.backlog.push_front(msg);
                    self.close_sent = true;
                    self.wait_for_room(ctx);
                }
            }
        }
    }

    /// The socket's channel is full: send the backlog from a future that waits for room.
    fn wait_for_room(&mut self, ctx: &mut Context<Self>) {
        self.writing = true;
        let frames: Vec<Message> = self.backlog.drain(..).collect();
        let mut ws = self.ws.clone();
        let write = async move {
            use futures_util::SinkExt;
            let mut closing = false;
            for f in frames {
                closing |= matches!(f, Message::Close(_));
                ws.feed(f).await?;
            }
            Ok::<bool, actix_ws::Closed>(closing)
        };
        ctx.spawn(write.into_actor(self).map(|res, act, ctx| {
            act.writing = false;
            match res {
                Ok(false) => act.pump(ctx),
                // The close frame went out, or the socket is gone.
                _ => ctx.stop(),
            }
        }));
    }

    fn on_frame(&mut self, data: &[u8], ctx: &mut Context<Self>) {
        if self.client_closed {
            // Nothing may follow a close frame (RFC 6455 5.5.1).
            return;
        }
        match collider::parse_client_frame(data) {
            Ok(ClientFrame::Register { room, client }) => self.on_register(room, client, ctx),
            Ok(ClientFrame::Send { msg }) => {
                let Some(reg) = &self.registered else {
                    self.send_error(collider::ERR_NOT_REGISTERED, true, ctx);
                    return;
                };
                let relay = Relay { session: self.id, msg };
                if reg.addr.try_send(relay).is_err() {
                    // Collider drops what it cannot queue without an error frame, and Android's
                    // AppRTCMobile treats any error frame as fatal.
                    debug!(session = %self.id, "room mailbox full; message dropped");
                    metrics::counter!("switchboard_errors_total", "kind" => "room_busy").increment(1);
                }
            }
            Err(e) => {
                debug!(session = %self.id, error = %e, "bad frame");
                self.send_error(&e.to_string(), e.is_fatal(), ctx);
            }
        }
    }

    /// The client's close frame: answered once the room has taken every message read before it,
    /// so that the client's `DELETE`, sent when it sees the answer, comes after them.
    fn on_client_close(&mut self, ctx: &mut Context<Self>) {
        if self.client_closed {
            return;
        }
        self.client_closed = true;
        let Some(reg) = &self.registered else {
            return self.close_with(CloseCode::Normal, "", ctx);
        };
        let flush = tokio::time::timeout(FLUSH_WAIT, reg.addr.send(Flush { session: self.id }));
        ctx.spawn(flush.into_actor(self).map(|res, act, ctx| {
            if res.is_err() {
                debug!(session = %act.id, "room did not take the socket's last messages in time; closing anyway");
            }
            act.close_with(CloseCode::Normal, "", ctx);
        }));
    }

    fn on_register(&mut self, room: String, client: String, ctx: &mut Context<Self>) {
        if self.registered.is_some() || self.registering {
            self.send_error(collider::ERR_DUPLICATED_REGISTER, true, ctx);
            return;
        }
        self.registering = true;
        let attach = Attach {
            room: room.clone(),
            client: client.clone(),
            session: self.id,
            to: ctx.address().recipient(),
        };
        // Hold further frames until the registration is applied: a `send` right behind the
        // `register` must find the session registered.
        self.node
            .registry
            .send(RegisterSession { attach, arbiter: actix::Arbiter::current() })
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.registering = false;
                match res {
                    Ok(Ok(addr)) => {
                        debug!(session = %act.id, %room, %client, "registered");
                        act.node.stats.registered();
                        act.node.sessions.registered(act.id, &room, &client);
                        if let Some(took) = act.node.setup_times.registered(&room, &client) {
                            metrics::histogram!("switchboard_call_setup_seconds").record(took.as_secs_f64());
                        }
                        act.registered = Some(Registered { room, client, addr });
                    }
                    Ok(Err(e)) => act.send_error(&e.to_string(), true, ctx),
                    Err(_) => act.send_error("Service unavailable", true, ctx),
                }
            })
            .wait(ctx);
    }
}

enum Write {
    Done,
    Full(Message),
    Closed,
}

impl Actor for SignalingSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.send_queue);
        // A socket that never registers holds a session slot for nothing (answering pings
        // keeps the heartbeat happy): it gets a deadline.
        let within = Duration::from_secs(self.node.config().http.register_timeout_secs);
        ctx.run_later(within, move |act, ctx| {
            if act.registered.is_none() && !act.registering {
                info!(session = %act.id, "socket closed: no register within {} s", within.as_secs());
                metrics::counter!("switchboard_errors_total", "kind" => "register_timeout").increment(1);
                act.close_with(CloseCode::Policy, "register first", ctx);
            }
        });
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, ctx| {
            if act.last_seen.elapsed() > CLIENT_TIMEOUT {
                info!(session = %act.id, "client timed out");
                ctx.stop();
            } else {
                act.push(Message::Ping(Bytes::new()), ctx);
            }
        });
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        if let Some(reg) = self.registered.take() {
            debug!(session = %self.id, room = %reg.room, client = %reg.client, "socket ended");
            self.node.stats.unregistered();
            reg.addr.do_send(Detach { session: self.id });
        }
        self.node.sessions.remove(self.id);
        Running::Stop
    }
}

impl StreamHandler<Result<AggregatedMessage, ProtocolError>> for SignalingSession {
    fn handle(&mut self, item: Result<AggregatedMessage, ProtocolError>, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        match item {
            Ok(AggregatedMessage::Text(t)) => self.on_frame(t.as_bytes(), ctx),
            // Collider decodes binary frames as JSON, like text.
            Ok(AggregatedMessage::Binary(b)) => self.on_frame(&b, ctx),
            Ok(AggregatedMessage::Ping(b)) => self.push(Message::Pong(b), ctx),
            Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(_)) => self.on_client_close(ctx),
            Err(ProtocolError::Overflow) => {
                metrics::counter!("switchboard_errors_total", "kind" => "oversized").increment(1);
                let e = FrameError::Json("message too large".into());
                self.node.stats.wserror();
                self.push(Message::Text(collider::error_frame(&e.to_string()).into()), ctx);
                self.close_with(CloseCode::Size, "message too large", ctx);
            }
            Err(e) => {
                debug!(session = %self.id, error = %e, "WebSocket protocol error");
                self.node.stats.wserror();
                self.close_with(CloseCode::Protocol, "protocol error", ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // The client went away; nothing more can be written.
        ctx.stop();
    }
}

impl Handler<ToSession> for SignalingSession {
    type Result = ();

    fn handle(&mut self, msg: ToSession, ctx: &mut Context<Self>) {
        match msg {
            ToSession::Deliver(m) => self.push(Message::Text(collider::message_frame(&m).into()), ctx),
            ToSession::GoAway => self.close_with(CloseCode::Away, "server shutting down", ctx),
            ToSession::Close => {
                // Removed by DELETE: the client is no longer registered here.
                if self.registered.take().is_some() {
                    self.node.stats.unregistered();
                }
                self.close_with(CloseCode::Normal, "", ctx);
            }
        }
    }
}

impl Handler<Kick> for SignalingSession {
    type Result = ();

    fn handle(&mut self, _: Kick, ctx: &mut Context<Self>) {
        info!(session = %self.id, "session closed by the operator");
        self.close_with(CloseCode::Policy, "closed by the operator", ctx);
    }
}

impl Handler<GoingAway> for SignalingSession {
    type Result = ();

    fn handle(&mut self, _: GoingAway, ctx: &mut Context<Self>) {
        match &self.registered {
            // The room releases the client's binding first, then says `GoAway`; should it not
            // (its proposal hangs without a majority), the socket closes all the same.
            Some(reg) => {
                reg.addr.do_send(Release { session: self.id });
                ctx.run_later(GO_AWAY_WITHIN, |act, ctx| act.close_with(CloseCode::Away, "server shutting down", ctx));
            }
            None => self.close_with(CloseCode::Away, "server shutting down", ctx),
        }
    }
}

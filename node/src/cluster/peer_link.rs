//! `PeerLink`: this node's connection to one other node. It carries requests (Raft RPCs,
//! forwarded proposals) and their replies, and forwarded signaling messages, which stay buffered
//! (bounded) until the peer acknowledges them and are sent again after a reconnect — unless the
//! peer came back as a new life (its sockets are gone): then they are handed back to go through
//! the log. Pings tell whether the peer is alive. It reconnects with backoff.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use switchboard_proto::cluster::{self, Frame, FrameReader, Reply, Request};
use switchboard_proto::rooms::{Binding, Envelope, ForwardTag, NodeId, SessionId};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::link_stream;
use super::types::PeerInfo;

/// How often a link pings its peer.
pub const PING_INTERVAL: Duration = Duration::from_millis(100);
/// First and longest reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(250);
/// Forwarded messages kept until acknowledged; beyond this the oldest are dropped (and counted).
pub const FORWARD_BUFFER: usize = 16_384;
/// Frames waiting for the socket writer.
const WRITE_QUEUE: usize = 65_536;

/// Why a request over a link failed.
#[derive(Debug, Clone, Error)]
pub enum LinkError {
    /// Not connected to the peer right now.
    #[error("node {0} is unreachable")]
    Unreachable(NodeId),
    /// No reply within the deadline.
    #[error("node {0} did not answer in time")]
    Timeout(NodeId),
    /// The connection dropped before the reply came.
    #[error("connection to node {0} was lost")]
    Lost(NodeId),
}

/// Send a request and wait for its reply.
#[derive(Message)]
#[rtype(result = "Result<Reply, LinkError>")]
pub struct Call {
    pub body: Request,
    pub timeout: Duration,
}

/// Forward signaling messages to a session on the peer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Forward {
    pub room: String,
    /// The sending client, so that undelivered messages can be sent again another way.
    pub from: String,
    pub session: SessionId,
    pub messages: Vec<String>,
    /// The peer writes them once it applied the log this far (see `Frame::Forward`).
    pub barrier: u64,
}

/// Forwarded messages the peer never acknowledged, handed back (to the link's [`ReclaimSink`])
/// because the peer was declared down: its clients will register elsewhere, or again, so the
/// messages must reach them another way.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reclaim;

/// One forward the peer did not acknowledge; its messages carry the forward's tag, so that the
/// peer, should the frame have reached it after all, writes them once.
#[derive(Debug, Clone)]
pub struct Unacked {
    pub room: String,
    pub from: String,
    /// The socket they were forwarded to.
    pub to: Binding,
    pub messages: Vec<Envelope>,
}

/// Forwards a link gave back, to go through the log.
#[derive(Debug)]
pub struct HandBack {
    /// The peer they were forwarded to.
    pub node: NodeId,
    pub unacked: Vec<Unacked>,
    /// The sockets they were meant for are gone (the peer came back as a new life). Otherwise
    /// the peer was declared down and may be alive: a socket of it bound again is live.
    pub sockets_gone: bool,
}

/// Where links hand back forwards; one task sends them through the log in the order given, so
/// that the runs of one link apply in the order their frames were sent.
pub type ReclaimSink = mpsc::UnboundedSender<HandBack>;

/// What every link of a node shares.
#[derive(Clone)]
pub struct LinkContext {
    /// This node.
    pub me: NodeId,
    /// The cluster secret the Hello proves.
    pub secret: Vec<u8>,
    /// This node's life.
    pub incarnation: u64,
    /// The address links dial from (`cluster.listen`'s, unless it is a wildcard), so that
    /// peers see each node at the address they know it by.
    pub bind_ip: Option<std::net::IpAddr>,
    /// A peer silent this long is dialled again.
    pub down_after: Duration,
    /// Every link's health.
    pub health: HealthTable,
    /// Where forwards meant for a peer's earlier life go.
    pub reclaims: ReclaimSink,
}

/// What a link knows about its peer.
#[derive(Debug, Clone, Copy)]
pub struct LinkHealth {
    /// Connected and heard from within the liveness window.
    pub up: bool,
    /// Since when it has been in this state.
    pub since: Instant,
    /// Round-trip time of the last ping.
    pub rtt: Option<Duration>,
    /// When the peer last answered a ping or welcomed this node.
    pub heard: Instant,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Connected {
    gen: u64,
    tx: mpsc::Sender<Vec<u8>>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Incoming {
    gen: u64,
    frame: Frame,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Disconnected {
    gen: u64,
    why: String,
}

/// Shared view of every link's health, for liveness decisions and metrics.
pub type HealthTable = Arc<RwLock<HashMap<NodeId, LinkHealth>>>;

/// A forward kept until acknowledged: the encoded frame, its sender (which the frame leaves
/// out) and the peer life holding the socket it goes to (from the socket's id).
struct Pending {
    seq: u64,
    frame: Vec<u8>,
    from: String,
    to_life: u64,
}

/// One per remote node.
pub struct PeerLink {
    ctx: LinkContext,
    peer: NodeId,
    info: PeerInfo,
    gen: u64,
    tx: Option<mpsc::Sender<Vec<u8>>>,
    pending: HashMap<u64, oneshot::Sender<Result<Reply, LinkError>>>,
    next_id: u64,
    /// Forwards not yet acknowledged.
    unacked: VecDeque<Pending>,
    next_seq: u64,
    /// The peer's life, as its last Welcome said.
    peer_incarnation: Option<u64>,
    /// The current connection's Welcome came: forwards may go out.
    welcomed: bool,
    last_heard: Instant,
    ping_sent: Option<(u64, Instant)>,
    backoff: Duration,
}

impl PeerLink {
    /// A link to `peer` at `info`.
    pub fn new(ctx: LinkContext, peer: NodeId, info: PeerInfo) -> Self {
        PeerLink {
            ctx,
            peer,
            info,
            gen: 0,
            tx: None,
            pending: HashMap::new(),
            next_id: 1,
            unacked: VecDeque::new(),
            next_seq: 1,
            peer_incarnation: None,
            welcomed: false,
            last_heard: Instant::now(),
            ping_sent: None,
            backoff: BACKOFF_MIN,
        }
    }

    fn set_health(&self, up: bool, rtt: Option<Duration>) {
        let mut h = self.ctx.health.write().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let e = h.entry(self.peer).or_insert(LinkHealth { up, since: now, rtt, heard: now });
        if up {
            e.heard = now;
        }
        if e.up != up {
            e.up = up;
            e.since = Instant::now();
            if up {
                info!(peer = self.peer, "peer link up");
            } else {
                warn!(peer = self.peer, "peer link down");
            }
            metrics::gauge!("switchboard_peer_link_up", "peer" => self.peer.to_string()).set(if up { 1.0 } else { 0.0 });
        }
        if rtt.is_some() {
            e.rtt = rtt;
        }
    }

    fn send_frame(&mut self, frame: &Frame) -> bool {
        let Some(tx) = &self.tx else { return false };
        match cluster::encode(frame) {
            Ok(bytes) => tx.try_send(bytes).is_ok(),
            Err(e) => {
                warn!(error = %e, "cannot encode a peer frame");
                false
            }
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.gen += 1;
        let gen = self.gen;
        let addr = self.info.raft_addr.clone();
        let hello = Frame::Hello { from: self.ctx.me, incarnation: self.ctx.incarnation };
        let secret = self.ctx.secret.clone();
        let bind_ip = self.ctx.bind_ip;
        let me = ctx.address();
        actix::spawn(async move {
            let stream = match dial_staggered(bind_ip, &addr).await {
                Ok(s) => s,
                Err(e) => return me.do_send(Disconnected { gen, why: e.to_string() }),
            };
            let Ok(hello) = cluster::encode(&hello) else { return };
            let (mut reader, wr, sealer) = match link_stream::dial(stream, &secret, &hello).await {
                Ok(parts) => parts,
                Err(e) => {
                    link_stream::report_auth_failure(&e, &addr, "peer link refused: the listener failed authentication");
                    return me.do_send(Disconnected { gen, why: format!("{e:#}") });
                }
            };
            let (tx, rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
            me.do_send(Connected { gen, tx });
            let writer_me = me.clone();
            actix::spawn(async move {
                let why = link_stream::write_frames(wr, sealer, rx).await;
                writer_me.do_send(Disconnected { gen, why });
            });
            loop {
                match reader.next_frame().await {
                    Ok(Some(frame)) => me.do_send(Incoming { gen, frame }),
                    Ok(None) => return me.do_send(Disconnected { gen, why: "closed by peer".into() }),
                    Err(e) => {
                        link_stream::report_auth_failure(&e, &addr, "peer link closed: a frame was not sealed by the peer");
                        return me.do_send(Disconnected { gen, why: format!("{e:#}") });
                    }
                }
            }
        });
    }

    fn drop_connection(&mut self, why: &str, ctx: &mut Context<Self>) {
        if self.tx.take().is_some() {
            debug!(peer = self.peer, why, "peer connection lost");
        }
        self.welcomed = false;
        for (_, waiter) in self.pending.drain() {
            let _ = waiter.send(Err(LinkError::Lost(self.peer)));
        }
        self.ping_sent = None;
        self.set_health(false, None);
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        let gen = self.gen;
        ctx.run_later(delay, move |act, ctx| {
            if act.gen == gen && act.tx.is_none() {
                act.connect(ctx);
            }
        });
    }
}

/// How long one round of connection attempts may take.
const DIAL_WINDOW: Duration = Duration::from_secs(1);
/// A fresh attempt starts this often within the round while the earlier ones hang.
const DIAL_STAGGER: Duration = Duration::from_millis(200);

/// Connects to `addr`, starting a fresh attempt every [`DIAL_STAGGER`] while the earlier ones
/// are unanswered: a SYN dropped by a partition is retransmitted by the kernel only after a
/// second, so without the overlap a healed link would wait that long to come back. A refusal
/// ends the round at once (the peer's host answered; backing off is what helps then).
async fn dial_staggered(bind_ip: Option<std::net::IpAddr>, addr: &str) -> std::io::Result<TcpStream> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut attempts = FuturesUnordered::new();
    let deadline = tokio::time::sleep(DIAL_WINDOW);
    tokio::pin!(deadline);
    let mut stagger = tokio::time::interval(DIAL_STAGGER);
    loop {
        tokio::select! {
            _ = &mut deadline => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
            _ = stagger.tick() => attempts.push(dial_from(bind_ip, addr)),
            Some(r) = attempts.next() => return r,
        }
    }
}

/// Connects to `addr`, from `bind_ip` when given.
async fn dial_from(bind_ip: Option<std::net::IpAddr>, addr: &str) -> std::io::Result<TcpStream> {
    let Some(ip) = bind_ip else { return TcpStream::connect(addr).await };
    let target = tokio::net::lookup_host(addr)
        .await?
        .find(|a| a.is_ipv4() == ip.is_ipv4())
        .ok_or_else(|| std::io::Error::other(format!("{addr} has no address of {ip}'s family")))?;
    let sock = if ip.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    sock.bind(std::net::SocketAddr::new(ip, 0))?;
    sock.connect(target).await
}

impl Actor for PeerLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.set_health(false, None);
        self.connect(ctx);
        ctx.run_interval(PING_INTERVAL, |act, ctx| {
            if act.tx.is_none() {
                return;
            }
            if act.last_heard.elapsed() > act.ctx.down_after {
                // Silent peer: treat the connection as dead and dial again.
                act.gen += 1;
                act.drop_connection("no answer to pings", ctx);
                return;
            }
            let nonce = act.next_id;
            act.next_id += 1;
            act.ping_sent = Some((nonce, Instant::now()));
            act.send_frame(&Frame::Ping { nonce });
        });
    }
}

impl Handler<Connected> for PeerLink {
    type Result = ();

    fn handle(&mut self, msg: Connected, _: &mut Context<Self>) {
        if msg.gen != self.gen {
            return;
        }
        self.tx = Some(msg.tx);
        self.last_heard = Instant::now();
        self.backoff = BACKOFF_MIN;
        // Up, and unacknowledged forwards sent again, once the peer's Welcome says it accepted
        // this node and which life it is in.
    }
}

impl Handler<Disconnected> for PeerLink {
    type Result = ();

    fn handle(&mut self, msg: Disconnected, ctx: &mut Context<Self>) {
        if msg.gen == self.gen {
            self.drop_connection(&msg.why, ctx);
        }
    }
}

impl Handler<Incoming> for PeerLink {
    type Result = ();

    fn handle(&mut self, msg: Incoming, ctx: &mut Context<Self>) {
        if msg.gen != self.gen {
            return;
        }
        self.last_heard = Instant::now();
        match msg.frame {
            Frame::Reply { id, body } => {
                if let Some(w) = self.pending.remove(&id) {
                    let _ = w.send(Ok(body));
                }
            }
            Frame::Ack { seq } => {
                while self.unacked.front().is_some_and(|p| p.seq <= seq) {
                    self.unacked.pop_front();
                }
            }
            Frame::Welcome { node, incarnation } => {
                if node != self.peer {
                    warn!(peer = self.peer, addr = %self.info.raft_addr, answered = node, "another node answers at this peer's cluster address; check cluster.peers");
                    self.gen += 1;
                    self.drop_connection("wrong node", ctx);
                    return;
                }
                self.welcomed(incarnation)
            }
            Frame::Pong { nonce } => {
                if let Some((n, at)) = self.ping_sent {
                    if n == nonce {
                        self.set_health(true, Some(at.elapsed()));
                        self.ping_sent = None;
                    }
                }
            }
            other => debug!(peer = self.peer, frame = ?other, "unexpected frame on an outgoing link"),
        }
    }
}

impl PeerLink {
    /// The peer said which life it is in. Forwards to sockets of an earlier life target sockets
    /// that are gone: they go back to be sent through the log. The others (sockets of this life,
    /// some perhaps registered before the link heard of it) go again; the peer drops what it
    /// already has.
    fn welcomed(&mut self, incarnation: u64) {
        if self.peer_incarnation.is_some_and(|old| old != incarnation) {
            info!(peer = self.peer, "peer restarted; its sockets are gone");
        }
        self.peer_incarnation = Some(incarnation);
        self.welcomed = true;
        self.set_health(true, None);
        let (stale, live): (VecDeque<Pending>, VecDeque<Pending>) =
            std::mem::take(&mut self.unacked).into_iter().partition(|p| p.to_life != incarnation);
        self.unacked = live;
        if !stale.is_empty() {
            let _ = self.ctx.reclaims.send(HandBack { node: self.peer, unacked: self.decode(stale), sockets_gone: true });
        }
        if let Some(tx) = &self.tx {
            for p in &self.unacked {
                let _ = tx.try_send(p.frame.clone());
            }
        }
    }

    /// Decodes kept forwards (rare: only when they are handed back), tagging their messages.
    fn decode(&self, pending: impl IntoIterator<Item = Pending>) -> Vec<Unacked> {
        pending
            .into_iter()
            .filter_map(|p| {
                let mut reader = FrameReader::default();
                reader.push(&p.frame);
                match reader.next_frame() {
                    Ok(Some(Frame::Forward { room, messages, seq, session, .. })) => {
                        let tag = ForwardTag { from: self.ctx.me, incarnation: self.ctx.incarnation, to: self.peer, to_life: p.to_life, seq };
                        let messages = messages.into_iter().map(|body| Envelope { body, tag: Some(tag) }).collect();
                        Some(Unacked { room, from: p.from, to: Binding { node: self.peer, session }, messages })
                    }
                    _ => None,
                }
            })
            .collect()
    }
}

impl Handler<Call> for PeerLink {
    type Result = ResponseFuture<Result<Reply, LinkError>>;

    fn handle(&mut self, msg: Call, _: &mut Context<Self>) -> Self::Result {
        let peer = self.peer;
        let id = self.next_id;
        self.next_id += 1;
        if !self.send_frame(&Frame::Request { id, body: msg.body }) {
            return Box::pin(async move { Err(LinkError::Unreachable(peer)) });
        }
        let (tx, rx) = oneshot::channel();
        self.pending.insert(id, tx);
        Box::pin(async move {
            match tokio::time::timeout(msg.timeout, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(LinkError::Lost(peer)),
                Err(_) => Err(LinkError::Timeout(peer)),
            }
        })
    }
}

impl Handler<Forward> for PeerLink {
    type Result = ();

    fn handle(&mut self, msg: Forward, _: &mut Context<Self>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.unacked.len() >= FORWARD_BUFFER {
            self.unacked.pop_front();
            metrics::counter!("switchboard_forward_dropped_total").increment(1);
        }
        let floor = self.unacked.front().map_or(seq, |p| p.seq);
        // The socket's id says which life of the peer holds it. That life, not the one this
        // link last heard of, decides where the frame goes: a socket registered right after the
        // peer restarted is live though the link has not yet heard of the restart, and one of an
        // earlier life is gone though the link already has.
        let to_life = msg.session.life();
        let frame = Frame::Forward { seq, room: msg.room, session: msg.session, messages: msg.messages, barrier: msg.barrier, floor };
        let Ok(bytes) = cluster::encode(&frame) else { return };
        let pending = Pending { seq, frame: bytes, from: msg.from, to_life };
        metrics::counter!("switchboard_forwarded_total").increment(1);
        if self.welcomed && self.peer_incarnation.is_some_and(|l| l != to_life) {
            let _ = self.ctx.reclaims.send(HandBack { node: self.peer, unacked: self.decode([pending]), sockets_gone: true });
            return;
        }
        // Before the connection's Welcome the frame waits: the peer's life decides where it goes.
        if self.welcomed {
            if let Some(tx) = &self.tx {
                let _ = tx.try_send(pending.frame.clone());
            }
        }
        self.unacked.push_back(pending);
    }
}

impl Handler<Reclaim> for PeerLink {
    type Result = ();

    fn handle(&mut self, _: Reclaim, _: &mut Context<Self>) {
        // Taken, not copied: if the peer comes back, it must not get them a second time (and
        // should one have reached it, its tag makes the peer write it once).
        let pending = std::mem::take(&mut self.unacked);
        if !pending.is_empty() {
            let _ = self.ctx.reclaims.send(HandBack { node: self.peer, unacked: self.decode(pending), sockets_gone: false });
        }
    }
}

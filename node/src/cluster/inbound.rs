//! The internal listener: other nodes' peer links connect here. Each proves the cluster secret
//! in a handshake (`link_stream`) and names itself in its first sealed frame; it is welcomed with
//! this node's id and life. The listener answers requests (Raft RPCs,
//! proposals for the leader, elections), hands forwarded signaling messages to the room registry
//! once each, acknowledges them once they reached their sockets, and answers pings.

use std::net::{IpAddr, SocketAddr};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use super::batcher::{Batcher, WriteError};
use super::clock::Stamper;
use switchboard_proto::cluster::{self, ClusterCommand, Frame, RaftRpc, Reply, Request};
use anyhow::Context as _;
use switchboard_proto::peer_security::Sealer;
use switchboard_proto::rooms::NodeId;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::ledger::{FrameAck, Ledger};
use super::link_stream::{self, SecureReader};
use super::network::PeerLinks;
use super::types::Raft;
use crate::rooms::{RoomRegistry, ToRoom};

/// Most authenticated inbound peer connections at once (a cluster has a handful of nodes).
const MAX_PEER_CONNECTIONS: usize = 64;
/// Most handshakes in progress at once. When full, the oldest is dropped for the newcomer: a
/// real peer's handshake takes one round trip, so connections that trickle bytes to hold slots
/// are the ones that go, and they cannot lock real peers out.
const MAX_HANDSHAKES: usize = 64;
/// Most handshakes in progress from one address (a node dials each peer once).
const MAX_HANDSHAKES_PER_IP: usize = 8;
/// An authenticated link that sends nothing for this long is closed (peers ping every 100 ms).
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything a request handler needs.
#[derive(Clone)]
pub struct InboundContext {
    pub raft: Raft,
    pub batcher: Batcher,
    pub registry: Addr<RoomRegistry>,
    pub secret: Vec<u8>,
    /// What arrived from whom, for once-only delivery and acknowledgements.
    pub ledger: Arc<Ledger>,
    /// This node's id and life, told to every peer that connects.
    pub me: NodeId,
    pub incarnation: u64,
    /// How long a proposal forwarded to this node (as leader) may take.
    pub propose_timeout: Duration,
    /// Where to note that a peer was heard.
    pub links: PeerLinks,
    /// Stamps forwarded proposals with this node's cluster time when it takes them.
    pub stamper: Stamper,
}

/// Handshakes in progress, oldest first, each with the means to end it.
#[derive(Default)]
struct Handshakes {
    next: u64,
    queue: VecDeque<(u64, IpAddr, oneshot::Sender<()>)>,
    per_ip: HashMap<IpAddr, usize>,
}

impl Handshakes {
    /// Registers a new handshake from `ip`, evicting the oldest when full; `None` when `ip`
    /// already has [`MAX_HANDSHAKES_PER_IP`] in progress.
    fn begin(&mut self, ip: IpAddr) -> Option<(u64, oneshot::Receiver<()>)> {
        let mine = self.per_ip.entry(ip).or_default();
        if *mine >= MAX_HANDSHAKES_PER_IP {
            return None;
        }
        *mine += 1;
        if self.queue.len() >= MAX_HANDSHAKES {
            if let Some((_, ip, evict)) = self.queue.pop_front() {
                let _ = evict.send(());
                self.release(ip);
                metrics::counter!("switchboard_errors_total", "kind" => "peer_handshake_evicted").increment(1);
            }
        }
        self.next += 1;
        let (tx, rx) = oneshot::channel();
        self.queue.push_back((self.next, ip, tx));
        Some((self.next, rx))
    }

    fn end(&mut self, id: u64) {
        let Some(at) = self.queue.iter().position(|(i, _, _)| *i == id) else { return };
        if let Some((_, ip, _)) = self.queue.remove(at) {
            self.release(ip);
        }
    }

    fn release(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

/// Accepts peer connections on `addr` until the process ends.
pub async fn serve(listener: TcpListener, ctx: InboundContext) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_PEER_CONNECTIONS));
    let handshakes = Arc::new(Mutex::new(Handshakes::default()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some((id, evicted)) = handshakes.lock().unwrap_or_else(|p| p.into_inner()).begin(peer.ip()) else {
            metrics::counter!("switchboard_errors_total", "kind" => "peer_handshake_refused").increment(1);
            debug!(%peer, "too many handshakes from this address; refused");
            continue;
        };
        let ctx = ctx.clone();
        let slots = slots.clone();
        let handshakes = handshakes.clone();
        actix::spawn(async move {
            let deadline = Instant::now() + link_stream::HANDSHAKE_DEADLINE;
            let opened = tokio::select! {
                r = handshake(stream, &ctx, deadline) => r,
                _ = evicted => Err(anyhow::anyhow!("handshake evicted by newer connections")),
            };
            handshakes.lock().unwrap_or_else(|p| p.into_inner()).end(id);
            let link = match opened {
                Ok(link) => link,
                Err(e) => {
                    let what = "peer refused: it does not hold the cluster secret (or replayed or altered its bytes)";
                    if !link_stream::report_auth_failure(&e, &peer, what) {
                        debug!(%peer, error = %format!("{e:#}"), "peer handshake failed");
                    }
                    return;
                }
            };
            let Ok(_permit) = slots.try_acquire_owned() else {
                warn!(%peer, from = link.from, "too many peer connections; refused");
                return;
            };
            let from = link.from;
            if let Err(e) = connection(link, peer, ctx).await {
                let what = format!("peer link from node {from} closed: a frame was not sealed by it (injected, altered or replayed)");
                if !link_stream::report_auth_failure(&e, &peer, &what) {
                    debug!(%peer, error = %format!("{e:#}"), "peer connection ended");
                }
            }
        });
    }
}

/// An authenticated inbound link: who it is and its halves.
struct Link {
    from: NodeId,
    incarnation: u64,
    reader: SecureReader,
    wr: OwnedWriteHalf,
    sealer: Sealer,
}

/// The handshake, then the peer's first sealed frame, which must be its Hello.
async fn handshake(stream: TcpStream, ctx: &InboundContext, deadline: Instant) -> anyhow::Result<Link> {
    let (mut reader, wr, sealer) = link_stream::accept(stream, &ctx.secret, deadline).await?;
    match tokio::time::timeout_at(deadline, reader.next_frame()).await.context("no hello in time")?? {
        Some(Frame::Hello { from, incarnation }) => Ok(Link { from, incarnation, reader, wr, sealer }),
        Some(other) => anyhow::bail!("expected hello, got {other:?}"),
        None => anyhow::bail!("closed before hello"),
    }
}

async fn connection(link: Link, peer: SocketAddr, ctx: InboundContext) -> anyhow::Result<()> {
    let Link { from, incarnation, mut reader, wr, sealer } = link;
    info!(%peer, from, "peer connected");
    let handed_over = ctx.ledger.connect(from, incarnation);

    let (tx, rx) = mpsc::channel::<Vec<u8>>(4096);
    actix::spawn(async move {
        let why = link_stream::write_frames(wr, sealer, rx).await;
        debug!(from, why, "inbound link writer ended");
    });
    let send = |tx: &mpsc::Sender<Vec<u8>>, f: &Frame| {
        if let Ok(b) = cluster::encode(f) {
            let _ = tx.try_send(b);
        }
    };
    send(&tx, &Frame::Welcome { node: ctx.me, incarnation: ctx.incarnation });

    let mut acked = 0;
    let mut first = None;
    loop {
        // Everything that arrived together, then one acknowledgement.
        let mut next = first.take();
        while let Some(frame) = next {
            ctx.links.heard_from(from);
            match frame {
                Frame::Request { id, body } => {
                    let ctx = ctx.clone();
                    let tx = tx.clone();
                    actix::spawn(async move {
                        let reply = handle(&ctx, body).await;
                        if let Ok(b) = cluster::encode(&Frame::Reply { id, body: reply }) {
                            let _ = tx.send(b).await;
                        }
                    });
                }
                Frame::Forward { seq, room, session, messages, barrier, floor } => {
                    if ctx.ledger.receive(from, incarnation, seq, floor) {
                        metrics::counter!("switchboard_forwards_received_total").increment(1);
                        let ack = Some(FrameAck { from, incarnation, seq });
                        ctx.registry.do_send(ToRoom { room, session, messages, barrier, ack });
                    }
                }
                Frame::Ping { nonce } => send(&tx, &Frame::Pong { nonce }),
                other => debug!(from, frame = ?other, "unexpected frame on an inbound link"),
            }
            next = reader.buffered_frame()?;
        }
        // Acknowledge what reached its sockets: after every read, and whenever a room hands a
        // forward over.
        let done = ctx.ledger.acknowledged(from, incarnation);
        if done > acked {
            acked = done;
            send(&tx, &Frame::Ack { seq: done });
        }
        tokio::select! {
            read = tokio::time::timeout(IDLE_TIMEOUT, reader.next_frame()) => {
                match read.context("peer idle")?? {
                    Some(f) => first = Some(f),
                    None => return Ok(()),
                }
            }
            _ = handed_over.notified() => {}
        }
    }
}

fn encoded<T: serde::Serialize>(v: &T) -> Reply {
    match postcard::to_allocvec(v) {
        Ok(b) => Reply::Raft(b),
        Err(e) => Reply::Failed(format!("cannot encode reply: {e}")),
    }
}

async fn handle(ctx: &InboundContext, body: Request) -> Reply {
    match body {
        Request::Raft { kind, payload } => match kind {
            RaftRpc::Append => match postcard::from_bytes(&payload) {
                Ok(req) => encoded(&ctx.raft.append_entries(req).await),
                Err(e) => Reply::Failed(format!("bad append-entries: {e}")),
            },
            RaftRpc::Vote => match postcard::from_bytes(&payload) {
                Ok(req) => encoded(&ctx.raft.vote(req).await),
                Err(e) => Reply::Failed(format!("bad vote: {e}")),
            },
            RaftRpc::Snapshot => match postcard::from_bytes(&payload) {
                Ok(req) => encoded(&ctx.raft.install_snapshot(req).await),
                Err(e) => Reply::Failed(format!("bad snapshot chunk: {e}")),
            },
        },
        Request::Propose(mut cmd) => {
            // The leader's time, not the sender's: a once-only proposal that waited (in this
            // node's socket while it was stopped) past its expiry must not be applied.
            ctx.stamper.stamp(&mut cmd);
            match tokio::time::timeout(ctx.propose_timeout, propose_here(&ctx.batcher, cmd)).await {
                Ok(reply) => reply,
                // Nothing committed in time (no majority here): the proposer decides what next.
                Err(_) => Reply::Failed("no quorum: the proposal did not commit in time".into()),
            }
        }
        Request::TriggerElect => match ctx.raft.trigger().elect().await {
            Ok(()) => Reply::Done,
            Err(e) => Reply::Failed(e.to_string()),
        },
    }
}

/// Applies a forwarded proposal if this node leads.
pub async fn propose_here(batcher: &Batcher, cmd: ClusterCommand) -> Reply {
    match batcher.write(cmd).await {
        Ok((outcome, index)) => Reply::Proposed { outcome, index },
        Err(WriteError::NotLeader(leader)) => Reply::NotLeader { leader },
        // Not applied; the proposer asks again.
        Err(WriteError::Replaced) => Reply::NotLeader { leader: None },
        Err(WriteError::Failed(e)) => Reply::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn handshakes_evict_the_oldest_and_cap_each_address() {
        let mut h = Handshakes::default();
        let mut first = Vec::new();
        for n in 0..MAX_HANDSHAKES as u32 {
            first.push(h.begin(ip(n)).expect("room for one per address"));
        }
        // Full: a newcomer takes the oldest one's place.
        let (_, mut newest) = h.begin(ip(1000)).unwrap();
        assert_eq!(first[0].1.try_recv(), Ok(()), "the oldest was told to stop");
        assert!(first[1].1.try_recv().is_err(), "the others go on");
        assert!(newest.try_recv().is_err());
        assert_eq!(h.queue.len(), MAX_HANDSHAKES);
        assert!(!h.per_ip.contains_key(&ip(0)), "the evicted one's address is released");

        // One address holds at most MAX_HANDSHAKES_PER_IP; ending one makes room again.
        let mut h = Handshakes::default();
        let ids: Vec<u64> = (0..MAX_HANDSHAKES_PER_IP).map(|_| h.begin(ip(7)).unwrap().0).collect();
        assert!(h.begin(ip(7)).is_none());
        assert!(h.begin(ip(8)).is_some(), "another address is not affected");
        h.end(ids[3]);
        assert!(h.begin(ip(7)).is_some());
    }
}

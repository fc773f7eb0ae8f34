//! The internal listener: other nodes' peer links connect here. It checks the cluster secret in
//! the first frame and welcomes the peer with this node's life, answers requests (Raft RPCs,
//! proposals for the leader, elections), hands forwarded signaling messages to the room registry
//! once each, acknowledges them once they reached their sockets, and answers pings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use super::batcher::{Batcher, WriteError};
use switchboard_proto::cluster::{self, ClusterCommand, Frame, FrameReader, RaftRpc, Reply, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::ledger::{FrameAck, Ledger};
use super::network::PeerLinks;
use super::types::Raft;
use crate::rooms::{RoomRegistry, ToRoom};

/// Most inbound peer connections at once (a cluster has a handful of nodes).
const MAX_PEER_CONNECTIONS: usize = 64;

/// Everything a request handler needs.
#[derive(Clone)]
pub struct InboundContext {
    pub raft: Raft,
    pub batcher: Batcher,
    pub registry: Addr<RoomRegistry>,
    pub secret: Vec<u8>,
    /// What arrived from whom, for once-only delivery and acknowledgements.
    pub ledger: Arc<Ledger>,
    /// This node's life, told to every peer that connects.
    pub incarnation: u64,
    /// How long a proposal forwarded to this node (as leader) may take.
    pub propose_timeout: Duration,
    /// Where to note that a peer was heard.
    pub links: PeerLinks,
}

/// Accepts peer connections on `addr` until the process ends.
pub async fn serve(listener: TcpListener, ctx: InboundContext) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_PEER_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(%peer, "too many peer connections; refused");
            continue;
        };
        let ctx = ctx.clone();
        actix::spawn(async move {
            if let Err(e) = connection(stream, peer, ctx).await {
                debug!(%peer, error = %e, "peer connection ended");
            }
            drop(permit);
        });
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, ctx: InboundContext) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::default();
    let mut buf = vec![0u8; 64 * 1024];

    // The first frame must be a valid Hello, within a second.
    let (from, incarnation) = loop {
        let n = tokio::time::timeout(Duration::from_secs(1), rd.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "closed before hello");
        reader.push(&buf[..n]);
        match reader.next_frame()? {
            Some(Frame::Hello { from, incarnation, auth }) => {
                if !ctx.secret.is_empty() && !cluster::verify_hello(&ctx.secret, from, incarnation, &auth) {
                    warn!(%peer, from, "peer refused: wrong cluster secret");
                    metrics::counter!("switchboard_errors_total", "kind" => "peer_auth").increment(1);
                    anyhow::bail!("bad cluster secret");
                }
                break (from, incarnation);
            }
            Some(other) => anyhow::bail!("expected hello, got {other:?}"),
            None => continue,
        }
    };
    info!(%peer, from, "peer connected");
    let handed_over = ctx.ledger.connect(from, incarnation);

    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4096);
    actix::spawn(async move {
        let mut batch = Vec::new();
        while let Some(first) = rx.recv().await {
            batch.clear();
            batch.extend_from_slice(&first);
            while let Ok(more) = rx.try_recv() {
                batch.extend_from_slice(&more);
                if batch.len() > 256 * 1024 {
                    break;
                }
            }
            if wr.write_all(&batch).await.is_err() {
                return;
            }
        }
    });
    let send = |tx: &mpsc::Sender<Vec<u8>>, f: &Frame| {
        if let Ok(b) = cluster::encode(f) {
            let _ = tx.try_send(b);
        }
    };
    send(&tx, &Frame::Welcome { incarnation: ctx.incarnation });

    let mut acked = 0;
    loop {
        let mut heard = false;
        while let Some(frame) = reader.next_frame()? {
            heard = true;
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
        }
        if heard {
            ctx.links.heard_from(from);
        }
        // Acknowledge what reached its sockets: after every read, and whenever a room hands a
        // forward over.
        let done = ctx.ledger.acknowledged(from, incarnation);
        if done > acked {
            acked = done;
            send(&tx, &Frame::Ack { seq: done });
        }
        tokio::select! {
            read = rd.read(&mut buf) => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                reader.push(&buf[..n]);
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
        Request::Propose(cmd) => match tokio::time::timeout(ctx.propose_timeout, propose_here(&ctx.batcher, cmd)).await {
            Ok(reply) => reply,
            // Nothing committed in time (no majority here): the proposer decides what next.
            Err(_) => Reply::Failed("no quorum: the proposal did not commit in time".into()),
        },
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

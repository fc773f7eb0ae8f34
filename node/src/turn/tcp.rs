//! TURN over TCP and TLS (`turns:`): one task per client connection, which is the allocation's
//! 5-tuple, so it carries at most one allocation. STUN messages and ChannelData are framed by
//! their own length fields (ChannelData padded to 4 bytes, RFC 8656 §12.5). A UDP relay is read
//! by the same task. RFC 6062 TCP relays: the relay is a TCP listener; Connect opens a
//! connection from the relay address, an inbound one raises a ConnectionAttempt, and the client
//! binds either to a new connection with ConnectionBind, which then carries raw bytes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Arbiter};
use anyhow::{Context, Result};
use switchboard_proto::turn::server::{AllocateRequest, ConnectRequest, Ctx, Handled};
use switchboard_proto::turn::{channel_data, AllocationState, ClientTransport, RelayTransport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

use super::allocation::{Allocation, Gone, Refreshed};
use super::directory::AllocationView;
use super::{Bucket, Shared};
use crate::config::Config;
use crate::rooms::now_ms;

/// Most TURN TCP/TLS connections at once.
const MAX_CONNECTIONS: usize = 10_000;
/// A connection that has no allocation and says nothing this long is closed.
const IDLE: Duration = Duration::from_secs(30);
/// Largest frame: a STUN message or ChannelData with a 16-bit length.
const MAX_FRAME: usize = 20 + 65_535 + 3;
/// How long a client or peer may take to accept bytes written to it.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// An RFC 6062 data connection with no bytes either way for this long is closed.
const PIPE_IDLE: Duration = Duration::from_secs(300);
/// Peer connections (RFC 6062 Connect) one allocation may have open or opening.
const MAX_PEER_CONNECTIONS: usize = 64;
/// RFC 6062: a peer connection waits this long for the client's ConnectionBind, and a Connect
/// for the peer to answer.
const BIND_WAIT: Duration = Duration::from_secs(30);
/// Peer connections waiting for a ConnectionBind, node-wide.
const MAX_PENDING: usize = 10_000;

/// Peer connections of TCP relays waiting for the client's ConnectionBind (RFC 6062 §5.3).
#[derive(Default)]
pub struct PendingConnections {
    inner: Mutex<HashMap<u32, Pending>>,
}

/// A peer connection waiting for the client's ConnectionBind.
struct Pending {
    stream: TcpStream,
    username: String,
    at: Instant,
    /// Ends when the allocation that made it ends (RFC 6062 §5: its data connections go with it).
    alive: watch::Receiver<()>,
}

impl PendingConnections {
    fn insert(&self, stream: TcpStream, username: &str, alive: watch::Receiver<()>) -> Option<u32> {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, p| p.at.elapsed() < BIND_WAIT);
        if m.len() >= MAX_PENDING {
            return None;
        }
        let mut id: u32 = rand::random();
        while id == 0 || m.contains_key(&id) {
            id = rand::random();
        }
        m.insert(id, Pending { stream, username: username.to_owned(), at: Instant::now(), alive });
        Some(id)
    }

    fn take(&self, id: u32, username: &str) -> Option<(TcpStream, watch::Receiver<()>)> {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match m.remove(&id) {
            Some(p) if p.username == username && p.at.elapsed() < BIND_WAIT => Some((p.stream, p.alive)),
            Some(other) if other.username != username => {
                // Someone else's connection: leave it for its owner.
                m.insert(id, other);
                None
            }
            _ => None,
        }
    }
}

/// Starts the TCP and TLS listeners on their own thread.
pub fn start(config: &Config, shared: Arc<Shared>) -> Result<()> {
    let t = &config.turn;
    let tls = if t.tls_listen.is_empty() {
        None
    } else {
        let (cert, key) = if t.tls_cert.is_empty() {
            (config.http.tls_cert.clone(), config.http.tls_key.clone())
        } else {
            (t.tls_cert.clone(), t.tls_key.clone())
        };
        let mut cfg = crate::http::tls::server_config(cert.as_ref(), key.as_ref()).context("TURN TLS certificate")?;
        cfg.alpn_protocols.clear();
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
    };
    let mut listeners = Vec::new();
    for addr in &t.listen {
        let l = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen for TURN/TCP on {addr}"))?;
        l.set_nonblocking(true)?;
        listeners.push((l, None));
    }
    for addr in &t.tls_listen {
        let l = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen for TURN/TLS on {addr}"))?;
        l.set_nonblocking(true)?;
        listeners.push((l, tls.clone()));
    }
    let arbiter = Arbiter::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let pending = Arc::new(PendingConnections::default());
    for (l, tls) in listeners {
        let (shared, slots, pending) = (shared.clone(), slots.clone(), pending.clone());
        arbiter.spawn(async move {
            let Ok(listener) = TcpListener::from_std(l) else { return };
            info!(addr = ?listener.local_addr().ok(), tls = tls.is_some(), "TURN stream listener running");
            loop {
                let (stream, client) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "TURN accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    warn!(%client, "TURN connection refused: connection limit");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let Ok(local) = stream.local_addr() else { continue };
                let (shared, tls, pending) = (shared.clone(), tls.clone(), pending.clone());
                actix::spawn(async move {
                    let res = match tls {
                        Some(acceptor) => match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                            Ok(Ok(s)) => serve(s, client, local, ClientTransport::Tls, shared, pending).await,
                            Ok(Err(e)) => Err(anyhow::anyhow!("TLS handshake: {e}")),
                            Err(_) => Err(anyhow::anyhow!("TLS handshake timed out")),
                        },
                        None => serve(stream, client, local, ClientTransport::Tcp, shared, pending).await,
                    };
                    if let Err(e) = res {
                        debug!(%client, error = %e, "TURN connection ended");
                    }
                    drop(permit);
                });
            }
        });
    }
    // The arbiter runs for the life of the process.
    std::mem::forget(arbiter);
    Ok(())
}

enum Relay {
    Udp(UdpSocket),
    Tcp { listener: TcpListener, connected: HashSet<SocketAddr>, _port: super::ports::TcpPortGuard },
}

struct ConnAlloc {
    state: AllocationState,
    relay: Relay,
    actor: Addr<Allocation>,
    bucket: Bucket,
    /// Dropped with the allocation: its data connections see it and close.
    alive: watch::Sender<()>,
}

impl Drop for ConnAlloc {
    /// However the connection ends (closed, an error, a stalled write), its allocation ends
    /// with it, giving back the quota slot and the relay port.
    fn drop(&mut self) {
        self.actor.do_send(Gone);
    }
}

/// Length of the frame at the start of `buf`, `Some(Err)` if it cannot be TURN.
fn frame_len(buf: &[u8]) -> Option<Result<usize, ()>> {
    if buf.len() < 4 {
        return None;
    }
    let len = if channel_data::is_channel_data(buf) {
        channel_data::framed_len(buf)?
    } else if buf[0] & 0xC0 == 0 {
        20 + u16::from_be_bytes([buf[2], buf[3]]) as usize
    } else {
        return Some(Err(()));
    };
    Some(Ok(len))
}

/// What the connection's loop does next.
enum Next {
    Go,
    /// ConnectionBind succeeded: this connection now pipes raw bytes to the peer for as long
    /// as the allocation lives.
    Pipe(TcpStream, watch::Receiver<()>),
}

struct Conn {
    client: SocketAddr,
    local: SocketAddr,
    transport: ClientTransport,
    label: &'static str,
    shared: Arc<Shared>,
    pending: Arc<PendingConnections>,
    alloc: Option<ConnAlloc>,
    expire_tx: mpsc::UnboundedSender<()>,
    connect_tx: mpsc::UnboundedSender<(ConnectRequest, Result<TcpStream, ()>)>,
    out: Vec<u8>,
}

async fn serve<S>(
    stream: S,
    client: SocketAddr,
    local: SocketAddr,
    transport: ClientTransport,
    shared: Arc<Shared>,
    pending: Arc<PendingConnections>,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut inbuf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut relay_buf = vec![0u8; 65_536];
    let (expire_tx, mut expire_rx) = mpsc::unbounded_channel::<()>();
    let (connect_tx, mut connect_rx) = mpsc::unbounded_channel();
    let mut c = Conn {
        client,
        local,
        transport,
        label: if transport == ClientTransport::Tls { "tls" } else { "tcp" },
        shared,
        pending,
        alloc: None,
        expire_tx,
        connect_tx,
        out: Vec::with_capacity(4096),
    };
    let piped = loop {
        let idle = tokio::time::sleep(IDLE);
        tokio::select! {
            n = rd.read(&mut chunk) => {
                let n = n?;
                if n == 0 {
                    break None;
                }
                inbuf.extend_from_slice(&chunk[..n]);
                let now = now_ms();
                let mut start = 0;
                let mut pipe = None;
                while let Some(len) = frame_len(&inbuf[start..]) {
                    let Ok(len) = len else { anyhow::bail!("not STUN or ChannelData") };
                    if len > MAX_FRAME {
                        anyhow::bail!("frame too large");
                    }
                    if inbuf.len() - start < len {
                        break;
                    }
                    let frame = inbuf[start..start + len].to_vec();
                    start += len;
                    if let Next::Pipe(peer, alive) = c.frame(&frame, now).await {
                        pipe = Some((peer, alive));
                        break;
                    }
                }
                inbuf.drain(..start);
                if !c.out.is_empty() {
                    write_by_deadline(&mut wr, &c.out).await?;
                    c.out.clear();
                }
                if let Some(peer) = pipe {
                    break Some(peer);
                }
            }
            r = async {
                match c.alloc.as_ref().map(|a| &a.relay) {
                    Some(Relay::Udp(s)) => s.recv_from(&mut relay_buf).await.map(Inbound::Datagram),
                    Some(Relay::Tcp { listener, .. }) => listener.accept().await.map(|(s, p)| Inbound::Peer(s, p)),
                    None => std::future::pending().await,
                }
            } => {
                match r? {
                    Inbound::Datagram((n, peer)) => c.peer_datagram(peer, &relay_buf[..n]),
                    Inbound::Peer(stream, peer) => c.peer_connection(stream, peer),
                }
                if !c.out.is_empty() {
                    write_by_deadline(&mut wr, &c.out).await?;
                    c.out.clear();
                }
            }
            Some((req, result)) = connect_rx.recv() => {
                c.connected(req, result);
                if !c.out.is_empty() {
                    write_by_deadline(&mut wr, &c.out).await?;
                    c.out.clear();
                }
            }
            _ = expire_rx.recv() => {
                c.alloc = None;
            }
            _ = idle, if c.alloc.is_none() => {
                debug!(%client, "idle TURN connection closed");
                break None;
            }
        }
    };
    // Ends the allocation (see `ConnAlloc`'s drop) before a data connection takes over.
    c.alloc = None;
    if let Some((mut peer, alive)) = piped {
        // RFC 6062 data connection: from here on, raw bytes both ways.
        let stream = rd.unsplit(wr);
        if !inbuf.is_empty() {
            write_by_deadline(&mut peer, &inbuf).await?;
        }
        let (up, down) = pipe(stream, peer, alive, Bucket::new(c.shared.max_bps())).await?;
        debug!(%client, up, down, "TCP relay connection closed");
    }
    Ok(())
}

/// Writes to a client or peer, which must take the bytes within [`WRITE_DEADLINE`]: one that
/// stops reading would otherwise block its connection's task, and with it the expiry of its
/// allocation, forever.
async fn write_by_deadline<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> Result<()> {
    match tokio::time::timeout(WRITE_DEADLINE, w.write_all(bytes)).await {
        Ok(r) => Ok(r?),
        Err(_) => {
            metrics::counter!("switchboard_errors_total", "kind" => "turn_write_deadline").increment(1);
            anyhow::bail!("the other side stopped reading ({} s write deadline)", WRITE_DEADLINE.as_secs())
        }
    }
}

/// An RFC 6062 data connection: bytes both ways, both directions together within
/// `turn.max_bps`, until either side closes, nothing moves for [`PIPE_IDLE`], a side stops
/// reading, or the allocation that made it ends (`alive`). Returns the bytes carried up and down.
async fn pipe<A, B>(a: A, b: B, mut alive: watch::Receiver<()>, mut bucket: Bucket) -> Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let (mut abuf, mut bbuf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut up, mut down) = (0u64, 0u64);
    loop {
        tokio::select! {
            n = ar.read(&mut abuf) => {
                let n = n?;
                if n == 0 {
                    return Ok((up, down));
                }
                pace(&mut bucket, n).await;
                write_by_deadline(&mut bw, &abuf[..n]).await?;
                up += n as u64;
            }
            n = br.read(&mut bbuf) => {
                let n = n?;
                if n == 0 {
                    return Ok((up, down));
                }
                pace(&mut bucket, n).await;
                write_by_deadline(&mut aw, &bbuf[..n]).await?;
                down += n as u64;
            }
            _ = alive.changed() => anyhow::bail!("the allocation of this TCP relay connection ended"),
            _ = tokio::time::sleep(PIPE_IDLE) => anyhow::bail!("TCP relay connection idle for {} s", PIPE_IDLE.as_secs()),
        }
    }
}

/// Waits until `len` bytes fit the bucket. A stream cannot drop bytes as a datagram relay does,
/// so it is slowed instead: TCP's own flow control then holds the sender back.
async fn pace(bucket: &mut Bucket, len: usize) {
    while !bucket.take(len, now_ms()) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

enum Inbound {
    Datagram((usize, SocketAddr)),
    Peer(TcpStream, SocketAddr),
}

impl Conn {
    fn ctx(&self, now: u64) -> Ctx {
        Ctx { client: self.client, server: self.local, transport: self.transport, now_ms: now }
    }

    async fn frame(&mut self, frame: &[u8], now: u64) -> Next {
        let ctx = self.ctx(now);
        let shared = self.shared.clone();
        let handled = shared.server.handle(self.alloc.as_mut().map(|a| &mut a.state), &*shared.quotas, &shared.limiter, &ctx, frame);
        match handled {
            Handled::Reply(r) => self.out.extend_from_slice(&r),
            Handled::ToPeer { peer, data } => {
                if let Some(ConnAlloc { relay: Relay::Udp(sock), bucket, .. }) = self.alloc.as_mut() {
                    if bucket.take(data.len(), now) && sock.send_to(data, peer).await.is_ok() {
                        metrics::counter!("switchboard_turn_relayed_packets_total", "direction" => "to_peer", "transport" => self.label).increment(1);
                        metrics::counter!("switchboard_turn_relayed_bytes_total", "direction" => "to_peer", "transport" => self.label).increment(data.len() as u64);
                    }
                }
            }
            Handled::Allocate(req) => {
                let reply = self.allocate(&req, &ctx);
                self.out.extend_from_slice(&reply);
            }
            Handled::Refreshed(r) => {
                if let Some(a) = self.alloc.as_ref() {
                    a.actor.do_send(Refreshed { expires_ms: a.state.expires_ms });
                }
                self.out.extend_from_slice(&r);
            }
            Handled::Delete(r) => {
                self.alloc = None;
                self.out.extend_from_slice(&r);
            }
            Handled::AuthFailed(r) => {
                metrics::counter!("switchboard_turn_auth_failures_total", "transport" => self.label).increment(1);
                self.shared.limiter.record(self.client.ip(), now / 1000);
                if let Some(r) = r {
                    self.out.extend_from_slice(&r);
                }
            }
            Handled::Connect(req) => self.connect(req),
            Handled::ConnectionBind { id, reply, username } => {
                if self.alloc.is_some() {
                    // A control connection cannot become a data connection.
                    self.out.extend_from_slice(&shared.server.connection_bind_failed(frame));
                    return Next::Go;
                }
                match self.pending.take(id, &username) {
                    Some((peer, alive)) => {
                        self.out.extend_from_slice(&reply);
                        return Next::Pipe(peer, alive);
                    }
                    None => self.out.extend_from_slice(&shared.server.connection_bind_failed(frame)),
                }
            }
            // CHANGE-REQUEST is refused over TCP (400) before it could come to this.
            Handled::Ignore | Handled::ReplyFrom { .. } => {}
        }
        Next::Go
    }

    fn peer_datagram(&mut self, peer: SocketAddr, data: &[u8]) {
        let now = now_ms();
        if let Some(a) = self.alloc.as_mut() {
            if a.bucket.take(data.len(), now) && self.shared.server.wrap_peer_data(&a.state, peer, data, now, &mut self.out) {
                metrics::counter!("switchboard_turn_relayed_packets_total", "direction" => "to_client", "transport" => self.label).increment(1);
                metrics::counter!("switchboard_turn_relayed_bytes_total", "direction" => "to_client", "transport" => self.label).increment(data.len() as u64);
            }
        }
    }

    /// An inbound connection to a TCP relay: with a permission, tell the client.
    fn peer_connection(&mut self, stream: TcpStream, peer: SocketAddr) {
        let now = now_ms();
        let Some(a) = self.alloc.as_ref() else { return };
        if !a.state.permitted(peer.ip(), now) {
            debug!(%peer, "TCP peer without a permission refused");
            return;
        }
        let _ = stream.set_nodelay(true);
        if let Some(id) = self.pending.insert(stream, &a.state.username, a.alive.subscribe()) {
            self.out.extend_from_slice(&self.shared.server.connection_attempt(id, peer));
        }
    }

    /// RFC 6062 Connect: connect from the relay address, answer when it is done.
    fn connect(&mut self, req: ConnectRequest) {
        let Some(ConnAlloc { relay: Relay::Tcp { connected, .. }, state, .. }) = self.alloc.as_mut() else {
            self.out.extend_from_slice(&self.shared.server.connect_reply(&req, Err(400)));
            return;
        };
        if connected.len() >= MAX_PEER_CONNECTIONS {
            // Each Connect holds a task and a socket until it completes: a bounded number.
            self.out.extend_from_slice(&self.shared.server.connect_reply(&req, Err(508)));
            return;
        }
        if !connected.insert(req.peer) {
            self.out.extend_from_slice(&self.shared.server.connect_reply(&req, Err(446)));
            return;
        }
        let relay = state.relay;
        let tx = self.connect_tx.clone();
        actix::spawn(async move {
            let result = async {
                let sock = if relay.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                sock.set_reuseaddr(true)?;
                sock.set_reuseport(true)?;
                sock.bind(relay)?;
                tokio::time::timeout(BIND_WAIT, sock.connect(req.peer)).await.map_err(std::io::Error::other)?
            }
            .await
            .map_err(|e| debug!(peer = %req.peer, error = %e, "TCP relay connect failed"));
            let _ = tx.send((req, result));
        });
    }

    fn connected(&mut self, req: ConnectRequest, result: Result<TcpStream, ()>) {
        let Some(a) = self.alloc.as_mut() else { return };
        let reply = match result {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                match self.pending.insert(stream, &a.state.username, a.alive.subscribe()) {
                    Some(id) => self.shared.server.connect_reply(&req, Ok(id)),
                    None => self.shared.server.connect_reply(&req, Err(508)),
                }
            }
            Err(()) => {
                if let Relay::Tcp { connected, .. } = &mut a.relay {
                    connected.remove(&req.peer);
                }
                self.shared.server.connect_reply(&req, Err(447))
            }
        };
        self.out.extend_from_slice(&reply);
    }

    fn allocate(&mut self, req: &AllocateRequest, ctx: &Ctx) -> Vec<u8> {
        let shared = self.shared.clone();
        let (relay, relay_addr, token) = match req.relay_transport {
            RelayTransport::Udp => {
                let (std_sock, token) = match shared.create_udp_relay(req) {
                    Ok(s) => s,
                    Err(code) => return shared.server.allocate_failed(req, code),
                };
                let addr = std_sock.local_addr().ok();
                match (addr, UdpSocket::from_std(std_sock)) {
                    (Some(a), Ok(s)) => (Relay::Udp(s), a, token),
                    _ => {
                        shared.quotas.release(&req.quota_key);
                        return shared.server.allocate_failed(req, 508);
                    }
                }
            }
            RelayTransport::Tcp => match shared.create_tcp_relay(req) {
                Ok((l, port)) => match (l.local_addr(), TcpListener::from_std(l)) {
                    (Ok(a), Ok(listener)) => (Relay::Tcp { listener, connected: HashSet::new(), _port: port }, a, None),
                    _ => {
                        shared.quotas.release(&req.quota_key);
                        return shared.server.allocate_failed(req, 508);
                    }
                },
                Err(code) => return shared.server.allocate_failed(req, code),
            },
        };
        let (reply, state) = shared.server.allocated(req, relay_addr, shared.advertised(relay_addr), token, ctx);
        let tx = self.expire_tx.clone();
        let expire: super::allocation::ExpireFn = Arc::new(move |_| {
            let _ = tx.send(());
        });
        let (plane, user, view) = (shared.clone(), req.quota_key.clone(), AllocationView::of(&state));
        let actor = Allocation::start_in_arbiter(&shared.arbiter, move |_| Allocation::new(0, user, view, expire, plane));
        self.alloc = Some(ConnAlloc { state, relay, actor, bucket: Bucket::new(shared.max_bps()), alive: watch::channel(()).0 });
        reply
    }
}

//! The UDP data plane. One shard per thread, each with its own `SO_REUSEPORT` socket on every
//! TURN listener, so the kernel keeps a client's datagrams on one shard; the shard also owns the
//! relay sockets of the allocations it created, so an allocation's packets never cross threads
//! and never pass a mailbox. Datagrams are read in batches (recvmmsg, GRO) and runs of same-size
//! datagrams to one destination leave in one send (UDP GSO).

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};
use switchboard_proto::turn::channel_data;
use switchboard_proto::turn::server::{AllocateRequest, Ctx, Handled};
use switchboard_proto::turn::{AllocationState, ClientTransport};
use tracing::{debug, error, info, warn};

use super::allocation::{AllocId, Allocation, Gone, Refreshed};
use super::directory::AllocationView;
use super::{Bucket, Shared};
use crate::rooms::now_ms;

const WAKER: Token = Token(usize::MAX);
/// Tokens below this are listeners; relays are `RELAY_BASE + slot`.
const RELAY_BASE: usize = 64;
/// Datagrams per receive call (recvmmsg).
const BATCH: usize = 32;
/// Room for one GRO-coalesced read.
const RX_BUF: usize = 64 * 1024;

/// Commands to a shard from other threads.
pub enum ShardCmd {
    /// The allocation's lifetime ran out.
    Expire(AllocId),
    /// Stop the shard.
    Stop,
}

/// Sends commands to a shard and wakes it.
#[derive(Clone)]
pub struct ShardHandle {
    tx: mpsc::Sender<ShardCmd>,
    waker: Arc<Waker>,
}

impl ShardHandle {
    /// Queues `cmd` and wakes the shard.
    pub fn send(&self, cmd: ShardCmd) {
        if self.tx.send(cmd).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// Datagrams waiting to leave one socket, in one buffer.
#[derive(Default)]
struct TxQueue {
    buf: Vec<u8>,
    items: Vec<(SocketAddr, u32, u32)>,
}

impl TxQueue {
    fn push(&mut self, dest: SocketAddr, bytes: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        self.items.push((dest, start as u32, bytes.len() as u32));
    }

    fn push_with(&mut self, dest: SocketAddr, write: impl FnOnce(&mut Vec<u8>) -> bool) -> bool {
        let start = self.buf.len();
        if write(&mut self.buf) {
            self.items.push((dest, start as u32, (self.buf.len() - start) as u32));
            true
        } else {
            self.buf.truncate(start);
            false
        }
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sends everything: runs of equal-size datagrams to one destination go as one GSO send.
    /// Returns (sent, dropped).
    fn flush(&mut self, sock: &UdpSocket, state: &UdpSocketState) -> (u64, u64) {
        let max_segments = state.max_gso_segments().max(1);
        let (mut sent, mut dropped) = (0, 0);
        let mut i = 0;
        while i < self.items.len() {
            let (dest, start, len) = self.items[i];
            let mut j = i + 1;
            while j < self.items.len()
                && j - i < max_segments
                && self.items[j].0 == dest
                && self.items[j].2 == len
                && (j - i + 1) * len as usize <= 64_000
            {
                j += 1;
            }
            let n = (j - i) as u64;
            let contents = &self.buf[start as usize..start as usize + (j - i) * len as usize];
            let t = Transmit {
                destination: dest,
                ecn: None,
                contents,
                segment_size: (j - i > 1).then_some(len as usize),
                src_ip: None,
            };
            match state.try_send(sock.into(), &t) {
                Ok(()) => sent += n,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        debug!(%dest, error = %e, "send failed");
                    }
                    dropped += n;
                }
            }
            i = j;
        }
        self.buf.clear();
        self.items.clear();
        (sent, dropped)
    }
}

struct Listener {
    sock: UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
    tx: TxQueue,
}

struct Relay {
    state: AllocationState,
    sock: UdpSocket,
    qstate: UdpSocketState,
    listener: usize,
    gen: u32,
    actor: Addr<Allocation>,
    tx: TxQueue,
    bucket: Bucket,
}

#[derive(Default)]
struct Stats {
    to_peer: u64,
    to_peer_bytes: u64,
    to_client: u64,
    to_client_bytes: u64,
    dropped: u64,
    no_permission: u64,
    auth_failures: u64,
}

/// One UDP shard.
pub struct Shard {
    id: u8,
    poll: Poll,
    listeners: Vec<Listener>,
    relays: Slab<Relay>,
    by_client: HashMap<(u8, SocketAddr), usize>,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<ShardCmd>,
    handle: ShardHandle,
    rx_bufs: Vec<Vec<u8>>,
    next_gen: u32,
    stats: Stats,
    last_report: Instant,
}

/// A listener socket that shares its address with the other shards' (`SO_REUSEPORT`).
pub fn reuseport_socket(addr: SocketAddr, buffer: usize) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn pack(shard: u8, gen: u32, slot: usize) -> AllocId {
    (u64::from(shard) << 56) | (u64::from(gen & 0xFF_FFFF) << 32) | slot as u64
}

fn unpack(id: AllocId) -> (u32, usize) {
    (((id >> 32) & 0xFF_FFFF) as u32, (id & 0xFFFF_FFFF) as usize)
}

impl Shard {
    /// A shard listening on `addrs`.
    pub fn new(id: u8, addrs: &[SocketAddr], shared: Arc<Shared>) -> io::Result<(Shard, ShardHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let handle = ShardHandle { tx, waker };
        let mut listeners = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let std_sock = reuseport_socket(*addr, shared.socket_buffer)?;
            let state = UdpSocketState::new((&std_sock).into())?;
            let mut sock = UdpSocket::from_std(std_sock);
            poll.registry().register(&mut sock, Token(i), Interest::READABLE)?;
            listeners.push(Listener { local: sock.local_addr()?, sock, state, tx: TxQueue::default() });
        }
        let shard = Shard {
            id,
            poll,
            listeners,
            relays: Slab::new(),
            by_client: HashMap::new(),
            shared,
            rx,
            handle: handle.clone(),
            rx_bufs: (0..BATCH).map(|_| vec![0u8; RX_BUF]).collect(),
            next_gen: 1,
            stats: Stats::default(),
            last_report: Instant::now(),
        };
        Ok((shard, handle))
    }

    /// Runs until [`ShardCmd::Stop`].
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        info!(shard = self.id, listeners = self.listeners.len(), "TURN UDP shard running");
        loop {
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_millis(500))) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                error!(error = %e, "TURN shard poll failed");
                return;
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {
                        if !self.commands() {
                            self.shutdown();
                            return;
                        }
                    }
                    Token(t) if t < RELAY_BASE => self.listener_ready(t),
                    Token(t) => self.relay_ready(t - RELAY_BASE),
                }
            }
            if self.last_report.elapsed() >= Duration::from_secs(1) {
                self.report();
            }
        }
    }

    fn commands(&mut self) -> bool {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                ShardCmd::Expire(id) => {
                    let (gen, slot) = unpack(id);
                    if self.relays.get(slot).is_some_and(|r| r.gen == gen) {
                        self.remove(slot);
                    }
                }
                ShardCmd::Stop => return false,
            }
        }
        true
    }

    fn shutdown(&mut self) {
        let slots: Vec<usize> = self.relays.iter().map(|(k, _)| k).collect();
        for s in slots {
            self.remove(s);
        }
    }

    fn remove(&mut self, slot: usize) {
        let mut r = self.relays.remove(slot);
        let _ = self.poll.registry().deregister(&mut r.sock);
        self.by_client.remove(&(r.listener as u8, r.state.client));
        r.actor.do_send(Gone);
        debug!(relay = %r.state.relay, client = %r.state.client, "allocation removed");
    }

    fn listener_ready(&mut self, li: usize) {
        let mut bufs = std::mem::take(&mut self.rx_bufs);
        let mut metas = [RecvMeta::default(); BATCH];
        let mut touched: Vec<usize> = Vec::new();
        loop {
            let n = {
                let l = &self.listeners[li];
                let mut slices: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                match l.state.recv((&l.sock).into(), &mut slices, &mut metas) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        debug!(error = %e, "listener receive failed");
                        break;
                    }
                }
            };
            let now = now_ms();
            for (buf, meta) in bufs.iter().zip(&metas).take(n) {
                let stride = meta.stride.max(1);
                for d in buf[..meta.len].chunks(stride) {
                    self.on_client(li, meta.addr, d, now, &mut touched);
                }
            }
            self.flush(li, &mut touched);
        }
        self.rx_bufs = bufs;
    }

    fn flush(&mut self, li: usize, touched: &mut Vec<usize>) {
        for slot in touched.drain(..) {
            if let Some(r) = self.relays.get_mut(slot) {
                if !r.tx.is_empty() {
                    let (sent, dropped) = r.tx.flush(&r.sock, &r.qstate);
                    self.stats.to_peer += sent;
                    self.stats.dropped += dropped;
                }
            }
        }
        let l = &mut self.listeners[li];
        if !l.tx.is_empty() {
            let (sent, dropped) = l.tx.flush(&l.sock, &l.state);
            self.stats.to_client += sent;
            self.stats.dropped += dropped;
        }
    }

    fn on_client(&mut self, li: usize, from: SocketAddr, data: &[u8], now: u64, touched: &mut Vec<usize>) {
        let slot = self.by_client.get(&(li as u8, from)).copied();
        // The fast path: ChannelData on an allocation, no parsing beyond the 4-byte header.
        if channel_data::is_channel_data(data) {
            let Some(slot) = slot else { return };
            let Some((number, payload)) = channel_data::parse(data) else { return };
            let r = &mut self.relays[slot];
            match r.state.channel_peer(number, now) {
                Some(peer) if r.bucket.take(payload.len(), now) => {
                    r.tx.push(peer, payload);
                    self.stats.to_peer_bytes += payload.len() as u64;
                    touched.push(slot);
                }
                Some(_) => self.stats.dropped += 1,
                None => self.stats.no_permission += 1,
            }
            return;
        }
        let ctx = Ctx { client: from, server: self.listeners[li].local, transport: ClientTransport::Udp, now_ms: now };
        let alloc = slot.and_then(|s| self.relays.get_mut(s)).map(|r| &mut r.state);
        let handled = self.shared.server.handle(alloc, &*self.shared.quotas, &self.shared.limiter, &ctx, data);
        match handled {
            Handled::Reply(r) => self.listeners[li].tx.push(from, &r),
            Handled::ReplyFrom { from: local, bytes } => {
                // RFC 5780: the listeners include every address the server may answer from.
                // Rare (NAT discovery), so it leaves at once rather than through a batch.
                match self.listeners.iter().find(|l| l.local == local) {
                    Some(l) => {
                        if let Err(e) = l.sock.send_to(&bytes, from) {
                            debug!(%local, error = %e, "cannot answer a CHANGE-REQUEST");
                        }
                    }
                    None => debug!(%local, "no listener to answer a CHANGE-REQUEST from"),
                }
            }
            Handled::ToPeer { peer, data } => {
                if let Some(slot) = slot {
                    let r = &mut self.relays[slot];
                    if r.bucket.take(data.len(), now) {
                        r.tx.push(peer, data);
                        self.stats.to_peer_bytes += data.len() as u64;
                        touched.push(slot);
                    } else {
                        self.stats.dropped += 1;
                    }
                }
            }
            Handled::Allocate(req) => self.allocate(li, &ctx, req),
            Handled::Refreshed(r) => {
                if let Some(rel) = slot.and_then(|s| self.relays.get(s)) {
                    rel.actor.do_send(Refreshed { expires_ms: rel.state.expires_ms });
                }
                self.listeners[li].tx.push(from, &r);
            }
            Handled::Delete(r) => {
                if let Some(s) = slot {
                    self.remove(s);
                }
                self.listeners[li].tx.push(from, &r);
            }
            Handled::AuthFailed(r) => {
                self.stats.auth_failures += 1;
                self.shared.limiter.record(from.ip(), now / 1000);
                if let Some(r) = r {
                    self.listeners[li].tx.push(from, &r);
                }
            }
            Handled::Ignore | Handled::Connect(_) | Handled::ConnectionBind { .. } => {}
        }
    }

    fn allocate(&mut self, li: usize, ctx: &Ctx, req: AllocateRequest) {
        let shared = self.shared.clone();
        let reply = match shared.create_udp_relay(&req) {
            Err(code) => shared.server.allocate_failed(&req, code),
            Ok((std_sock, token)) => match self.install(li, ctx, &req, std_sock, token) {
                Ok(reply) => reply,
                Err(e) => {
                    warn!(error = %e, "cannot set up a relay socket");
                    shared.quotas.release(&req.quota_key);
                    shared.server.allocate_failed(&req, 508)
                }
            },
        };
        self.listeners[li].tx.push(ctx.client, &reply);
    }

    fn install(&mut self, li: usize, ctx: &Ctx, req: &AllocateRequest, std_sock: std::net::UdpSocket, token: Option<u64>) -> io::Result<Vec<u8>> {
        let relay_addr = std_sock.local_addr()?;
        let advertised = self.shared.advertised(relay_addr);
        let (reply, state) = self.shared.server.allocated(req, relay_addr, advertised, token, ctx);
        let qstate = UdpSocketState::new((&std_sock).into())?;
        let mut sock = UdpSocket::from_std(std_sock);
        let entry = self.relays.vacant_entry();
        let slot = entry.key();
        self.poll.registry().register(&mut sock, Token(RELAY_BASE + slot), Interest::READABLE)?;
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1) & 0xFF_FFFF;
        let id = pack(self.id, gen, slot);
        let handle = self.handle.clone();
        let expire: super::allocation::ExpireFn = Arc::new(move |id| handle.send(ShardCmd::Expire(id)));
        let (shared, user, view) = (self.shared.clone(), req.quota_key.clone(), AllocationView::of(&state));
        let actor = Allocation::start_in_arbiter(&self.shared.arbiter, move |_| Allocation::new(id, user, view, expire, shared));
        debug!(client = %ctx.client, relay = %relay_addr, "allocation created");
        entry.insert(Relay {
            state,
            sock,
            qstate,
            listener: li,
            gen,
            actor,
            tx: TxQueue::default(),
            bucket: Bucket::new(self.shared.max_bps()),
        });
        self.by_client.insert((li as u8, ctx.client), slot);
        Ok(reply)
    }

    fn relay_ready(&mut self, slot: usize) {
        let mut bufs = std::mem::take(&mut self.rx_bufs);
        let mut metas = [RecvMeta::default(); BATCH];
        while let Some(r) = self.relays.get_mut(slot) {
            let n = {
                let mut slices: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                match r.qstate.recv((&r.sock).into(), &mut slices, &mut metas) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        debug!(error = %e, "relay receive failed");
                        break;
                    }
                }
            };
            let now = now_ms();
            let li = r.listener;
            let client = r.state.client;
            let l = &mut self.listeners[li];
            for (buf, meta) in bufs.iter().zip(&metas).take(n) {
                let stride = meta.stride.max(1);
                for d in buf[..meta.len].chunks(stride) {
                    if !r.bucket.take(d.len(), now) {
                        self.stats.dropped += 1;
                        continue;
                    }
                    let server = &self.shared.server;
                    if l.tx.push_with(client, |out| server.wrap_peer_data(&r.state, meta.addr, d, now, out)) {
                        self.stats.to_client_bytes += d.len() as u64;
                    } else {
                        self.stats.no_permission += 1;
                    }
                }
            }
            if !l.tx.is_empty() {
                let (sent, dropped) = l.tx.flush(&l.sock, &l.state);
                self.stats.to_client += sent;
                self.stats.dropped += dropped;
            }
        }
        self.rx_bufs = bufs;
    }

    fn report(&mut self) {
        self.last_report = Instant::now();
        let s = std::mem::take(&mut self.stats);
        let udp = "udp";
        metrics::counter!("switchboard_turn_relayed_packets_total", "direction" => "to_peer", "transport" => udp).increment(s.to_peer);
        metrics::counter!("switchboard_turn_relayed_packets_total", "direction" => "to_client", "transport" => udp).increment(s.to_client);
        metrics::counter!("switchboard_turn_relayed_bytes_total", "direction" => "to_peer", "transport" => udp).increment(s.to_peer_bytes);
        metrics::counter!("switchboard_turn_relayed_bytes_total", "direction" => "to_client", "transport" => udp).increment(s.to_client_bytes);
        metrics::counter!("switchboard_turn_dropped_total", "reason" => "send_or_cap").increment(s.dropped);
        metrics::counter!("switchboard_turn_dropped_total", "reason" => "no_permission").increment(s.no_permission);
        metrics::counter!("switchboard_turn_auth_failures_total", "transport" => udp).increment(s.auth_failures);
        let now = now_ms();
        let (mut perms, mut chans) = (0, 0);
        for (_, r) in self.relays.iter_mut() {
            r.state.purge(now);
            perms += r.state.permission_count(now);
            chans += r.state.channel_count(now);
        }
        let shard = self.id.to_string();
        metrics::gauge!("switchboard_turn_permissions", "shard" => shard.clone(), "transport" => udp).set(perms as f64);
        metrics::gauge!("switchboard_turn_channels", "shard" => shard.clone(), "transport" => udp).set(chans as f64);
        metrics::gauge!("switchboard_turn_shard_allocations", "shard" => shard).set(self.relays.len() as f64);
    }
}

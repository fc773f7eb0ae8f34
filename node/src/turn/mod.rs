//! The STUN/TURN server of a node: UDP shards (`udp`), TCP and TLS listeners (`tcp`), one
//! `Allocation` actor per allocation for its lifecycle, relay ports and quotas. The protocol
//! logic is `switchboard_proto::turn`.

pub mod allocation;
pub mod directory;
pub mod ports;
pub mod quotas;
pub mod tcp;
pub mod udp;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use actix::ArbiterHandle;
use anyhow::{Context, Result};
use switchboard_proto::turn::auth::UserDb;
use switchboard_proto::turn::server::{Access, AllocateRequest, TurnConfig, TurnServer};
use tracing::info;
use turn_types::AddressFamily;

use self::ports::PortPool;
use self::quotas::QuotaTable;
use self::udp::{Shard, ShardCmd, ShardHandle};
use crate::config::{Config, TurnSection};
use switchboard_proto::turn::auth::FailureLimiter;

/// Everything the data planes share.
pub struct Shared {
    pub server: Arc<TurnServer>,
    pub quotas: Arc<QuotaTable>,
    /// The live allocations, for the admin API.
    pub allocations: directory::AllocationDirectory,
    pub ports: PortPool,
    pub relay_v4: Ipv4Addr,
    pub relay_v6: Option<Ipv6Addr>,
    pub external_v4: Option<Ipv4Addr>,
    pub external_v6: Option<Ipv6Addr>,
    /// Where `Allocation` actors live.
    pub arbiter: ArbiterHandle,
    /// `turn.max_bps` for allocations made from now on (a reload changes it).
    pub max_bps: std::sync::atomic::AtomicU64,
    /// Failed logins per source address, one count across UDP, TCP and TLS.
    pub limiter: FailureLimiter,
    pub socket_buffer: usize,
}

impl Shared {
    /// The bandwidth cap of a new allocation.
    pub fn max_bps(&self) -> u64 {
        self.max_bps.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The address to advertise for a relay bound at `relay` (the external IP behind NAT).
    pub fn advertised(&self, relay: SocketAddr) -> SocketAddr {
        match relay.ip() {
            IpAddr::V4(_) => self.external_v4.map_or(relay, |ip| SocketAddr::new(ip.into(), relay.port())),
            IpAddr::V6(_) => self.external_v6.map_or(relay, |ip| SocketAddr::new(ip.into(), relay.port())),
        }
    }

    /// Takes the quota and binds the relay socket of an accepted UDP Allocate. Errors are the
    /// STUN error code to answer with.
    pub fn create_udp_relay(&self, req: &AllocateRequest) -> Result<(std::net::UdpSocket, Option<u64>), u16> {
        let ip: IpAddr = match req.family {
            AddressFamily::IPV4 => self.relay_v4.into(),
            AddressFamily::IPV6 => self.relay_v6.ok_or(440u16)?.into(),
        };
        if !self.quotas.acquire(&req.quota_key) {
            return Err(486);
        }
        let bound = match (req.reservation, req.even_port) {
            (Some(token), _) => self.ports.take_reserved(token).map(|s| (s, None)),
            (None, Some(true)) => self.ports.bind_pair(ip).map(|(s, t)| (s, Some(t))),
            (None, Some(false)) => self.ports.bind(ip, true).map(|s| (s, None)),
            (None, None) => self.ports.bind(ip, false).map(|s| (s, None)),
        };
        match bound {
            Some(b) => Ok(b),
            None => {
                self.quotas.release(&req.quota_key);
                metrics::counter!("switchboard_turn_dropped_total", "reason" => "no_relay_port").increment(1);
                Err(508)
            }
        }
    }
}

impl Shared {
    /// Takes the quota and opens the listener of an accepted RFC 6062 TCP relay.
    pub fn create_tcp_relay(&self, req: &AllocateRequest) -> Result<(std::net::TcpListener, ports::TcpPortGuard), u16> {
        let ip: IpAddr = match req.family {
            AddressFamily::IPV4 => self.relay_v4.into(),
            AddressFamily::IPV6 => self.relay_v6.ok_or(440u16)?.into(),
        };
        if !self.quotas.acquire(&req.quota_key) {
            return Err(486);
        }
        self.ports.bind_tcp(ip).ok_or_else(|| {
            self.quotas.release(&req.quota_key);
            508
        })
    }
}

/// A token bucket capping an allocation's bandwidth (bytes/s); unlimited when 0.
pub struct Bucket {
    rate: u64,
    tokens: u64,
    /// When it was last refilled; unset until first used, so the first refill is not measured
    /// from the epoch.
    last_ms: Option<u64>,
}

impl Bucket {
    /// A bucket of `rate` bytes/s holding one second's worth.
    pub fn new(rate: u64) -> Self {
        Bucket { rate, tokens: rate, last_ms: None }
    }

    /// Whether `len` bytes may pass now.
    pub fn take(&mut self, len: usize, now_ms: u64) -> bool {
        if self.rate == 0 {
            return true;
        }
        let last = *self.last_ms.get_or_insert(now_ms);
        // More than a second idle refills it completely, so longer gaps need no arithmetic
        // (and `rate × elapsed` stays far from overflow at any rate).
        let elapsed = now_ms.saturating_sub(last).min(1000);
        if elapsed > 0 {
            let refill = (u128::from(self.rate) * u128::from(elapsed) / 1000) as u64;
            self.tokens = self.tokens.saturating_add(refill).min(self.rate);
            self.last_ms = Some(now_ms);
        }
        if self.tokens >= len as u64 {
            self.tokens -= len as u64;
            true
        } else {
            false
        }
    }
}

/// Runs `body` on a named thread; if it panics, `on_panic` gets the thread's name and the
/// panic message, so a dead thread is never silent.
pub fn supervised(name: String, body: impl FnOnce() + Send + 'static, on_panic: impl FnOnce(&str, &str) + Send + 'static) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(name.clone()).spawn(move || {
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
            on_panic(&name, &msg);
        }
    })
}

/// What a TURN shard's panic does: its allocations are gone and its share of the listeners'
/// packets would go unanswered, so the node logs it, counts it and exits for its supervisor
/// (systemd `Restart=`) to start it afresh; clients reconnect, in a cluster to another node.
fn shard_died(name: &str, msg: &str) {
    tracing::error!(thread = name, panic = msg, "TURN shard panicked; exiting so the node restarts");
    metrics::counter!("switchboard_errors_total", "kind" => "turn_shard_panic").increment(1);
    std::process::exit(70);
}

/// Who may use the TURN server, from `turn` settings and the REST `secret` in force: the
/// secret, then `extra_secrets` (rotation), and the static users.
fn access(t: &TurnSection, secret: &str) -> Access {
    let mut users = UserDb { separator: ':', ..Default::default() };
    users.rest_secrets.push(secret.as_bytes().to_vec());
    users.rest_secrets.extend(t.extra_secrets.iter().map(|s| s.as_bytes().to_vec()));
    for u in &t.users {
        if let Some((name, pass)) = u.split_once(':') {
            users.static_users.insert(name.to_owned(), pass.to_owned());
        }
    }
    Access { users, allow_peers: t.allow_peers.iter().filter_map(|a| a.parse().ok()).collect() }
}

impl Shared {
    /// Applies a reloaded configuration's live TURN settings: users and secrets, allowed
    /// peers, quotas, the bandwidth cap of new allocations and the failed-login limit.
    pub fn reconfigure(&self, t: &TurnSection, secret: &str) {
        self.server.set_access(access(t, secret));
        self.quotas.set_limits(t.max_allocations, t.user_quota);
        self.max_bps.store(t.max_bps, std::sync::atomic::Ordering::Relaxed);
        self.limiter.set_max(t.auth_failures_per_minute);
    }
}

/// The running TURN server of a node.
pub struct TurnService {
    pub shared: Arc<Shared>,
    shards: Vec<ShardHandle>,
}

impl TurnService {
    /// Starts the UDP shards and the TCP/TLS listeners. `secret` is the TURN REST secret;
    /// `nonce_secret` signs nonces (the cluster secret, so every node accepts them).
    pub fn start(config: &Config, secret: String, nonce_secret: Vec<u8>, arbiter: ArbiterHandle) -> Result<TurnService> {
        let t = &config.turn;
        let relay_v4: Ipv4Addr = t.relay_ip.parse().context("turn.relay_ip")?;
        let relay_v6: Option<Ipv6Addr> = if t.relay_ip6.is_empty() { None } else { Some(t.relay_ip6.parse().context("turn.relay_ip6")?) };
        let mut own: Vec<SocketAddr> = t.listen.clone();
        own.extend(t.tls_listen.iter().copied());
        own.push(config.http.listen);
        if let Ok(a) = config.http.signaling_listen.parse() {
            own.push(a);
        }
        if config.cluster.enabled {
            if let Ok(a) = config.cluster.listen.parse() {
                own.push(a);
            }
        }
        let access = access(t, &secret);
        let cfg = TurnConfig {
            realm: t.realm.clone(),
            software: t.software.clone(),
            default_lifetime: t.default_lifetime,
            max_lifetime: t.max_lifetime,
            permission_lifetime: 300,
            channel_lifetime: 600,
            max_permissions: t.max_permissions,
            max_channels: t.max_channels,
            allow_peers: access.allow_peers,
            own_addrs: own,
            tcp_relay: t.tcp_relay,
            relay_v4: true,
            relay_v6: relay_v6.is_some(),
            nat_discovery: t.nat_discovery(),
        };
        let server = Arc::new(TurnServer::new(cfg, access.users, nonce_secret, t.nonce_ttl_secs));
        let shared = Arc::new(Shared {
            server,
            quotas: Arc::new(QuotaTable::new(t.max_allocations, t.user_quota)),
            allocations: directory::AllocationDirectory::default(),
            ports: PortPool::new(t.min_port, t.max_port),
            relay_v4,
            relay_v6,
            external_v4: t.external_ip.parse().ok(),
            external_v6: t.external_ip6.parse().ok(),
            arbiter,
            max_bps: t.max_bps.into(),
            limiter: FailureLimiter::new(t.auth_failures_per_minute, 60, 65_536, std::hash::RandomState::new()),
            socket_buffer: t.socket_buffer,
        });
        let threads = if t.threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { t.threads };
        // The shards share each listener through SO_REUSEPORT, which would also let us join a
        // group another process (a second node on this host) already holds, splitting its
        // clients' packets between us. A plain bind first proves the address is free.
        for addr in &t.listen {
            std::net::UdpSocket::bind(addr)
                .with_context(|| format!("cannot listen for TURN/UDP on {addr} (another TURN server or node uses it?)"))?;
        }
        let mut shards = Vec::new();
        for id in 0..threads {
            let (shard, handle) = Shard::new(id as u8, &t.listen, shared.clone())
                .with_context(|| format!("cannot listen for TURN on {:?}", t.listen))?;
            supervised(format!("turn-udp-{id}"), move || shard.run(), shard_died)?;
            shards.push(handle);
        }
        tcp::start(config, shared.clone())?;
        let relay_desc = match shared.external_v4 {
            Some(ext) => format!("{relay_v4} (advertised as {ext})"),
            None => relay_v4.to_string(),
        };
        info!(
            listen = ?t.listen, tls = ?t.tls_listen, relay = %relay_desc, ports = %format!("{}-{}", t.min_port, t.max_port),
            threads, "STUN/TURN server running"
        );
        Ok(TurnService { shared, shards })
    }

    /// The URIs clients use to reach this TURN server, `{host}` left to fill.
    pub fn uris(config: &Config) -> Vec<String> {
        let t = &config.turn;
        let mut out = Vec::new();
        if let Some(l) = t.listen.first() {
            out.push(format!("turn:{{host}}:{}?transport=udp", l.port()));
            out.push(format!("turn:{{host}}:{}?transport=tcp", l.port()));
        }
        if let Some(l) = t.tls_listen.first() {
            out.push(format!("turns:{{host}}:{}?transport=tcp", l.port()));
        }
        out
    }

    /// Stops the shards (their allocations end).
    pub fn stop(&self) {
        for s in &self.shards {
            s.send(ShardCmd::Stop);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Bucket;


    /// `turn.max_bps`: one second's worth at first, refilled with time, never above a second's
    /// worth; 0 means no cap.
    #[test]
    fn bandwidth_bucket() {
        let mut open = Bucket::new(0);
        assert!((0..1000).all(|_| open.take(65_535, 0)));
        let mut b = Bucket::new(10_000);
        assert!(b.take(6_000, 1_000));
        assert!(b.take(4_000, 1_000));
        assert!(!b.take(1, 1_000), "the second's budget is spent");
        assert!(!b.take(2_000, 1_100), "100 ms refill 1 000 bytes");
        assert!(b.take(1_000, 1_100));
        assert!(!b.take(10_001, 60_000), "idle time does not bank more than one second");
        assert!(b.take(10_000, 60_000));
    }

    /// At any rate, starting at today's clock: no overflow, and the first second is a second.
    #[test]
    fn fast_buckets_from_a_real_clock() {
        let now = 1_790_000_000_000u64;
        for rate in [12_500_000u64, 125_000_000, u64::MAX / 2] {
            let mut b = Bucket::new(rate);
            assert!(b.take(1_000, now));
            assert!(!b.take(rate as usize, now), "no more than one second's worth");
            assert!(b.take((rate / 2) as usize, now + 500), "half a second refills half");
            assert!(b.take(1, now + 10_000_000));
        }
    }

    #[test]
    fn a_panicking_thread_is_reported() {
        let (tx, rx) = std::sync::mpsc::channel();
        super::supervised("t".into(), || panic!("boom"), move |name, msg| tx.send((name.to_owned(), msg.to_owned())).unwrap()).unwrap().join().unwrap();
        assert_eq!(rx.recv().unwrap(), ("t".to_owned(), "boom".to_owned()));
    }
}

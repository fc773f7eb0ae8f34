//! The TURN/STUN request logic (RFC 8489, RFC 8656, RFC 6062): a message from a client and the
//! client's allocation, if any, go in; a reply, data for a peer, or an action for the I/O layer
//! (create a relay, delete the allocation) comes out. Parsing and message building use
//! stun-types and turn-types; authentication, quotas and the peer policy are ours.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use stun_types::attribute::{
    AttributeType, ErrorCode, MappedSocketAddr, MessageIntegrity, MessageIntegritySha256, Nonce, Realm, Software, UnknownAttributes,
    Username, XorMappedAddress,
};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageHeader, MessageType, MessageWrite,
    MessageWriteExt, MessageWriteVec, TransactionId, BINDING,
};
use stun_types::prelude::*;
use turn_types::attribute::{
    ChannelNumber, ConnectionId, Data, DontFragment, EvenPort, Lifetime, RequestedAddressFamily, RequestedTransport,
    ReservationToken, XorPeerAddress, XorRelayedAddress,
};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CONNECT, CONNECTION_BIND, CREATE_PERMISSION, REFRESH, SEND};
use turn_types::AddressFamily;

use super::allocation::{AllocationState, ChannelError, ClientTransport, RelayTransport};
use super::auth::{FailureLimiter, NonceCheck, Nonces, UserDb, UserError};
use super::channel_data;
use super::policy::check_peer;

/// Server-wide TURN settings.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// The realm of the long-term credentials.
    pub realm: String,
    /// SOFTWARE attribute on responses; empty for none.
    pub software: String,
    /// Lifetime of an allocation when the client asks for less (s).
    pub default_lifetime: u32,
    /// Longest allocation lifetime granted (s).
    pub max_lifetime: u32,
    /// Permission lifetime (s; RFC 8656: 300).
    pub permission_lifetime: u32,
    /// Channel binding lifetime (s; RFC 8656: 600).
    pub channel_lifetime: u32,
    /// Permissions one allocation may hold.
    pub max_permissions: usize,
    /// Channels one allocation may hold.
    pub max_channels: usize,
    /// Peers allowed although special-purpose (e.g. 127.0.0.0/8 for tests, a private SFU).
    /// The server takes it at start, beside its users; [`TurnServer::set_access`] changes both.
    pub allow_peers: Vec<IpNet>,
    /// The server's own addresses, never a peer (its listeners; an unspecified IP matches any).
    pub own_addrs: Vec<SocketAddr>,
    /// Whether RFC 6062 TCP relays are offered to TCP/TLS clients.
    pub tcp_relay: bool,
    /// Relay families the server can offer.
    pub relay_v4: bool,
    /// Whether an IPv6 relay address exists.
    pub relay_v6: bool,
    /// RFC 5780 NAT behaviour discovery, off unless configured (it helps map NATs and needs
    /// two addresses of the server).
    pub nat_discovery: Option<NatDiscovery>,
}

/// The two IPs and two ports of RFC 5780: the server listens on all four combinations and
/// answers a CHANGE-REQUEST from the one the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatDiscovery {
    /// Primary and alternate IP.
    pub ips: [IpAddr; 2],
    /// Primary and alternate port.
    pub ports: [u16; 2],
}

impl NatDiscovery {
    /// The address the client learns as OTHER-ADDRESS when it talks to `local`: the other IP
    /// and the other port.
    pub fn other(&self, local: SocketAddr) -> SocketAddr {
        let ip = if local.ip() == self.ips[0] { self.ips[1] } else { self.ips[0] };
        let port = if local.port() == self.ports[0] { self.ports[1] } else { self.ports[0] };
        SocketAddr::new(ip, port)
    }

    /// Every address the server must listen on.
    pub fn addresses(&self) -> [SocketAddr; 4] {
        let [a, b] = self.ips;
        let [p, q] = self.ports;
        [SocketAddr::new(a, p), SocketAddr::new(a, q), SocketAddr::new(b, p), SocketAddr::new(b, q)]
    }
}

/// CHANGE-REQUEST (RFC 5780 §7.2).
const CHANGE_REQUEST: u16 = 0x0003;
/// RESPONSE-ORIGIN and OTHER-ADDRESS (RFC 5780 §7.3, §7.4).
const RESPONSE_ORIGIN: u16 = 0x802B;
const OTHER_ADDRESS: u16 = 0x802C;

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            realm: "switchboard".into(),
            software: "Switchboard".into(),
            default_lifetime: 600,
            max_lifetime: 3600,
            permission_lifetime: 300,
            channel_lifetime: 600,
            max_permissions: 64,
            max_channels: 64,
            allow_peers: Vec::new(),
            own_addrs: Vec::new(),
            tcp_relay: true,
            relay_v4: true,
            relay_v6: false,
            nat_discovery: None,
        }
    }
}

/// Where a message came from.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    /// The client's transport address.
    pub client: SocketAddr,
    /// The server address it reached.
    pub server: SocketAddr,
    /// Its transport.
    pub transport: ClientTransport,
    /// Now, in ms since the epoch.
    pub now_ms: u64,
}

impl Ctx {
    fn now_secs(&self) -> u64 {
        self.now_ms / 1000
    }
}

/// A user (or the node) holds all the allocations it may (486 Allocation Quota Reached).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("allocation quota reached")]
pub struct QuotaReached;

/// Whether a user may hold one more allocation.
pub trait Quotas {
    /// `Err` when `username` (or the node) is at its allocation quota.
    fn may_allocate(&self, username: &str) -> Result<(), QuotaReached>;
}

/// An accepted Allocate waiting for its relay.
#[derive(Debug, Clone)]
pub struct AllocateRequest {
    transaction: TransactionId,
    creds: LongTermKeyCredentials,
    algorithm: IntegrityAlgorithm,
    /// The authenticated user.
    pub username: String,
    /// Whose quota it counts against: a static user's name, or for TURN REST credentials (each
    /// minted under a new name) the client's address — see [`super::auth::UserDb::quota_key`].
    pub quota_key: String,
    /// IPv4 or IPv6 relay.
    pub family: AddressFamily,
    /// UDP or (RFC 6062) TCP relay.
    pub relay_transport: RelayTransport,
    /// Granted lifetime (s).
    pub lifetime: u32,
    /// EVEN-PORT: `Some(reserve_next)`.
    pub even_port: Option<bool>,
    /// RESERVATION-TOKEN: use the port reserved by an earlier Allocate.
    pub reservation: Option<u64>,
}

/// A TCP relay's Connect (RFC 6062 §5.2): connect to `peer`, then answer with
/// [`TurnServer::connect_reply`].
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    transaction: TransactionId,
    creds: LongTermKeyCredentials,
    algorithm: IntegrityAlgorithm,
    /// The peer to connect to.
    pub peer: SocketAddr,
}

/// What to do with a message from a client.
#[allow(missing_docs)]
#[derive(Debug)]
pub enum Handled<'a> {
    /// Send this back to the client.
    Reply(Vec<u8>),
    /// Send this back to the client from another of the server's addresses (RFC 5780
    /// CHANGE-REQUEST; UDP only).
    ReplyFrom { from: SocketAddr, bytes: Vec<u8> },
    /// Nothing to send (responses, unknown indications, data without permission).
    Ignore,
    /// Nothing to send, and count it against the source's failed authentications.
    AuthFailed(Option<Vec<u8>>),
    /// Create a relay, then answer with [`TurnServer::allocated`] or [`TurnServer::allocate_failed`].
    Allocate(AllocateRequest),
    /// The allocation's lifetime changed (already updated in the state); reply to send.
    Refreshed(Vec<u8>),
    /// Delete the allocation, then send the reply.
    Delete(Vec<u8>),
    /// Relay this to a peer.
    ToPeer { peer: SocketAddr, data: &'a [u8] },
    /// RFC 6062 Connect to a peer.
    Connect(ConnectRequest),
    /// RFC 6062 ConnectionBind: this client connection carries the peer connection `id`; send
    /// the reply, then pipe raw bytes.
    ConnectionBind { id: u32, reply: Vec<u8>, username: String },
}

/// The part of a TURN server's settings a reload may change.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// REST secrets (rotation: the old ones stay until removed) and static users.
    pub users: UserDb,
    /// Peers allowed although special-purpose.
    pub allow_peers: Vec<IpNet>,
}

/// Relay addresses of the other nodes of a cluster: their IP and relay port range.
pub type ClusterRelays = Vec<(IpAddr, u16, u16)>;

/// The STUN/TURN logic of one node.
#[derive(Debug)]
pub struct TurnServer {
    /// Settings.
    pub cfg: TurnConfig,
    /// Who may log in and which special-purpose peers they may reach: a configuration reload
    /// replaces them while allocations go on.
    access: std::sync::RwLock<Access>,
    nonces: Nonces,
    /// Relays of the cluster's nodes: allowed peers although private (relaying between nodes).
    cluster_relays: std::sync::RwLock<ClusterRelays>,
}

fn reply_type(msg: &Message<'_>, class: MessageClass) -> MessageType {
    MessageType::from_class_method(class, msg.method())
}

/// Attribute types we understand; any other comprehension-required one gets 420.
fn known_attribute(t: u16) -> bool {
    matches!(
        t,
        0x0001 | 0x0006 | 0x0008 | 0x0009 | 0x000A | 0x000C | 0x000D | 0x0012 | 0x0013 | 0x0014 | 0x0015
            | 0x0016 | 0x0017 | 0x0018 | 0x0019 | 0x001A | 0x001C | 0x0020 | 0x0022 | 0x002A
    ) || t >= 0x8000
}

impl TurnServer {
    /// A server with its users and a nonce secret (share it between nodes so a nonce from one
    /// node is good on another behind the same name).
    pub fn new(mut cfg: TurnConfig, users: UserDb, nonce_secret: Vec<u8>, nonce_ttl_secs: u64) -> Self {
        let allow_peers = std::mem::take(&mut cfg.allow_peers);
        TurnServer {
            cfg,
            access: std::sync::RwLock::new(Access { users, allow_peers }),
            nonces: Nonces::new(nonce_secret, nonce_ttl_secs),
            cluster_relays: std::sync::RwLock::new(Vec::new()),
        }
    }

    /// Replaces the users and allowed peers (a configuration reload). Allocations keep their
    /// credentials until their next request, which is checked against the new users.
    pub fn set_access(&self, access: Access) {
        *self.access.write().unwrap_or_else(|p| p.into_inner()) = access;
    }

    fn access(&self) -> std::sync::RwLockReadGuard<'_, Access> {
        self.access.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the relay addresses of the cluster's nodes (refreshed as nodes report).
    pub fn set_cluster_relays(&self, relays: ClusterRelays) {
        *self.cluster_relays.write().unwrap_or_else(|p| p.into_inner()) = relays;
    }

    fn is_cluster_relay(&self, peer: SocketAddr) -> bool {
        let ip = match peer.ip() {
            IpAddr::V6(v6) => super::policy::embedded_v4(v6).map(IpAddr::V4).unwrap_or(peer.ip()),
            ip => ip,
        };
        self.cluster_relays
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(rip, lo, hi)| *rip == ip && (*lo..=*hi).contains(&peer.port()))
    }

    // ---- building replies ----

    fn finish(&self, mut b: MessageWriteVec, creds: Option<(&LongTermKeyCredentials, IntegrityAlgorithm)>) -> Vec<u8> {
        if !self.cfg.software.is_empty() {
            if let Ok(s) = Software::new(&self.cfg.software) {
                let _ = b.add_attribute(&s);
            }
        }
        if let Some((c, algo)) = creds {
            let _ = b.add_message_integrity(&c.clone().into(), algo);
        }
        let _ = b.add_fingerprint();
        b.finish()
    }

    fn error(&self, msg: &Message<'_>, code: u16, creds: Option<(&LongTermKeyCredentials, IntegrityAlgorithm)>) -> Vec<u8> {
        let mut b = Message::builder(reply_type(msg, MessageClass::Error), msg.transaction_id(), MessageWriteVec::new());
        if let Ok(e) = ErrorCode::builder(code).build() {
            let _ = b.add_attribute(&e);
        }
        self.finish(b, creds)
    }

    /// 401/438 carry the realm and a fresh nonce, and no integrity.
    fn challenge(&self, msg: &Message<'_>, code: u16, ctx: &Ctx) -> Vec<u8> {
        let mut b = Message::builder(reply_type(msg, MessageClass::Error), msg.transaction_id(), MessageWriteVec::new());
        if let Ok(e) = ErrorCode::builder(code).build() {
            let _ = b.add_attribute(&e);
        }
        if let Ok(r) = Realm::new(&self.cfg.realm) {
            let _ = b.add_attribute(&r);
        }
        if let Ok(n) = Nonce::new(&self.nonces.issue(ctx.client.ip(), ctx.now_secs())) {
            let _ = b.add_attribute(&n);
        }
        self.finish(b, None)
    }

    fn bad_request_raw(&self, data: &[u8]) -> Handled<'static> {
        // A request we cannot parse still gets a 400 if its header is readable.
        match MessageHeader::from_bytes(data) {
            Ok(h) if h.get_type().has_class(MessageClass::Request) => {
                let t = MessageType::from_class_method(MessageClass::Error, h.get_type().method());
                let mut b = Message::builder(t, h.transaction_id(), MessageWriteVec::new());
                if let Ok(e) = ErrorCode::builder(ErrorCode::BAD_REQUEST).build() {
                    let _ = b.add_attribute(&e);
                }
                Handled::Reply(self.finish(b, None))
            }
            _ => Handled::Ignore,
        }
    }

    // ---- entry point ----

    /// Handles one message from a client. `alloc` is the allocation of the client's 5-tuple.
    pub fn handle<'a>(
        &self,
        alloc: Option<&mut AllocationState>,
        quotas: &dyn Quotas,
        limiter: &FailureLimiter,
        ctx: &Ctx,
        data: &'a [u8],
    ) -> Handled<'a> {
        if channel_data::is_channel_data(data) {
            return match (alloc, channel_data::parse(data)) {
                (Some(a), Some((number, payload))) => match a.channel_peer(number, ctx.now_ms) {
                    Some(peer) => Handled::ToPeer { peer, data: payload },
                    None => Handled::Ignore,
                },
                _ => Handled::Ignore,
            };
        }
        let msg = match Message::from_bytes(data) {
            Ok(m) => m,
            Err(_) => return self.bad_request_raw(data),
        };
        match msg.class() {
            MessageClass::Indication => self.indication(alloc, ctx, &msg, data),
            MessageClass::Request => self.request(alloc, quotas, limiter, ctx, &msg),
            _ => Handled::Ignore,
        }
    }

    fn indication<'a>(&self, alloc: Option<&mut AllocationState>, ctx: &Ctx, msg: &Message<'_>, raw: &'a [u8]) -> Handled<'a> {
        if !msg.has_method(SEND) {
            return Handled::Ignore;
        }
        let Some(a) = alloc else { return Handled::Ignore };
        let (Ok(peer), Ok(data)) = (msg.attribute::<XorPeerAddress>(), msg.attribute::<Data>()) else {
            return Handled::Ignore;
        };
        let peer = peer.addr(msg.transaction_id());
        if !a.permitted(peer.ip(), ctx.now_ms) {
            return Handled::Ignore;
        }
        // `Data` borrows the parsed message; hand out the same bytes from the caller's buffer.
        let payload = data.data();
        let start = payload.as_ptr() as usize - raw.as_ptr() as usize;
        match raw.get(start..start + payload.len()) {
            Some(bytes) => Handled::ToPeer { peer, data: bytes },
            None => Handled::Ignore,
        }
    }

    fn request<'a>(
        &self,
        alloc: Option<&mut AllocationState>,
        quotas: &dyn Quotas,
        limiter: &FailureLimiter,
        ctx: &Ctx,
        msg: &Message<'_>,
    ) -> Handled<'a> {
        let nat_discovery = self.cfg.nat_discovery;
        let unknown: Vec<_> = msg
            .iter_attributes()
            .map(|(_, a)| a.get_type())
            .filter(|t| !(known_attribute(t.value()) || (t.value() == CHANGE_REQUEST && nat_discovery.is_some())))
            .collect();
        if !unknown.is_empty() {
            let mut b = Message::builder(reply_type(msg, MessageClass::Error), msg.transaction_id(), MessageWriteVec::new());
            if let Ok(e) = ErrorCode::builder(ErrorCode::UNKNOWN_ATTRIBUTE).build() {
                let _ = b.add_attribute(&e);
            }
            let _ = b.add_attribute(&UnknownAttributes::new(&unknown));
            return Handled::Reply(self.finish(b, None));
        }
        if msg.has_method(BINDING) {
            return match nat_discovery {
                Some(nd) => self.binding_5780(msg, ctx, nd),
                None => {
                    let mut b = Message::builder_success(msg, MessageWriteVec::new());
                    let _ = b.add_attribute(&XorMappedAddress::new(ctx.client, msg.transaction_id()));
                    Handled::Reply(self.finish(b, None))
                }
            };
        }
        let known_method = [ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND, CONNECT, CONNECTION_BIND]
            .iter()
            .any(|m| msg.has_method(*m));
        if !known_method {
            return Handled::Reply(self.error(msg, ErrorCode::BAD_REQUEST, None));
        }
        // Long-term credentials (RFC 8489 §9.2.4).
        let has_integrity = msg.has_attribute(MessageIntegrity::TYPE) || msg.has_attribute(MessageIntegritySha256::TYPE);
        if !has_integrity {
            return Handled::Reply(self.challenge(msg, ErrorCode::UNAUTHORIZED, ctx));
        }
        let (Ok(username), Ok(realm), Ok(nonce)) =
            (msg.attribute::<Username>(), msg.attribute::<Realm>(), msg.attribute::<Nonce>())
        else {
            return Handled::Reply(self.error(msg, ErrorCode::BAD_REQUEST, None));
        };
        if !limiter.allowed(ctx.client.ip(), ctx.now_secs()) {
            // Too many failures from this source: a final 401 without a fresh nonce, so the
            // client stops instead of guessing on.
            return Handled::AuthFailed(Some(self.error(msg, ErrorCode::UNAUTHORIZED, None)));
        }
        // The nonce first: it was issued to this address, so only past it does a failure prove
        // anything about the source. Before it, a spoofed packet could count failures against
        // its victim's address and lock the victim out.
        match self.nonces.check(nonce.nonce(), ctx.client.ip(), ctx.now_secs()) {
            NonceCheck::Valid => {}
            NonceCheck::Stale | NonceCheck::Invalid => {
                return Handled::Reply(self.challenge(msg, ErrorCode::STALE_NONCE, ctx));
            }
        }
        if realm.realm() != self.cfg.realm {
            return Handled::AuthFailed(Some(self.challenge(msg, ErrorCode::UNAUTHORIZED, ctx)));
        }
        let user = username.username();
        let (algo, creds) = match self.access().users.verify(msg, user, &self.cfg.realm, ctx.now_secs()) {
            Ok(v) => v,
            Err(UserError::Unknown | UserError::Expired) => {
                return Handled::AuthFailed(Some(self.challenge(msg, ErrorCode::UNAUTHORIZED, ctx)));
            }
        };
        let auth = (&creds, algo);
        if let Some(a) = alloc.as_deref() {
            if a.username != user && !msg.has_method(ALLOCATE) {
                return Handled::Reply(self.error(msg, ErrorCode::WRONG_CREDENTIALS, Some(auth)));
            }
        }
        if msg.has_method(ALLOCATE) {
            self.allocate(alloc, quotas, ctx, msg, user, creds.clone(), algo)
        } else if msg.has_method(CONNECTION_BIND) {
            self.connection_bind(ctx, msg, user, auth)
        } else {
            let Some(a) = alloc else {
                return Handled::Reply(self.error(msg, ErrorCode::ALLOCATION_MISMATCH, Some(auth)));
            };
            if msg.has_method(REFRESH) {
                self.refresh(a, ctx, msg, auth)
            } else if msg.has_method(CREATE_PERMISSION) {
                self.create_permission(a, ctx, msg, auth)
            } else if msg.has_method(CHANNEL_BIND) {
                self.channel_bind(a, ctx, msg, auth)
            } else {
                self.connect(a, ctx, msg, creds.clone(), algo)
            }
        }
    }

    // ---- methods ----

    fn lifetime(&self, requested: Option<u32>) -> u32 {
        match requested {
            Some(r) if r > self.cfg.default_lifetime => r.min(self.cfg.max_lifetime),
            _ => self.cfg.default_lifetime,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate<'a>(
        &self,
        alloc: Option<&mut AllocationState>,
        quotas: &dyn Quotas,
        ctx: &Ctx,
        msg: &Message<'_>,
        user: &str,
        creds: LongTermKeyCredentials,
        algo: IntegrityAlgorithm,
    ) -> Handled<'a> {
        let auth = Some((&creds, algo));
        if let Some(a) = alloc {
            // A retransmitted Allocate gets its success again; anything else is a mismatch.
            if a.allocate_transaction == transaction_bytes(msg.transaction_id()) && a.username == user {
                let remaining = ((a.expires_ms.saturating_sub(ctx.now_ms)) / 1000) as u32;
                return Handled::Reply(self.allocate_success(msg.transaction_id(), a.relay, remaining, ctx.client, None, (&creds, algo)));
            }
            return Handled::Reply(self.error(msg, ErrorCode::ALLOCATION_MISMATCH, auth));
        }
        let Ok(transport) = msg.attribute::<RequestedTransport>() else {
            return Handled::Reply(self.error(msg, ErrorCode::BAD_REQUEST, auth));
        };
        let relay_transport = match transport.protocol() {
            RequestedTransport::UDP => RelayTransport::Udp,
            RequestedTransport::TCP if self.cfg.tcp_relay && ctx.transport != ClientTransport::Udp => RelayTransport::Tcp,
            _ => return Handled::Reply(self.error(msg, ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL, auth)),
        };
        let even_port = msg.attribute::<EvenPort>().ok().map(|e| e.requested());
        let reservation = msg.attribute::<ReservationToken>().ok().map(|r| r.token());
        if even_port.is_some() && reservation.is_some() {
            return Handled::Reply(self.error(msg, ErrorCode::BAD_REQUEST, auth));
        }
        if relay_transport == RelayTransport::Tcp && (even_port.is_some() || reservation.is_some() || msg.has_attribute(DontFragment::TYPE)) {
            return Handled::Reply(self.error(msg, ErrorCode::BAD_REQUEST, auth));
        }
        let family = match msg.attribute::<RequestedAddressFamily>() {
            Ok(f) => f.family(),
            Err(_) => AddressFamily::IPV4,
        };
        let offered = match family {
            AddressFamily::IPV4 => self.cfg.relay_v4,
            AddressFamily::IPV6 => self.cfg.relay_v6,
        };
        if !offered || (reservation.is_some() && msg.has_attribute(RequestedAddressFamily::TYPE)) {
            return Handled::Reply(self.error(msg, ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED, auth));
        }
        let quota_key = self.access().users.quota_key(user, ctx.client.ip());
        if quotas.may_allocate(&quota_key).is_err() {
            return Handled::Reply(self.error(msg, ErrorCode::ALLOCATION_QUOTA_REACHED, auth));
        }
        let lifetime = self.lifetime(msg.attribute::<Lifetime>().ok().map(|l| l.seconds()));
        Handled::Allocate(AllocateRequest {
            transaction: msg.transaction_id(),
            creds,
            algorithm: algo,
            username: user.to_owned(),
            quota_key,
            family,
            relay_transport,
            lifetime,
            even_port,
            reservation,
        })
    }

    /// Binding with RFC 5780: OTHER-ADDRESS and RESPONSE-ORIGIN, and CHANGE-REQUEST answered
    /// from the other IP and/or port. Over TCP and TLS a CHANGE-REQUEST cannot be honoured
    /// (the connection fixes the address): 400.
    fn binding_5780<'a>(&self, msg: &Message<'_>, ctx: &Ctx, nd: NatDiscovery) -> Handled<'a> {
        let (mut change_ip, mut change_port) = (false, false);
        if let Some(raw) = msg.raw_attribute(AttributeType::new(CHANGE_REQUEST)) {
            let flags = match &raw.value[..] {
                [_, _, _, f] => *f,
                _ => return Handled::Reply(self.error(msg, ErrorCode::BAD_REQUEST, None)),
            };
            if ctx.transport != ClientTransport::Udp {
                return Handled::Reply(self.error(msg, ErrorCode::BAD_REQUEST, None));
            }
            change_ip = flags & 0x04 != 0;
            change_port = flags & 0x02 != 0;
        }
        let other = nd.other(ctx.server);
        let from = SocketAddr::new(
            if change_ip { other.ip() } else { ctx.server.ip() },
            if change_port { other.port() } else { ctx.server.port() },
        );
        let mut b = Message::builder_success(msg, MessageWriteVec::new());
        let _ = b.add_attribute(&XorMappedAddress::new(ctx.client, msg.transaction_id()));
        let _ = b.add_attribute(&MappedSocketAddr::new(from).to_raw(AttributeType::new(RESPONSE_ORIGIN)));
        let _ = b.add_attribute(&MappedSocketAddr::new(other).to_raw(AttributeType::new(OTHER_ADDRESS)));
        let bytes = self.finish(b, None);
        if from == ctx.server {
            Handled::Reply(bytes)
        } else {
            Handled::ReplyFrom { from, bytes }
        }
    }

    fn allocate_success(
        &self,
        transaction: TransactionId,
        relay: SocketAddr,
        lifetime: u32,
        client: SocketAddr,
        token: Option<u64>,
        auth: (&LongTermKeyCredentials, IntegrityAlgorithm),
    ) -> Vec<u8> {
        let t = MessageType::from_class_method(MessageClass::Success, ALLOCATE);
        let mut b = Message::builder(t, transaction, MessageWriteVec::new());
        let _ = b.add_attribute(&XorRelayedAddress::new(relay, transaction));
        let _ = b.add_attribute(&Lifetime::new(lifetime));
        let _ = b.add_attribute(&XorMappedAddress::new(client, transaction));
        if let Some(token) = token {
            let _ = b.add_attribute(&ReservationToken::new(token));
        }
        self.finish(b, Some(auth))
    }

    /// The relay exists at `relay` (the address to advertise): the success reply and the new
    /// allocation's state. `token` is the reservation made for EVEN-PORT's next port, if any.
    pub fn allocated(&self, req: &AllocateRequest, relay: SocketAddr, advertised: SocketAddr, token: Option<u64>, ctx: &Ctx) -> (Vec<u8>, AllocationState) {
        let reply = self.allocate_success(req.transaction, advertised, req.lifetime, ctx.client, token, (&req.creds, req.algorithm));
        let state = AllocationState::new(
            ctx.client,
            ctx.server,
            ctx.transport,
            relay,
            req.relay_transport,
            req.username.clone(),
            transaction_bytes(req.transaction),
            ctx.now_ms + u64::from(req.lifetime) * 1000,
            self.cfg.max_permissions,
            self.cfg.max_channels,
        );
        (reply, state)
    }

    /// The relay could not be created: 508 Insufficient Capacity (ports exhausted) or another
    /// error code.
    pub fn allocate_failed(&self, req: &AllocateRequest, code: u16) -> Vec<u8> {
        let t = MessageType::from_class_method(MessageClass::Error, ALLOCATE);
        let mut b = Message::builder(t, req.transaction, MessageWriteVec::new());
        if let Ok(e) = ErrorCode::builder(code).build() {
            let _ = b.add_attribute(&e);
        }
        self.finish(b, Some((&req.creds, req.algorithm)))
    }

    fn refresh<'a>(&self, a: &mut AllocationState, ctx: &Ctx, msg: &Message<'_>, auth: (&LongTermKeyCredentials, IntegrityAlgorithm)) -> Handled<'a> {
        if let Ok(f) = msg.attribute::<RequestedAddressFamily>() {
            if (f.family() == AddressFamily::IPV6) != a.relay.is_ipv6() {
                return Handled::Reply(self.error(msg, ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH, Some(auth)));
            }
        }
        let requested = msg.attribute::<Lifetime>().ok().map(|l| l.seconds());
        let mut b = Message::builder_success(msg, MessageWriteVec::new());
        if requested == Some(0) {
            let _ = b.add_attribute(&Lifetime::new(0));
            return Handled::Delete(self.finish(b, Some(auth)));
        }
        let lifetime = self.lifetime(requested);
        a.expires_ms = ctx.now_ms + u64::from(lifetime) * 1000;
        let _ = b.add_attribute(&Lifetime::new(lifetime));
        Handled::Refreshed(self.finish(b, Some(auth)))
    }

    /// Family, policy and own-address checks for a peer (403 / 443).
    fn peer_allowed(&self, a: &AllocationState, peer: SocketAddr) -> Result<(), u16> {
        if peer.is_ipv6() != a.relay.is_ipv6() {
            return Err(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH);
        }
        if self.is_own(peer) {
            return Err(ErrorCode::FORBIDDEN);
        }
        if self.is_cluster_relay(peer) {
            return Ok(());
        }
        check_peer(peer.ip(), &self.access().allow_peers).map_err(|_| ErrorCode::FORBIDDEN)
    }

    /// Whether `peer` is one of this server's own listeners.
    pub fn is_own(&self, peer: SocketAddr) -> bool {
        let canonical = match peer.ip() {
            IpAddr::V6(v6) => super::policy::embedded_v4(v6).map(IpAddr::V4).unwrap_or(peer.ip()),
            ip => ip,
        };
        self.cfg
            .own_addrs
            .iter()
            .any(|o| o.port() == peer.port() && (o.ip().is_unspecified() || o.ip() == canonical || o.ip() == peer.ip()))
    }

    fn create_permission<'a>(&self, a: &mut AllocationState, ctx: &Ctx, msg: &Message<'_>, auth: (&LongTermKeyCredentials, IntegrityAlgorithm)) -> Handled<'a> {
        let peers: Vec<SocketAddr> = (0..)
            .map_while(|n| msg.nth_attribute::<XorPeerAddress>(n).ok())
            .map(|p| p.addr(msg.transaction_id()))
            .collect();
        if peers.is_empty() {
            return Handled::Reply(self.error(msg, ErrorCode::BAD_REQUEST, Some(auth)));
        }
        // All or nothing: check every peer before installing any.
        for p in &peers {
            if let Err(code) = self.peer_allowed(a, *p) {
                return Handled::Reply(self.error(msg, code, Some(auth)));
            }
        }
        let until = ctx.now_ms + u64::from(self.cfg.permission_lifetime) * 1000;
        for p in &peers {
            if !a.permit(p.ip(), until, ctx.now_ms) {
                return Handled::Reply(self.error(msg, ErrorCode::INSUFFICIENT_CAPACITY, Some(auth)));
            }
        }
        Handled::Reply(self.finish(Message::builder_success(msg, MessageWriteVec::new()), Some(auth)))
    }

    fn channel_bind<'a>(&self, a: &mut AllocationState, ctx: &Ctx, msg: &Message<'_>, auth: (&LongTermKeyCredentials, IntegrityAlgorithm)) -> Handled<'a> {
        let (Ok(number), Ok(peer)) = (msg.attribute::<ChannelNumber>(), msg.attribute::<XorPeerAddress>()) else {
            return Handled::Reply(self.error(msg, ErrorCode::BAD_REQUEST, Some(auth)));
        };
        let peer = peer.addr(msg.transaction_id());
        if let Err(code) = self.peer_allowed(a, peer) {
            return Handled::Reply(self.error(msg, code, Some(auth)));
        }
        if a.relay_transport == RelayTransport::Tcp {
            return Handled::Reply(self.error(msg, ErrorCode::BAD_REQUEST, Some(auth)));
        }
        let until = ctx.now_ms + u64::from(self.cfg.channel_lifetime) * 1000;
        let code = match a.bind_channel(number.channel(), peer, until, ctx.now_ms) {
            Ok(()) => None,
            Err(ChannelError::Quota) => Some(ErrorCode::INSUFFICIENT_CAPACITY),
            Err(_) => Some(ErrorCode::BAD_REQUEST),
        };
        if let Some(code) = code {
            return Handled::Reply(self.error(msg, code, Some(auth)));
        }
        let perm_until = ctx.now_ms + u64::from(self.cfg.permission_lifetime) * 1000;
        if !a.permit(peer.ip(), perm_until, ctx.now_ms) {
            return Handled::Reply(self.error(msg, ErrorCode::INSUFFICIENT_CAPACITY, Some(auth)));
        }
        Handled::Reply(self.finish(Message::builder_success(msg, MessageWriteVec::new()), Some(auth)))
    }

    fn connect<'a>(&self, a: &mut AllocationState, ctx: &Ctx, msg: &Message<'_>, creds: LongTermKeyCredentials, algo: IntegrityAlgorithm) -> Handled<'a> {
        let auth = Some((&creds, algo));
        if a.relay_transport != RelayTransport::Tcp {
            return Handled::Reply(self.error(msg, ErrorCode::BAD_REQUEST, auth));
        }
        let Ok(peer) = msg.attribute::<XorPeerAddress>() else {
            return Handled::Reply(self.error(msg, ErrorCode::BAD_REQUEST, auth));
        };
        let peer = peer.addr(msg.transaction_id());
        if let Err(code) = self.peer_allowed(a, peer) {
            return Handled::Reply(self.error(msg, code, auth));
        }
        let until = ctx.now_ms + u64::from(self.cfg.permission_lifetime) * 1000;
        if !a.permit(peer.ip(), until, ctx.now_ms) {
            return Handled::Reply(self.error(msg, ErrorCode::INSUFFICIENT_CAPACITY, auth));
        }
        Handled::Connect(ConnectRequest { transaction: msg.transaction_id(), creds, algorithm: algo, peer })
    }

    /// The answer to a Connect: success with CONNECTION-ID, or 446/447.
    pub fn connect_reply(&self, req: &ConnectRequest, result: Result<u32, u16>) -> Vec<u8> {
        let auth = Some((&req.creds, req.algorithm));
        match result {
            Ok(id) => {
                let t = MessageType::from_class_method(MessageClass::Success, CONNECT);
                let mut b = Message::builder(t, req.transaction, MessageWriteVec::new());
                let _ = b.add_attribute(&ConnectionId::new(id));
                self.finish(b, auth)
            }
            Err(code) => {
                let t = MessageType::from_class_method(MessageClass::Error, CONNECT);
                let mut b = Message::builder(t, req.transaction, MessageWriteVec::new());
                if let Ok(e) = ErrorCode::builder(code).build() {
                    let _ = b.add_attribute(&e);
                }
                self.finish(b, auth)
            }
        }
    }

    fn connection_bind<'a>(&self, ctx: &Ctx, msg: &Message<'_>, user: &str, auth: (&LongTermKeyCredentials, IntegrityAlgorithm)) -> Handled<'a> {
        if ctx.transport == ClientTransport::Udp {
            return Handled::Reply(self.error(msg, ErrorCode::BAD_REQUEST, Some(auth)));
        }
        let Ok(id) = msg.attribute::<ConnectionId>() else {
            return Handled::Reply(self.error(msg, ErrorCode::BAD_REQUEST, Some(auth)));
        };
        let reply = self.finish(Message::builder_success(msg, MessageWriteVec::new()), Some(auth));
        Handled::ConnectionBind { id: id.id(), reply, username: user.to_owned() }
    }

    /// A ConnectionBind for an unknown connection id: 400.
    pub fn connection_bind_failed(&self, data: &[u8]) -> Vec<u8> {
        match Message::from_bytes(data) {
            Ok(msg) => self.error(&msg, ErrorCode::BAD_REQUEST, None),
            Err(_) => Vec::new(),
        }
    }

    /// A ConnectionAttempt indication for the client of a TCP relay (RFC 6062 §5.3 server side
    /// of an inbound peer connection).
    pub fn connection_attempt(&self, id: u32, peer: SocketAddr) -> Vec<u8> {
        let transaction = TransactionId::generate();
        let t = MessageType::from_class_method(MessageClass::Indication, turn_types::message::CONNECTION_ATTEMPT);
        let mut b = Message::builder(t, transaction, MessageWriteVec::new());
        let _ = b.add_attribute(&ConnectionId::new(id));
        let _ = b.add_attribute(&XorPeerAddress::new(peer, transaction));
        self.finish(b, None)
    }

    // ---- data from peers ----

    /// Appends data from `peer` for the allocation's client to `out`: ChannelData if a channel
    /// is bound, otherwise a Data indication. `false` (nothing appended) without a permission.
    pub fn wrap_peer_data(&self, a: &AllocationState, peer: SocketAddr, data: &[u8], now_ms: u64, out: &mut Vec<u8>) -> bool {
        if !a.permitted(peer.ip(), now_ms) {
            return false;
        }
        if let Some(n) = a.peer_channel(peer, now_ms) {
            channel_data::write(n, data, a.transport != ClientTransport::Udp, out);
            return true;
        }
        // Indications need no strong randomness: a counter mixed with the time is unique enough.
        let seq = INDICATION_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut transaction = [0u8; 12];
        transaction[..8].copy_from_slice(&seq.to_be_bytes());
        transaction[8..].copy_from_slice(&(now_ms as u32).to_be_bytes());
        channel_data::write_data_indication(peer, transaction, data, out);
        true
    }
}

static INDICATION_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn transaction_bytes(t: TransactionId) -> [u8; 12] {
    let v: u128 = t.into();
    let b = v.to_be_bytes();
    let mut out = [0u8; 12];
    out.copy_from_slice(&b[4..]);
    out
}

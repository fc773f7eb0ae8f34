//! Unit tests of the TURN logic without sockets: the RFC 5769 vectors, then every request and
//! error of RFC 8656 the server answers. Section numbers are RFC 8656's unless noted.

use std::net::SocketAddr;

use stun_types::attribute::{ErrorCode, MessageIntegrity, Nonce, Realm, Software, UnknownAttributes, Username, XorMappedAddress};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageWrite, MessageWriteExt, MessageWriteVec,
    ShortTermCredentials, BINDING,
};
use stun_types::prelude::*;
use turn_types::attribute::{
    ChannelNumber, Data, Lifetime, RequestedAddressFamily, RequestedTransport, XorPeerAddress, XorRelayedAddress,
};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND};
use turn_types::AddressFamily;

use super::auth::FailureLimiter;
use std::hash::RandomState;
use super::server::{AllocateRequest, Ctx, Handled, QuotaReached, Quotas, TurnConfig, TurnServer};
use super::{channel_data, AllocationState, ClientTransport};
use crate::credentials::rest_password;

// ---- RFC 5769 test vectors ----

const SAMPLE_REQUEST: [u8; 108] = [
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf,
    0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65,
    0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51,
    0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20, 0x20,
    0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2,
    0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
];

const IPV4_RESPONSE: [u8; 80] = [
    0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf,
    0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20,
    0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd,
    0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00, 0x04,
    0xc0, 0x7d, 0x4c, 0x96,
];

const IPV6_RESPONSE: [u8; 92] = [
    0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf,
    0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20,
    0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe,
    0xd2, 0xb9, 0xd9, 0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9, 0x7c,
    0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb, 0x0b, 0x4c,
];

const LONG_TERM_REQUEST: [u8; 116] = [
    0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41,
    0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88, 0xe3, 0x83, 0xaa, 0xe3, 0x83, 0x83, 0xe3, 0x82,
    0xaf, 0xe3, 0x82, 0xb9, 0x00, 0x00, 0x00, 0x15, 0x00, 0x1c, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39, 0x35,
    0x34, 0x64, 0x36, 0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79, 0x36, 0x34, 0x73, 0x41,
    0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72, 0x67, 0x00, 0x00, 0x08, 0x00,
    0x14, 0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02, 0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2, 0x8c, 0xa8,
    0x96, 0x66,
];

/// RFC 5769 §2.1: short-term integrity and fingerprint of a request.
#[test]
fn rfc5769_sample_request() {
    let m = Message::from_bytes(&SAMPLE_REQUEST).expect("parses, fingerprint included");
    assert!(m.has_method(BINDING) && m.has_class(MessageClass::Request));
    assert_eq!(m.attribute::<Software>().unwrap().software(), "STUN test client");
    assert_eq!(m.attribute::<Username>().unwrap().username(), "evtj:h6vY");
    let creds = ShortTermCredentials::new("VOkJxbRl1RmTxUk/WvJxBt".into()).into();
    assert_eq!(m.validate_integrity(&creds).unwrap(), IntegrityAlgorithm::Sha1);
    let wrong = ShortTermCredentials::new("VOkJxbRl1RmTxUk/WvJxBT".into()).into();
    assert!(m.validate_integrity(&wrong).is_err());
}

/// RFC 5769 §2.2 and §2.3: XOR-MAPPED-ADDRESS in IPv4 and IPv6 responses.
#[test]
fn rfc5769_responses() {
    let creds = ShortTermCredentials::new("VOkJxbRl1RmTxUk/WvJxBt".into()).into();
    for (bytes, addr) in [
        (&IPV4_RESPONSE[..], "192.0.2.1:32853"),
        (&IPV6_RESPONSE[..], "[2001:db8:1234:5678:11:2233:4455:6677]:32853"),
    ] {
        let m = Message::from_bytes(bytes).unwrap();
        let mapped = m.attribute::<XorMappedAddress>().unwrap().addr(m.transaction_id());
        assert_eq!(mapped, addr.parse::<SocketAddr>().unwrap());
        assert!(m.validate_integrity(&creds).is_ok());
    }
}

/// RFC 5769 §2.4: long-term credentials (the password after SASLprep is "TheMatrIX").
#[test]
fn rfc5769_long_term_request() {
    let m = Message::from_bytes(&LONG_TERM_REQUEST).unwrap();
    let user = m.attribute::<Username>().unwrap().username().to_owned();
    assert_eq!(user, "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}");
    assert_eq!(m.attribute::<Nonce>().unwrap().nonce(), "f//499k954d6OL34oL9FSTvy64sA");
    assert_eq!(m.attribute::<Realm>().unwrap().realm(), "example.org");
    let creds = LongTermKeyCredentials::new(user.clone(), "TheMatrIX".into(), "example.org".into()).into();
    assert!(m.validate_integrity(&creds).is_ok());
    let wrong = LongTermKeyCredentials::new(user, "TheMatrix".into(), "example.org".into()).into();
    assert!(m.validate_integrity(&wrong).is_err());
}

// ---- the server ----

const NOW: u64 = 1_800_000_000_000;
const SECRET: &[u8] = b"north";

struct Open;
impl Quotas for Open {
    fn may_allocate(&self, _: &str) -> Result<(), QuotaReached> {
        Ok(())
    }
}

struct Full;
impl Quotas for Full {
    fn may_allocate(&self, _: &str) -> Result<(), QuotaReached> {
        Err(QuotaReached)
    }
}

fn server(allow_loopback: bool) -> TurnServer {
    let mut users = super::auth::UserDb { rest_secrets: vec![SECRET.to_vec()], separator: ':', ..Default::default() };
    users.static_users.insert("alice".into(), "wonderland".into());
    let cfg = TurnConfig {
        realm: "test.local".into(),
        allow_peers: if allow_loopback { vec!["127.0.0.0/8".parse().unwrap()] } else { vec![] },
        own_addrs: vec!["127.0.0.1:3478".parse().unwrap()],
        relay_v6: true,
        ..TurnConfig::default()
    };
    TurnServer::new(cfg, users, b"nonce-secret".to_vec(), 600)
}

fn ctx(now_ms: u64) -> Ctx {
    Ctx {
        client: "127.0.0.1:40000".parse().unwrap(),
        server: "127.0.0.1:3478".parse().unwrap(),
        transport: ClientTransport::Udp,
        now_ms,
    }
}

/// A client with long-term credentials and the nonce it learned.
struct Client {
    user: String,
    pass: String,
    nonce: Option<String>,
    algo: IntegrityAlgorithm,
    realm: String,
}

impl Client {
    fn new(user: &str, pass: &str) -> Self {
        Client { user: user.into(), pass: pass.into(), nonce: None, algo: IntegrityAlgorithm::Sha1, realm: "test.local".into() }
    }

    fn request(&self, method: stun_types::message::Method, add: impl FnOnce(&mut MessageWriteVec)) -> Vec<u8> {
        let mut b = Message::builder_request(method, MessageWriteVec::new());
        add(&mut b);
        if let Some(n) = &self.nonce {
            b.add_attribute(&Username::new(&self.user).unwrap()).unwrap();
            b.add_attribute(&Realm::new(&self.realm).unwrap()).unwrap();
            b.add_attribute(&Nonce::new(n).unwrap()).unwrap();
            let creds = LongTermKeyCredentials::new(self.user.clone(), self.pass.clone(), self.realm.clone());
            b.add_message_integrity(&creds.into(), self.algo).unwrap();
        }
        b.add_fingerprint().unwrap();
        b.finish()
    }

    /// Learns the nonce from a 401/438.
    fn learn(&mut self, reply: &[u8]) {
        let m = Message::from_bytes(reply).unwrap();
        self.nonce = Some(m.attribute::<Nonce>().unwrap().nonce().to_owned());
    }
}

fn reply(h: Handled<'_>) -> Vec<u8> {
    match h {
        Handled::Reply(r) | Handled::Refreshed(r) | Handled::Delete(r) => r,
        Handled::AuthFailed(Some(r)) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn error_code(bytes: &[u8]) -> Option<u16> {
    let m = Message::from_bytes(bytes).unwrap();
    m.attribute::<ErrorCode>().ok().map(|e| e.code())
}

fn allocate_request(c: &Client) -> Vec<u8> {
    c.request(ALLOCATE, |b| {
        b.add_attribute(&RequestedTransport::new(RequestedTransport::UDP)).unwrap();
    })
}

/// Runs the 401 handshake and an Allocate; returns the allocation.
fn allocated(s: &TurnServer, c: &mut Client) -> AllocationState {
    let limiter = FailureLimiter::new(10, 60, 100, RandomState::new());
    let first = reply(s.handle(None, &Open, &limiter, &ctx(NOW), &allocate_request(c)));
    assert_eq!(error_code(&first), Some(401));
    c.learn(&first);
    let req: AllocateRequest = match s.handle(None, &Open, &limiter, &ctx(NOW), &allocate_request(c)) {
        Handled::Allocate(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(req.lifetime, 600, "default lifetime");
    let relay: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let (bytes, state) = s.allocated(&req, relay, relay, None, &ctx(NOW));
    let m = Message::from_bytes(&bytes).unwrap();
    assert!(m.has_class(MessageClass::Success));
    assert_eq!(m.attribute::<XorRelayedAddress>().unwrap().addr(m.transaction_id()), relay);
    assert_eq!(m.attribute::<Lifetime>().unwrap().seconds(), 600);
    assert_eq!(m.attribute::<XorMappedAddress>().unwrap().addr(m.transaction_id()), ctx(NOW).client);
    let creds = LongTermKeyCredentials::new(c.user.clone(), c.pass.clone(), "test.local".into()).into();
    assert!(m.validate_integrity(&creds).is_ok(), "the success is signed with the client's key");
    state
}

#[test]
fn binding_needs_no_credentials() {
    let s = server(false);
    let req = Message::builder_request(BINDING, MessageWriteVec::new()).finish();
    let r = reply(s.handle(None, &Open, &FailureLimiter::new(1, 1, 1, RandomState::new()), &ctx(NOW), &req));
    let m = Message::from_bytes(&r).expect("FINGERPRINT is valid");
    assert!(m.has_class(MessageClass::Success));
    assert_eq!(m.attribute::<XorMappedAddress>().unwrap().addr(m.transaction_id()), ctx(NOW).client);
    assert_eq!(m.attribute::<Software>().unwrap().software(), "Switchboard");
}

/// §7.2 with RFC 8489 §9.2: 401 with realm and nonce, then an allocation; REST and static users.
#[test]
fn allocate_with_rest_and_static_credentials() {
    let s = server(false);
    let user = "1800003600:bob";
    allocated(&s, &mut Client::new(user, &rest_password(SECRET, user)));
    allocated(&s, &mut Client::new("alice", "wonderland"));
}

/// A reload rotates the REST secret: with the old one kept as an extra secret both log in,
/// once it is dropped only the new one does; static users come and go the same way.
#[test]
fn access_changes_live() {
    let s = server(false);
    let limiter = FailureLimiter::new(100, 60, 100, RandomState::new());
    let user = "1800003600:bob";
    let logs_in = |pass: &str, name: &str| {
        let mut c = Client::new(name, pass);
        let first = reply(s.handle(None, &Open, &limiter, &ctx(NOW), &allocate_request(&c)));
        c.learn(&first);
        matches!(s.handle(None, &Open, &limiter, &ctx(NOW), &allocate_request(&c)), Handled::Allocate(_))
    };
    let rotated = |secrets: Vec<&[u8]>| super::server::Access {
        users: super::auth::UserDb { rest_secrets: secrets.into_iter().map(<[u8]>::to_vec).collect(), separator: ':', ..Default::default() },
        allow_peers: vec![],
    };
    s.set_access(rotated(vec![b"south", SECRET]));
    assert!(logs_in(&rest_password(b"south", user), user), "the new secret");
    assert!(logs_in(&rest_password(SECRET, user), user), "the old secret, kept as an extra");
    assert!(!logs_in("wonderland", "alice"), "a static user removed");
    s.set_access(rotated(vec![b"south"]));
    assert!(!logs_in(&rest_password(SECRET, user), user), "the old secret once dropped");
    assert!(logs_in(&rest_password(b"south", user), user));
}

#[test]
fn bad_password_and_expired_rest_username_get_401() {
    let s = server(false);
    let limiter = FailureLimiter::new(10, 60, 100, RandomState::new());
    for (user, pass) in [("alice", "nope"), ("1799999999:bob", &rest_password(SECRET, "1799999999:bob")[..]), ("1800003600:bob", "wrong")] {
        let mut c = Client::new(user, pass);
        let first = reply(s.handle(None, &Open, &limiter, &ctx(NOW), &allocate_request(&c)));
        c.learn(&first);
        let req = allocate_request(&c);
        let h = s.handle(None, &Open, &limiter, &ctx(NOW), &req);
        assert!(matches!(h, Handled::AuthFailed(_)), "{user}: {h:?}");
        assert_eq!(error_code(&reply(h)), Some(401), "{user}");
    }
}

/// No state is kept for an unauthenticated client: the nonce is all there is, and a nonce for
/// another source, or an old one, is refused with 438.
#[test]
fn stateless_nonce_438() {
    let s = server(false);
    let limiter = FailureLimiter::new(10, 60, 100, RandomState::new());
    let mut c = Client::new("alice", "wonderland");
    c.learn(&reply(s.handle(None, &Open, &limiter, &ctx(NOW), &allocate_request(&c))));
    let later = reply(s.handle(None, &Open, &limiter, &ctx(NOW + 601_000), &allocate_request(&c)));
    assert_eq!(error_code(&later), Some(438));
    let mut other = ctx(NOW);
    other.client = "127.0.0.2:40000".parse().unwrap();
    assert_eq!(error_code(&reply(s.handle(None, &Open, &limiter, &other, &allocate_request(&c)))), Some(438));
    c.nonce = Some("0".repeat(32));
    assert_eq!(error_code(&reply(s.handle(None, &Open, &limiter, &ctx(NOW), &allocate_request(&c)))), Some(438));
}

/// A spoofed source cannot fail on its victim's behalf: without the nonce issued to that
/// address, a wrong realm (or anything else) is a 438 challenge, not a counted failure; with
/// it, a wrong realm counts.
#[test]
fn failures_count_only_once_the_nonce_proves_the_source() {
    let s = server(false);
    let limiter = FailureLimiter::new(2, 60, 100, RandomState::new());
    let mut spoofed = Client::new("alice", "nope");
    spoofed.realm = "elsewhere".into();
    spoofed.nonce = Some("0".repeat(32));
    for _ in 0..10 {
        let req = allocate_request(&spoofed);
        let h = s.handle(None, &Open, &limiter, &ctx(NOW), &req);
        assert!(matches!(h, Handled::Reply(_)), "{h:?}");
        assert_eq!(error_code(&reply(h)), Some(438));
    }
    let mut real = Client::new("alice", "wonderland");
    real.realm = "elsewhere".into();
    real.learn(&reply(s.handle(None, &Open, &limiter, &ctx(NOW), &allocate_request(&real))));
    assert!(matches!(s.handle(None, &Open, &limiter, &ctx(NOW), &allocate_request(&real)), Handled::AuthFailed(_)));
}

/// After too many failures a source gets a final 401 (no nonce to retry with).
#[test]
fn failed_sources_are_stopped() {
    let s = server(false);
    let limiter = FailureLimiter::new(2, 60, 100, RandomState::new());
    let mut c = Client::new("alice", "nope");
    c.learn(&reply(s.handle(None, &Open, &limiter, &ctx(NOW), &allocate_request(&c))));
    for _ in 0..2 {
        assert!(matches!(s.handle(None, &Open, &limiter, &ctx(NOW), &allocate_request(&c)), Handled::AuthFailed(Some(_))));
        limiter.record(ctx(NOW).client.ip(), NOW / 1000);
    }
    let last = reply(s.handle(None, &Open, &limiter, &ctx(NOW), &allocate_request(&c)));
    assert_eq!(error_code(&last), Some(401));
    assert!(Message::from_bytes(&last).unwrap().attribute::<Nonce>().is_err(), "no nonce: not a challenge");
}

/// §7.2: one allocation per 5-tuple (437), a retransmission gets its success again, quotas 486,
/// transports 442, families 440.
#[test]
fn allocate_errors() {
    let s = server(false);
    let limiter = FailureLimiter::new(10, 60, 100, RandomState::new());
    let mut c = Client::new("alice", "wonderland");
    let mut a = allocated(&s, &mut c);
    let second = reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &allocate_request(&c)));
    assert_eq!(error_code(&second), Some(437));
    // Retransmission: same transaction id as the Allocate that created it.
    let again_bytes = allocate_request(&c);
    let m = Message::from_bytes(&again_bytes).unwrap();
    let v: u128 = m.transaction_id().into();
    a.allocate_transaction = v.to_be_bytes()[4..].try_into().unwrap();
    let again = reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &again_bytes));
    assert_eq!(error_code(&again), None, "retransmitted Allocate gets the success");
    assert_eq!(error_code(&reply(s.handle(None, &Full, &limiter, &ctx(NOW), &allocate_request(&c)))), Some(486));
    let tcp_over_udp = c.request(ALLOCATE, |b| b.add_attribute(&RequestedTransport::new(RequestedTransport::TCP)).unwrap());
    assert_eq!(error_code(&reply(s.handle(None, &Open, &limiter, &ctx(NOW), &tcp_over_udp))), Some(442));
    let sctp = c.request(ALLOCATE, |b| b.add_attribute(&RequestedTransport::new(132)).unwrap());
    assert_eq!(error_code(&reply(s.handle(None, &Open, &limiter, &ctx(NOW), &sctp))), Some(442));
    let none = c.request(ALLOCATE, |_| {});
    assert_eq!(error_code(&reply(s.handle(None, &Open, &limiter, &ctx(NOW), &none))), Some(400));
    let v6 = c.request(ALLOCATE, |b| {
        b.add_attribute(&RequestedTransport::new(RequestedTransport::UDP)).unwrap();
        b.add_attribute(&RequestedAddressFamily::new(AddressFamily::IPV6)).unwrap();
    });
    assert!(matches!(s.handle(None, &Open, &limiter, &ctx(NOW), &v6), Handled::Allocate(r) if r.family == AddressFamily::IPV6));
    let mut v4_only = server(false);
    v4_only.cfg.relay_v6 = false;
    assert_eq!(error_code(&reply(v4_only.handle(None, &Open, &limiter, &ctx(NOW), &v6))), Some(440));
}

/// §7: lifetimes are clamped to the maximum; zero deletes; requests on another user's
/// allocation get 441; requests without one get 437.
#[test]
fn refresh_lifetimes_and_ownership() {
    let s = server(false);
    let limiter = FailureLimiter::new(10, 60, 100, RandomState::new());
    let mut c = Client::new("alice", "wonderland");
    let mut a = allocated(&s, &mut c);
    let long = c.request(REFRESH, |b| b.add_attribute(&Lifetime::new(100_000)).unwrap());
    let r = reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &long));
    assert_eq!(Message::from_bytes(&r).unwrap().attribute::<Lifetime>().unwrap().seconds(), 3600);
    assert_eq!(a.expires_ms, NOW + 3_600_000);
    let zero = c.request(REFRESH, |b| b.add_attribute(&Lifetime::new(0)).unwrap());
    assert!(matches!(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &zero), Handled::Delete(_)));
    assert_eq!(error_code(&reply(s.handle(None, &Open, &limiter, &ctx(NOW), &long))), Some(437));
    let user = "1800003600:eve";
    let mut eve = Client::new(user, &rest_password(SECRET, user));
    eve.nonce = c.nonce.clone();
    let r = reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &eve.request(REFRESH, |_| {})));
    assert_eq!(error_code(&r), Some(441));
}

fn permission(c: &Client, peer: &str) -> Vec<u8> {
    let peer: SocketAddr = peer.parse().unwrap();
    c.request(CREATE_PERMISSION, |b| {
        let t = b.transaction_id();
        b.add_attribute(&XorPeerAddress::new(peer, t)).unwrap();
    })
}

/// The security checks of the issue: without an allow-list every loopback, unspecified and
/// mapped form is 403 — and with 127.0.0.0/8 allowed, loopback peers pass but the server's own
/// listener does not.
#[test]
fn create_permission_policy() {
    let s = server(false);
    let limiter = FailureLimiter::new(10, 60, 100, RandomState::new());
    let mut c = Client::new("alice", "wonderland");
    let mut a = allocated(&s, &mut c);
    for peer in ["127.0.0.1:9", "0.0.0.0:9", "10.0.0.1:9", "169.254.169.254:80"] {
        assert_eq!(error_code(&reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &permission(&c, peer)))), Some(403), "{peer}");
    }
    for peer in ["[::1]:9", "[::]:9", "[::ffff:127.0.0.1]:9", "[::127.0.0.1]:9"] {
        // The relay is IPv4: IPv6 peers are a family mismatch first.
        assert_eq!(error_code(&reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &permission(&c, peer)))), Some(443), "{peer}");
    }
    assert_eq!(error_code(&reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &permission(&c, "8.8.8.8:53")))), None);
    assert!(a.permitted("8.8.8.8".parse().unwrap(), NOW));

    let s = server(true);
    let mut c = Client::new("alice", "wonderland");
    let mut a = allocated(&s, &mut c);
    assert_eq!(error_code(&reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &permission(&c, "127.0.0.5:9")))), None);
    assert_eq!(error_code(&reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &permission(&c, "127.0.0.1:3478")))), Some(403), "own listener");
    assert_eq!(error_code(&reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &permission(&c, "10.0.0.1:9")))), Some(403), "not allow-listed");
}

/// In a cluster, the nodes' relay addresses (in their relay port range) are peers although
/// private; their other ports and every other private address stay refused.
#[test]
fn cluster_relays_are_peers() {
    let s = server(false);
    let limiter = FailureLimiter::new(10, 60, 100, RandomState::new());
    let mut c = Client::new("alice", "wonderland");
    let mut a = allocated(&s, &mut c);
    assert_eq!(error_code(&reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &permission(&c, "127.0.0.2:50000")))), Some(403));
    s.set_cluster_relays(vec![("127.0.0.2".parse().unwrap(), 49000, 51000)]);
    assert_eq!(error_code(&reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &permission(&c, "127.0.0.2:50000")))), None);
    assert_eq!(error_code(&reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &permission(&c, "127.0.0.2:8083")))), Some(403), "not a relay port");
    assert_eq!(error_code(&reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &permission(&c, "127.0.0.3:50000")))), Some(403), "not a node");
}

/// IPv6 relays refuse every IPv6 spelling of local addresses.
#[test]
fn ipv6_relay_policy() {
    let s = server(false);
    let limiter = FailureLimiter::new(10, 60, 100, RandomState::new());
    let mut c = Client::new("alice", "wonderland");
    let mut a = allocated(&s, &mut c);
    a.relay = "[::1]:50000".parse().unwrap();
    for peer in ["[::1]:9", "[::]:9", "[::ffff:127.0.0.1]:9", "[::127.0.0.1]:9", "[::ffff:10.1.1.1]:9", "[fe80::1]:9", "[fd00::1]:9"] {
        assert_eq!(error_code(&reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &permission(&c, peer)))), Some(403), "{peer}");
    }
}

/// §11-§12: ChannelBind, ChannelData both ways, Send and Data indications.
#[test]
fn channels_and_indications() {
    let s = server(true);
    let limiter = FailureLimiter::new(10, 60, 100, RandomState::new());
    let mut c = Client::new("alice", "wonderland");
    let mut a = allocated(&s, &mut c);
    let peer: SocketAddr = "127.0.0.9:5000".parse().unwrap();
    let send = {
        let mut b = Message::builder_indication(SEND, MessageWriteVec::new());
        let t = b.transaction_id();
        b.add_attribute(&XorPeerAddress::new(peer, t)).unwrap();
        b.add_attribute(&Data::new(b"hello")).unwrap();
        b.finish()
    };
    assert!(matches!(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &send), Handled::Ignore), "no permission yet");
    reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &permission(&c, "127.0.0.9:1")));
    match s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &send) {
        Handled::ToPeer { peer: p, data } => assert_eq!((p, data), (peer, &b"hello"[..])),
        other => panic!("{other:?}"),
    }
    // Data indication back, before a channel exists.
    let mut out = Vec::new();
    assert!(s.wrap_peer_data(&a, peer, b"back", NOW, &mut out));
    let m = Message::from_bytes(&out).unwrap();
    assert!(m.has_method(DATA) && m.has_class(MessageClass::Indication));
    assert_eq!(m.attribute::<Data>().unwrap().data(), b"back");
    out.clear();
    assert!(!s.wrap_peer_data(&a, "127.0.0.10:1".parse().unwrap(), b"x", NOW, &mut out), "no permission: dropped");

    let bind = |number: u16, p: SocketAddr| {
        c.request(CHANNEL_BIND, |b| {
            let t = b.transaction_id();
            b.add_attribute(&ChannelNumber::new(number)).unwrap();
            b.add_attribute(&XorPeerAddress::new(p, t)).unwrap();
        })
    };
    assert_eq!(error_code(&reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &bind(0x4000, peer)))), None);
    assert_eq!(error_code(&reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &bind(0x3000, peer)))), Some(400));
    assert_eq!(error_code(&reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &bind(0x4000, "127.0.0.9:6000".parse().unwrap())))), Some(400));
    assert_eq!(error_code(&reply(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &bind(0x4001, "127.0.0.1:3478".parse().unwrap())))), Some(403));
    let mut cd = Vec::new();
    channel_data::write(0x4000, b"via channel", false, &mut cd);
    match s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &cd) {
        Handled::ToPeer { peer: p, data } => assert_eq!((p, data), (peer, &b"via channel"[..])),
        other => panic!("{other:?}"),
    }
    out.clear();
    assert!(s.wrap_peer_data(&a, peer, b"back", NOW, &mut out));
    assert_eq!(channel_data::parse(&out), Some((0x4000, &b"back"[..])));
    let mut unbound = Vec::new();
    channel_data::write(0x4005, b"x", false, &mut unbound);
    assert!(matches!(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW), &unbound), Handled::Ignore));
    // Permissions expire after 300 s; the channel's data then stops.
    assert!(matches!(s.handle(Some(&mut a), &Open, &limiter, &ctx(NOW + 301_000), &cd), Handled::Ignore));
}

/// RFC 8489 §14: unknown comprehension-required attributes get 420 listing them; malformed
/// requests with a readable header get 400; garbage is ignored.
#[test]
fn malformed_and_unknown() {
    let s = server(false);
    let limiter = FailureLimiter::new(10, 60, 100, RandomState::new());
    let mut b = Message::builder_request(ALLOCATE, MessageWriteVec::new());
    b.add_attribute(&UnknownAttributes::new(&[])).unwrap(); // 0x000A is known; add a raw unknown below
    let mut bytes = b.finish();
    // Append an unknown comprehension-required attribute 0x0003 (CHANGE-REQUEST) by hand.
    bytes.extend_from_slice(&[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 0]);
    let len = (bytes.len() - 20) as u16;
    bytes[2..4].copy_from_slice(&len.to_be_bytes());
    let r = reply(s.handle(None, &Open, &limiter, &ctx(NOW), &bytes));
    assert_eq!(error_code(&r), Some(420));
    let m = Message::from_bytes(&r).unwrap();
    assert!(m.attribute::<UnknownAttributes>().is_ok());
    let mut truncated = allocate_request(&Client::new("a", "b"));
    truncated.truncate(24);
    assert_eq!(error_code(&reply(s.handle(None, &Open, &limiter, &ctx(NOW), &truncated))), Some(400));
    for garbage in [&b""[..], b"\x00", b"GET / HTTP/1.1\r\n\r\n", &[0xff; 64]] {
        assert!(matches!(s.handle(None, &Open, &limiter, &ctx(NOW), garbage), Handled::Ignore), "{garbage:?}");
    }
    let _ = MessageIntegrity::TYPE;
}

fn binding_with_change(flags: Option<u8>) -> Vec<u8> {
    let b = Message::builder_request(BINDING, MessageWriteVec::new());
    let mut bytes = b.finish();
    if let Some(f) = flags {
        bytes.extend_from_slice(&[0x00, 0x03, 0x00, 0x04, 0, 0, 0, f]);
        let len = (bytes.len() - 20) as u16;
        bytes[2..4].copy_from_slice(&len.to_be_bytes());
    }
    bytes
}

fn mapped_attr(bytes: &[u8], t: u16) -> Option<SocketAddr> {
    let m = Message::from_bytes(bytes).unwrap();
    let raw = m.raw_attribute(stun_types::attribute::AttributeType::new(t))?;
    stun_types::attribute::MappedSocketAddr::from_raw(&raw).ok().map(|a| a.addr())
}

/// RFC 5780 is off by default (CHANGE-REQUEST is an unknown attribute: 420, and a Binding has
/// no OTHER-ADDRESS); when configured, Binding carries OTHER-ADDRESS and RESPONSE-ORIGIN and a
/// CHANGE-REQUEST is answered from the other IP and/or port, never over TCP.
#[test]
fn nat_discovery_rfc5780() {
    let limiter = FailureLimiter::new(10, 60, 100, RandomState::new());
    let off = server(false);
    assert_eq!(error_code(&reply(off.handle(None, &Open, &limiter, &ctx(NOW), &binding_with_change(Some(0x06))))), Some(420));
    let plain = reply(off.handle(None, &Open, &limiter, &ctx(NOW), &binding_with_change(None)));
    assert_eq!(mapped_attr(&plain, 0x802C), None, "no OTHER-ADDRESS unless enabled");

    let mut on = server(false);
    on.cfg.nat_discovery = Some(super::server::NatDiscovery {
        ips: ["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()],
        ports: [3478, 3479],
    });
    let primary: SocketAddr = "127.0.0.1:3478".parse().unwrap();
    let cases: [(Option<u8>, &str); 5] = [
        (None, "127.0.0.1:3478"),
        (Some(0x00), "127.0.0.1:3478"),
        (Some(0x02), "127.0.0.1:3479"),
        (Some(0x04), "127.0.0.2:3478"),
        (Some(0x06), "127.0.0.2:3479"),
    ];
    for (flags, want) in cases {
        let want: SocketAddr = want.parse().unwrap();
        let (from, bytes) = match on.handle(None, &Open, &limiter, &ctx(NOW), &binding_with_change(flags)) {
            Handled::Reply(b) => (primary, b),
            Handled::ReplyFrom { from, bytes } => (from, bytes),
            _ => panic!("no reply for {flags:?}"),
        };
        assert_eq!(from, want, "{flags:?}");
        assert_eq!(error_code(&bytes), None);
        assert_eq!(mapped_attr(&bytes, 0x802B), Some(want), "RESPONSE-ORIGIN for {flags:?}");
        assert_eq!(mapped_attr(&bytes, 0x802C), Some("127.0.0.2:3479".parse().unwrap()), "OTHER-ADDRESS");
    }
    // Asked on the alternate address, OTHER-ADDRESS is the primary one.
    let mut alt = ctx(NOW);
    alt.server = "127.0.0.2:3479".parse().unwrap();
    let r = reply(on.handle(None, &Open, &limiter, &alt, &binding_with_change(None)));
    assert_eq!(mapped_attr(&r, 0x802C), Some(primary));
    let mut tcp = ctx(NOW);
    tcp.transport = ClientTransport::Tcp;
    assert_eq!(error_code(&reply(on.handle(None, &Open, &limiter, &tcp, &binding_with_change(Some(0x04))))), Some(400));
    let mut short = binding_with_change(None);
    short.extend_from_slice(&[0x00, 0x03, 0x00, 0x02, 0, 4, 0, 0]);
    let len = (short.len() - 20) as u16;
    short[2..4].copy_from_slice(&len.to_be_bytes());
    assert_eq!(error_code(&reply(on.handle(None, &Open, &limiter, &ctx(NOW), &short))), Some(400), "a CHANGE-REQUEST of 2 bytes");
}

/// RFC 8489 §14.6: a client that signs with MESSAGE-INTEGRITY-SHA256 is answered with it; a
/// wrong password under SHA-256 is as unauthorized as under SHA-1.
#[test]
fn message_integrity_sha256() {
    let s = server(false);
    let mut c = Client::new("alice", "wonderland");
    c.algo = IntegrityAlgorithm::Sha256;
    let a = allocated(&s, &mut c);
    assert_eq!(a.username, "alice");
    let limiter = FailureLimiter::new(10, 60, 100, RandomState::new());
    let mut again = Client::new("alice", "wonderland");
    again.algo = IntegrityAlgorithm::Sha256;
    let first = reply(s.handle(None, &Open, &limiter, &ctx(NOW), &allocate_request(&again)));
    again.learn(&first);
    let r = match s.handle(None, &Open, &limiter, &ctx(NOW), &allocate_request(&again)) {
        Handled::Allocate(req) => s.allocated(&req, "127.0.0.1:50001".parse().unwrap(), "127.0.0.1:50001".parse().unwrap(), None, &ctx(NOW)).0,
        other => panic!("{other:?}"),
    };
    let m = Message::from_bytes(&r).unwrap();
    assert!(m.has_attribute(stun_types::attribute::MessageIntegritySha256::TYPE), "answered with SHA-256");
    assert!(!m.has_attribute(MessageIntegrity::TYPE));
    let mut wrong = Client::new("alice", "not-it");
    wrong.algo = IntegrityAlgorithm::Sha256;
    wrong.learn(&first);
    assert_eq!(error_code(&reply(s.handle(None, &Open, &limiter, &ctx(NOW), &allocate_request(&wrong)))), Some(401));
}

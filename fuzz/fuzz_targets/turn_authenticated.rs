//! The authenticated TURN methods, which `turn_parser` never reaches: the harness knows the
//! long-term key, learns the nonce, and signs every fuzzed request with a valid
//! MESSAGE-INTEGRITY (SHA-1 or SHA-256), so Allocate, Refresh, CreatePermission, ChannelBind,
//! Connect and ConnectionBind run on arbitrary attributes, followed by Send indications and
//! ChannelData against the allocation they made. Nothing may panic.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use stun_types::attribute::{AttributeType, Nonce, RawAttribute, Realm, Username};
use stun_types::message::{IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageWrite, MessageWriteExt, MessageWriteVec, Method};
use switchboard_proto::turn::auth::{FailureLimiter, UserDb};
use switchboard_proto::turn::server::{Ctx, Handled, QuotaReached, Quotas, TurnConfig, TurnServer};
use switchboard_proto::turn::{AllocationState, ClientTransport};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CONNECT, CONNECTION_BIND, CREATE_PERMISSION, REFRESH, SEND};

struct Open;
impl Quotas for Open {
    fn may_allocate(&self, _: &str) -> Result<(), QuotaReached> {
        Ok(())
    }
}

const USER: &str = "u";
const PASS: &str = "p";
const METHODS: [Method; 6] = [ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND, CONNECT, CONNECTION_BIND];

/// Splits the input into steps: `[kind, n, n bytes of attributes as (type u16, len u8, value)]`.
struct Steps<'a>(&'a [u8]);

impl<'a> Iterator for Steps<'a> {
    type Item = (u8, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let (&kind, rest) = self.0.split_first()?;
        let (&n, rest) = rest.split_first().unwrap_or((&0, &[]));
        let n = (n as usize).min(rest.len());
        let (body, rest) = rest.split_at(n);
        self.0 = rest;
        Some((kind, body))
    }
}

/// Adds `(type, len, value)` records of `attrs` as raw attributes; ones the writer refuses
/// (duplicates, integrity in the middle) are skipped, as a client could not send them either.
fn add_raw(b: &mut MessageWriteVec, mut attrs: &[u8]) {
    while attrs.len() >= 3 {
        let t = u16::from_be_bytes([attrs[0], attrs[1]]);
        let len = (attrs[2] as usize).min(attrs.len() - 3);
        let value = &attrs[3..3 + len];
        // The writer panics on these by design (they have their own calls); the signed ones
        // are added below, and unsigned or misplaced ones are turn_parser's to fuzz.
        if !matches!(t, 0x0008 | 0x001C | 0x8028) {
            let _ = b.add_attribute(&RawAttribute::new(AttributeType::new(t), value));
        }
        attrs = &attrs[3 + len..];
    }
}

/// A request of `method` with the fuzzed attributes, signed as a client that knows the key.
fn signed(method: Method, indication: bool, attrs: &[u8], nonce: &str, realm: &str, sha256: bool) -> Vec<u8> {
    let mut b = if indication {
        Message::builder_indication(method, MessageWriteVec::new())
    } else {
        Message::builder_request(method, MessageWriteVec::new())
    };
    add_raw(&mut b, attrs);
    if !indication {
        let _ = b.add_attribute(&Username::new(USER).expect("a short username"));
        if let Ok(r) = Realm::new(realm) {
            let _ = b.add_attribute(&r);
        }
        if let Ok(n) = Nonce::new(nonce) {
            let _ = b.add_attribute(&n);
        }
        let creds = LongTermKeyCredentials::new(USER.into(), PASS.into(), realm.into());
        let algo = if sha256 { IntegrityAlgorithm::Sha256 } else { IntegrityAlgorithm::Sha1 };
        let _ = b.add_message_integrity(&creds.into(), algo);
    }
    let _ = b.add_fingerprint();
    b.finish()
}

fuzz_target!(|data: &[u8]| {
    let mut users = UserDb::default();
    users.static_users.insert(USER.into(), PASS.into());
    let cfg = TurnConfig { allow_peers: vec!["127.0.0.0/8".parse().unwrap()], relay_v6: true, tcp_relay: true, ..TurnConfig::default() };
    let realm = cfg.realm.clone();
    let server = TurnServer::new(cfg, users, b"n".to_vec(), 600);
    let limiter = FailureLimiter::new(1_000_000, 60, 16, std::hash::RandomState::new());
    let client: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let relay: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let transport = if data.first().is_some_and(|b| b & 1 == 1) { ClientTransport::Tcp } else { ClientTransport::Udp };
    let mut now_ms = 1_800_000_000_000u64;
    let ctx = |now_ms| Ctx { client, server: "127.0.0.1:3478".parse().unwrap(), transport, now_ms };

    // The nonce, from the 401 to an unsigned Allocate.
    let probe = Message::builder_request(ALLOCATE, MessageWriteVec::new()).finish();
    let nonce = match server.handle(None, &Open, &limiter, &ctx(now_ms), &probe) {
        Handled::AuthFailed(Some(r)) | Handled::Reply(r) => Message::from_bytes(&r)
            .ok()
            .and_then(|m| m.attribute::<Nonce>().ok().map(|n| n.nonce().to_owned()))
            .unwrap_or_default(),
        _ => String::new(),
    };

    // FUZZ_TRACE=1 prints what each step got (to check a corpus reaches the handlers).
    let trace = std::env::var_os("FUZZ_TRACE").is_some();
    let mut alloc: Option<AllocationState> = None;
    for (kind, body) in Steps(data.get(1..).unwrap_or_default()) {
        now_ms += u64::from(kind >> 4) * 1_000;
        let bytes = match kind & 0x0f {
            k @ 0..=5 => signed(METHODS[k as usize], false, body, &nonce, &realm, kind & 0x80 != 0),
            6 => signed(SEND, true, body, &nonce, &realm, false),
            7 => {
                // ChannelData on a channel the input names.
                let mut cd = Vec::with_capacity(body.len() + 4);
                cd.extend_from_slice(&[0x40 | (body.first().copied().unwrap_or(0) & 0x3f), 0]);
                cd.extend_from_slice(&(body.len() as u16).to_be_bytes());
                cd.extend_from_slice(body);
                cd
            }
            _ => body.to_vec(),
        };
        let handled = server.handle(alloc.as_mut(), &Open, &limiter, &ctx(now_ms), &bytes);
        if trace {
            eprintln!("step {kind:#04x}: {handled:?}");
        }
        match handled {
            Handled::Allocate(req) => {
                let (_, state) = server.allocated(&req, relay, relay, None, &ctx(now_ms));
                if alloc.is_none() {
                    alloc = Some(state);
                } else {
                    let _ = server.allocate_failed(&req, 437);
                }
            }
            Handled::Delete(_) => alloc = None,
            Handled::Connect(req) => {
                let _ = server.connect_reply(&req, if kind & 0x40 != 0 { Ok(7) } else { Err(447) });
            }
            _ => {}
        }
        if let Some(a) = &alloc {
            let mut out = Vec::new();
            let _ = server.wrap_peer_data(a, "127.0.0.9:1".parse().unwrap(), body, now_ms, &mut out);
        }
    }
});

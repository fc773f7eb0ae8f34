//! Long-term credentials for TURN (RFC 8489 §9.2): users from the TURN REST shared secrets
//! (coturn `use-auth-secret`, several secrets for rotation) and static users, stateless nonces
//! (the nonce carries its own issue time and a MAC over it and the client's address, so nothing
//! is stored for a client before it authenticates), and a bounded limiter of failed attempts.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use stun_types::message::{IntegrityAlgorithm, LongTermKeyCredentials, Message};

use crate::credentials::{check_expiry, rest_password, RestError};

/// Where users come from.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    /// TURN REST shared secrets, newest first; every one is accepted (rotation).
    pub rest_secrets: Vec<Vec<u8>>,
    /// Separator between expiry and user in REST usernames (coturn's `rest-api-separator`).
    pub separator: char,
    /// Static users and their passwords.
    pub static_users: HashMap<String, String>,
}

/// Why a username was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserError {
    /// Not a static user and not a REST username.
    Unknown,
    /// A REST username whose expiry has passed.
    Expired,
}

impl UserDb {
    /// The passwords `username` may have (one per REST secret, or the static one).
    pub fn passwords(&self, username: &str, now_secs: u64) -> Result<Vec<String>, UserError> {
        if let Some(p) = self.static_users.get(username) {
            return Ok(vec![p.clone()]);
        }
        if self.rest_secrets.is_empty() {
            return Err(UserError::Unknown);
        }
        match check_expiry(username, self.separator, now_secs) {
            Ok(_) => Ok(self.rest_secrets.iter().map(|s| rest_password(s, username)).collect()),
            Err(RestError::Expired) => Err(UserError::Expired),
            Err(RestError::NoTimestamp) => Err(UserError::Unknown),
        }
    }

    /// Checks the message integrity of `msg` for `username` in `realm`. Returns the algorithm
    /// the client used and the credentials that verified it (to sign the response).
    pub fn verify(
        &self,
        msg: &Message<'_>,
        username: &str,
        realm: &str,
        now_secs: u64,
    ) -> Result<(IntegrityAlgorithm, LongTermKeyCredentials), UserError> {
        for password in self.passwords(username, now_secs)? {
            let creds = LongTermKeyCredentials::new(username.to_owned(), password, realm.to_owned());
            if let Ok(algo) = msg.validate_integrity(&creds.clone().into()) {
                return Ok((algo, creds));
            }
        }
        Err(UserError::Unknown)
    }
}

/// Verdict on a nonce a client sent back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Ours, for this client, not expired.
    Valid,
    /// Ours and for this client, but older than the nonce lifetime (438).
    Stale,
    /// Not a nonce we issued to this client.
    Invalid,
}

/// Issues and checks stateless nonces: `hex(issue time)` + `hex(MAC(secret, time, client ip))`.
#[derive(Clone)]
pub struct Nonces {
    secret: Vec<u8>,
    ttl_secs: u64,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces").field("ttl_secs", &self.ttl_secs).finish_non_exhaustive()
    }
}

impl Nonces {
    /// Nonces signed with `secret`, valid for `ttl_secs`.
    pub fn new(secret: Vec<u8>, ttl_secs: u64) -> Self {
        Nonces { secret, ttl_secs }
    }

    fn mac(&self, issued: u32, ip: IpAddr) -> [u8; 12] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(b"switchboard-nonce-v1");
        mac.update(&issued.to_be_bytes());
        match ip {
            IpAddr::V4(v4) => mac.update(&v4.octets()),
            IpAddr::V6(v6) => mac.update(&v6.octets()),
        }
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 12];
        out.copy_from_slice(&full[..12]);
        out
    }

    /// A fresh nonce for a client at `ip`.
    pub fn issue(&self, ip: IpAddr, now_secs: u64) -> String {
        let issued = now_secs as u32;
        let mut s = format!("{issued:08x}");
        for b in self.mac(issued, ip) {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Checks a nonce that `ip` sent back.
    pub fn check(&self, nonce: &str, ip: IpAddr, now_secs: u64) -> NonceCheck {
        if nonce.len() != 32 || !nonce.is_ascii() {
            return NonceCheck::Invalid;
        }
        let Ok(issued) = u32::from_str_radix(&nonce[..8], 16) else { return NonceCheck::Invalid };
        let mut given = [0u8; 12];
        for (i, b) in given.iter_mut().enumerate() {
            match u8::from_str_radix(&nonce[8 + 2 * i..10 + 2 * i], 16) {
                Ok(v) => *b = v,
                Err(_) => return NonceCheck::Invalid,
            }
        }
        let expected = self.mac(issued, ip);
        if !crate::credentials::constant_time_eq(&given, &expected) {
            return NonceCheck::Invalid;
        }
        let age = (now_secs as u32).wrapping_sub(issued) as u64;
        if age > self.ttl_secs {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }
}

/// Counts failed authentications per source address and refuses a source that failed too
/// often within a window. One limiter serves every transport (UDP shards, TCP and TLS
/// connections), so reconnecting or switching transport starts no new count.
///
/// Constant cost per call whatever the number of sources: a fixed table indexed by a keyed hash
/// of the address (striped locks, so threads rarely wait). A source that lands on a slot held by
/// another takes it over: that can only forget the other's failures, never refuse an address
/// that did not fail, and the keyed hash keeps attackers from choosing collisions.
pub struct FailureLimiter {
    max_failures: u32,
    window_secs: u64,
    hasher: RandomState,
    stripes: Vec<Mutex<Vec<Slot>>>,
    per_stripe: usize,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    ip: Option<IpAddr>,
    start: u64,
    failures: u32,
}

const STRIPES: usize = 64;

impl FailureLimiter {
    /// At most `max_failures` per `window_secs` per source, with room for about `capacity`
    /// sources; `hasher` keys the table (`RandomState::new()`).
    pub fn new(max_failures: u32, window_secs: u64, capacity: usize, hasher: RandomState) -> Self {
        let per_stripe = capacity.div_ceil(STRIPES).max(1);
        let empty = Slot { ip: None, start: 0, failures: 0 };
        let stripes = (0..STRIPES).map(|_| Mutex::new(vec![empty; per_stripe])).collect();
        FailureLimiter { max_failures, window_secs, hasher, stripes, per_stripe }
    }

    fn slot<R>(&self, ip: IpAddr, f: impl FnOnce(&mut Slot) -> R) -> R {
        let h = self.hasher.hash_one(ip) as usize;
        let mut stripe = self.stripes[h % STRIPES].lock().unwrap_or_else(|p| p.into_inner());
        let i = (h / STRIPES) % self.per_stripe;
        f(&mut stripe[i])
    }

    /// Whether `ip` may try to authenticate now.
    pub fn allowed(&self, ip: IpAddr, now_secs: u64) -> bool {
        let (max, window) = (self.max_failures, self.window_secs);
        self.slot(ip, |s| s.ip != Some(ip) || now_secs >= s.start + window || s.failures < max)
    }

    /// Records a failed attempt by `ip`.
    pub fn failed(&self, ip: IpAddr, now_secs: u64) {
        let window = self.window_secs;
        self.slot(ip, |s| {
            if s.ip != Some(ip) || now_secs >= s.start + window {
                *s = Slot { ip: Some(ip), start: now_secs, failures: 0 };
            }
            s.failures = s.failures.saturating_add(1);
        })
    }
}

impl std::fmt::Debug for FailureLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureLimiter").field("max_failures", &self.max_failures).field("window_secs", &self.window_secs).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nonces_are_stateless_bound_to_the_client_and_expire() {
        let n = Nonces::new(b"secret".to_vec(), 600);
        let nonce = n.issue(ip("192.0.2.1"), 1_000);
        assert_eq!(nonce.len(), 32);
        assert_eq!(n.check(&nonce, ip("192.0.2.1"), 1_000), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, ip("192.0.2.1"), 1_600), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, ip("192.0.2.1"), 1_601), NonceCheck::Stale);
        assert_eq!(n.check(&nonce, ip("192.0.2.2"), 1_000), NonceCheck::Invalid, "another client's nonce");
        assert_eq!(Nonces::new(b"other".to_vec(), 600).check(&nonce, ip("192.0.2.1"), 1_000), NonceCheck::Invalid);
        for bad in ["", "zz", &"0".repeat(32), &"g".repeat(32), "é"] {
            assert_eq!(n.check(bad, ip("192.0.2.1"), 1_000), NonceCheck::Invalid, "{bad:?}");
        }
        let mut forged = nonce.clone().into_bytes();
        forged[0] = if forged[0] == b'0' { b'1' } else { b'0' };
        assert_eq!(n.check(std::str::from_utf8(&forged).unwrap(), ip("192.0.2.1"), 1_000), NonceCheck::Invalid);
    }

    #[test]
    fn rest_and_static_users() {
        let mut db = UserDb { rest_secrets: vec![b"new".to_vec(), b"old".to_vec()], separator: ':', ..Default::default() };
        db.static_users.insert("alice".into(), "wonderland".into());
        assert_eq!(db.passwords("alice", 0).unwrap(), vec!["wonderland".to_string()]);
        let p = db.passwords("2000:bob", 1_000).unwrap();
        assert_eq!(p, vec![rest_password(b"new", "2000:bob"), rest_password(b"old", "2000:bob")]);
        assert_eq!(db.passwords("1000:bob", 1_000), Err(UserError::Expired));
        assert_eq!(db.passwords("mallory", 1_000), Err(UserError::Unknown));
        let no_rest = UserDb::default();
        assert_eq!(no_rest.passwords("2000:bob", 1_000), Err(UserError::Unknown));
    }

    #[test]
    fn limiter_counts_per_source_and_is_bounded() {
        let l = FailureLimiter::new(3, 10, 2, RandomState::new());
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert!(l.allowed(a, 100));
            l.failed(a, 100);
        }
        assert!(!l.allowed(a, 105));
        assert!(l.allowed(ip("192.0.2.9"), 105), "another source is not refused");
        assert!(l.allowed(a, 110), "a new window");
        // However many sources fail, the table stays its size and no innocent one is refused.
        let l = FailureLimiter::new(1, 60, 1024, RandomState::new());
        for n in 0..100_000u32 {
            l.failed(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n)), 100);
        }
        assert_eq!(l.stripes.iter().map(|s| s.lock().unwrap().len()).sum::<usize>(), 1024);
        assert!(l.allowed(ip("192.0.2.1"), 100));
        let last = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + 99_999));
        assert!(!l.allowed(last, 100), "the latest failing source is remembered");
    }
}

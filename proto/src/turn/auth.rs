//! Long-term credentials for TURN (RFC 8489 §9.2): users from the TURN REST shared secrets
//! (coturn `use-auth-secret`, several secrets for rotation) and static users, stateless nonces
//! (the nonce carries its own issue time and a MAC over it and the client's address, so nothing
//! is stored for a client before it authenticates), and a bounded limiter of failed attempts.

use std::collections::HashMap;
use std::net::IpAddr;

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

    /// What an allocation by `username` from `client` counts against in `turn.user_quota`.
    /// A static user is one account, so its name. REST usernames are minted per request (a new
    /// expiry, often a random name), so counting by name would limit nothing: they count by
    /// the client's address instead.
    pub fn quota_key(&self, username: &str, client: IpAddr) -> String {
        if self.static_users.contains_key(username) {
            username.to_owned()
        } else {
            format!("rest@{client}")
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

/// Failed logins per source address (see [`crate::limits::PerSource`]): one count across UDP,
/// TCP and TLS, so reconnecting or switching transport starts no new count.
pub type FailureLimiter = crate::limits::PerSource;

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
}

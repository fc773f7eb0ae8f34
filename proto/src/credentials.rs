//! TURN REST credentials (draft-uberti-behave-turn-rest-00, coturn `use-auth-secret`): the
//! username is `expiry[:user]`, the password `base64(HMAC-SHA1(secret, username))`.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use thiserror::Error;

type HmacSha1 = Hmac<Sha1>;

/// A time-limited credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestCredential {
    /// `expiry[:user]`.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`.
    pub password: String,
}

/// Why a REST username was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RestError {
    /// The part before the separator is not a unix time.
    #[error("username does not start with an expiry timestamp")]
    NoTimestamp,
    /// The expiry has passed.
    #[error("credential expired")]
    Expired,
}

/// The password for `username` under `secret`.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha1::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Issues a credential valid for `ttl_secs` from `now_secs`, for `user` if given.
pub fn issue(secret: &[u8], user: Option<&str>, now_secs: u64, ttl_secs: u64) -> RestCredential {
    let expiry = now_secs.saturating_add(ttl_secs);
    let username = match user {
        Some(u) if !u.is_empty() => format!("{expiry}:{u}"),
        _ => expiry.to_string(),
    };
    let password = rest_password(secret, &username);
    RestCredential { username, password }
}

/// The expiry of a REST username (`expiry` or `expiry<sep>user`), refused once passed.
pub fn check_expiry(username: &str, separator: char, now_secs: u64) -> Result<u64, RestError> {
    let ts = username.split(separator).next().unwrap_or_default();
    let expiry: u64 = ts.parse().map_err(|_| RestError::NoTimestamp)?;
    if expiry <= now_secs {
        return Err(RestError::Expired);
    }
    Ok(expiry)
}

/// A secret for one `purpose` derived from a cluster's shared secret (HMAC-SHA256, hex), so every
/// node of a cluster agrees on it without it being configured, and knowing it reveals nothing of
/// the cluster secret or of secrets for other purposes.
pub fn derive_secret(cluster_secret: &[u8], purpose: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(cluster_secret).expect("HMAC takes any key length");
    mac.update(purpose.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two secrets without leaking, through timing, where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_secrets_depend_on_secret_and_purpose() {
        let a = derive_secret(b"cluster", "turn-rest");
        assert_eq!(a.len(), 64);
        assert_eq!(a, derive_secret(b"cluster", "turn-rest"));
        assert_ne!(a, derive_secret(b"cluster", "turn-nonce"));
        assert_ne!(a, derive_secret(b"other", "turn-rest"));
    }

    /// Vectors from the AppRTC protocol notes §5.4, computed with coturn's formula.
    #[test]
    fn coturn_vectors() {
        assert_eq!(rest_password(b"s3cr3t", "1700000000:12345678"), "NoDE1FAktc8uAr29FHsvPzM5yvE=");
        assert_eq!(rest_password(b"north", "1375043478:abcd1234"), "YNECiUDrdqF/AQMR07xEIdxfSrM=");
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"token", b"token"));
        assert!(!constant_time_eq(b"token", b"tokem"));
        assert!(!constant_time_eq(b"token", b"token2"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn issue_and_check() {
        let c = issue(b"s3cr3t", Some("12345678"), 1_699_913_600, 86_400);
        assert_eq!(c.username, "1700000000:12345678");
        assert_eq!(c.password, "NoDE1FAktc8uAr29FHsvPzM5yvE=");
        assert_eq!(issue(b"k", None, 10, 5).username, "15");
        assert_eq!(check_expiry("1700000000:x", ':', 1_699_999_999), Ok(1_700_000_000));
        assert_eq!(check_expiry("1700000000", ':', 1_700_000_000), Err(RestError::Expired));
        assert_eq!(check_expiry("alice", ':', 0), Err(RestError::NoTimestamp));
    }
}

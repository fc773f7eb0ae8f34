//! Per-source-address limits with a constant cost per call and a fixed memory size, for
//! anything an unauthenticated peer can repeat: failed logins, minted credentials, joins.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Counts events (failed logins, credentials minted, joins…) per source address and refuses a
/// source that had too many within a window.
///
/// Constant cost per call whatever the number of sources: a fixed table indexed by a keyed hash
/// of the address (striped locks, so threads rarely wait). A source that lands on a slot held by
/// another takes it over: that can only forget the other's failures, never refuse an address
/// that did not fail, and the keyed hash keeps attackers from choosing collisions.
pub struct PerSource {
    /// Changed live by a configuration reload.
    max_events: AtomicU32,
    window_secs: u64,
    hasher: RandomState,
    stripes: Vec<Mutex<Vec<Slot>>>,
    per_stripe: usize,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    ip: Option<IpAddr>,
    start: u64,
    events: u32,
}

const STRIPES: usize = 64;

impl PerSource {
    /// At most `max_events` per `window_secs` per source, with room for about `capacity`
    /// sources; `hasher` keys the table (`RandomState::new()`).
    pub fn new(max_events: u32, window_secs: u64, capacity: usize, hasher: RandomState) -> Self {
        let per_stripe = capacity.div_ceil(STRIPES).max(1);
        let empty = Slot { ip: None, start: 0, events: 0 };
        let stripes = (0..STRIPES).map(|_| Mutex::new(vec![empty; per_stripe])).collect();
        PerSource { max_events: AtomicU32::new(max_events), window_secs, hasher, stripes, per_stripe }
    }

    /// Changes the limit; counts already taken stay.
    pub fn set_max(&self, max_events: u32) {
        self.max_events.store(max_events, Ordering::Relaxed);
    }

    fn slot<R>(&self, ip: IpAddr, f: impl FnOnce(&mut Slot) -> R) -> R {
        let h = self.hasher.hash_one(ip) as usize;
        let mut stripe = self.stripes[h % STRIPES].lock().unwrap_or_else(|p| p.into_inner());
        let i = (h / STRIPES) % self.per_stripe;
        f(&mut stripe[i])
    }

    /// Whether `ip` is still under its limit now.
    pub fn allowed(&self, ip: IpAddr, now_secs: u64) -> bool {
        let (max, window) = (self.max_events.load(Ordering::Relaxed), self.window_secs);
        self.slot(ip, |s| s.ip != Some(ip) || now_secs >= s.start + window || s.events < max)
    }

    /// Counts one event from `ip` if it is still under its limit: `false` (and nothing
    /// counted) when it is over. One lookup, so two threads cannot both take the last slot.
    pub fn admit(&self, ip: IpAddr, now_secs: u64) -> bool {
        let (max, window) = (self.max_events.load(Ordering::Relaxed), self.window_secs);
        self.slot(ip, |s| {
            if s.ip != Some(ip) || now_secs >= s.start + window {
                *s = Slot { ip: Some(ip), start: now_secs, events: 0 };
            } else if s.events >= max {
                return false;
            }
            s.events = s.events.saturating_add(1);
            true
        })
    }

    /// Records one event from `ip`.
    pub fn record(&self, ip: IpAddr, now_secs: u64) {
        let window = self.window_secs;
        self.slot(ip, |s| {
            if s.ip != Some(ip) || now_secs >= s.start + window {
                *s = Slot { ip: Some(ip), start: now_secs, events: 0 };
            }
            s.events = s.events.saturating_add(1);
        })
    }
}

impl std::fmt::Debug for PerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerSource").field("max_events", &self.max_events.load(Ordering::Relaxed)).field("window_secs", &self.window_secs).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limiter_counts_per_source_and_is_bounded() {
        let l = PerSource::new(3, 10, 2, RandomState::new());
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert!(l.allowed(a, 100));
            l.record(a, 100);
        }
        assert!(!l.allowed(a, 105));
        assert!(l.allowed(ip("192.0.2.9"), 105), "another source is not refused");
        assert!(l.allowed(a, 110), "a new window");
        // Checking and counting at once: the limit is what it is, and a refusal counts nothing.
        let l = PerSource::new(2, 10, 64, RandomState::new());
        assert!(l.admit(a, 100) && l.admit(a, 100));
        assert!(!l.admit(a, 100) && !l.admit(a, 105));
        assert!(l.admit(ip("192.0.2.9"), 105), "another source is not refused");
        assert!(l.admit(a, 110), "a new window");
        // However many sources fail, the table stays its size and no innocent one is refused.
        let l = PerSource::new(1, 60, 1024, RandomState::new());
        for n in 0..100_000u32 {
            l.record(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n)), 100);
        }
        assert_eq!(l.stripes.iter().map(|s| s.lock().unwrap().len()).sum::<usize>(), 1024);
        assert!(l.allowed(ip("192.0.2.1"), 100));
        let last = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + 99_999));
        assert!(!l.allowed(last, 100), "the latest failing source is remembered");
    }

    /// A reload changes the limit at once, for sources already counted too.
    #[test]
    fn limit_changes_live() {
        let l = PerSource::new(1, 10, 64, RandomState::new());
        let a = ip("192.0.2.1");
        assert!(l.admit(a, 100) && !l.admit(a, 100));
        l.set_max(3);
        assert!(l.admit(a, 100) && l.admit(a, 100) && !l.admit(a, 100));
        l.set_max(1);
        assert!(!l.admit(a, 101), "a lowered limit holds back a source over it");
    }
}

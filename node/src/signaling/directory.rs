//! The node's open WebSocket sessions: a bounded count, in all and per source address (the
//! connection limits of signaling), and their addresses, so shutdown can tell each to close with 1001.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix::Addr;
use switchboard_proto::rooms::SessionId;

use super::session::{GoingAway, SignalingSession};
use crate::http::per_ip::OpenPerAddress;

/// Open sessions, bounded.
pub struct Directory {
    inner: Arc<Inner>,
}

struct Inner {
    /// The limits change live (a configuration reload); sessions over a lowered one stay.
    max: AtomicUsize,
    open: AtomicUsize,
    per_ip_max: AtomicUsize,
    /// Open sessions per source address.
    per_ip: Mutex<OpenPerAddress>,
    addrs: Mutex<HashMap<SessionId, Addr<SignalingSession>>>,
}

/// A slot held by a session for its whole life; dropping it frees the slot.
pub struct Reservation {
    inner: Arc<Inner>,
    ip: Option<IpAddr>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.inner.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            self.inner.per_ip.lock().unwrap_or_else(|p| p.into_inner()).give_back(ip);
        }
    }
}

/// Why no session slot was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    /// The node holds `http.max_sessions`.
    Node,
    /// The source address holds `http.sessions_per_ip`.
    Address,
}

impl Directory {
    /// Room for at most `max` sessions, `per_ip_max` of them from one address.
    pub fn new(max: usize, per_ip_max: usize) -> Self {
        Directory {
            inner: Arc::new(Inner {
                max: AtomicUsize::new(max),
                open: AtomicUsize::new(0),
                per_ip_max: AtomicUsize::new(per_ip_max),
                per_ip: Mutex::new(OpenPerAddress::default()),
                addrs: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Takes a slot for a session from `ip`, unless the node or the address is at its limit.
    pub fn reserve(&self, ip: Option<IpAddr>) -> Result<Reservation, Full> {
        let inner = &self.inner;
        inner.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < inner.max.load(Ordering::Relaxed)).then_some(n + 1)).map_err(|_| Full::Node)?;
        if let Some(ip) = ip {
            if !inner.per_ip.lock().unwrap_or_else(|p| p.into_inner()).take(ip, inner.per_ip_max.load(Ordering::Relaxed)) {
                inner.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Full::Address);
            }
        }
        Ok(Reservation { inner: inner.clone(), ip })
    }

    /// Changes the limits for sessions opened from now on.
    pub fn set_limits(&self, max: usize, per_ip_max: usize) {
        self.inner.max.store(max, Ordering::Relaxed);
        self.inner.per_ip_max.store(per_ip_max, Ordering::Relaxed);
    }

    /// Open sessions.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    pub(super) fn insert(&self, id: SessionId, addr: Addr<SignalingSession>) {
        self.lock().insert(id, addr);
    }

    pub(super) fn remove(&self, id: SessionId) {
        self.lock().remove(&id);
    }

    /// Tells every session to close with 1001 Going Away.
    pub fn going_away(&self) -> usize {
        let addrs: Vec<_> = self.lock().values().cloned().collect();
        for a in &addrs {
            a.do_send(GoingAway);
        }
        addrs.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Addr<SignalingSession>>> {
        self.inner.addrs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

//! The node's open WebSocket sessions: a bounded count, in all and per source address (the
//! connection limits of signaling), and their addresses, so shutdown can tell each to close with
//! 1001 and the admin API can list them and close one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix::Addr;
use switchboard_proto::rooms::SessionId;

use serde::Serialize;

use super::session::{GoingAway, Kick, SignalingSession};
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
    addrs: Mutex<HashMap<SessionId, Entry>>,
}

struct Entry {
    addr: Addr<SignalingSession>,
    view: SessionView,
}

/// What the admin API shows of a session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub id: String,
    /// The TCP peer.
    pub remote: Option<std::net::SocketAddr>,
    pub opened_unix_ms: u64,
    /// Set once the socket registered.
    pub room: Option<String>,
    pub client: Option<String>,
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

    pub(super) fn insert(&self, id: SessionId, addr: Addr<SignalingSession>, remote: Option<std::net::SocketAddr>) {
        let view = SessionView { id: id.to_string(), remote, opened_unix_ms: crate::rooms::now_ms(), room: None, client: None };
        self.lock().insert(id, Entry { addr, view });
    }

    /// Notes the room and client a session registered as.
    pub(super) fn registered(&self, id: SessionId, room: &str, client: &str) {
        if let Some(e) = self.lock().get_mut(&id) {
            e.view.room = Some(room.to_owned());
            e.view.client = Some(client.to_owned());
        }
    }

    /// Up to `limit` sessions, those of `room` only if given, oldest first; and how many match.
    pub fn list(&self, room: Option<&str>, limit: usize) -> (usize, Vec<SessionView>) {
        let mut all: Vec<SessionView> =
            self.lock().values().filter(|e| room.is_none() || e.view.room.as_deref() == room).map(|e| e.view.clone()).collect();
        all.sort_by(|a, b| (a.opened_unix_ms, &a.id).cmp(&(b.opened_unix_ms, &b.id)));
        let total = all.len();
        all.truncate(limit);
        (total, all)
    }

    /// Closes the session `id` (1008, "closed by the operator"); whether it was open.
    pub fn kick(&self, id: &str) -> bool {
        let Ok(id) = id.parse::<uuid::Uuid>() else { return false };
        let addr = self.lock().get(&SessionId(id)).map(|e| e.addr.clone());
        addr.inspect(|a| a.do_send(Kick)).is_some()
    }

    pub(super) fn remove(&self, id: SessionId) {
        self.lock().remove(&id);
    }

    /// Tells every session to close with 1001 Going Away.
    pub fn going_away(&self) -> usize {
        let addrs: Vec<_> = self.lock().values().map(|e| e.addr.clone()).collect();
        for a in &addrs {
            a.do_send(GoingAway);
        }
        addrs.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Entry>> {
        self.inner.addrs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

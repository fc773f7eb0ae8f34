//! The node's open WebSocket sessions: a bounded count (the connection limit of signaling) and
//! their addresses, so shutdown can tell each one to close with 1001.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix::Addr;
use switchboard_proto::rooms::SessionId;

use super::session::{GoingAway, SignalingSession};

/// Open sessions, bounded.
pub struct Directory {
    inner: Arc<Inner>,
}

struct Inner {
    max: usize,
    open: AtomicUsize,
    addrs: Mutex<HashMap<SessionId, Addr<SignalingSession>>>,
}

/// A slot held by a session for its whole life; dropping it frees the slot.
pub struct Reservation {
    inner: Arc<Inner>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.inner.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Directory {
    /// Room for at most `max` sessions.
    pub fn new(max: usize) -> Self {
        Directory {
            inner: Arc::new(Inner {
                max,
                open: AtomicUsize::new(0),
                addrs: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Takes a slot, or `None` when the node is at its limit.
    pub fn reserve(&self) -> Option<Reservation> {
        let taken = self.inner.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < self.inner.max).then_some(n + 1)
        });
        taken.ok().map(|_| Reservation { inner: self.inner.clone() })
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

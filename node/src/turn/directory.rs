//! The node's TURN allocations as the admin API sees them: listed, and ended on request
//! (`DELETE /admin/allocations/{id}`). Each `Allocation` actor is here while it lives.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;
use switchboard_proto::turn::allocation::{AllocationState, ClientTransport, RelayTransport};

use super::allocation::{AllocId, ExpireFn};

/// Live allocations, by an id of their own (the data planes' ids are only unique per plane).
#[derive(Default)]
pub struct AllocationDirectory {
    next: AtomicU64,
    live: Mutex<BTreeMap<u64, Entry>>,
}

struct Entry {
    view: AllocationView,
    /// Ends it the way its lifetime running out would.
    expire: ExpireFn,
    plane_id: AllocId,
}

/// What the admin API shows of an allocation.
#[derive(Debug, Clone, Serialize)]
pub struct AllocationView {
    pub id: u64,
    pub username: String,
    pub client: std::net::SocketAddr,
    /// `udp`, `tcp` or `tls`: how the client reaches the server.
    pub transport: &'static str,
    pub relay: std::net::SocketAddr,
    /// `udp` or `tcp` (RFC 6062).
    pub relay_transport: &'static str,
    pub created_unix_ms: u64,
    pub expires_unix_ms: u64,
}

impl AllocationView {
    /// The view of a new allocation (its id is given by [`AllocationDirectory::insert`]).
    pub fn of(state: &AllocationState) -> Self {
        AllocationView {
            id: 0,
            username: state.username.clone(),
            client: state.client,
            transport: match state.transport {
                ClientTransport::Udp => "udp",
                ClientTransport::Tcp => "tcp",
                ClientTransport::Tls => "tls",
            },
            relay: state.relay,
            relay_transport: match state.relay_transport {
                RelayTransport::Udp => "udp",
                RelayTransport::Tcp => "tcp",
            },
            created_unix_ms: crate::rooms::now_ms(),
            expires_unix_ms: state.expires_ms,
        }
    }
}

impl AllocationDirectory {
    /// Adds an allocation; returns its id here.
    pub fn insert(&self, mut view: AllocationView, expire: ExpireFn, plane_id: AllocId) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        view.id = id;
        self.lock().insert(id, Entry { view, expire, plane_id });
        id
    }

    pub fn refreshed(&self, id: u64, expires_unix_ms: u64) {
        if let Some(e) = self.lock().get_mut(&id) {
            e.view.expires_unix_ms = expires_unix_ms;
        }
    }

    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Up to `limit` allocations, oldest first, those of `username` only if given; and how
    /// many match.
    pub fn list(&self, username: Option<&str>, limit: usize) -> (usize, Vec<AllocationView>) {
        let live = self.lock();
        let matching = live.values().filter(|e| username.is_none_or(|u| e.view.username == u));
        let total = matching.clone().count();
        (total, matching.take(limit).map(|e| e.view.clone()).collect())
    }

    /// Ends allocation `id` now (its relay closes, its quota comes back); whether it existed.
    pub fn kick(&self, id: u64) -> bool {
        let found = self.lock().get(&id).map(|e| (e.expire.clone(), e.plane_id));
        found.inspect(|(expire, plane_id)| expire(*plane_id)).is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

//! Allocation quotas of one node: per user and in total (486 Allocation Quota Reached).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use switchboard_proto::turn::server::Quotas;

/// Allocations held, per user and in total.
pub struct QuotaTable {
    /// The limits change live (a configuration reload); allocations over a lowered one stay.
    max_total: AtomicUsize,
    max_per_user: AtomicUsize,
    held: Mutex<(usize, HashMap<String, usize>)>,
}

impl QuotaTable {
    /// At most `max_total` allocations, `max_per_user` per user.
    pub fn new(max_total: usize, max_per_user: usize) -> Self {
        QuotaTable { max_total: AtomicUsize::new(max_total), max_per_user: AtomicUsize::new(max_per_user), held: Mutex::new((0, HashMap::new())) }
    }

    /// Changes the limits for allocations made from now on.
    pub fn set_limits(&self, max_total: usize, max_per_user: usize) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_user.store(max_per_user, Ordering::Relaxed);
    }

    fn over(&self, held: &(usize, HashMap<String, usize>), user: &str) -> bool {
        let per = held.1.get(user).copied().unwrap_or(0);
        held.0 >= self.max_total.load(Ordering::Relaxed) || per >= self.max_per_user.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<String, usize>)> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one allocation for `user`, or `false` at a quota.
    pub fn acquire(&self, user: &str) -> bool {
        let mut h = self.lock();
        if self.over(&h, user) {
            return false;
        }
        h.0 += 1;
        *h.1.entry(user.to_owned()).or_insert(0) += 1;
        true
    }

    /// Gives one back.
    pub fn release(&self, user: &str) {
        let mut h = self.lock();
        h.0 = h.0.saturating_sub(1);
        if let Some(n) = h.1.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                h.1.remove(user);
            }
        }
    }

    /// Allocations held on this node.
    pub fn total(&self) -> usize {
        self.lock().0
    }
}

impl Quotas for QuotaTable {
    fn may_allocate(&self, user: &str) -> Result<(), switchboard_proto::turn::server::QuotaReached> {
        if self.over(&self.lock(), user) {
            Err(switchboard_proto::turn::server::QuotaReached)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_user_and_total() {
        let q = QuotaTable::new(3, 2);
        assert!(q.acquire("a") && q.acquire("a"));
        assert!(!q.acquire("a"), "per user");
        assert!(q.may_allocate("a").is_err());
        assert!(q.acquire("b"));
        assert!(!q.acquire("c"), "total");
        q.release("a");
        assert!(q.acquire("c"));
        assert_eq!(q.total(), 3);
        q.set_limits(4, 3);
        assert!(q.acquire("a"), "a raised limit counts at once");
        assert!(!q.acquire("d"), "and still bounds the total");
    }
}

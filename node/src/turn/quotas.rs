//! Allocation quotas of one node: per user and in total (486 Allocation Quota Reached).

use std::collections::HashMap;
use std::sync::Mutex;

use switchboard_proto::turn::server::Quotas;

/// Allocations held, per user and in total.
pub struct QuotaTable {
    max_total: usize,
    max_per_user: usize,
    held: Mutex<(usize, HashMap<String, usize>)>,
}

impl QuotaTable {
    /// At most `max_total` allocations, `max_per_user` per user.
    pub fn new(max_total: usize, max_per_user: usize) -> Self {
        QuotaTable { max_total, max_per_user, held: Mutex::new((0, HashMap::new())) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<String, usize>)> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one allocation for `user`, or `false` at a quota.
    pub fn acquire(&self, user: &str) -> bool {
        let mut h = self.lock();
        let per = h.1.get(user).copied().unwrap_or(0);
        if h.0 >= self.max_total || per >= self.max_per_user {
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
        let h = self.lock();
        let per = h.1.get(user).copied().unwrap_or(0);
        if h.0 >= self.max_total || per >= self.max_per_user {
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
    }
}

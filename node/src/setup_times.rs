//! When each client joined on this node, so that its socket's registration here can record how
//! long call set-up took (`switchboard_call_setup_seconds`: join answered → socket registered).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Joins remembered at once; beyond, the oldest ones are forgotten (they are not measured).
const CAPACITY: usize = 65_536;
/// A join not followed by a registration within this long is not a call being set up.
const HORIZON: Duration = Duration::from_secs(60);

/// Join times of clients whose socket has not registered yet.
#[derive(Default)]
pub struct SetupTimes {
    joined: Mutex<HashMap<(String, String), Instant>>,
}

impl SetupTimes {
    pub fn joined(&self, room: &str, client: &str) {
        let mut j = self.lock();
        if j.len() >= CAPACITY {
            j.retain(|_, t| t.elapsed() < HORIZON);
            if j.len() >= CAPACITY {
                return;
            }
        }
        j.insert((room.to_owned(), client.to_owned()), Instant::now());
    }

    /// The client's socket registered: how long since its join, if it joined here lately.
    pub fn registered(&self, room: &str, client: &str) -> Option<Duration> {
        let t = self.lock().remove(&(room.to_owned(), client.to_owned()))?;
        let took = t.elapsed();
        (took < HORIZON).then_some(took)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Instant>> {
        self.joined.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_once_per_join() {
        let s = SetupTimes::default();
        s.joined("r", "a");
        assert!(s.registered("r", "a").is_some());
        assert!(s.registered("r", "a").is_none(), "a second registration is not a set-up");
        assert!(s.registered("r", "b").is_none(), "a client that joined elsewhere");
        for i in 0..CAPACITY + 10 {
            s.joined("r", &i.to_string());
        }
        assert_eq!(s.lock().len(), CAPACITY, "bounded");
    }
}

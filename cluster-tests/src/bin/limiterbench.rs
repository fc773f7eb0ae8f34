//! The TURN login limiter's cost per failing source as the number of sources grows, beside the
//! limiter it replaced (a map that, once full, scanned every entry to make room) as the
//! reference. Prints one table; the ratio column is the old cost over the new at each size.

use std::collections::HashMap;
use std::hash::RandomState;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use switchboard_proto::turn::auth::FailureLimiter;

/// The previous design, kept here only as the benchmark's reference.
struct ScanningLimiter {
    max: u32,
    window: u64,
    capacity: usize,
    sources: HashMap<IpAddr, (u64, u32)>,
}

impl ScanningLimiter {
    fn allowed(&self, ip: IpAddr, now: u64) -> bool {
        self.sources.get(&ip).is_none_or(|(start, n)| now >= start + self.window || *n < self.max)
    }

    fn failed(&mut self, ip: IpAddr, now: u64) {
        if !self.sources.contains_key(&ip) && self.sources.len() >= self.capacity {
            let window = self.window;
            self.sources.retain(|_, (start, _)| now < *start + window);
            if self.sources.len() >= self.capacity {
                if let Some(oldest) = self.sources.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k) {
                    self.sources.remove(&oldest);
                }
            }
        }
        let e = self.sources.entry(ip).or_insert((now, 0));
        e.1 = e.1.saturating_add(1);
    }
}

fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32.wrapping_add(n)))
}

/// Median of `runs` timings of `ops` new sources each, in ns per source.
fn median_ns(runs: usize, mut f: impl FnMut(u32)) -> f64 {
    let mut v: Vec<f64> = (0..runs)
        .map(|r| {
            let ops = 2_000u32;
            let t = Instant::now();
            for i in 0..ops {
                f(10_000_000 + r as u32 * ops + i);
            }
            t.elapsed().as_nanos() as f64 / ops as f64
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    const CAPACITY: usize = 65_536;
    println!("| sources already failing | new limiter ns/source | old limiter ns/source | old / new |");
    println!("| ---: | ---: | ---: | ---: |");
    for filled in [0usize, 1_000, 16_000, CAPACITY, 1_000_000] {
        let new = FailureLimiter::new(30, 60, CAPACITY, RandomState::new());
        let mut old = ScanningLimiter { max: 30, window: 60, capacity: CAPACITY, sources: HashMap::new() };
        for n in 0..filled as u32 {
            new.record(ip(n), 100);
        }
        // The old one holds at most CAPACITY (beyond, each source cost a full scan): filling it
        // that far is the same state.
        for n in 0..filled.min(CAPACITY) as u32 {
            old.failed(ip(n), 100);
        }
        let new_ns = median_ns(7, |n| {
            if new.allowed(ip(n), 100) {
                new.record(ip(n), 100);
            }
        });
        // The old one is slow once full: fewer runs.
        let old_ns = median_ns(3, |n| {
            if old.allowed(ip(n), 100) {
                old.failed(ip(n), 100);
            }
        });
        println!("| {filled} | {new_ns:.0} | {old_ns:.0} | {:.1}x |", old_ns / new_ns);
    }
}

//! Faults on real node processes, for tests and `scripts/chaos.sh`: pauses (`SIGSTOP`/`SIGCONT`,
//! as a GC pause or VM steal looks to the other nodes), partitions of the cluster links
//! (symmetric, or one way), packet loss on one node's cluster link, and slow restarts. Kills and
//! restarts are [`crate::cluster::Cluster::kill`] and `restart`. Slow system calls (a node under
//! `strace`) stretch the hops between a node's threads, to bring out ordering races.
//!
//! Partitions and loss are nftables rules in a table of their own, matched on the loopback
//! addresses of the nodes and the cluster port. They must only ever run inside a private network
//! namespace ([`crate::netns::rerun_in_netns`]) so that the host's rules are untouched.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Sends `signal` (`STOP`, `CONT`, `KILL`…) to `pid`.
pub fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// One fault on the cluster links, as nftables rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkFault {
    /// Node `a` and node `b` (1-based, on 127.0.0.a/b) cannot reach each other's cluster port.
    Cut { a: usize, b: usize },
    /// Node `from` cannot reach node `to`'s cluster port; `to` still reaches `from`.
    OneWay { from: usize, to: usize },
    /// `percent` of the packets to and from node `node`'s cluster links are dropped.
    Loss { node: usize, percent: u8 },
}

/// The nftables table holding this run's link faults.
pub struct Links {
    table: String,
    port: u16,
    active: Vec<LinkFault>,
}

fn nft(args: &str) -> Result<()> {
    let out = Command::new("nft").args(args.split_whitespace()).output().context("nft (nftables) is not installed")?;
    if !out.status.success() {
        bail!("nft {args}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Links {
    /// A fresh table for faults on the cluster port `port`. Refuses to run outside a private
    /// network namespace.
    pub fn new(port: u16) -> Result<Links> {
        anyhow::ensure!(
            std::env::var_os("SWITCHBOARD_IN_NETNS").is_some(),
            "link faults change nftables rules: run them inside a private network namespace (rerun_in_netns)"
        );
        let table = "switchboard_faults".to_owned();
        let _ = nft(&format!("delete table inet {table}"));
        nft(&format!("add table inet {table}"))?;
        nft(&format!("add chain inet {table} out {{ type filter hook output priority 0 ; }}"))?;
        Ok(Links { table, port, active: Vec::new() })
    }

    fn rules(&self, f: &LinkFault) -> Vec<String> {
        let p = self.port;
        let ip = |n: usize| format!("127.0.0.{n}");
        match f {
            LinkFault::Cut { a, b } => {
                let mut v = Vec::new();
                for (x, y) in [(a, b), (b, a)] {
                    for dir in ["dport", "sport"] {
                        v.push(format!("ip saddr {} ip daddr {} tcp {dir} {p} drop", ip(*x), ip(*y)));
                    }
                }
                v
            }
            // Only the connections `from` opens to `to` die; `to`'s connection to `from` (whose
            // packets from `from` have source port `p`) keeps both directions.
            LinkFault::OneWay { from, to } => vec![format!("ip saddr {} ip daddr {} tcp dport {p} drop", ip(*from), ip(*to))],
            LinkFault::Loss { node, percent } => {
                let n = ip(*node);
                let mut v = Vec::new();
                for addr in ["saddr", "daddr"] {
                    for dir in ["dport", "sport"] {
                        v.push(format!("ip {addr} {n} tcp {dir} {p} numgen random mod 100 < {percent} drop"));
                    }
                }
                v
            }
        }
    }

    fn install(&self) -> Result<()> {
        nft(&format!("flush chain inet {} out", self.table))?;
        for f in &self.active {
            for r in self.rules(f) {
                nft(&format!("add rule inet {} out {r}", self.table))?;
            }
        }
        Ok(())
    }

    /// Starts a fault.
    pub fn add(&mut self, f: LinkFault) -> Result<()> {
        self.active.push(f);
        self.install()
    }

    /// Ends a fault.
    pub fn remove(&mut self, f: &LinkFault) -> Result<()> {
        self.active.retain(|x| x != f);
        self.install()
    }

    /// Ends every fault.
    pub fn heal(&mut self) -> Result<()> {
        self.active.clear();
        self.install()
    }

    /// Cuts node `n` off from every other node of `nodes`, both ways.
    pub fn isolate(&mut self, n: usize, nodes: usize) -> Result<Vec<LinkFault>> {
        let cuts: Vec<LinkFault> = (1..=nodes).filter(|m| *m != n).map(|m| LinkFault::Cut { a: n, b: m }).collect();
        self.active.extend(cuts.iter().cloned());
        self.install()?;
        Ok(cuts)
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        let _ = nft(&format!("delete table inet {}", self.table));
    }
}

/// `strace` attached to a process for as long as this lives: each of its system calls stops the
/// calling thread for a round trip to the tracer, so a hop between two of its threads (a wake-up
/// through an eventfd, a socket) takes far longer than work on one thread.
pub struct SlowSyscalls(std::process::Child);

impl SlowSyscalls {
    /// Attaches to every thread of `pid` and returns once each has a tracer.
    pub async fn attach(pid: u32) -> Result<Self> {
        let slow = SlowSyscalls(
            Command::new("strace")
                .args(["-f", "-qq", "-o", "/dev/null", "-p", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("strace (scripts/install-test-deps.sh installs it)")?,
        );
        let traced = |tid: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
                .ok()
                .and_then(|s| s.lines().find_map(|l| l.strip_prefix("TracerPid:").map(|v| v.trim() != "0")))
                .unwrap_or(false)
        };
        for _ in 0..100 {
            let tids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            if !tids.is_empty() && tids.iter().all(|t| traced(t)) {
                return Ok(slow);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("strace did not attach to process {pid} within 2 s")
    }
}

impl Drop for SlowSyscalls {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! A real cluster for tests: three voters, and optionally learners (nodes 4, 5…), node N on
//! 127.0.0.N with the same HTTP and cluster ports (like separate hosts), each with its own data
//! directory; node 1 bootstraps the group and learners join through the admin API.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::Value;

use crate::process::{free_port, NodeProcess, NodeSpec};
use crate::Http;

/// The admin token of test clusters.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Three live (or killed) node processes.
pub struct Cluster {
    /// Node processes; index 0 is node 1.
    pub nodes: Vec<NodeProcess>,
    http_port: u16,
    raft_port: u16,
    turn_port: u16,
}

/// Extra settings for every node of a test cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// `--set` values added to every node.
    pub sets: Vec<String>,
    /// Learners beyond the three voters (nodes 4, 5, …).
    pub learners: usize,
    /// Nodes after the learners that run, with empty data directories, without being members
    /// (for tests that add them).
    pub spare: usize,
}

impl Cluster {
    /// Starts three nodes and waits until they agree on a leader.
    pub async fn start(opts: ClusterOptions) -> Result<Cluster> {
        let total = 3 + (opts.learners + opts.spare) as u8;
        let ips: Vec<Ipv4Addr> = (1..=total).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
        let http_port = free_port(&ips);
        let mut raft_port = free_port(&ips);
        while raft_port == http_port {
            raft_port = free_port(&ips);
        }
        let peers: Vec<String> = (1..=3)
            .map(|i| {
                format!(
                    "{{ id = {i}, raft_addr = \"127.0.0.{i}:{raft_port}\", public_url = \"http://127.0.0.{i}:{http_port}\" }}"
                )
            })
            .collect();
        let peers = format!("cluster.peers=[{}]", peers.join(", "));
        let mut turn_port = free_port(&ips);
        while turn_port == http_port || turn_port == raft_port {
            turn_port = free_port(&ips);
        }
        let mut nodes = Vec::new();
        for i in 1..=total {
            let mut spec = NodeSpec {
                http: SocketAddr::from((Ipv4Addr::new(127, 0, 0, i), http_port)),
                sets: Vec::new(),
                env: Vec::new(),
                config: None,
            };
            for s in [
                format!("node.id={i}"),
                "cluster.enabled=true".into(),
                format!("cluster.listen=\"127.0.0.{i}:{raft_port}\""),
                format!("cluster.public_url=\"http://127.0.0.{i}:{http_port}\""),
                format!("cluster.bootstrap={}", i == 1),
                "cluster.secret=\"test-cluster-secret\"".into(),
                format!("cluster.admin_token=\"{ADMIN_TOKEN}\""),
                peers.clone(),
                format!("turn.listen=[\"127.0.0.{i}:{turn_port}\"]"),
                format!("turn.relay_ip=\"127.0.0.{i}\""),
            ] {
                spec.sets.push(s);
            }
            spec.sets.extend(crate::process::LIFTED_RATE_LIMITS.map(String::from));
            spec.sets.extend(opts.sets.iter().cloned());
            nodes.push(spec);
        }
        let spare = nodes.split_off(3 + opts.learners);
        let learners = nodes.split_off(3);
        // Start all three before waiting on any: node 1 needs a majority to elect itself.
        let started = futures_util::future::join_all(nodes.into_iter().map(NodeProcess::start)).await;
        let nodes = started.into_iter().collect::<Result<Vec<_>>>()?;
        let mut c = Cluster { nodes, http_port, raft_port, turn_port };
        let leader = c.wait_leader(Duration::from_secs(20)).await?;
        for (i, spec) in learners.into_iter().enumerate() {
            let id = 4 + i;
            c.nodes.push(NodeProcess::start(spec).await?);
            c.add_member(leader as usize, id, "learner").await?;
        }
        for spec in spare {
            c.nodes.push(NodeProcess::start(spec).await?);
        }
        Ok(c)
    }

    /// Asks node `via` (the leader) to add running node `id` as `role` (`learner` or `voter`).
    pub async fn add_member(&self, via: usize, id: usize, role: &str) -> Result<()> {
        let body = serde_json::json!({
            "id": id,
            "raft_addr": format!("127.0.0.{id}:{}", self.raft_port),
            "public_url": self.base(id),
            "role": role,
        });
        let r = reqwest::Client::new()
            .post(format!("{}/admin/cluster/nodes", self.base(via)))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("adding node {id} as {role}: HTTP {} {}", r.status(), r.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// The STUN/TURN listener (UDP and TCP) of node `n` (1-based).
    pub fn turn_addr(&self, n: usize) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(127, 0, 0, n as u8), self.turn_port))
    }

    /// HTTP client of node `n` (1-based).
    pub fn http(&self, n: usize) -> Http {
        Http::new(&self.base(n))
    }

    /// `http://127.0.0.n:port`.
    pub fn base(&self, n: usize) -> String {
        format!("http://127.0.0.{n}:{}", self.http_port)
    }

    /// `ws://127.0.0.n:port/ws`.
    pub fn ws_url(&self, n: usize) -> String {
        format!("ws://127.0.0.{n}:{}/ws", self.http_port)
    }

    /// Node `n`'s process.
    pub fn node(&mut self, n: usize) -> &mut NodeProcess {
        &mut self.nodes[n - 1]
    }

    /// The cluster port (the same on every node's address).
    pub fn raft_port(&self) -> u16 {
        self.raft_port
    }

    /// Pauses node `n` (SIGSTOP): to the others it looks like a GC pause or a stuck VM.
    pub fn pause(&self, n: usize) -> Result<()> {
        match self.nodes[n - 1].pid() {
            Some(pid) => crate::faults::signal(pid, "STOP"),
            None => bail!("node {n} is not running"),
        }
    }

    /// Resumes a paused node (SIGCONT).
    pub fn resume(&self, n: usize) -> Result<()> {
        match self.nodes[n - 1].pid() {
            Some(pid) => crate::faults::signal(pid, "CONT"),
            None => bail!("node {n} is not running"),
        }
    }

    /// SIGKILL node `n`.
    pub fn kill(&mut self, n: usize) {
        self.nodes[n - 1].kill();
    }

    /// Restarts node `n` with its data directory.
    pub async fn restart(&mut self, n: usize) -> Result<()> {
        self.nodes[n - 1].restart().await
    }

    /// `/admin/cluster/status` of node `n`, if it answers.
    pub async fn status(&self, n: usize) -> Option<Value> {
        let client = reqwest::Client::builder().timeout(Duration::from_millis(800)).build().ok()?;
        let r = client
            .get(format!("{}/admin/cluster/status", self.base(n)))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// The leader as the live members see it, once they agree.
    pub async fn leader(&self) -> Option<u64> {
        let mut seen = None;
        for n in 1..=self.nodes.len() {
            if let Some(s) = self.status(n).await {
                if s["members"].as_array().is_some_and(|m| m.is_empty()) {
                    // A spare node, not (yet) a member: it has no leader to agree on.
                    continue;
                }
                let l = s["leader"].as_u64()?;
                if seen.is_some_and(|x| x != l) {
                    return None;
                }
                seen = Some(l);
            }
        }
        seen
    }

    /// Waits until the live nodes agree on a leader.
    pub async fn wait_leader(&self, within: Duration) -> Result<u64> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(l) = self.leader().await {
                return Ok(l);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("no agreed leader within {within:?}")
    }

    /// Waits until every node in `nodes` reports the same applied index and state digest.
    pub async fn wait_converged(&self, nodes: &[usize], within: Duration) -> Result<String> {
        let deadline = Instant::now() + within;
        let mut last = Vec::new();
        while Instant::now() < deadline {
            last.clear();
            for &n in nodes {
                last.push(self.status(n).await.map(|s| (s["last_applied"].as_u64(), s["digest"].as_str().map(str::to_owned))));
            }
            if last.iter().all(|s| s.is_some()) && last.windows(2).all(|w| w[0] == w[1]) {
                if let Some(Some((_, Some(d)))) = last.first() {
                    return Ok(d.clone());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("nodes {nodes:?} did not converge within {within:?}: {last:?}")
    }
}

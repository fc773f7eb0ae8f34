//! # cluster-tests
//!
//! Black-box harness for Switchboard: it builds the `switchboard` binary, starts real node
//! processes on loopback addresses, and talks to them over real sockets the way AppRTC clients
//! do (HTTP, Collider WebSocket). Tests live in `tests/`, named `tNN_` by theme:
//! `t1x` single node, `t5x` cluster, `t9x` regressions.
//!
//! ## Layout
//! - [`process`]: build and locate the binary; start, kill and restart nodes.
//! - [`client`]: AppRTC room-server HTTP and Collider HTTP calls.
//! - [`ws`]: a Collider WebSocket client.
//! - [`cluster`]: three real nodes on 127.0.0.1-3.
//! - [`calls`]: whole AppRTC calls, as a load and as an invariant checker.
//! - [`chaos`]: faults under call load, a seeded schedule of them, and the rules checked after.
//! - [`coturn`]: coturn's `turnutils_*` clients as reference TURN peers.
//! - [`lean`]: lean HTTP and WebSocket clients for load generators.
//! - [`faults`]: pauses, partitions and packet loss on real node processes.
//! - [`netns`]: re-running a test inside a private network namespace.
//! - [`turn_client`]: a small TURN client for exact protocol checks.
//! - [`browser`]: headless Chromium through chromedriver, in a private network namespace.

pub mod browser;
pub mod calls;
pub mod chaos;
pub mod client;
pub mod cluster;
pub mod coturn;
pub mod faults;
pub mod floor;
pub mod lean;
pub mod netns;
pub mod process;
pub mod turn_client;
pub mod ws;

pub use client::Http;
pub use process::{binary, free_port, NodeProcess, NodeSpec};
pub use ws::{WsClient, WsEvent};

/// Installs rustls's ring provider once (reqwest is built without a default one).
pub fn init_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A room id nobody else uses (tests run in parallel against shared nodes).
pub fn fresh_room(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// The sum of a Prometheus counter's samples (from `/metrics`) whose labels include all of
/// `labels`; 0 when it has none.
pub fn counter(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// What a node's proposal batcher has written to the Raft log so far: entries, and the commands
/// in them (the `switchboard_raft_batch_commands` histogram of its `/metrics`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RaftBatches {
    /// Log entries written.
    pub entries: f64,
    /// Commands in those entries.
    pub commands: f64,
}

/// [`RaftBatches`] from a node's `/metrics` text; `None` when the node has no cluster (no
/// such histogram).
pub fn raft_batches(metrics: &str) -> Option<RaftBatches> {
    let value = |name: &str| metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok());
    Some(RaftBatches {
        entries: value("switchboard_raft_batch_commands_count")?,
        commands: value("switchboard_raft_batch_commands_sum")?,
    })
}

/// A TCP connection to `to` from the local address `from` (any port), within 5 s.
pub async fn connect_from(from: std::net::IpAddr, to: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let s = if from.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    s.bind(std::net::SocketAddr::new(from, 0))?;
    tokio::time::timeout(std::time::Duration::from_secs(5), s.connect(to)).await.map_err(|_| std::io::ErrorKind::TimedOut)?
}

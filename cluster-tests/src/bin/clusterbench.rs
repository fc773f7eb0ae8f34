//! Cluster benchmarks on a real three-node cluster (127.0.0.1-3), printed as tables:
//! - `joins`: join latency through Raft (p50/p99, through the leader and through a follower)
//!   and joins/s with several concurrent clients;
//! - `messages`: the signaling load generator with each room's two clients on two nodes, beside
//!   the same load on one node of the same cluster;
//! - `failover`: SIGKILL of the leader → next successful join; SIGKILL of a client's node →
//!   that client's messages flowing again (re-registered on another node).
//!
//! `SWITCHBOARD_BIN` chooses the node binary (scripts/bench.sh passes the release build).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cluster_tests::cluster::{Cluster, ClusterOptions};
use cluster_tests::ws::reregister_with_probe;
use cluster_tests::lean::HttpConn;
use cluster_tests::{fresh_room, RaftBatches, WsClient};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Join latency and throughput through Raft.
    Joins {
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Concurrent clients of the loaded rows (one row set per value).
        #[arg(long, default_values_t = vec![16, 64])]
        concurrency: Vec<usize>,
        /// Learners beyond the three voters (then only the sequential rows, and one through a
        /// learner: what learners change is latency, if anything).
        #[arg(long, default_value_t = 0)]
        learners: usize,
    },
    /// Cross-node messaging with the load generator.
    Messages {
        /// Room counts to run (light load shows path latency, heavy load throughput).
        #[arg(long, default_values_t = vec![10, 100])]
        rooms: Vec<usize>,
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// Failover times.
    Failover {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
}

fn opts() -> ClusterOptions {
    // Every join makes a room that lives on: room for all of them.
    ClusterOptions { sets: vec!["http.max_sessions=30000".into(), "rooms.max_rooms=5000000".into()], ..Default::default() }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn median(v: &mut [f64]) -> f64 {
    pct(v, 0.5)
}

#[tokio::main]
async fn main() -> Result<()> {
    cluster_tests::init_crypto();
    match Args::parse().what {
        What::Joins { duration, concurrency, learners } => joins(duration, concurrency, learners).await,
        What::Messages { rooms, duration } => messages(rooms, duration).await,
        What::Failover { rounds } => failover(rounds).await,
    }
}

/// Which node a row's clients use.
#[derive(Clone, Copy)]
enum Via {
    Leader,
    Follower,
    Learner,
    All,
}

async fn joins(duration: u64, concurrency: Vec<usize>, learners: usize) -> Result<()> {
    println!("# {} voters + {learners} learners, a fresh cluster per row", 3);
    println!("| joins through | clients | joins/s | p50 | p99 | errors | proposals per log entry (leader) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut rows = vec![("leader, sequential", Via::Leader, 1), ("follower, sequential", Via::Follower, 1)];
    if learners > 0 {
        rows.push(("learner, sequential", Via::Learner, 1));
    } else {
        for n in concurrency {
            rows.extend([("leader", Via::Leader, n), ("follower", Via::Follower, n), ("all nodes", Via::All, n)]);
        }
    }
    for (label, via, clients) in rows {
        // Joined rooms are never left, so the state grows with every row; on one cluster the
        // later rows would measure snapshots of every earlier row's rooms, not joins.
        let c = Cluster::start(ClusterOptions { learners, ..opts() }).await?;
        let leader = c.wait_leader(Duration::from_secs(10)).await? as usize;
        let node = match via {
            Via::Leader => leader,
            Via::Follower => (1..=3).find(|n| *n != leader).unwrap(),
            Via::Learner => 4,
            Via::All => 0,
        };
        let lat = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(0usize));
        let stop = Arc::new(AtomicBool::new(false));
        let before = group_stats(&c.base(leader)).await;
        let mut tasks = Vec::new();
        for i in 0..clients {
            // The lean client: a general-purpose one costs more CPU per join than the node.
            let mut http = HttpConn::new(&c.base(if node == 0 { 1 + i % 3 } else { node }))?;
            let (lat, errors, stop) = (lat.clone(), errors.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    match http.request("POST", &format!("/join/{}", fresh_room("jb")), b"").await {
                        Ok(r) if r.status == 200 && r.text().contains("\"SUCCESS\"") => {
                            lat.lock().unwrap().push(t0.elapsed().as_secs_f64() * 1000.0)
                        }
                        _ => *errors.lock().unwrap() += 1,
                    }
                }
            }));
        }
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(duration)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let after = group_stats(&c.base(leader)).await;
        let per_write = match (before, after) {
            (Some(b0), Some(b1)) if b1.entries > b0.entries => {
                format!("{:.1}", (b1.commands - b0.commands) / (b1.entries - b0.entries))
            }
            _ => "–".into(),
        };
        let mut l = lat.lock().unwrap().clone();
        let n = l.len();
        println!(
            "| {label} (node {}) | {clients} | {:.0} | {:.2} ms | {:.2} ms | {} | {per_write} |",
            if node == 0 { "1-3".to_string() } else { node.to_string() },
            n as f64 / elapsed,
            pct(&mut l, 0.5),
            pct(&mut l, 0.99),
            errors.lock().unwrap()
        );
    }
    Ok(())
}

/// What the leader's batcher has written so far (proposals per log entry: group commit).
async fn group_stats(base: &str) -> Option<RaftBatches> {
    let mut http = HttpConn::new(base).ok()?;
    let r = http.request("GET", "/metrics", b"").await.ok()?;
    cluster_tests::raft_batches(r.text())
}

fn loadgen_path() -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    me.with_file_name("loadgen")
}

async fn messages(room_counts: Vec<usize>, duration: u64) -> Result<()> {
    let c = Cluster::start(opts()).await?;
    let pids: Vec<String> = c.nodes.iter().filter_map(|n| n.pid()).map(|p| p.to_string()).collect();
    let addr = |n: usize| c.base(n).trim_start_matches("http://").to_string();
    println!("| layout | rooms | msgs/s | RTT p50 | RTT p99 | server µs/msg (3 nodes) | server cores | generator cores |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut ratios = Vec::new();
    for rooms in room_counts {
    let mut rates = Vec::new();
    for (label, targets) in [("one node", vec![addr(1)]), ("two nodes (cross-node)", vec![addr(1), addr(2)])] {
        let mut cmd = std::process::Command::new(loadgen_path());
        for t in &targets {
            cmd.arg("--target").arg(t);
        }
        for p in &pids {
            cmd.arg("--server-pid").arg(p);
        }
        cmd.args(["--rooms", &rooms.to_string(), "--duration", &duration.to_string(), "--kv"]);
        let out = cmd.output().context("run loadgen (build it with the bench script)")?;
        anyhow::ensure!(out.status.success(), "loadgen failed: {}", String::from_utf8_lossy(&out.stderr));
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        let f = |k: &str| -> f64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        rates.push(f("msgs_per_s"));
        println!(
            "| {label} | {rooms} | {:.0} | {:.2} ms | {:.2} ms | {:.2} | {:.2} | {:.2} |",
            f("msgs_per_s"),
            f("rtt_p50_ms"),
            f("rtt_p99_ms"),
            f("server_us_per_msg"),
            f("server_cpu_cores"),
            f("gen_cpu_cores")
        );
    }
    ratios.push((rooms, rates[1] / rates[0]));
    }
    println!();
    for (rooms, r) in ratios {
        println!("cross-node / one-node msgs/s at {rooms} rooms: {r:.2}");
    }
    Ok(())
}

async fn failover(rounds: usize) -> Result<()> {
    let mut leader_kill = Vec::new();
    let mut client_kill = Vec::new();
    for _ in 0..rounds {
        let mut c = Cluster::start(opts()).await?;
        let leader = c.wait_leader(Duration::from_secs(10)).await? as usize;
        let survivor = if leader == 1 { 2 } else { 1 };
        c.kill(leader);
        let t0 = Instant::now();
        loop {
            if let Ok(j) = c.http(survivor).join(&fresh_room("fo")).await {
                if j["result"] == "SUCCESS" {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        leader_kill.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    for _ in 0..rounds {
        let mut c = Cluster::start(opts()).await?;
        let r = fresh_room("fo");
        let mut wa = WsClient::connect(&c.ws_url(1)).await?;
        wa.register(&r, "a").await?;
        let mut wb = WsClient::connect(&c.ws_url(2)).await?;
        wb.register(&r, "b").await?;
        wb.send_msg("hi").await?;
        wa.expect_msg(Duration::from_secs(5)).await.context("the first message")?;
        c.kill(1);
        let t0 = Instant::now();
        // The client's socket drops at once; like the web client it reconnects to another node.
        let _ = wa.recv(Duration::from_secs(2)).await;
        let mut wa = reregister_with_probe(&c.ws_url(3), &r, "a", &mut wb, Duration::from_secs(15))
            .await
            .context("re-registering on node 3")?;
        wa.send_msg("back").await?;
        wb.expect_msg(Duration::from_secs(5)).await.context("a message after re-registering")?;
        client_kill.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    println!("| failover ({rounds} rounds) | median | min | max | target |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (label, v, target) in [
        ("SIGKILL leader → next successful join", &mut leader_kill, "< 1000 ms"),
        ("SIGKILL client's node → its messages flow again", &mut client_kill, "< 3000 ms"),
    ] {
        let (min, max) = (v.iter().cloned().fold(f64::MAX, f64::min), v.iter().cloned().fold(0.0, f64::max));
        println!("| {label} | {:.0} ms | {min:.0} ms | {max:.0} ms | {target} |", median(v));
    }
    Ok(())
}

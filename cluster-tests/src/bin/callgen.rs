//! Call-level load generator and invariant checker: whole AppRTC calls (see
//! `cluster_tests::calls`) against one node, a three-node cluster, or nodes given by URL. Prints
//! calls/s, set-up latency p50/p99 and every failure; exits non-zero if any call failed.
//!
//!   callgen --spawn three --placement cross --calls 10000 --concurrency 16 --k 10
//!   callgen --nodes http://127.0.0.1:8083 --nodes http://127.0.0.2:8083 --duration 30
//!
//! `SWITCHBOARD_BIN` chooses the node binary for `--spawn`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use cluster_tests::calls::{self, Allowed, CallSpec, Placement, RoomAudit, RunSpec, Target};
use cluster_tests::cluster::{Cluster, ClusterOptions, ADMIN_TOKEN};
use cluster_tests::{NodeProcess, NodeSpec, RaftBatches};

#[derive(Parser, Debug)]
#[command(about = "Whole AppRTC calls as a load and an invariant check")]
struct Args {
    /// Start the nodes: `single` (one node, no cluster), `three` (127.0.0.1-3) or `five` (three
    /// voters and two learners, 127.0.0.1-5).
    #[arg(long)]
    spawn: Option<String>,
    /// Base URLs of running nodes (instead of --spawn).
    #[arg(long)]
    nodes: Vec<String>,
    /// Admin token of running nodes (for the room audit).
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// same, cross or random.
    #[arg(long, default_value = "cross")]
    placement: Placement,
    /// Calls to make (0: run for --duration).
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// Seconds to run when --calls is 0.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Messages per step.
    #[arg(long, default_value_t = 10)]
    k: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// `--set` for spawned nodes.
    #[arg(long = "set")]
    sets: Vec<String>,
    /// Processes of running nodes whose CPU time to report per call (spawned nodes are counted
    /// without it).
    #[arg(long)]
    server_pid: Vec<u32>,
    /// Print one machine-readable line (key=value) instead of a table.
    #[arg(long)]
    kv: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    cluster_tests::init_crypto();
    let args = Args::parse();
    let mut single = None;
    let mut cluster = None;
    let (targets, token): (Vec<Target>, Option<String>) = match args.spawn.as_deref() {
        Some("single") => {
            let mut spec = NodeSpec::single().set(&format!("cluster.admin_token=\"{ADMIN_TOKEN}\""));
            spec.sets.extend(args.sets.iter().cloned());
            let n = NodeProcess::start(spec).await?;
            let t = vec![Target::new(&n.base())];
            single = Some(n);
            (t, Some(ADMIN_TOKEN.into()))
        }
        Some(which @ ("three" | "five")) => {
            // Five: three voters and two learners (nodes 4 and 5).
            let learners = if which == "five" { 2 } else { 0 };
            let c = Cluster::start(ClusterOptions { sets: args.sets.clone(), learners, ..Default::default() }).await?;
            let t = (1..=3 + learners).map(|n| Target::new(&c.base(n))).collect();
            cluster = Some(c);
            (t, Some(ADMIN_TOKEN.into()))
        }
        Some(other) => bail!("--spawn takes single, three or five, not {other:?}"),
        None if args.nodes.is_empty() => bail!("give --spawn or --nodes"),
        None => (args.nodes.iter().map(|n| Target::new(n)).collect(), args.admin_token.clone()),
    };
    let prefix = format!("cg{:x}", rand::random::<u32>());
    let spec = RunSpec {
        call: CallSpec { k: args.k, placement: args.placement, prefix: prefix.clone(), ..Default::default() },
        concurrency: args.concurrency,
        calls: args.calls,
        duration: if args.calls == 0 { Duration::from_secs(args.duration) } else { Duration::ZERO },
        seed: args.seed,
    };
    let n = targets.len();
    let allowed: Allowed = Arc::new(move || (0..n).collect());
    let audit = RoomAudit::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let auditor = token.clone().map(|token| {
        let (audit, stop, base, prefix) = (audit.clone(), stop.clone(), targets[0].base.clone(), prefix.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if let Err(e) = audit.check(&base, &token, &prefix, Duration::from_secs(1)).await {
                    eprintln!("room audit failed: {e:#}");
                }
            }
        })
    });
    let mut pids: Vec<u32> = args.server_pid.clone();
    pids.extend(single.iter().filter_map(|n| n.pid()));
    pids.extend(cluster.iter().flat_map(|c| c.nodes.iter().filter_map(|n| n.pid())));
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_secs(&p.to_string())).sum::<f64>();
    let (server0, gen0) = (cpu(&pids), cpu_secs("self"));
    let log0 = match &token { Some(t) => raft_batches(&targets, t).await, None => None };
    let started = Instant::now();
    let records = calls::run(targets.clone(), spec, allowed, audit.clone()).await;
    let elapsed = started.elapsed();
    let (server_cpu, gen_cpu) = (cpu(&pids) - server0, cpu_secs("self") - gen0);
    let log1 = match &token { Some(t) => raft_batches(&targets, t).await, None => None };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(a) = auditor {
        let _ = a.await;
    }
    let mut left = 0;
    if let Some(token) = &token {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for t in &targets {
            left += audit.check(&t.base, token, &prefix, Duration::from_secs(1)).await.unwrap_or(0);
        }
    }
    let s = calls::summarise(&records, elapsed);
    let per_call = |secs: f64| format!("{:.2}", secs * 1000.0 / s.calls.max(1) as f64);
    let server_ms = if pids.is_empty() { "–".to_string() } else { per_call(server_cpu) };
    let gen_ms = per_call(gen_cpu);
    // Log entries and commands per call: what one call costs the replicated log.
    let (entries, commands) = match (log0, log1) {
        (Some(b0), Some(b1)) => {
            let calls = s.calls.max(1) as f64;
            (format!("{:.1}", (b1.entries - b0.entries) / calls), format!("{:.1}", (b1.commands - b0.commands) / calls))
        }
        _ => ("–".to_string(), "–".to_string()),
    };
    let room_violations = audit.violations();
    let failures = s.calls - s.ok + room_violations.len();
    let placement = format!("{:?}", args.placement).to_lowercase();
    if args.kv {
        println!(
            "nodes={n} placement={placement} concurrency={} k={} calls={} ok={} violations={} lost={} refused={} rooms_left={} calls_per_s={:.1} setup_p50_ms={:.2} setup_p99_ms={:.2} server_ms_per_call={server_ms} gen_ms_per_call={gen_ms} raft_entries_per_call={entries} raft_commands_per_call={commands} seed={}",
            args.concurrency, args.k, s.calls, s.ok, s.violations + room_violations.len(), s.lost, s.refused, left, s.calls_per_s, s.setup_p50_ms, s.setup_p99_ms, args.seed
        );
    } else {
        println!("| nodes | placement | concurrency | K | calls | ok | violations | lost | refused | calls/s | set-up p50 | set-up p99 | server CPU ms/call | generator CPU ms/call | Raft entries/call | Raft commands/call |");
        println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        println!(
            "| {n} | {placement} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.2} ms | {:.2} ms | {server_ms} | {gen_ms} | {entries} | {commands} |",
            args.concurrency, args.k, s.calls, s.ok, s.violations + room_violations.len(), s.lost, s.refused, s.calls_per_s, s.setup_p50_ms, s.setup_p99_ms
        );
    }
    for e in s.examples.iter().chain(room_violations.iter().take(10)) {
        eprintln!("FAILED {e}");
    }
    if failures > 0 {
        // What the spawned nodes warned about, to go with the failed calls.
        for n in single.iter().chain(cluster.iter().flat_map(|c| c.nodes.iter())) {
            for l in n.log().lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).take(50) {
                eprintln!("node {}: {l}", n.spec.http);
            }
        }
    }
    drop(single);
    drop(cluster);
    if failures > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Log entries and the commands in them proposed so far on all `targets` (each node counts the
/// entries its own batcher wrote: the leader's, plus any a node wrote while it led); `None` for a
/// node without a cluster or when a node does not answer.
async fn raft_batches(targets: &[Target], token: &str) -> Option<RaftBatches> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
    let mut total = RaftBatches::default();
    for t in targets {
        let text = client.get(format!("{}/metrics", t.base)).bearer_auth(token).send().await.ok()?.text().await.ok()?;
        let node = cluster_tests::raft_batches(&text)?;
        total.entries += node.entries;
        total.commands += node.commands;
    }
    Some(total)
}

/// CPU seconds (user + system) used so far by process `pid` (or "self"), from /proc.
fn cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; 100 ticks/s.
    (ticks(11) + ticks(12)) / 100.0
}

//! TURN benchmark, coturn and Switchboard side by side in one run: the same
//! `turnutils_uclient` loads against each on loopback, back to back, through one
//! `turnutils_peer`. For each run it prints the plateau rate (per-second deltas of the
//! uclient's cumulative counters, keeping the seconds at ≥ 90 % of the best one — never its
//! "Total transmit time"), loss, server CPU-seconds per 100 k relayed datagrams over the same
//! seconds (from /proc), and RSS; then the ratios.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The Switchboard binary.
    #[arg(long)]
    switchboard: String,
    /// Repeats of the saturating load.
    #[arg(long, default_value_t = 5)]
    saturating_runs: usize,
    /// Seconds per run (approximate: sets the message count).
    #[arg(long, default_value_t = 12)]
    seconds: u64,
    /// Payload bytes.
    #[arg(long, default_value_t = 120)]
    length: usize,
    /// Only the loads whose names start with one of these: stable, fixed, saturating, send.
    #[arg(long)]
    only: Vec<String>,
    /// Instead of the loads: hold this many idle allocations on Switchboard and report the
    /// memory each one costs.
    #[arg(long)]
    idle_allocations: Option<usize>,
}

struct Server {
    name: &'static str,
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_cpu(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some(i) = stat.rfind(')') else { return 0.0 };
    let f: Vec<&str> = stat[i + 2..].split_whitespace().collect();
    (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / 100.0
}

fn proc_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()))
        .map_or(0.0, |kib| kib / 1024.0)
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_coturn(port: u16, threads: Option<usize>) -> Result<Server> {
    let child = Command::new("turnserver")
        .args(threads.map(|t| format!("--relay-threads={t}")))
        .args([
            "-n",
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            &format!("--listening-port={port}"),
            "--lt-cred-mech",
            "--user=test:test",
            "--realm=test.local",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--allow-loopback-peers",
            "--min-port=40000",
            "--max-port=45000",
            "--log-file=/dev/null",
            "--no-stdout-log",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("turnserver (Debian package coturn)")?;
    wait_port(port);
    Ok(Server { name: "coturn", child, port })
}

fn start_switchboard(bin: &str, port: u16, http: u16, threads: Option<usize>) -> Result<Server> {
    let child = Command::new(bin)
        .args(["--listen", &format!("127.0.0.1:{http}")])
        .args(threads.into_iter().flat_map(|t| ["--set".to_string(), format!("turn.threads={t}")]))
        .args(["--set", &format!("turn.listen=[\"127.0.0.1:{port}\"]")])
        .args(["--set", "turn.users=[\"test:test\"]"])
        .args(["--set", "turn.allow_peers=[\"127.0.0.0/8\"]"])
        .args(["--set", "turn.min_port=46000", "--set", "turn.max_port=51000"])
        .args(["--set", "node.data_dir=\"/tmp/switchboard-turnbench\""])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("switchboard")?;
    wait_port(port);
    Ok(Server { name: "switchboard", child, port })
}

#[derive(Debug, Clone, Copy)]
struct Measure {
    rate: f64,
    loss: f64,
    us_per_dgram: f64,
    rss: f64,
}

/// One uclient run against `server`.
fn run(server: &Server, peer_port: u16, flags: &[&str], sessions: usize, interval_ms: u64, seconds: u64, length: usize) -> Result<Measure> {
    // Each session sends at most 12.5 k msg/s (50 per 4 ms tick); `-z 1` is 1000/s.
    let per_session_rate = 1000u64.checked_div(interval_ms).unwrap_or(12_500);
    let n = per_session_rate * seconds;
    let pid = server.child.id();
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(flags).args([
        "-u", "test", "-w", "test", "-e", "127.0.0.1", "-r", &peer_port.to_string(),
        "-m", &sessions.to_string(), "-n", &n.to_string(), "-z", &interval_ms.to_string(),
        "-l", &length.to_string(), "-c", "-p", &server.port.to_string(), "127.0.0.1",
    ]);
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().context("turnutils_uclient")?;
    let out = child.stdout.take().context("stdout")?;
    // (received so far, server CPU) at each of the uclient's once-a-second lines.
    let mut samples: Vec<(u64, u64, f64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds * 3 + 60);
    let mut last_line = String::new();
    for line in BufReader::new(out).lines() {
        let line = line?;
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        if let (Some(s), Some(r)) = (field(&line, "tot_send_msgs="), field(&line, "tot_recv_msgs=")) {
            samples.push((s, r, proc_cpu(pid)));
        }
        if line.contains("Total lost packets") {
            last_line = line;
        }
    }
    let _ = child.wait();
    let rss = proc_rss_mib(pid);
    if samples.len() < 3 {
        bail!("{}: too few samples ({}); uclient failed?", server.name, samples.len());
    }
    // Per-second received deltas; the plateau is the seconds at ≥ 90 % of the best.
    let deltas: Vec<(u64, f64)> = samples.windows(2).map(|w| (w[1].1.saturating_sub(w[0].1), w[1].2 - w[0].2)).collect();
    let best = deltas.iter().map(|d| d.0).max().unwrap_or(0) as f64;
    let plateau: Vec<&(u64, f64)> = deltas.iter().filter(|d| d.0 as f64 >= 0.9 * best).collect();
    let msgs: u64 = plateau.iter().map(|d| d.0).sum();
    let cpu: f64 = plateau.iter().map(|d| d.1).sum();
    let rate = msgs as f64 / plateau.len() as f64;
    // The final summary counts late arrivals too: "Total lost packets N (P%)".
    let loss = match last_line.split('(').nth(1).and_then(|p| p.split('%').next()).and_then(|p| p.trim().parse::<f64>().ok()) {
        Some(pct) => pct / 100.0,
        None => {
            let (sent, recv) = samples.last().map(|s| (s.0, s.1)).unwrap_or((0, 0));
            if sent > 0 { 1.0 - recv as f64 / sent as f64 } else { 1.0 }
        }
    };
    // A message crosses the relay twice (client → peer, peer → client).
    let us_per_dgram = if msgs > 0 { cpu * 1e6 / (2.0 * msgs as f64) } else { f64::NAN };
    Ok(Measure { rate, loss: loss.max(0.0), us_per_dgram, rss })
}

fn field(line: &str, key: &str) -> Option<u64> {
    let i = line.find(key)? + key.len();
    line[i..].chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().ok()
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).unwrap_or(34780)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Memory per idle allocation: RSS before and after `n` allocations, each from its own socket.
fn idle_allocations(bin: &str, n: usize) -> Result<()> {
    let port = free_port();
    let child = Command::new(bin)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--set", &format!("turn.listen=[\"127.0.0.1:{port}\"]")])
        .args(["--set", "turn.users=[\"test:test\"]"])
        .args(["--set", &format!("turn.user_quota={}", n + 10), "--set", &format!("turn.max_allocations={}", n + 10)])
        .args(["--set", "turn.min_port=20000", "--set", "turn.max_port=60000"])
        .args(["--set", "node.data_dir=\"/tmp/switchboard-turnbench\""])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let server = Server { name: "switchboard", child, port };
    wait_port(port);
    std::thread::sleep(Duration::from_millis(300));
    let pid = server.child.id();
    let before = proc_rss_mib(pid);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let target: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let held = rt.block_on(async move {
        let mut held = Vec::new();
        let mut failed = 0;
        for chunk in 0..n.div_ceil(200) {
            let mut batch = Vec::new();
            for _ in 0..200.min(n - chunk * 200) {
                batch.push(tokio::spawn(async move {
                    let mut c = cluster_tests::turn_client::TurnClient::udp(target, "test", "test").await?;
                    let a = c.allocate().await?;
                    anyhow::ensure!(a.code == 0, "allocate answered {}", a.code);
                    Ok::<_, anyhow::Error>(c)
                }));
            }
            for b in batch {
                match b.await {
                    Ok(Ok(c)) => held.push(c),
                    _ => failed += 1,
                }
            }
        }
        (held, failed)
    });
    std::thread::sleep(Duration::from_secs(2));
    let after = proc_rss_mib(pid);
    let count = held.0.len();
    println!("| idle allocations | failed | server RSS before | after | per allocation (user space) |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {count} | {} | {before:.1} MiB | {after:.1} MiB | {:.2} KiB |",
        held.1,
        (after - before) * 1024.0 / count.max(1) as f64
    );
    println!("(each allocation also holds one kernel UDP socket, which RSS does not show)");
    drop(held);
    drop(server);
    Ok(())
}

fn main() -> Result<()> {
    let a = Args::parse();
    if let Some(n) = a.idle_allocations {
        return idle_allocations(&a.switchboard, n);
    }
    let peer_port = free_port();
    let mut peer = Command::new("turnutils_peer")
        .args(["-p", &peer_port.to_string(), "-L", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("turnutils_peer")?;
    std::thread::sleep(Duration::from_millis(300));
    // (name, uclient flags, sessions, interval, repeats, relay threads of both servers). By
    // default each server runs its own default (coturn: 2 relay threads; Switchboard: one shard
    // per core). The "1 relay thread each" rows leave the second core to the uclient and the
    // peer, which share this machine with the server.
    type Load<'a> = (&'a str, Vec<&'a str>, usize, u64, usize, Option<usize>);
    let loads: Vec<Load> = vec![
        ("stable -m 10 -z 0", vec![], 10, 0, 1, None),
        ("fixed 50 k/s -m 50 -z 1", vec![], 50, 1, 1, None),
        ("send indications -m 10 -z 0 -s", vec!["-s"], 10, 0, 1, None),
        ("saturating -m 20 -z 0", vec![], 20, 0, a.saturating_runs, None),
        ("stable, 1 relay thread each", vec![], 10, 0, 1, Some(1)),
        ("fixed 50 k/s, 1 relay thread each", vec![], 50, 1, 1, Some(1)),
    ];
    println!("# TURN relay, coturn (Debian {}) vs Switchboard, loopback, {} B payload, same uclient loads back to back",
        coturn_version(), a.length);
    println!("# rate = plateau round trips/s (each crosses the relay twice); CPU per 100 k relayed datagrams over the same seconds");
    println!();
    println!("| load | server | msgs/s | loss | CPU s / 100 k dgrams | µs / dgram | RSS | rate ratio | CPU ratio |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, flags, sessions, z, repeats, threads) in loads {
        if !a.only.is_empty() && !a.only.iter().any(|o| name.starts_with(o.as_str())) {
            continue;
        }
        let mut results: Vec<(&str, Vec<Measure>)> = Vec::new();
        for which in ["coturn", "switchboard"] {
            let mut ms = Vec::new();
            for _ in 0..repeats {
                let server = if which == "coturn" {
                    start_coturn(free_port(), threads)?
                } else {
                    start_switchboard(&a.switchboard, free_port(), free_port(), threads)?
                };
                std::thread::sleep(Duration::from_millis(300));
                match run(&server, peer_port, &flags, sessions, z, a.seconds, a.length) {
                    Ok(m) => ms.push(m),
                    Err(e) => eprintln!("{which}: {e:#}"),
                }
            }
            results.push((which, ms));
        }
        let med = |ms: &[Measure], f: fn(&Measure) -> f64| median(ms.iter().map(f).collect());
        let base_rate = med(&results[0].1, |m| m.rate);
        let base_cpu = med(&results[0].1, |m| m.us_per_dgram);
        for (which, ms) in &results {
            let rate = med(ms, |m| m.rate);
            let us = med(ms, |m| m.us_per_dgram);
            let label = if repeats > 1 { format!("{name} (median of {repeats})") } else { name.to_string() };
            println!(
                "| {label} | {which} | {rate:.0} | {:.2} % | {:.3} | {us:.2} | {:.1} MiB | {:.2}x | {:.2}x |",
                med(ms, |m| m.loss) * 100.0,
                us * 0.1,
                med(ms, |m| m.rss),
                rate / base_rate,
                us / base_cpu
            );
            if repeats > 1 {
                let all: Vec<String> = ms.iter().map(|m| format!("{:.0}/{:.1}%", m.rate, m.loss * 100.0)).collect();
                println!("|  | {which} runs (rate/loss) | {} | | | | | | |", all.join(" "));
            }
        }
    }
    let _ = peer.kill();
    let _ = peer.wait();
    Ok(())
}

fn coturn_version() -> String {
    Command::new("turnserver")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

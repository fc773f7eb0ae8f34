//! Signaling load generator: N rooms × 2 registered Collider WebSocket clients, one message in
//! flight per room (A sends, B receives and answers, A receives), for T seconds. Prints
//! messages/s, round-trip p50/p99, and, given the server's pid, its CPU per message and RSS.
//!
//! The WebSocket client is minimal on purpose (a zero masking key, no allocation per frame) so
//! that the generator costs less than the server it measures; its own CPU is printed too.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use cluster_tests::lean::ws_upgrade;

#[derive(Parser, Debug)]
#[command(about = "Collider signaling load generator")]
struct Args {
    /// Signaling endpoints `host:port`; with several, a room's two clients use different ones.
    #[arg(long, required = true)]
    target: Vec<SocketAddr>,
    /// Rooms (each with two clients).
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Server process ids whose CPU and RSS to report.
    #[arg(long)]
    server_pid: Vec<u32>,
    /// Only open and register the sessions, then report idle memory (no messages).
    #[arg(long)]
    idle: bool,
    /// Runtime threads of the generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print one machine-readable line (key=value) instead of a table.
    #[arg(long)]
    kv: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()?;
    rt.block_on(run(args))
}

/// A Collider client over a raw socket.
struct Client {
    tcp: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Result<Client> {
        let (tcp, mut buf) = ws_upgrade(addr, &addr.to_string()).await?;
        let end = buf.len();
        buf.resize(end.max(4096), 0);
        Ok(Client { tcp, buf, start: 0, end })
    }

    /// Writes one masked text frame (mask key 0, so the payload goes out as is).
    async fn send(&mut self, payload: &[u8]) -> Result<()> {
        let mut frame = [0u8; 256];
        let len = payload.len();
        anyhow::ensure!(len <= 200, "loadgen frames are small");
        frame[0] = 0x81;
        frame[1] = 0x80 | len as u8;
        if len > 125 {
            bail!("frame too long");
        }
        // frame[2..6] is the zero masking key.
        frame[6..6 + len].copy_from_slice(payload);
        self.tcp.write_all(&frame[..6 + len]).await?;
        Ok(())
    }

    /// Reads one frame from the server and returns its payload range in `buf`.
    async fn recv(&mut self) -> Result<(usize, usize)> {
        loop {
            let avail = self.end - self.start;
            if avail >= 2 {
                let b = &self.buf[self.start..self.end];
                let (hdr, len) = match b[1] & 0x7f {
                    126 if avail >= 4 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
                    127 => bail!("64-bit frame"),
                    126 => (usize::MAX, 0),
                    n => (2, n as usize),
                };
                if hdr != usize::MAX && avail >= hdr + len {
                    let opcode = b[0] & 0x0f;
                    let range = (self.start + hdr, self.start + hdr + len);
                    self.start += hdr + len;
                    match opcode {
                        0x1 | 0x2 => return Ok(range),
                        0x8 => bail!("server closed the socket"),
                        _ => continue, // ping/pong
                    }
                }
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = self.tcp.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                bail!("server closed the connection");
            }
            self.end += n;
        }
    }
}

struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    messages: AtomicU64,
    rtts: Mutex<Vec<u32>>,
}

async fn open_room(args: &Args, run: u32, i: usize) -> Result<(Client, Client)> {
    // Fresh names per run: a previous run's clients may still be in their register grace.
    let room = format!("load{run:08x}-{i}");
    let ta = args.target[i % args.target.len()];
    let tb = args.target[(i + 1) % args.target.len()];
    let mut a = Client::connect(ta).await?;
    let mut b = Client::connect(tb).await?;
    a.send(format!(r#"{{"cmd":"register","roomid":"{room}","clientid":"a"}}"#).as_bytes()).await?;
    b.send(format!(r#"{{"cmd":"register","roomid":"{room}","clientid":"b"}}"#).as_bytes()).await?;
    // Prove both registrations: a message each way.
    a.send(br#"{"cmd":"send","msg":"hi"}"#).await?;
    b.recv().await?;
    b.send(br#"{"cmd":"send","msg":"hi"}"#).await?;
    a.recv().await?;
    Ok((a, b))
}

async fn drive(mut a: Client, mut b: Client, shared: Arc<Shared>) -> Result<()> {
    let mut local = Vec::with_capacity(1024);
    let ping = br#"{"cmd":"send","msg":"{\"type\":\"candidate\",\"label\":0}"}"#;
    while !shared.stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        a.send(ping).await?;
        b.recv().await?;
        b.send(ping).await?;
        a.recv().await?;
        if shared.measuring.load(Ordering::Relaxed) {
            local.push(t0.elapsed().as_micros() as u32);
            shared.messages.fetch_add(2, Ordering::Relaxed);
            if local.len() == local.capacity() {
                shared.rtts.lock().unwrap().extend(local.drain(..));
            }
        }
    }
    shared.rtts.lock().unwrap().extend(local);
    Ok(())
}

/// (utime + stime in seconds, RSS in KiB) of a process.
fn proc_usage(pid: &str) -> Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = (f[11].parse::<f64>()? + f[12].parse::<f64>()?) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((cpu, rss))
}

fn servers_usage(pids: &[u32]) -> (f64, u64) {
    pids.iter().filter_map(|p| proc_usage(&p.to_string()).ok()).fold((0.0, 0), |(c, r), (c2, r2)| (c + c2, r + r2))
}

async fn run(args: Args) -> Result<()> {
    let (_, rss_empty) = servers_usage(&args.server_pid);
    let setup = Instant::now();
    let run: u32 = rand::random();
    let mut pairs = Vec::with_capacity(args.rooms);
    // Open rooms a few hundred at a time so the accept queue is not flooded.
    for chunk in (0..args.rooms).collect::<Vec<_>>().chunks(200) {
        let futs: Vec<_> = chunk
            .iter()
            .map(|&i| tokio::time::timeout(Duration::from_secs(20), open_room(&args, run, i)))
            .collect();
        for (r, i) in futures_util::future::join_all(futs).await.into_iter().zip(chunk) {
            pairs.push(r.with_context(|| format!("room {i}: no answer within 20 s"))??);
        }
    }
    let setup_secs = setup.elapsed().as_secs_f64();
    let sessions = args.rooms * 2;

    if args.idle {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (_, rss) = servers_usage(&args.server_pid);
        let per = (rss.saturating_sub(rss_empty)) as f64 / sessions as f64;
        if args.kv {
            println!("sessions={sessions} rss_before_kib={rss_empty} rss_after_kib={rss} kib_per_session={per:.2}");
        } else {
            println!("| idle sessions | server RSS before | after | per session |");
            println!("| ---: | ---: | ---: | ---: |");
            println!("| {sessions} | {:.1} MiB | {:.1} MiB | {per:.2} KiB |", rss_empty as f64 / 1024.0, rss as f64 / 1024.0);
        }
        return Ok(());
    }

    let shared = Arc::new(Shared {
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        messages: AtomicU64::new(0),
        rtts: Mutex::new(Vec::new()),
    });
    let mut tasks = Vec::new();
    for (a, b) in pairs {
        tasks.push(tokio::spawn(drive(a, b, shared.clone())));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let (cpu0, _) = servers_usage(&args.server_pid);
    let (gen0, _) = proc_usage("self")?;
    let t0 = Instant::now();
    shared.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let (cpu1, rss) = servers_usage(&args.server_pid);
    let (gen1, _) = proc_usage("self")?;
    shared.stop.store(true, Ordering::Relaxed);
    let mut failures = 0;
    for t in tasks {
        if !matches!(tokio::time::timeout(Duration::from_secs(5), t).await, Ok(Ok(Ok(())))) {
            failures += 1;
        }
    }

    let messages = shared.messages.load(Ordering::Relaxed);
    let mut rtts = std::mem::take(&mut *shared.rtts.lock().unwrap());
    rtts.sort_unstable();
    let pct = |p: f64| rtts.get(((rtts.len() as f64 * p) as usize).min(rtts.len().saturating_sub(1))).copied().unwrap_or(0) as f64 / 1000.0;
    let rate = messages as f64 / elapsed;
    let server_cpu = cpu1 - cpu0;
    let us_per_msg = if messages > 0 { server_cpu * 1e6 / messages as f64 } else { 0.0 };
    let gen_cpu = gen1 - gen0;
    let rss_per = rss.saturating_sub(rss_empty) as f64 / sessions as f64;
    if args.kv {
        println!(
            "rooms={} msgs_per_s={rate:.0} rtt_p50_ms={:.3} rtt_p99_ms={:.3} server_cpu_s={server_cpu:.2} server_us_per_msg={us_per_msg:.2} server_cpu_cores={:.2} gen_cpu_cores={:.2} server_rss_mib={:.1} rss_kib_per_session={rss_per:.2} failures={failures} setup_s={setup_secs:.1}",
            args.rooms,
            pct(0.50),
            pct(0.99),
            server_cpu / elapsed,
            gen_cpu / elapsed,
            rss as f64 / 1024.0
        );
    } else {
        println!("| rooms | msgs/s | RTT p50 | RTT p99 | server CPU/msg | server cores | generator cores | server RSS | RSS/session |");
        println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        println!(
            "| {} | {rate:.0} | {:.2} ms | {:.2} ms | {us_per_msg:.2} µs | {:.2} | {:.2} | {:.1} MiB | {rss_per:.1} KiB |",
            args.rooms,
            pct(0.50),
            pct(0.99),
            server_cpu / elapsed,
            gen_cpu / elapsed,
            rss as f64 / 1024.0
        );
    }
    if failures > 0 {
        bail!("{failures} rooms failed during the run");
    }
    Ok(())
}

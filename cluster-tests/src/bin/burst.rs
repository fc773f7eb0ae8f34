//! Burst benchmark: a client sends 10 Collider frames back-to-back (an offer and its candidates)
//! and its peer's socket times their arrival. Prints the spread between the first and the last
//! frame (median and p99 over the rounds), with the two clients on one node or on two.
//! Target: all 10 within 1 ms of the first.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use cluster_tests::cluster::{Cluster, ClusterOptions};
use cluster_tests::fresh_room;
use cluster_tests::lean::{push_client_frame, Frame, WsConn};
use cluster_tests::{NodeProcess, NodeSpec};

#[derive(Parser)]
struct Args {
    /// Start the nodes: `single` (one node) or `three` (127.0.0.1-3: a row on one node and a
    /// row across two), instead of --to/--from.
    #[arg(long)]
    spawn: Option<String>,
    /// Node of the receiving client (`http://ip:port`).
    #[arg(long)]
    to: Option<String>,
    /// Node of the sending client; the receiver's node if not given.
    #[arg(long)]
    from: Option<String>,
    /// Frames per burst.
    #[arg(long, default_value_t = 10)]
    frames: usize,
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// Row label.
    #[arg(long, default_value = "burst")]
    label: String,
}

async fn recv_data(ws: &mut WsConn, within: Duration) -> Result<String> {
    loop {
        match tokio::time::timeout(within, ws.recv()).await.context("no frame in time")?? {
            Frame::Data(d) => return Ok(String::from_utf8_lossy(&d).into_owned()),
            Frame::Ping(p) => ws.send_pong(&p).await?,
            Frame::Close(c) => bail!("socket closed ({c:?})"),
        }
    }
}

/// One burst: both register, a probe proves the path, then `frames` frames back-to-back.
async fn round(to: &str, from: &str, frames: usize) -> Result<f64> {
    let room = fresh_room("burst");
    let mut a = WsConn::connect(to).await?;
    let mut b = WsConn::connect(from).await?;
    a.send_text(format!(r#"{{"cmd":"register","roomid":"{room}","clientid":"a"}}"#).as_bytes()).await?;
    b.send_text(format!(r#"{{"cmd":"register","roomid":"{room}","clientid":"b"}}"#).as_bytes()).await?;
    // Until the probe arrives, both registrations may not be in place everywhere.
    b.send_text(br#"{"cmd":"send","msg":"probe"}"#).await?;
    let probe = recv_data(&mut a, Duration::from_secs(5)).await?;
    if !probe.contains("probe") {
        bail!("expected the probe, got {probe}");
    }
    // One write of all frames: they leave back-to-back, as a browser's burst does.
    let mut all = Vec::new();
    for i in 0..frames {
        let body = format!(r#"{{"cmd":"send","msg":"{{\"type\":\"candidate\",\"n\":{i},\"candidate\":\"candidate:842163049 1 udp 1677729535 198.51.100.7 5000{i} typ srflx raddr 0.0.0.0 rport 0 generation 0\"}}"}}"#);
        push_client_frame(&mut all, 0x1, body.as_bytes());
    }
    b.send_raw(&all).await?;
    let mut first = None;
    for i in 0..frames {
        let m = recv_data(&mut a, Duration::from_secs(5)).await?;
        if !m.contains(&format!("\\\"n\\\":{i},")) {
            bail!("frame {i} out of order: {m}");
        }
        first.get_or_insert_with(Instant::now);
    }
    let spread = first.map_or(0.0, |f| f.elapsed().as_secs_f64() * 1000.0);
    let _ = a.send_close().await;
    let _ = b.send_close().await;
    Ok(spread)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    cluster_tests::init_crypto();
    let args = Args::parse();
    println!("| clients | frames | rounds | spread p50 | spread p99 | spread max | rounds within 1 ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    match args.spawn.as_deref() {
        Some("single") => {
            let n = NodeProcess::start(NodeSpec::single()).await?;
            row("one node", &n.base(), &n.base(), &args).await?;
        }
        Some("three") => {
            let c = Cluster::start(ClusterOptions::default()).await?;
            c.wait_leader(Duration::from_secs(10)).await?;
            row("three nodes, same node", &c.base(2), &c.base(2), &args).await?;
            row("three nodes, across two", &c.base(2), &c.base(3), &args).await?;
        }
        Some(other) => bail!("--spawn takes single or three, not {other:?}"),
        None => {
            let to = args.to.clone().context("give --spawn or --to")?;
            let from = args.from.clone().unwrap_or_else(|| to.clone());
            row(&args.label, &to, &from, &args).await?;
        }
    }
    Ok(())
}

async fn row(label: &str, to: &str, from: &str, args: &Args) -> Result<()> {
    let mut spreads = Vec::new();
    for _ in 0..args.rounds {
        spreads.push(round(to, from, args.frames).await?);
    }
    spreads.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| spreads[((spreads.len() as f64 * p) as usize).min(spreads.len() - 1)];
    let within = spreads.iter().filter(|s| **s <= 1.0).count();
    println!(
        "| {label} | {} | {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.0} % |",
        args.frames,
        spreads.len(),
        at(0.5),
        at(0.99),
        spreads[spreads.len() - 1],
        100.0 * within as f64 / spreads.len() as f64
    );
    Ok(())
}

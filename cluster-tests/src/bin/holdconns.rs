//! Opens many idle TCP connections from one address and holds them: an attacker for the tests
//! of per-address connection limits, in a process of its own so that its descriptors do not
//! count against the test's.
//!
//! Prints `opened OK FAILED` once connected. Then each `check` line on stdin prints `closed N
//! ANSWERED M`: how many of the held connections the server has closed without a word, and how
//! many it answered (an HTTP server answers an idle connection 408 at its deadline); end of stdin
//! lets them all go.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use futures_util::future::join_all;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

#[derive(Parser)]
struct Args {
    /// Local address to connect from.
    #[arg(long)]
    from: IpAddr,
    /// Server to connect to.
    #[arg(long)]
    to: SocketAddr,
    /// Connections to open.
    #[arg(long)]
    count: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut held = Vec::with_capacity(args.count);
    let mut failed = 0;
    let mut left = args.count;
    while left > 0 {
        let batch = left.min(500);
        left -= batch;
        for r in join_all((0..batch).map(|_| cluster_tests::connect_from(args.from, args.to))).await {
            match r {
                Ok(s) => held.push(s),
                Err(_) => failed += 1,
            }
        }
    }
    println!("opened {} {failed}", held.len());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim() != "check" {
            continue;
        }
        let seen = join_all(held.iter_mut().map(|s| async move {
            let mut b = [0u8; 1];
            match tokio::time::timeout(Duration::from_secs(3), s.read(&mut b)).await {
                Ok(Ok(0) | Err(_)) => (1, 0),
                Ok(Ok(_)) => (0, 1),
                Err(_) => (0, 0),
            }
        }))
        .await;
        let closed: usize = seen.iter().map(|s| s.0).sum();
        let answered: usize = seen.iter().map(|s| s.1).sum();
        println!("closed {closed} {answered}");
    }
    Ok(())
}

//! A rolling upgrade: every node of a three-node cluster is stopped with SIGTERM (drained) and
//! started again, one after the other, while a call goes on with its two people on two nodes.
//! Each side sends numbered messages through Collider's HTTP POST (answered, so it knows what the
//! server took) to any node that answers; each side's socket reconnects to a live node when its
//! node drains. Every message the server took arrives once, in order; none is lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_tests::chaos::wait_live;
use cluster_tests::cluster::{Cluster, ClusterOptions};
use cluster_tests::ws::{register_retrying, WsEvent};
use cluster_tests::{fresh_room, Http};

/// What one side sent: (number, whether the server answered 200, the node asked, when).
type Sent = Arc<Mutex<Vec<(u32, bool, usize, Instant)>>>;
/// What one side received: (number, when).
type Received = Arc<Mutex<Vec<(u32, Instant)>>>;

/// Posts `{tag}-{n}` from `client` every 20 ms, to `nodes[home]` or, while it does not answer,
/// the next node.
fn sender(nodes: Vec<Http>, home: usize, room: String, client: String, tag: &'static str, stop: Arc<AtomicBool>, sent: Sent) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut at = home;
        let mut n = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let ok = matches!(nodes[at].collider_post(&room, &client, &format!("{tag}-{n}")).await, Ok(r) if r.status == 200);
            sent.lock().unwrap().push((n, ok, at + 1, Instant::now()));
            n += 1;
            if !ok {
                at = (at + 1) % nodes.len();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Keeps `client`'s socket registered, on `urls[home]` first and on the next live node whenever
/// its node goes away, and records the numbers of `{tag}-{n}` messages.
fn receiver(urls: Vec<String>, home: usize, room: String, client: String, tag: &'static str, stop: Arc<AtomicBool>, got: Received) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let prefix = format!("{tag}-");
        let record = |m: &str| {
            if let Some(n) = m.strip_prefix(&prefix).and_then(|n| n.parse().ok()) {
                got.lock().unwrap().push((n, Instant::now()));
            }
        };
        let mut at = home;
        let mut reconnects = 0;
        'outer: while !stop.load(Ordering::Relaxed) {
            let (mut ws, first) = loop {
                match register_retrying(&urls[at], &room, &client, Duration::from_secs(3)).await {
                    Ok(r) => break r,
                    Err(_) if stop.load(Ordering::Relaxed) => break 'outer,
                    Err(_) => at = (at + 1) % urls.len(),
                }
            };
            if let Some(m) = first {
                record(&m);
            }
            loop {
                match ws.recv(Duration::from_millis(500)).await {
                    Some(WsEvent::Frame { msg, .. }) => record(&msg),
                    Some(WsEvent::Close(_)) | Some(WsEvent::Eof) => break,
                    None if stop.load(Ordering::Relaxed) => break 'outer,
                    None => {}
                }
            }
            reconnects += 1;
            at = (at + 1) % urls.len();
        }
        reconnects
    })
}

/// Every message the server answered arrived, once, in order (unanswered ones at most once).
fn check(dir: &str, sent: &[(u32, bool, usize, Instant)], got: &[(u32, Instant)], t0: Instant) -> (usize, usize) {
    let numbers: Vec<u32> = got.iter().map(|(n, _)| *n).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{dir}: out of order or twice: {numbers:?}");
    let lost: Vec<String> = sent
        .iter()
        .filter(|(n, ok, _, _)| *ok && !numbers.contains(n))
        .map(|(n, _, node, at)| format!("{n} (answered by node {node} at {:?})", *at - t0))
        .collect();
    if !lost.is_empty() {
        let around: Vec<String> = sent.iter().map(|(n, ok, node, at)| format!("{n}:{ok}@{node}+{:?}", *at - t0)).collect();
        let got: Vec<String> = got.iter().map(|(n, at)| format!("{n}+{:?}", at.saturating_duration_since(t0))).collect();
        panic!("{dir}: answered but never delivered: {lost:?}\nsent {around:?}\nreceived {got:?}");
    }
    (sent.iter().filter(|(_, ok, _, _)| *ok).count(), numbers.len())
}

/// The longest wait between two arrivals within `[from, to]`.
fn longest_gap(got: &[(u32, Instant)], from: Instant, to: Instant) -> Duration {
    let times: Vec<Instant> = got.iter().map(|(_, t)| *t).filter(|t| *t >= from && *t <= to).collect();
    let mut gap = times.first().map_or(to - from, |t| *t - from);
    for w in times.windows(2) {
        gap = gap.max(w[1] - w[0]);
    }
    gap.max(times.last().map_or(Duration::ZERO, |t| to - *t))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t56_rolling_upgrade_loses_no_message() {
    let mut c = Cluster::start(ClusterOptions {
        sets: vec!["cluster.node_down_after_ms=600".into(), "cluster.drain_timeout_secs=4".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let room = fresh_room("upgrade");
    let (a, _, _) = c.http(1).join_ok(&room).await.unwrap();
    let (b, _, _) = c.http(2).join_ok(&room).await.unwrap();
    let https: Vec<Http> = (1..=3).map(|n| c.http(n)).collect();
    let urls: Vec<String> = (1..=3).map(|n| c.ws_url(n)).collect();
    let stop_send = Arc::new(AtomicBool::new(false));
    let stop_recv = Arc::new(AtomicBool::new(false));
    let (a_sent, b_sent): (Sent, Sent) = Default::default();
    let (a_got, b_got): (Received, Received) = Default::default();
    // A on node 1, B on node 2; each receives the other's numbered messages.
    let ra = receiver(urls.clone(), 0, room.clone(), a.clone(), "b", stop_recv.clone(), a_got.clone());
    let rb = receiver(urls.clone(), 1, room.clone(), b.clone(), "a", stop_recv.clone(), b_got.clone());
    // Both registered before the first message (a queue for a peer that never came would be
    // delivered too, but the gaps below should measure the upgrade, not the start).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sa = sender(https.clone(), 0, room.clone(), a.clone(), "a", stop_send.clone(), a_sent.clone());
    let sb = sender(https.clone(), 1, room.clone(), b.clone(), "b", stop_send.clone(), b_sent.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let t0 = Instant::now();
    let mut steps = Vec::new();
    for n in 1..=3 {
        let from = Instant::now();
        c.node(n).sigterm();
        let exit = c.node(n).wait_exit(Duration::from_secs(20)).await;
        assert!(exit.is_some_and(|s| s.success()), "node {n} drained and exited 0: {exit:?}");
        let drained = from.elapsed();
        c.restart(n).await.unwrap();
        let live = wait_live(&c, n, Duration::from_secs(30)).await.unwrap();
        // Calls go on for a moment on the upgraded cluster before the next node.
        tokio::time::sleep(Duration::from_secs(1)).await;
        steps.push((n, drained, live, from, Instant::now()));
    }
    stop_send.store(true, Ordering::Relaxed);
    sa.await.unwrap();
    sb.await.unwrap();
    // What the server took is delivered: wait until both sides have every answered message.
    let deadline = Instant::now() + Duration::from_secs(10);
    let delivered = |sent: &Sent, got: &Received| {
        let got: Vec<u32> = got.lock().unwrap().iter().map(|(n, _)| *n).collect();
        sent.lock().unwrap().iter().filter(|(_, ok, _, _)| *ok).all(|(n, _, _, _)| got.contains(n))
    };
    while !(delivered(&a_sent, &b_got) && delivered(&b_sent, &a_got)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_recv.store(true, Ordering::Relaxed);
    let (reconnects_a, reconnects_b) = (ra.await.unwrap(), rb.await.unwrap());

    let (a_sent, b_sent, a_got, b_got) = (a_sent.lock().unwrap(), b_sent.lock().unwrap(), a_got.lock().unwrap(), b_got.lock().unwrap());
    for (n, _, _, from, to) in &steps {
        println!("node {n} upgraded from {:?} to {:?}", *from - t0, *to - t0);
    }
    let (a_acked, b_recv) = check("A→B", &a_sent, &b_got, t0);
    let (b_acked, a_recv) = check("B→A", &b_sent, &a_got, t0);
    println!("| step | drain | restart to live everywhere | longest gap A→B | longest gap B→A |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (n, drained, live, from, to) in &steps {
        println!(
            "| node {n} | {drained:.2?} | {live:.2?} | {:.0?} | {:.0?} |",
            longest_gap(&b_got, *from, *to),
            longest_gap(&a_got, *from, *to)
        );
    }
    println!(
        "A→B: {} sent, {a_acked} answered, {b_recv} delivered, 0 lost; B→A: {} sent, {b_acked} answered, {a_recv} delivered, 0 lost; \
         socket reconnects A {reconnects_a}, B {reconnects_b}",
        a_sent.len(),
        b_sent.len()
    );
    assert!(a_acked > 100 && b_acked > 100, "the call ran throughout");
    assert!(reconnects_a >= 1 && reconnects_b >= 1, "both sockets moved when their node drained");
}

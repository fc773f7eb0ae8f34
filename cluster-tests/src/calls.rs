//! Whole AppRTC calls, as a load and as an invariant checker: A joins, registers and stores K
//! messages with `/message`; B joins (the K come back in `messages`), registers and at once sends
//! K over its socket; A, once B is there, posts K more; both hang up the way the web client does
//! (`bye` over the socket, Collider `DELETE`, `/leave`). Every message must arrive exactly once, in
//! order, on the right socket; the room must be free afterwards ([`RoomAudit`]).
//!
//! A call's outcome is [`CallOk`] (with its set-up latency: A's join → A has B's first message)
//! or a [`CallError`] that says which rule broke or which step the server refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::lean::{Frame, HttpConn, Response, WsConn};

/// One node as clients see it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://ip:port`.
    pub base: String,
}

impl Target {
    /// The node at `base`.
    pub fn new(base: &str) -> Self {
        Target { base: base.trim_end_matches('/').to_owned() }
    }
}

/// Where the two people of a call sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Both on one node (chosen at random).
    Same,
    /// On two different nodes.
    Cross,
    /// Each on a node chosen at random.
    Random,
}

impl std::str::FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "same" => Ok(Placement::Same),
            "cross" => Ok(Placement::Cross),
            "random" => Ok(Placement::Random),
            _ => Err(format!("placement must be same, cross or random, not {s:?}")),
        }
    }
}

/// How calls are made.
#[derive(Debug, Clone)]
pub struct CallSpec {
    /// Messages each way per step (stored by A, sent by B over its socket, posted by A).
    pub k: usize,
    /// How long any one step may take before the call counts as hung.
    pub step_timeout: Duration,
    /// Where the two people sit.
    pub placement: Placement,
    /// Room id prefix (the audit looks for rooms with it).
    pub prefix: String,
}

impl Default for CallSpec {
    fn default() -> Self {
        CallSpec { k: 10, step_timeout: Duration::from_secs(10), placement: Placement::Cross, prefix: "call".into() }
    }
}

/// A call that completed with every rule kept.
#[derive(Debug, Clone)]
pub struct CallOk {
    /// A's join → A has B's first message.
    pub setup: Duration,
    /// The whole call, hang-up included.
    pub total: Duration,
    /// Messages checked (stored, sent over sockets, posted, byes).
    pub messages: usize,
}

/// Why a call did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// A rule broke: a message duplicated, out of order, on the wrong socket, or a stored message
    /// whose `/message` answered SUCCESS missing; an error frame Collider would not send.
    Violation(String),
    /// A message that should have come did not within the step timeout, or a socket broke.
    Lost(String),
    /// The server answered a step with a clear refusal (`ERROR`, `FULL`, HTTP 5xx, connection
    /// refused), or did not answer it in time.
    Refused(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Violation(s) => write!(f, "violation: {s}"),
            CallError::Lost(s) => write!(f, "lost: {s}"),
            CallError::Refused(s) => write!(f, "refused: {s}"),
        }
    }
}

/// What one call did, for the report and for a fault-aware checker.
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// The room.
    pub room: String,
    /// A's and B's node (0-based index into the targets).
    pub nodes: (usize, usize),
    /// When it started and ended.
    pub started: Instant,
    pub ended: Instant,
    /// The outcome.
    pub result: Result<CallOk, CallError>,
}

/// What came in on a socket.
#[derive(Debug)]
enum Incoming {
    Msg(String),
    Error(String),
    Closed(String),
}

/// What a call asks its socket's task to write.
enum Out {
    Text(String),
    Close,
}

/// A Collider socket driven by one task that owns it (reads, writes, answers pings), so a call
/// can wait on what comes in with a deadline while it does other things, and a write never
/// waits on a read.
struct Socket {
    tx: mpsc::UnboundedSender<Out>,
    rx: mpsc::UnboundedReceiver<Incoming>,
}

impl Socket {
    async fn open(base: &str, within: Duration) -> Result<Socket, CallError> {
        let mut ws = tokio::time::timeout(within, WsConn::connect(base))
            .await
            .map_err(|_| CallError::Refused(format!("WebSocket connect to {base} timed out")))?
            .map_err(|e| CallError::Refused(format!("WebSocket connect to {base}: {e:#}")))?;
        let (in_tx, rx) = mpsc::unbounded_channel();
        let (tx, mut out_rx) = mpsc::unbounded_channel::<Out>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    out = out_rx.recv() => {
                        let written = match out {
                            Some(Out::Text(t)) => ws.send_text(t.as_bytes()).await,
                            Some(Out::Close) => ws.send_close().await,
                            // The call dropped the socket.
                            None => return,
                        };
                        if let Err(e) = written {
                            let _ = in_tx.send(Incoming::Closed(format!("socket write: {e}")));
                            return;
                        }
                    }
                    item = ws.recv() => {
                        let ev = match item {
                            Ok(Frame::Data(d)) => frame(&String::from_utf8_lossy(&d)),
                            Ok(Frame::Close(code)) => Incoming::Closed(format!("close frame {code:?}")),
                            Ok(Frame::Ping(p)) => {
                                if ws.send_pong(&p).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                            Err(e) => Incoming::Closed(e.to_string()),
                        };
                        let end = matches!(ev, Incoming::Closed(_));
                        if in_tx.send(ev).is_err() || end {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Socket { tx, rx })
    }

    async fn send(&mut self, text: String) -> Result<(), CallError> {
        self.tx.send(Out::Text(text)).map_err(|_| CallError::Lost("socket already closed".into()))
    }

    async fn register(&mut self, room: &str, client: &str) -> Result<(), CallError> {
        self.send(json!({"cmd": "register", "roomid": room, "clientid": client}).to_string()).await
    }

    async fn send_msg(&mut self, msg: &str) -> Result<(), CallError> {
        self.send(json!({"cmd": "send", "msg": msg}).to_string()).await
    }

    /// Waits for the next incoming item.
    async fn next(&mut self, within: Duration, what: &str) -> Result<Incoming, CallError> {
        match tokio::time::timeout(within, self.rx.recv()).await {
            Ok(Some(i)) => Ok(i),
            Ok(None) => Err(CallError::Lost(format!("{what}: socket reader ended"))),
            Err(_) => Err(CallError::Lost(format!("{what}: nothing arrived within {within:?}"))),
        }
    }

    /// Receives exactly `expected`, in order; anything else is a violation.
    async fn expect_seq(&mut self, expected: &[String], within: Duration, what: &str) -> Result<Instant, CallError> {
        let mut first = None;
        for (i, want) in expected.iter().enumerate() {
            match self.next(within, &format!("{what}: message {i} of {}", expected.len())).await? {
                Incoming::Msg(m) if &m == want => {
                    first.get_or_insert_with(Instant::now);
                }
                // The server's own bye, before the peer hung up: the peer was evicted because
                // its node was lost past the grace.
                Incoming::Msg(m) if m == BYE => {
                    return Err(CallError::Lost(format!("{what}: the peer was evicted (bye) at position {i}")));
                }
                Incoming::Msg(m) => {
                    let pos = expected.iter().position(|e| *e == m);
                    return Err(CallError::Violation(match pos {
                        Some(p) if p < i => format!("{what}: message {p} arrived again at position {i}: {m}"),
                        Some(p) => format!("{what}: message {p} arrived at position {i}, before message {i} ({want})"),
                        None => format!("{what}: unexpected message at position {i}: {m} (wanted {want})"),
                    }));
                }
                // Collider's own refusals (a registration the server could not apply): a clear
                // error, not a broken rule.
                Incoming::Error(e) => return Err(CallError::Refused(format!("{what}: error frame {e:?} at position {i}"))),
                Incoming::Closed(why) => return Err(CallError::Lost(format!("{what}: socket closed at message {i}: {why}"))),
            }
        }
        Ok(first.unwrap_or_else(Instant::now))
    }

    /// An error frame or the end of the socket already received, if any (what else was
    /// received is dropped: the call has failed anyway).
    fn failure(&mut self) -> Option<String> {
        while let Ok(i) = self.rx.try_recv() {
            match i {
                Incoming::Msg(_) => {}
                Incoming::Error(e) => return Some(format!("error frame {e:?}")),
                Incoming::Closed(why) => return Some(format!("closed: {why}")),
            }
        }
        None
    }

    /// Closes the socket as a client should: a close frame, then the server's, within `within`
    /// (then every frame the client sent before has been read by the server).
    async fn close(mut self, within: Duration) {
        if self.tx.send(Out::Close).is_err() {
            return;
        }
        let _ = tokio::time::timeout(within, async {
            while let Some(i) = self.rx.recv().await {
                if matches!(i, Incoming::Closed(_)) {
                    return;
                }
            }
        })
        .await;
    }
}

fn frame(raw: &str) -> Incoming {
    let v: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
    let error = v["error"].as_str().unwrap_or_default();
    if !error.is_empty() {
        return Incoming::Error(error.to_owned());
    }
    Incoming::Msg(v["msg"].as_str().unwrap_or_default().to_owned())
}

/// The body of message `n` of `step` from `from` in call `room`, shaped like AppRTC's.
fn body(room: &str, from: &str, step: &str, n: usize) -> String {
    let kind = match (step, n) {
        ("store", 0) => "offer",
        ("socket", 0) => "answer",
        _ => "candidate",
    };
    json!({"type": kind, "call": room, "from": from, "step": step, "n": n}).to_string()
}

const BYE: &str = "{\"type\":\"bye\"}";

/// HTTP connections to every node, kept by one worker across its calls (keep-alive).
pub struct Clients {
    targets: Vec<Target>,
    http: Vec<HttpConn>,
}

impl Clients {
    /// Clients for `targets` (`http://ip:port` bases).
    pub fn new(targets: &[Target]) -> Self {
        let http = targets.iter().map(|t| HttpConn::new(&t.base).expect("an http://ip:port base")).collect();
        Clients { targets: targets.to_vec(), http }
    }

    /// `method path` with `body` on node `n`, within `within`; `what` names the step.
    async fn request(&mut self, n: usize, method: &str, path: &str, body: &str, within: Duration, what: &str) -> Result<Response, CallError> {
        let base = self.targets[n].base.clone();
        tokio::time::timeout(within, self.http[n].request(method, path, body.as_bytes()))
            .await
            .map_err(|_| CallError::Refused(format!("{what} at {base} not answered within {within:?}")))?
            .map_err(|e| CallError::Refused(format!("{what} at {base}: {e:#}")))
    }

    /// The nodes.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }
}

fn pick(rng: &mut StdRng, n: usize, placement: Placement, allowed: &[usize]) -> (usize, usize) {
    let any = |rng: &mut StdRng| allowed[rng.random_range(0..allowed.len())];
    match placement {
        Placement::Same => {
            let a = any(rng);
            (a, a)
        }
        Placement::Cross if allowed.len() >= 2 => {
            let a = any(rng);
            loop {
                let b = any(rng);
                if b != a {
                    return (a, b);
                }
            }
        }
        Placement::Cross => {
            let _ = n;
            let a = any(rng);
            (a, a)
        }
        Placement::Random => (any(rng), any(rng)),
    }
}

async fn join(clients: &mut Clients, n: usize, room: &str, within: Duration, who: &str) -> Result<(String, bool, Vec<String>), CallError> {
    let what = format!("join of {who}");
    let r = clients.request(n, "POST", &format!("/join/{room}"), "", within, &what).await?;
    let j: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    if r.status != 200 || j["result"] != "SUCCESS" {
        return Err(CallError::Refused(format!("{what} at {}: HTTP {} {}", clients.targets[n].base, r.status, j["result"])));
    }
    let p = &j["params"];
    let messages = p["messages"]
        .as_array()
        .map(|a| a.iter().map(|m| m.as_str().unwrap_or_default().to_owned()).collect())
        .unwrap_or_default();
    let client = p["client_id"].as_str().unwrap_or_default().to_owned();
    Ok((client, p["is_initiator"] == "true", messages))
}

async fn post_message(clients: &mut Clients, n: usize, room: &str, client: &str, msg: &str, within: Duration) -> Result<(), CallError> {
    let r = clients.request(n, "POST", &format!("/message/{room}/{client}"), msg, within, "/message").await?;
    let j: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    if r.status != 200 || j["result"] != "SUCCESS" {
        return Err(CallError::Refused(format!("/message at {}: HTTP {} {}", clients.targets[n].base, r.status, r.text())));
    }
    Ok(())
}

/// A message did not come: if the sender's own socket was refused meanwhile (an error frame to
/// its registration), the call failed with that clear error; otherwise the message was lost.
fn refused_elsewhere(sender: &mut Socket, who: &str, lost: String) -> CallError {
    match sender.failure() {
        Some(why) => CallError::Refused(format!("{who}'s socket: {why} ({lost})")),
        None => CallError::Lost(lost),
    }
}

/// Hangs up as the web client does: `bye` over the socket, the socket closed, Collider `DELETE`,
/// `/leave`. The `DELETE` waits for the close: sent at once on its own connection, it could
/// overtake the bye still on the way in, and the bye would go with its sender (as with
/// Collider).
async fn hang_up(clients: &mut Clients, n: usize, mut ws: Socket, room: &str, client: &str, within: Duration) -> Result<(), CallError> {
    ws.send_msg(BYE).await?;
    ws.close(within).await;
    let del = clients.request(n, "DELETE", &format!("/{room}/{client}"), "", within, "DELETE").await?;
    if del.status != 200 {
        return Err(CallError::Refused(format!("DELETE at {}: HTTP {} {}", clients.targets[n].base, del.status, del.text().trim())));
    }
    clients.request(n, "POST", &format!("/leave/{room}/{client}"), "", within, "/leave").await?;
    Ok(())
}

/// One whole call between nodes `na` and `nb` (indexes into `clients`' targets). A call that
/// fails leaves the room as a client that gives up would (both leave, best effort), so rooms of
/// failed calls do not linger for the room's idle time.
pub async fn call(clients: &mut Clients, spec: &CallSpec, room: &str, na: usize, nb: usize) -> Result<CallOk, CallError> {
    let mut joined = Vec::new();
    let result = call_steps(clients, spec, room, na, nb, &mut joined).await;
    if result.is_err() {
        for (node, client) in joined {
            let quick = Duration::from_secs(2);
            let _ = clients.request(node, "DELETE", &format!("/{room}/{client}"), "", quick, "DELETE").await;
            let _ = clients.request(node, "POST", &format!("/leave/{room}/{client}"), "", quick, "/leave").await;
        }
    }
    result
}

async fn call_steps(
    clients: &mut Clients,
    spec: &CallSpec,
    room: &str,
    na: usize,
    nb: usize,
    joined: &mut Vec<(usize, String)>,
) -> Result<CallOk, CallError> {
    let t = spec.step_timeout;
    let (wa_url, wb_url) = (clients.targets[na].base.clone(), clients.targets[nb].base.clone());
    let started = Instant::now();
    let mut checked = 0;
    let trace = std::env::var_os("CALLGEN_TRACE").is_some();
    let mark = |what: &str| {
        if trace {
            eprintln!("{room} {:>8.1} ms {what}", started.elapsed().as_secs_f64() * 1000.0);
        }
    };

    let (a, a_init, a_msgs) = join(clients, na, room, t, "A").await?;
    joined.push((na, a.clone()));
    if !a_init || !a_msgs.is_empty() {
        return Err(CallError::Violation(format!("first joiner: initiator={a_init}, messages={a_msgs:?}")));
    }
    let mut wa = Socket::open(&wa_url, t).await?;
    mark("A joined");
    wa.register(room, &a).await?;
    mark("A registered");
    let stored: Vec<String> = (0..spec.k).map(|n| body(room, "a", "store", n)).collect();
    for m in &stored {
        post_message(clients, na, room, &a, m, t).await?;
    }

    mark("A stored");
    let (b, b_init, b_msgs) = join(clients, nb, room, t, "B").await?;
    joined.push((nb, b.clone()));
    if b_init {
        return Err(CallError::Violation("second joiner is the initiator".into()));
    }
    if b_msgs != stored {
        return Err(CallError::Violation(format!("B's join returned {} messages, not the {} A stored in order: {b_msgs:?}", b_msgs.len(), stored.len())));
    }
    checked += stored.len();
    let mut wb = Socket::open(&wb_url, t).await?;
    mark("B joined");
    wb.register(room, &b).await?;
    let from_b: Vec<String> = (0..spec.k).map(|n| body(room, "b", "socket", n)).collect();
    for m in &from_b {
        wb.send_msg(m).await?;
    }
    let first = match wa.expect_seq(&from_b, t, "A receiving B's socket messages").await {
        Err(CallError::Lost(e)) => return Err(refused_elsewhere(&mut wb, "B", e)),
        other => other?,
    };
    mark("A got B's");
    let setup = first - started;
    checked += from_b.len();

    let posted: Vec<String> = (0..spec.k).map(|n| body(room, "a", "post", n)).collect();
    for m in &posted {
        post_message(clients, na, room, &a, m, t).await?;
    }
    match wb.expect_seq(&posted, t, "B receiving A's posted messages").await {
        Err(CallError::Lost(e)) => return Err(refused_elsewhere(&mut wa, "A", e)),
        other => other?,
    };
    mark("B got A's posts");
    checked += posted.len();

    hang_up(clients, nb, wb, room, &b, t).await?;
    mark("B hung up");
    wa.expect_seq(&[BYE.to_owned()], t, "A receiving B's bye").await?;
    checked += 1;
    hang_up(clients, na, wa, room, &a, t).await?;
    mark("A hung up");
    Ok(CallOk { setup, total: started.elapsed(), messages: checked })
}

/// Rooms whose calls completed, checked against what the nodes still hold: a room must be gone
/// shortly after both people left (a phantom member would refuse the next caller's socket).
#[derive(Clone, Default)]
pub struct RoomAudit {
    completed: Arc<Mutex<HashMap<String, Instant>>>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl RoomAudit {
    /// Records that `room`'s call completed now.
    pub fn completed(&self, room: &str) {
        self.completed.lock().unwrap_or_else(|p| p.into_inner()).insert(room.to_owned(), Instant::now());
    }

    /// Rooms that outlived their call.
    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Lists the rooms with `prefix` on `base` (admin API) and flags those whose call completed
    /// more than `slack` ago. Returns how many rooms were listed.
    pub async fn check(&self, base: &str, token: &str, prefix: &str, slack: Duration) -> Result<usize> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let v: Value = client
            .get(format!("{base}/admin/rooms?prefix={prefix}&limit=100000"))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let rooms = v["rooms"].as_array().cloned().unwrap_or_default();
        let completed = self.completed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for r in &rooms {
            let name = r["room"].as_str().unwrap_or_default();
            if let Some(at) = completed.get(name) {
                if at.elapsed() > slack {
                    let v = format!("room {name} still held {:?} after its call completed: {r}", at.elapsed());
                    let mut vs = self.violations.lock().unwrap_or_else(|p| p.into_inner());
                    if !vs.iter().any(|x| x.starts_with(&format!("room {name} "))) {
                        vs.push(v);
                    }
                }
            }
        }
        Ok(rooms.len())
    }
}

/// A run of calls: `concurrency` workers making calls until `calls` are done or `duration` ran out.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// How each call is made.
    pub call: CallSpec,
    /// Calls at once.
    pub concurrency: usize,
    /// Stop after this many calls (0: no limit).
    pub calls: usize,
    /// Stop after this long (zero: no limit).
    pub duration: Duration,
    /// Seed of the placement choices.
    pub seed: u64,
}

/// Which nodes a new call may use right now (a chaos run excludes killed ones).
pub type Allowed = Arc<dyn Fn() -> Vec<usize> + Send + Sync>;

/// Runs calls and returns every call's record.
pub async fn run(targets: Vec<Target>, spec: RunSpec, allowed: Allowed, audit: RoomAudit) -> Vec<CallRecord> {
    let records = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..spec.concurrency {
        let (records, next, allowed, audit, spec) = (records.clone(), next.clone(), allowed.clone(), audit.clone(), spec.clone());
        let mut clients = Clients::new(&targets);
        workers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(spec.seed.wrapping_mul(1000).wrapping_add(w as u64));
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if (spec.calls > 0 && i >= spec.calls) || (!spec.duration.is_zero() && start.elapsed() >= spec.duration) {
                    return;
                }
                let nodes = allowed();
                if nodes.is_empty() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let (na, nb) = pick(&mut rng, clients.targets.len(), spec.call.placement, &nodes);
                let room = format!("{}-{i}-{:06x}", spec.call.prefix, rng.random_range(0..0x100_0000u32));
                let started = Instant::now();
                let result = call(&mut clients, &spec.call, &room, na, nb).await;
                if result.is_ok() {
                    audit.completed(&room);
                }
                records.lock().unwrap_or_else(|p| p.into_inner()).push(CallRecord {
                    room,
                    nodes: (na, nb),
                    started,
                    ended: Instant::now(),
                    result,
                });
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let mut v = std::mem::take(&mut *records.lock().unwrap_or_else(|p| p.into_inner()));
    v.sort_by_key(|r| r.started);
    v
}

/// Figures of a run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub calls: usize,
    pub ok: usize,
    pub violations: usize,
    pub lost: usize,
    pub refused: usize,
    pub calls_per_s: f64,
    pub setup_p50_ms: f64,
    pub setup_p99_ms: f64,
    pub messages: usize,
    /// Up to ten failures, for the report.
    pub examples: Vec<String>,
}

/// The `p` quantile (0..1) of `v` (sorted in place).
pub fn quantile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

/// Sums up `records` of a run that took `elapsed`.
pub fn summarise(records: &[CallRecord], elapsed: Duration) -> Summary {
    let mut s = Summary { calls: records.len(), ..Default::default() };
    let mut setups = Vec::new();
    for r in records {
        match &r.result {
            Ok(ok) => {
                s.ok += 1;
                s.messages += ok.messages;
                setups.push(ok.setup.as_secs_f64() * 1000.0);
            }
            Err(e) => {
                match e {
                    CallError::Violation(_) => s.violations += 1,
                    CallError::Lost(_) => s.lost += 1,
                    CallError::Refused(_) => s.refused += 1,
                }
                if s.examples.len() < 10 {
                    s.examples.push(format!("{} (nodes {}→{}): {e}", r.room, r.nodes.0 + 1, r.nodes.1 + 1));
                }
            }
        }
    }
    s.calls_per_s = s.ok as f64 / elapsed.as_secs_f64().max(1e-9);
    s.setup_p50_ms = quantile(&mut setups, 0.5);
    s.setup_p99_ms = quantile(&mut setups, 0.99);
    s
}

//! Calibration for the call benchmark: the least a server can do for a whole AppRTC call on this
//! machine. One thread, no framework, state in memory: `POST /join`, `/message`, `/leave`,
//! Collider `DELETE`, and `/ws` with `register`/`send`, enough for `callgen` to run its calls
//! unchanged. No limits, no validation beyond what a call needs, no TLS, no cluster — never a
//! server, only the floor that `scripts/bench.sh calls` compares Switchboard against.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use clap::Parser;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

#[derive(Parser)]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:18095")]
    listen: String,
}

/// One room: its members, what the first stored, and each client's socket or queued messages.
#[derive(Default)]
struct Room {
    members: Vec<String>,
    stored: Vec<String>,
    sockets: HashMap<String, mpsc::UnboundedSender<Vec<u8>>>,
    queued: HashMap<String, Vec<String>>,
}

type Rooms = Rc<RefCell<HashMap<String, Room>>>;

static NEXT_CLIENT: AtomicU64 = AtomicU64::new(10_000_000);

fn main() -> Result<()> {
    let args = Args::parse();
    let rooms: Rooms = Rc::new(RefCell::new(HashMap::new()));
    cluster_tests::floor::serve_local(&args.listen, rooms, serve)
}

/// A Collider server frame carrying `msg`.
fn ws_frame(msg: &str) -> Vec<u8> {
    let body = json!({"msg": msg, "error": ""}).to_string();
    let mut out = vec![0x81];
    match body.len() {
        n if n < 126 => out.push(n as u8),
        n => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(body.as_bytes());
    out
}

/// Sends `msg` from `from` in `room`: to the other client's socket, or queued for it.
fn send(room: &mut Room, from: &str, msg: String) {
    let other = room.members.iter().chain(room.sockets.keys()).find(|c| *c != from).cloned();
    match other.as_ref().and_then(|o| room.sockets.get(o)) {
        Some(tx) => {
            let _ = tx.send(ws_frame(&msg));
        }
        None => room.queued.entry(other.unwrap_or_default()).or_default().push(msg),
    }
}

async fn serve(tcp: TcpStream, rooms: Rooms) -> Result<()> {
    let (mut r, mut w) = tcp.into_split();
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 65536];
    loop {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|x| x == b"\r\n\r\n") {
                break p + 4;
            }
            let n = r.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut line = head.split(' ');
        let (method, path) = (line.next().unwrap_or_default().to_owned(), line.next().unwrap_or_default().to_owned());
        let length = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let n = r.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
        buf.drain(..head_end + length);
        if path == "/ws" {
            w.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n").await?;
            return websocket(r, w, buf, rooms).await;
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let reply = {
            let mut rooms = rooms.borrow_mut();
            match (method.as_str(), parts.as_slice()) {
                ("POST", ["join", room]) => {
                    let r = rooms.entry((*room).to_owned()).or_default();
                    let client = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed).to_string();
                    let initiator = r.members.is_empty();
                    r.members.push(client.clone());
                    let messages = if initiator { Vec::new() } else { std::mem::take(&mut r.stored) };
                    json!({"result": "SUCCESS", "params": {"client_id": client, "is_initiator": initiator.to_string(), "messages": messages}}).to_string()
                }
                ("POST", ["message", room, client]) => {
                    let r = rooms.entry((*room).to_owned()).or_default();
                    if r.members.len() < 2 {
                        r.stored.push(body);
                    } else {
                        send(r, client, body);
                    }
                    r#"{"result":"SUCCESS"}"#.to_owned()
                }
                ("POST", ["leave", room, client]) => {
                    if let Some(r) = rooms.get_mut(*room) {
                        r.members.retain(|m| m != client);
                        if r.members.is_empty() && r.sockets.is_empty() {
                            rooms.remove(*room);
                        }
                    }
                    String::new()
                }
                ("DELETE", [room, client]) => {
                    if let Some(r) = rooms.get_mut(*room) {
                        r.sockets.remove(*client);
                        r.queued.remove(*client);
                    }
                    "OK\n".to_owned()
                }
                _ => String::new(),
            }
        };
        let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{reply}", reply.len());
        w.write_all(resp.as_bytes()).await?;
    }
}

async fn writer(mut w: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(f) = rx.recv().await {
        if f.is_empty() || w.write_all(&f).await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}

async fn websocket(mut r: tokio::net::tcp::OwnedReadHalf, w: OwnedWriteHalf, mut buf: Vec<u8>, rooms: Rooms) -> Result<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::task::spawn_local(writer(w, rx));
    let mut me: Option<(String, String)> = None;
    let mut chunk = vec![0u8; 65536];
    loop {
        while buf.len() >= 2 {
            let (hdr, len) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
                126 => break,
                n => (2, n as usize),
            };
            if buf.len() < hdr + 4 + len {
                break;
            }
            let opcode = buf[0] & 0x0f;
            let mask = [buf[hdr], buf[hdr + 1], buf[hdr + 2], buf[hdr + 3]];
            let payload: Vec<u8> = buf[hdr + 4..hdr + 4 + len].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            buf.drain(..hdr + 4 + len);
            if opcode == 0x8 {
                // Close: answer, then end the connection (the writer shuts it down).
                let _ = tx.send(vec![0x88, 0x02, 0x03, 0xe8]);
                let _ = tx.send(Vec::new());
                if let Some((room, client)) = &me {
                    if let Some(r) = rooms.borrow_mut().get_mut(room) {
                        r.sockets.remove(client);
                    }
                }
                return Ok(());
            }
            let v: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
            let mut rooms = rooms.borrow_mut();
            match v["cmd"].as_str() {
                Some("register") => {
                    let (room, client) = (v["roomid"].as_str().unwrap_or_default(), v["clientid"].as_str().unwrap_or_default());
                    let r = rooms.entry(room.to_owned()).or_default();
                    r.sockets.insert(client.to_owned(), tx.clone());
                    for m in r.queued.remove(client).unwrap_or_default() {
                        let _ = tx.send(ws_frame(&m));
                    }
                    me = Some((room.to_owned(), client.to_owned()));
                }
                Some("send") => {
                    if let (Some((room, client)), Some(msg)) = (&me, v["msg"].as_str()) {
                        let r = rooms.entry(room.clone()).or_default();
                        send(r, client, msg.to_owned());
                    }
                }
                _ => {}
            }
        }
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

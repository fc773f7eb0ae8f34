//! Calibration for the signaling benchmark: the least a WebSocket relay can do per message on
//! this machine. One thread, no framework: accept, answer the upgrade, read a frame, write it
//! to the other client of the room. No JSON validation, no bounds, no TLS — never a server,
//! only the floor that `scripts/bench.sh signaling` compares Switchboard against.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use anyhow::Result;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

#[derive(Parser)]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:18090")]
    listen: String,
}

/// Per room: the clients' outboxes and messages sent before the peer registered.
#[derive(Default)]
struct Room {
    members: Vec<mpsc::UnboundedSender<Vec<u8>>>,
    pending: Vec<Vec<u8>>,
}

type Rooms = Rc<RefCell<HashMap<String, Room>>>;

fn main() -> Result<()> {
    let args = Args::parse();
    let rooms: Rooms = Rc::new(RefCell::new(HashMap::new()));
    cluster_tests::floor::serve_local(&args.listen, rooms, serve)
}

/// Server frame for `msg` (text, unmasked): `{"msg":"..","error":""}`.
fn frame(msg: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(msg.len() + 24);
    body.extend_from_slice(b"{\"msg\":\"");
    body.extend_from_slice(msg);
    body.extend_from_slice(b"\",\"error\":\"\"}\n");
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(0x81);
    if body.len() < 126 {
        out.push(body.len() as u8);
    } else {
        out.push(126);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(&body);
    out
}

async fn writer(mut w: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(f) = rx.recv().await {
        if w.write_all(&f).await.is_err() {
            return;
        }
    }
}

/// The value of `"key":"value"` in a small JSON text, without unescaping.
fn field<'a>(json: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let pat = format!("\"{key}\":\"");
    let start = json.windows(pat.len()).position(|w| w == pat.as_bytes())? + pat.len();
    let mut i = start;
    while i < json.len() && json[i] != b'"' {
        if json[i] == b'\\' {
            i += 1;
        }
        i += 1;
    }
    Some(&json[start..i.min(json.len())])
}

async fn serve(tcp: tokio::net::TcpStream, rooms: Rooms) -> Result<()> {
    let (mut r, mut w) = tcp.into_split();
    let mut buf = vec![0u8; 65536];
    let mut n = 0;
    loop {
        n += r.read(&mut buf[n..]).await?;
        if buf[..n].windows(4).any(|x| x == b"\r\n\r\n") {
            break;
        }
    }
    w.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n").await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::task::spawn_local(writer(w, rx));
    let (mut start, mut end) = (0usize, 0usize);
    let mut me: Option<(String, usize)> = None;
    loop {
        while end - start >= 6 {
            let len = (buf[start + 1] & 0x7f) as usize;
            if end - start < 6 + len {
                break;
            }
            let mask = [buf[start + 2], buf[start + 3], buf[start + 4], buf[start + 5]];
            let payload: Vec<u8> = buf[start + 6..start + 6 + len].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            start += 6 + len;
            if let Some(room) = field(&payload, "roomid") {
                let room = String::from_utf8_lossy(room).into_owned();
                let mut rooms = rooms.borrow_mut();
                let r = rooms.entry(room.clone()).or_default();
                // Clients of an earlier run are gone; their outboxes are closed.
                r.members.retain(|m| !m.is_closed());
                r.members.push(tx.clone());
                for f in r.pending.drain(..) {
                    let _ = tx.send(f);
                }
                me = Some((room, r.members.len() - 1));
            } else if let (Some(msg), Some((room, idx))) = (field(&payload, "msg"), &me) {
                let mut rooms = rooms.borrow_mut();
                let Some(r) = rooms.get_mut(room) else { continue };
                match r.members.get(1 - idx.min(&1)) {
                    Some(peer) => {
                        let _ = peer.send(frame(msg));
                    }
                    None => r.pending.push(frame(msg)),
                }
            }
        }
        buf.copy_within(start..end, 0);
        end -= start;
        start = 0;
        let got = r.read(&mut buf[end..]).await?;
        if got == 0 {
            return Ok(());
        }
        end += got;
    }
}

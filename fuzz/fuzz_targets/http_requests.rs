//! Bytes a client sends to the HTTP listener, along the path the node runs them: the HTTP/1
//! codec of the server (pipelined requests, chunked and sized bodies), then the room server's
//! and Collider's routes as the handlers take them: ids checked, the query decoded into the
//! AppRTC parameters (HTML-escaped into the room page), the body (capped at 64 KiB) applied to
//! the room rules as a join, message, leave, Collider POST or DELETE. Nothing may panic.
#![no_main]

use actix_http::h1::{Codec, Message, MessageType};
use actix_http::{HttpMessage, ServiceConfig};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_proto::apprtc::{html_escape, room_params, RequestInfo, Settings};
use switchboard_proto::ids::validate_id;
use switchboard_proto::rooms::{Command, Limits, Rooms};
use tokio_util::codec::Decoder;

const MAX_BODY: usize = 65_536;

struct Request {
    method: String,
    path: String,
    query: String,
    host: String,
    user_agent: Option<String>,
    body: Vec<u8>,
}

fn route(rooms: &mut Rooms, req: &Request, now_ms: u64) {
    let query: Vec<(String, String)> = serde_urlencoded::from_str(&req.query).unwrap_or_default();
    let info = RequestInfo {
        base_url: format!("http://{}", req.host),
        host: req.host.clone(),
        secure: false,
        query,
        user_agent: req.user_agent.clone(),
    };
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let body = String::from_utf8(req.body.clone()).ok();
    let valid = |id: &str| validate_id(id).is_ok();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["r", room]) if valid(room) => {
            let p = room_params(&Settings::default(), &info, Some(room));
            let _ = html_escape(&serde_json::to_string(&p).unwrap_or_default());
        }
        ("GET", ["params"]) => {
            let _ = room_params(&Settings::default(), &info, None);
        }
        ("POST", ["join", room]) if valid(room) => {
            let loopback = info.loopback();
            rooms.apply(Command::Join { room: room.to_string(), client: "12345678".into(), loopback, now_ms });
            let _ = room_params(&Settings::default(), &info, Some(room)).for_join(room, "12345678", true, Vec::new());
        }
        ("POST", ["message", room, client]) if valid(room) && valid(client) => {
            if let Some(body) = body {
                rooms.apply(Command::Message { room: room.to_string(), client: client.to_string(), body, now_ms });
            }
        }
        ("POST", ["leave" | "bye", room, client]) if valid(room) && valid(client) => {
            rooms.apply(Command::Leave { room: room.to_string(), client: client.to_string(), now_ms });
        }
        ("POST", [room, client]) if valid(room) && valid(client) => {
            if let Some(body) = body.filter(|b| !b.is_empty()) {
                rooms.apply(Command::Send { room: room.to_string(), client: client.to_string(), body, now_ms });
            }
        }
        ("DELETE", [room, client]) if valid(room) && valid(client) => {
            rooms.apply(Command::Remove { room: room.to_string(), client: client.to_string(), now_ms });
        }
        _ => {}
    }
}

thread_local! {
    /// The server's codec settings, made once: they start a date-keeping task, which needs a
    /// runtime and a local task set around them (never run here; the date is not fuzzed).
    static CONFIG: (tokio::runtime::Runtime, tokio::task::LocalSet, ServiceConfig) = {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        let local = tokio::task::LocalSet::new();
        let cfg = {
            let _rt = rt.enter();
            let _local = local.enter();
            ServiceConfig::default()
        };
        (rt, local, cfg)
    };
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else { return };
    let step = usize::from(step % 128) + 1;
    let mut codec = Codec::new(CONFIG.with(|c| c.2.clone()));
    let mut buf = BytesMut::new();
    let mut rooms = Rooms::new(Limits::default());
    let mut current: Option<Request> = None;
    let mut now_ms = 1_000;
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Message::Item(req))) => {
                    if let Some(done) = current.take() {
                        route(&mut rooms, &done, now_ms);
                    }
                    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
                    let r = Request {
                        method: req.method().as_str().to_owned(),
                        path: req.path().to_owned(),
                        query: req.uri().query().unwrap_or_default().to_owned(),
                        host: header("host").unwrap_or_default(),
                        user_agent: header("user-agent"),
                        body: Vec::new(),
                    };
                    if codec.message_type() == MessageType::None {
                        now_ms += 10;
                        route(&mut rooms, &r, now_ms);
                    } else {
                        current = Some(r);
                    }
                }
                Ok(Some(Message::Chunk(Some(bytes)))) => {
                    if let Some(r) = current.as_mut() {
                        if r.body.len() + bytes.len() > MAX_BODY {
                            return; // 413, connection closed
                        }
                        r.body.extend_from_slice(&bytes);
                    }
                }
                Ok(Some(Message::Chunk(None))) => {
                    if let Some(done) = current.take() {
                        now_ms += 10;
                        route(&mut rooms, &done, now_ms);
                    }
                }
                Ok(None) => break,
                Err(_) => return, // 400, connection closed
            }
        }
    }
    rooms.apply(Command::Tick { now_ms: now_ms + 86_400_000 });
});

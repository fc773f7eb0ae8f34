//! A Collider WebSocket client, as the AppRTC clients use it: `register`, `send`, and frames
//! `{"msg","error"}` coming back.

use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// What arrived on the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    /// A text frame, parsed.
    Frame { msg: String, error: String, raw: String },
    /// A close frame with its code.
    Close(Option<u16>),
    /// The connection ended without a close frame.
    Eof,
}

impl WsEvent {
    /// The `msg` of a frame without error.
    pub fn msg(&self) -> Option<&str> {
        match self {
            WsEvent::Frame { msg, error, .. } if error.is_empty() => Some(msg),
            _ => None,
        }
    }

    /// The `error` of an error frame.
    pub fn error(&self) -> Option<&str> {
        match self {
            WsEvent::Frame { error, .. } if !error.is_empty() => Some(error),
            _ => None,
        }
    }
}

/// One WebSocket.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects without an `Origin` header (as native clients may).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, None).await
    }

    /// Connects, with an `Origin` header if given.
    pub async fn connect_with(url: &str, origin: Option<&str>) -> Result<Self> {
        let mut req = url.into_client_request()?;
        if let Some(o) = origin {
            req.headers_mut().insert("Origin", o.parse()?);
        }
        let (ws, _) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(req))
            .await
            .context("WebSocket connect timed out")?
            .with_context(|| format!("WebSocket connect to {url}"))?;
        Ok(WsClient { ws })
    }

    /// Sends a text frame as is.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// `{"cmd":"register","roomid":room,"clientid":client}`.
    pub async fn register(&mut self, room: &str, client: &str) -> Result<()> {
        self.send_text(&json!({"cmd": "register", "roomid": room, "clientid": client}).to_string()).await
    }

    /// `{"cmd":"send","msg":msg}`.
    pub async fn send_msg(&mut self, msg: &str) -> Result<()> {
        self.send_text(&json!({"cmd": "send", "msg": msg}).to_string()).await
    }

    /// The next event, or `None` if nothing came within `within`.
    pub async fn recv(&mut self, within: Duration) -> Option<WsEvent> {
        loop {
            let next = tokio::time::timeout(within, self.ws.next()).await.ok()?;
            return Some(match next {
                None | Some(Err(_)) => WsEvent::Eof,
                Some(Ok(Message::Text(t))) => parse_frame(t.as_str()),
                Some(Ok(Message::Binary(b))) => parse_frame(&String::from_utf8_lossy(&b)),
                Some(Ok(Message::Close(c))) => WsEvent::Close(c.map(|f: CloseFrame| u16::from(f.code))),
                Some(Ok(_)) => continue, // ping/pong
            });
        }
    }

    /// The next frame's `msg`, failing on anything else.
    pub async fn expect_msg(&mut self, within: Duration) -> Result<String> {
        match self.recv(within).await {
            Some(WsEvent::Frame { msg, error, .. }) if error.is_empty() => Ok(msg),
            other => anyhow::bail!("expected a message frame, got {other:?}"),
        }
    }

    /// Asserts nothing arrives within `within`.
    pub async fn expect_silence(&mut self, within: Duration) -> Result<()> {
        match self.recv(within).await {
            None => Ok(()),
            Some(e) => anyhow::bail!("expected silence, got {e:?}"),
        }
    }

    /// Waits for the server to close the socket; returns the close code, if a close frame came.
    pub async fn expect_closed(&mut self, within: Duration) -> Result<Option<u16>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Some(WsEvent::Close(code)) => return Ok(code),
                Some(WsEvent::Eof) => return Ok(None),
                Some(WsEvent::Frame { .. }) => continue,
                None => anyhow::bail!("socket still open after {within:?}"),
            }
        }
    }

    /// Closes from our side with a close frame.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Drops the TCP connection without a close frame (a crashed client).
    pub fn drop_connection(self) {
        drop(self.ws);
    }
}

fn parse_frame(raw: &str) -> WsEvent {
    let v: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
    WsEvent::Frame {
        msg: v["msg"].as_str().unwrap_or_default().to_owned(),
        error: v["error"].as_str().unwrap_or_default().to_owned(),
        raw: raw.to_owned(),
    }
}

/// Registers `client` in `room` at `url`, retrying while the server still holds an older
/// socket of that client ("Duplicated registration", e.g. before a lost node is declared down).
/// Registration has no reply, so a quiet moment after the register counts as success; a message
/// that arrives instead (a queued one) is returned with the socket.
pub async fn register_retrying(url: &str, room: &str, client: &str, within: Duration) -> Result<(WsClient, Option<String>)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut ws = WsClient::connect(url).await?;
        ws.register(room, client).await?;
        match ws.recv(Duration::from_millis(300)).await {
            Some(e) if e.error().is_some() => {
                if tokio::time::Instant::now() > deadline {
                    anyhow::bail!("could not register {room}/{client} at {url}: {e:?}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(WsEvent::Frame { msg, .. }) => return Ok((ws, Some(msg))),
            Some(e) => anyhow::bail!("socket ended after register: {e:?}"),
            None => return Ok((ws, None)),
        }
    }
}

/// Registers `client` at `url` again after its node was lost, proving it with probes from its
/// peer: retried while the server still holds the old socket ("Duplicated registration").
/// Probes that were queued while the client was away arrive first and are skipped.
pub async fn reregister_with_probe(
    url: &str,
    room: &str,
    client: &str,
    peer: &mut WsClient,
    within: Duration,
) -> Result<WsClient> {
    let deadline = tokio::time::Instant::now() + within;
    for attempt in 0.. {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "could not register {room}/{client} at {url}");
        let mut ws = WsClient::connect(url).await?;
        ws.register(room, client).await?;
        let probe = format!("probe-{attempt}");
        peer.send_msg(&probe).await?;
        loop {
            match ws.recv(Duration::from_secs(3)).await {
                Some(WsEvent::Frame { msg, error, .. }) if error.is_empty() => {
                    if msg == probe {
                        return Ok(ws);
                    }
                    // An earlier probe, queued while we were away.
                }
                Some(WsEvent::Frame { .. }) | Some(WsEvent::Close(_)) | Some(WsEvent::Eof) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
                None => break,
            }
        }
    }
    unreachable!()
}

/// In each of `rooms` rooms at once: `b` registers (on `b_url`) and streams `messages` messages
/// while `a` registers (on `a_url`) a few milliseconds in, so that `a`'s registration falls
/// between two of them. `a` must get all of them, in order, once each: those queued before it
/// registered and those sent after. Fails with the first room that broke that.
pub async fn stream_across_registration(a_url: &str, b_url: &str, rooms: usize, messages: usize) -> Result<()> {
    let calls: Vec<_> = (0..rooms)
        .map(|i| {
            let (a_url, b_url) = (a_url.to_owned(), b_url.to_owned());
            tokio::spawn(async move {
                let r = crate::fresh_room(&format!("stream{i}"));
                let mut b = WsClient::connect(&b_url).await?;
                b.register(&r, "b").await?;
                let mut a = WsClient::connect(&a_url).await?;
                let sender = tokio::spawn(async move {
                    for m in 0..messages {
                        b.send_msg(&format!("m{m}")).await?;
                        // ~16 a millisecond: the stream outlasts the registration below, and
                        // fewer than a room's 1 024 are queued for `a` meanwhile.
                        if m % 16 == 15 {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    Ok::<WsClient, anyhow::Error>(b)
                });
                tokio::time::sleep(Duration::from_millis(3 + i as u64 % 10)).await;
                a.register(&r, "a").await?;
                let mut got = Vec::with_capacity(messages);
                while got.len() < messages {
                    match a.expect_msg(Duration::from_secs(10)).await {
                        Ok(m) => got.push(m),
                        Err(e) => anyhow::bail!("room {r}: {} of {messages} messages arrived, then: {e:#}", got.len()),
                    }
                }
                let want: Vec<String> = (0..messages).map(|m| format!("m{m}")).collect();
                if let Some(i) = got.iter().zip(&want).position(|(g, w)| g != w) {
                    let around = &got[i.saturating_sub(2)..(i + 3).min(got.len())];
                    anyhow::bail!("room {r}: message {i} was {:?}, not {:?} (around it: {around:?})", got[i], want[i]);
                }
                a.expect_silence(Duration::from_millis(300)).await?;
                let _b = sender.await??;
                Ok(())
            })
        })
        .collect();
    for c in calls {
        c.await??;
    }
    Ok(())
}

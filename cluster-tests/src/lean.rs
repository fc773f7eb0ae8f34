//! Lean clients for load: HTTP/1.1 with keep-alive and Collider WebSockets over plain TCP, with
//! no allocation per frame beyond the payload, so that a load generator costs less than the
//! server it measures (the general-purpose clients cost more CPU per call than the server did).
//! They speak only what Switchboard's endpoints need: fixed-length or chunked bodies, text
//! frames, pings, close.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text.
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or_default()
    }
}

/// Splits `http://host:port` into its address and `host:port`.
pub fn parse_base(base: &str) -> Result<(SocketAddr, String)> {
    let hostport = base.trim_end_matches('/').strip_prefix("http://").context("only http:// bases")?;
    let addr: SocketAddr = hostport.parse().with_context(|| format!("{hostport} is not ip:port"))?;
    Ok((addr, hostport.to_owned()))
}

/// One keep-alive connection to a node, opened again when the server closes it.
pub struct HttpConn {
    addr: SocketAddr,
    host: String,
    tcp: Option<TcpStream>,
    buf: Vec<u8>,
    /// A request was written and its whole response not yet read: set while one runs, so a
    /// request cancelled half-way (a timeout) leaves a connection that is never used again
    /// (its late response would be read as the answer to the next request).
    busy: bool,
}

impl HttpConn {
    /// A client for `base` (`http://ip:port`); connects on first use.
    pub fn new(base: &str) -> Result<Self> {
        let (addr, host) = parse_base(base)?;
        Ok(HttpConn { addr, host, tcp: None, buf: Vec::with_capacity(4096), busy: false })
    }

    /// `method path` with `body`; a stale kept-alive connection is retried once on a new one.
    pub async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Response> {
        if self.busy {
            self.tcp = None;
        }
        let reused = self.tcp.is_some();
        match self.try_request(method, path, body).await {
            Ok(r) => Ok(r),
            Err(_) if reused => {
                self.tcp = None;
                self.try_request(method, path, body).await
            }
            Err(e) => {
                self.tcp = None;
                Err(e)
            }
        }
    }

    async fn try_request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Response> {
        if self.tcp.is_none() {
            let tcp = TcpStream::connect(self.addr).await.with_context(|| format!("connect {}", self.addr))?;
            tcp.set_nodelay(true)?;
            self.tcp = Some(tcp);
            self.buf.clear();
        }
        let tcp = self.tcp.as_mut().context("connected")?;
        let mut req = Vec::with_capacity(128 + body.len());
        req.extend_from_slice(method.as_bytes());
        req.push(b' ');
        req.extend_from_slice(path.as_bytes());
        req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        req.extend_from_slice(self.host.as_bytes());
        req.extend_from_slice(b"\r\nContent-Length: ");
        req.extend_from_slice(body.len().to_string().as_bytes());
        req.extend_from_slice(b"\r\n\r\n");
        req.extend_from_slice(body);
        self.busy = true;
        tcp.write_all(&req).await?;
        let (resp, close) = read_response(tcp, &mut self.buf).await?;
        self.busy = false;
        if close {
            self.tcp = None;
        }
        Ok(resp)
    }
}

/// Reads one response from `tcp` (bytes already read in `buf`); the flag says the server will
/// close the connection.
async fn read_response(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(Response, bool)> {
    let head_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        fill(tcp, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .context("bad status line")?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = v.parse::<usize>().ok();
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    buf.drain(..head_end);
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = find(buf, b"\r\n") {
                    break p;
                }
                fill(tcp, buf).await?;
            };
            let size = usize::from_str_radix(std::str::from_utf8(&buf[..line_end])?.split(';').next().unwrap_or("").trim(), 16)?;
            while buf.len() < line_end + 2 + size + 2 {
                fill(tcp, buf).await?;
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break body;
            }
        }
    } else {
        let n = length.unwrap_or(0);
        while buf.len() < n {
            fill(tcp, buf).await?;
        }
        buf.drain(..n).collect()
    };
    Ok((Response { status, body }, close))
}

async fn fill(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    let mut chunk = [0u8; 8192];
    let n = tcp.read(&mut chunk).await?;
    if n == 0 {
        bail!("connection closed by the server");
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Connects to `addr`, asks for `/ws` as `host` and reads the `101` answer: the socket, and the
/// bytes that came after the answer's head (frames the server sent at once).
pub async fn ws_upgrade(addr: SocketAddr, host: &str) -> Result<(TcpStream, Vec<u8>)> {
    let mut tcp = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    let end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
        fill(&mut tcp, &mut buf).await?;
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        bail!("handshake refused: {}", String::from_utf8_lossy(&buf[..end]).lines().next().unwrap_or_default());
    }
    buf.drain(..end);
    Ok((tcp, buf))
}

/// Appends a client frame (masked with a zero key: the payload goes out as it is) to `out`.
pub fn push_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// What a WebSocket read returned.
#[derive(Debug)]
pub enum Frame {
    /// A text (or binary) frame's payload.
    Data(Vec<u8>),
    /// The server's close frame (its status code, if any).
    Close(Option<u16>),
    /// A ping, to answer with [`WsConn::send_pong`].
    Ping(Vec<u8>),
}

/// A client WebSocket over plain TCP.
pub struct WsConn {
    tcp: TcpStream,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl WsConn {
    /// Connects to `base`'s `/ws` and completes the handshake.
    pub async fn connect(base: &str) -> Result<WsConn> {
        let (addr, host) = parse_base(base)?;
        let (tcp, buf) = ws_upgrade(addr, &host).await?;
        Ok(WsConn { tcp, buf, out: Vec::with_capacity(256) })
    }

    fn frame(&mut self, opcode: u8, payload: &[u8]) {
        self.out.clear();
        push_client_frame(&mut self.out, opcode, payload);
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &[u8]) -> Result<()> {
        self.frame(0x1, text);
        self.tcp.write_all(&self.out).await?;
        Ok(())
    }

    /// Writes bytes as they are (frames the caller built), in one write.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.tcp.write_all(bytes).await?;
        Ok(())
    }

    /// Sends a close frame (status 1000).
    pub async fn send_close(&mut self) -> Result<()> {
        self.frame(0x8, &1000u16.to_be_bytes());
        self.tcp.write_all(&self.out).await?;
        Ok(())
    }

    /// Answers a ping.
    pub async fn send_pong(&mut self, payload: &[u8]) -> Result<()> {
        self.frame(0xA, payload);
        self.tcp.write_all(&self.out).await?;
        Ok(())
    }

    /// The next data, close or ping frame. Cancel-safe: it only ever waits in a read, and a
    /// read cancelled while waiting loses nothing.
    pub async fn recv(&mut self) -> Result<Frame> {
        loop {
            if self.buf.len() >= 2 {
                let b = &self.buf;
                let (hdr, len) = match b[1] & 0x7f {
                    126 if b.len() >= 4 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
                    127 if b.len() >= 10 => (10, u64::from_be_bytes(b[2..10].try_into()?) as usize),
                    126 | 127 => (usize::MAX, 0),
                    n => (2, n as usize),
                };
                if hdr != usize::MAX && b.len() >= hdr + len {
                    let opcode = b[0] & 0x0f;
                    let payload: Vec<u8> = b[hdr..hdr + len].to_vec();
                    self.buf.drain(..hdr + len);
                    match opcode {
                        0x1 | 0x2 => return Ok(Frame::Data(payload)),
                        0x8 => {
                            let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                            return Ok(Frame::Close(code));
                        }
                        0x9 => return Ok(Frame::Ping(payload)),
                        _ => {}
                    }
                    continue;
                }
            }
            fill(&mut self.tcp, &mut self.buf).await?;
        }
    }
}

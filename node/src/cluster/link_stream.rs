//! A cluster TCP connection wrapped in the peer-security handshake (`proto::peer_security`):
//! both ends prove the cluster secret, then frames go out sealed and come in opened.
//! Every step has a deadline, and the socket has TCP keepalive, so no connection hangs silently.

use std::time::Duration;

use anyhow::{bail, Context as _};
use switchboard_proto::cluster::{Frame, FrameReader};
use switchboard_proto::peer_security::{Acceptor, Dialler, Opener, RecordReader, Sealer, SecurityError, MAX_PREAUTH_RECORD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The whole handshake on the accepting side, from accept to the peer's first sealed frame.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(2);
/// The dialling side's wait for the answer: shorter, so that a handshake whose packets were
/// lost (a partition that just healed) is dialled again rather than waited out.
const DIAL_DEADLINE: Duration = Duration::from_secs(1);
/// A write that makes no progress for this long means the peer stopped reading.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// Plaintext frames coalesced into one sealed write.
const COALESCE: usize = 256 * 1024;

/// No delay for small frames; keepalive so a peer that vanished without a FIN is noticed.
fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(2))
        .with_retries(3);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Whether a failed handshake or read means the peer does not hold the secret (or forged,
/// replayed or altered bytes), as opposed to a network failure.
fn is_auth_failure(e: &anyhow::Error) -> bool {
    e.chain().any(|c| matches!(c.downcast_ref::<SecurityError>(), Some(SecurityError::Unauthentic)))
}

/// If `e` is an authentication failure, logs it as a warning saying `what` happened, counts it
/// in `switchboard_errors_total{kind="peer_auth"}` and returns `true`; network failures are
/// left to the caller.
pub fn report_auth_failure(e: &anyhow::Error, peer: &dyn std::fmt::Display, what: &str) -> bool {
    if !is_auth_failure(e) {
        return false;
    }
    tracing::warn!(%peer, error = %format!("{e:#}"), "{what}");
    metrics::counter!("switchboard_errors_total", "kind" => "peer_auth").increment(1);
    true
}

fn entropy() -> [u8; 32] {
    rand::random()
}

/// Reads one handshake record before `deadline`.
async fn read_record(rd: &mut OwnedReadHalf, records: &mut RecordReader, deadline: Instant) -> anyhow::Result<Vec<u8>> {
    let mut buf = [0u8; 512];
    loop {
        if let Some(body) = records.next_record()? {
            return Ok(body.to_vec());
        }
        let n = tokio::time::timeout_at(deadline, rd.read(&mut buf)).await.context("handshake timed out")??;
        if n == 0 {
            bail!("closed during the handshake");
        }
        records.push(&buf[..n]);
    }
}

/// Dialling side: proves the secret, checks the acceptor holds it too, and sends `hello` (an
/// encoded frame) in a record of its own, small enough for the acceptor's pre-auth limit.
pub async fn dial(stream: TcpStream, secret: &[u8], hello: &[u8]) -> anyhow::Result<(SecureReader, OwnedWriteHalf, Sealer)> {
    let deadline = Instant::now() + DIAL_DEADLINE;
    tune(&stream);
    let (mut rd, mut wr) = stream.into_split();
    let (dialler, first) = Dialler::start(secret, entropy())?;
    tokio::time::timeout_at(deadline, wr.write_all(&first)).await.context("handshake timed out")??;
    let mut records = RecordReader::new(MAX_PREAUTH_RECORD);
    let answer = read_record(&mut rd, &mut records, deadline).await?;
    let (mut sealer, mut opener) = dialler.finish(&answer).context("the listener does not hold the cluster secret")?;
    opener.push(&records.into_rest());
    let mut sealed = Vec::new();
    sealer.seal(hello, &mut sealed)?;
    tokio::time::timeout_at(deadline, wr.write_all(&sealed)).await.context("handshake timed out")??;
    Ok((SecureReader::new(rd, opener), wr, sealer))
}

/// Accepting side: answers the dialler's first message. The peer is authenticated only once
/// [`SecureReader::next_frame`] returns its first frame (call it before `deadline`).
pub async fn accept(stream: TcpStream, secret: &[u8], deadline: Instant) -> anyhow::Result<(SecureReader, OwnedWriteHalf, Sealer)> {
    tune(&stream);
    let (mut rd, mut wr) = stream.into_split();
    let mut records = RecordReader::new(MAX_PREAUTH_RECORD);
    let first = read_record(&mut rd, &mut records, deadline).await?;
    let (answer, sealer, mut opener) = Acceptor::new(secret, entropy())?.accept(&first)?;
    tokio::time::timeout_at(deadline, wr.write_all(&answer)).await.context("handshake timed out")??;
    opener.push(&records.into_rest());
    Ok((SecureReader::new(rd, opener), wr, sealer))
}

/// Frames from the peer, opened and checked.
pub struct SecureReader {
    rd: OwnedReadHalf,
    opener: Opener,
    plain: Vec<u8>,
    frames: FrameReader,
    buf: Vec<u8>,
}

impl SecureReader {
    fn new(rd: OwnedReadHalf, opener: Opener) -> Self {
        SecureReader { rd, opener, plain: Vec::new(), frames: FrameReader::default(), buf: vec![0u8; 64 * 1024] }
    }

    /// A frame already received and opened, if any (no waiting).
    pub fn buffered_frame(&mut self) -> anyhow::Result<Option<Frame>> {
        Ok(self.frames.next_frame()?)
    }

    /// The next frame; `None` when the peer closed. Cancel-safe: what was read stays buffered.
    /// A record that fails to open (not sealed with this link's keys) is an error.
    pub async fn next_frame(&mut self) -> anyhow::Result<Option<Frame>> {
        loop {
            // Records already buffered (some may have come with the handshake) open first.
            self.opener.open(&mut self.plain)?;
            self.frames.push(&self.plain);
            self.plain.clear();
            if let Some(f) = self.frames.next_frame()? {
                return Ok(Some(f));
            }
            let n = self.rd.read(&mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.opener.push(&self.buf[..n]);
        }
    }
}

/// Writes frames queued on `rx` (encoded, plaintext), coalesced and sealed, until the queue
/// closes or a write fails; returns why it stopped.
pub async fn write_frames(mut wr: OwnedWriteHalf, mut sealer: Sealer, mut rx: mpsc::Receiver<Vec<u8>>) -> String {
    let mut plain = Vec::new();
    let mut sealed = Vec::new();
    while let Some(first) = rx.recv().await {
        plain.clear();
        plain.extend_from_slice(&first);
        while plain.len() < COALESCE {
            match rx.try_recv() {
                Ok(more) => plain.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        sealed.clear();
        if let Err(e) = sealer.seal(&plain, &mut sealed) {
            return e.to_string();
        }
        match tokio::time::timeout(WRITE_DEADLINE, wr.write_all(&sealed)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return "the peer stopped reading (write timed out)".into(),
        }
    }
    "closed".into()
}

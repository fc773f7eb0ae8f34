//! TURN over TCP and TLS (`turns:`): one task per client connection, which is the allocation's
//! 5-tuple, so it carries at most one allocation. STUN messages and ChannelData are framed by
//! their own length fields (ChannelData padded to 4 bytes, RFC 8656 §12.5). The relay is a UDP
//! socket read by the same task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, Arbiter};
use anyhow::{Context, Result};
use switchboard_proto::turn::auth::FailureLimiter;
use switchboard_proto::turn::server::{AllocateRequest, Ctx, Handled};
use switchboard_proto::turn::{channel_data, AllocationState, ClientTransport, RelayTransport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn};

use super::allocation::{Allocation, Gone, Refreshed};
use super::{Bucket, Shared};
use crate::config::Config;
use crate::rooms::now_ms;

/// Most TURN TCP/TLS connections at once.
const MAX_CONNECTIONS: usize = 10_000;
/// A connection that has no allocation and says nothing this long is closed.
const IDLE: Duration = Duration::from_secs(30);
/// Largest frame: a STUN message or ChannelData with a 16-bit length.
const MAX_FRAME: usize = 20 + 65_535 + 3;

/// Starts the TCP and TLS listeners on their own thread.
pub fn start(config: &Config, shared: Arc<Shared>) -> Result<()> {
    let t = &config.turn;
    let tls = if t.tls_listen.is_empty() {
        None
    } else {
        let (cert, key) = if t.tls_cert.is_empty() {
            (config.http.tls_cert.clone(), config.http.tls_key.clone())
        } else {
            (t.tls_cert.clone(), t.tls_key.clone())
        };
        let mut cfg = crate::http::tls::server_config(cert.as_ref(), key.as_ref()).context("TURN TLS certificate")?;
        cfg.alpn_protocols.clear();
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
    };
    let mut listeners = Vec::new();
    for addr in &t.listen {
        let l = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen for TURN/TCP on {addr}"))?;
        l.set_nonblocking(true)?;
        listeners.push((l, None));
    }
    for addr in &t.tls_listen {
        let l = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen for TURN/TLS on {addr}"))?;
        l.set_nonblocking(true)?;
        listeners.push((l, tls.clone()));
    }
    let arbiter = Arbiter::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    for (l, tls) in listeners {
        let shared = shared.clone();
        let slots = slots.clone();
        arbiter.spawn(async move {
            let Ok(listener) = TcpListener::from_std(l) else { return };
            let local = listener.local_addr().ok();
            info!(addr = ?local, tls = tls.is_some(), "TURN stream listener running");
            loop {
                let (stream, client) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "TURN accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    warn!(%client, "TURN connection refused: connection limit");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let Ok(local) = stream.local_addr() else { continue };
                let shared = shared.clone();
                let tls = tls.clone();
                actix::spawn(async move {
                    let res = match tls {
                        Some(acceptor) => match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                            Ok(Ok(s)) => serve(s, client, local, ClientTransport::Tls, shared).await,
                            Ok(Err(e)) => Err(anyhow::anyhow!("TLS handshake: {e}")),
                            Err(_) => Err(anyhow::anyhow!("TLS handshake timed out")),
                        },
                        None => serve(stream, client, local, ClientTransport::Tcp, shared).await,
                    };
                    if let Err(e) = res {
                        debug!(%client, error = %e, "TURN connection ended");
                    }
                    drop(permit);
                });
            }
        });
    }
    // The arbiter runs for the life of the process.
    std::mem::forget(arbiter);
    Ok(())
}

struct ConnAlloc {
    state: AllocationState,
    relay: UdpSocket,
    actor: Addr<Allocation>,
    bucket: Bucket,
}

/// Length of the frame at the start of `buf`, `Some(Err)` if it cannot be TURN.
fn frame_len(buf: &[u8]) -> Option<Result<usize, ()>> {
    if buf.len() < 4 {
        return None;
    }
    let len = if channel_data::is_channel_data(buf) {
        channel_data::framed_len(buf)?
    } else if buf[0] & 0xC0 == 0 {
        20 + u16::from_be_bytes([buf[2], buf[3]]) as usize
    } else {
        return Some(Err(()));
    };
    Some(Ok(len))
}

async fn serve<S>(stream: S, client: SocketAddr, local: SocketAddr, transport: ClientTransport, shared: Arc<Shared>) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut inbuf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut relay_buf = vec![0u8; 65_536];
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let mut alloc: Option<ConnAlloc> = None;
    let limiter = FailureLimiter::new(shared.auth_failures_per_minute, 60, 4);
    let (expire_tx, mut expire_rx) = mpsc::unbounded_channel::<()>();
    let label = if transport == ClientTransport::Tls { "tls" } else { "tcp" };
    loop {
        let idle = tokio::time::sleep(IDLE);
        tokio::select! {
            n = rd.read(&mut chunk) => {
                let n = n?;
                if n == 0 {
                    break;
                }
                inbuf.extend_from_slice(&chunk[..n]);
                let now = now_ms();
                let mut start = 0;
                while let Some(len) = frame_len(&inbuf[start..]) {
                    let Ok(len) = len else {
                        anyhow::bail!("not STUN or ChannelData");
                    };
                    if len > MAX_FRAME {
                        anyhow::bail!("frame too large");
                    }
                    if inbuf.len() - start < len {
                        break;
                    }
                    let frame = &inbuf[start..start + len];
                    start += len;
                    handle_frame(frame, client, local, transport, now, &shared, &limiter, &mut alloc, &expire_tx, &mut out, label).await;
                }
                inbuf.drain(..start);
                if !out.is_empty() {
                    wr.write_all(&out).await?;
                    out.clear();
                }
            }
            r = async {
                match &alloc {
                    Some(a) => a.relay.recv_from(&mut relay_buf).await,
                    None => std::future::pending().await,
                }
            } => {
                let (n, peer) = r?;
                let now = now_ms();
                if let Some(a) = alloc.as_mut() {
                    if a.bucket.take(n, now) && shared.server.wrap_peer_data(&a.state, peer, &relay_buf[..n], now, &mut out) {
                        metrics::counter!("switchboard_turn_relayed_packets_total", "direction" => "to_client", "transport" => label).increment(1);
                        metrics::counter!("switchboard_turn_relayed_bytes_total", "direction" => "to_client", "transport" => label).increment(n as u64);
                    }
                }
                if !out.is_empty() {
                    wr.write_all(&out).await?;
                    out.clear();
                }
            }
            _ = expire_rx.recv() => {
                if let Some(a) = alloc.take() {
                    a.actor.do_send(Gone);
                }
            }
            _ = idle, if alloc.is_none() => {
                debug!(%client, "idle TURN connection closed");
                break;
            }
        }
    }
    if let Some(a) = alloc.take() {
        a.actor.do_send(Gone);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn handle_frame(
    frame: &[u8],
    client: SocketAddr,
    local: SocketAddr,
    transport: ClientTransport,
    now: u64,
    shared: &Arc<Shared>,
    limiter: &FailureLimiter,
    alloc: &mut Option<ConnAlloc>,
    expire_tx: &mpsc::UnboundedSender<()>,
    out: &mut Vec<u8>,
    label: &'static str,
) {
    let ctx = Ctx { client, server: local, transport, now_ms: now };
    let handled = shared.server.handle(alloc.as_mut().map(|a| &mut a.state), &*shared.quotas, limiter, &ctx, frame);
    match handled {
        Handled::Reply(r) => out.extend_from_slice(&r),
        Handled::ToPeer { peer, data } => {
            if let Some(a) = alloc.as_mut() {
                if a.bucket.take(data.len(), now) && a.relay.send_to(data, peer).await.is_ok() {
                    metrics::counter!("switchboard_turn_relayed_packets_total", "direction" => "to_peer", "transport" => label).increment(1);
                    metrics::counter!("switchboard_turn_relayed_bytes_total", "direction" => "to_peer", "transport" => label).increment(data.len() as u64);
                }
            }
        }
        Handled::Allocate(req) => {
            let reply = allocate(&req, &ctx, shared, alloc, expire_tx);
            out.extend_from_slice(&reply);
        }
        Handled::Refreshed(r) => {
            if let Some(a) = alloc.as_ref() {
                a.actor.do_send(Refreshed { expires_ms: a.state.expires_ms });
            }
            out.extend_from_slice(&r);
        }
        Handled::Delete(r) => {
            if let Some(a) = alloc.take() {
                a.actor.do_send(Gone);
            }
            out.extend_from_slice(&r);
        }
        Handled::AuthFailed(r) => {
            metrics::counter!("switchboard_turn_auth_failures_total", "transport" => label).increment(1);
            if let Some(r) = r {
                out.extend_from_slice(&r);
            }
        }
        Handled::Connect(req) => out.extend_from_slice(&shared.server.connect_reply(&req, Err(447))),
        Handled::Ignore | Handled::ConnectionBind { .. } => {}
    }
}

fn allocate(
    req: &AllocateRequest,
    ctx: &Ctx,
    shared: &Arc<Shared>,
    alloc: &mut Option<ConnAlloc>,
    expire_tx: &mpsc::UnboundedSender<()>,
) -> Vec<u8> {
    if req.relay_transport == RelayTransport::Tcp {
        return shared.server.allocate_failed(req, 442);
    }
    let (std_sock, token) = match shared.create_udp_relay(req) {
        Ok(s) => s,
        Err(code) => return shared.server.allocate_failed(req, code),
    };
    let relay_addr = match std_sock.local_addr() {
        Ok(a) => a,
        Err(_) => {
            shared.quotas.release(&req.username);
            return shared.server.allocate_failed(req, 508);
        }
    };
    let relay = match UdpSocket::from_std(std_sock) {
        Ok(s) => s,
        Err(_) => {
            shared.quotas.release(&req.username);
            return shared.server.allocate_failed(req, 508);
        }
    };
    let (reply, state) = shared.server.allocated(req, relay_addr, shared.advertised(relay_addr), token, ctx);
    let tx = expire_tx.clone();
    let expire: super::allocation::ExpireFn = Arc::new(move |_| {
        let _ = tx.send(());
    });
    let (user, client, expires, quotas) = (req.username.clone(), ctx.client, state.expires_ms, shared.quotas.clone());
    let actor = Allocation::start_in_arbiter(&shared.arbiter, move |_| Allocation::new(0, user, client, relay_addr, expires, expire, quotas));
    *alloc = Some(ConnAlloc { state, relay, actor, bucket: Bucket::new(shared.max_bps) });
    reply
}

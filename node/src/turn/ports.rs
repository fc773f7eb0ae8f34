//! Relay ports: sockets bound on the relay address, from the configured range, handed out
//! round-robin so a freed port is not reused at once; plus the ports held by EVEN-PORT
//! reservations (RFC 8656 §14.6), each for 30 s.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// How long a reserved port waits for the Allocate that names its token.
pub const RESERVATION_TTL: Duration = Duration::from_secs(30);

/// Relay ports of one node.
pub struct PortPool {
    min: u16,
    max: u16,
    next: AtomicU32,
    reservations: Mutex<HashMap<u64, (UdpSocket, Instant)>>,
    tcp_held: std::sync::Arc<Mutex<std::collections::HashSet<SocketAddr>>>,
}

/// Holds a TCP relay address for as long as it lives.
pub struct TcpPortGuard {
    addr: SocketAddr,
    held: std::sync::Arc<Mutex<std::collections::HashSet<SocketAddr>>>,
}

impl Drop for TcpPortGuard {
    fn drop(&mut self) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.addr);
    }
}

/// Binds a UDP socket for relaying, non-blocking.
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

impl PortPool {
    /// Ports `min..=max`.
    pub fn new(min: u16, max: u16) -> Self {
        PortPool {
            min,
            max,
            next: AtomicU32::new(0),
            reservations: Mutex::new(HashMap::new()),
            tcp_held: Default::default(),
        }
    }

    fn span(&self) -> u32 {
        u32::from(self.max - self.min) + 1
    }

    /// A UDP socket on `ip` at a free port of the range (an even one if asked); `None` when the
    /// range is exhausted (508 Insufficient Capacity).
    pub fn bind(&self, ip: IpAddr, even: bool) -> Option<UdpSocket> {
        let span = self.span();
        for _ in 0..span {
            let off = self.next.fetch_add(1, Ordering::Relaxed) % span;
            let port = self.min + off as u16;
            if even && port % 2 == 1 {
                continue;
            }
            if let Ok(s) = bind_udp(SocketAddr::new(ip, port)) {
                return Some(s);
            }
        }
        None
    }

    /// A TCP listener for an RFC 6062 relay on `ip` at a free port of the range. It allows
    /// port reuse so connections to peers can leave from the same address; because reuse would
    /// also let a second listener share the port, a plain bind first proves nobody holds it and
    /// the guard keeps our own other relays off it.
    pub fn bind_tcp(&self, ip: IpAddr) -> Option<(std::net::TcpListener, TcpPortGuard)> {
        let span = self.span();
        for _ in 0..span {
            let off = self.next.fetch_add(1, Ordering::Relaxed) % span;
            let addr = SocketAddr::new(ip, self.min + off as u16);
            {
                let mut held = self.tcp_held.lock().unwrap_or_else(|p| p.into_inner());
                if held.contains(&addr) || std::net::TcpListener::bind(addr).is_err() {
                    continue;
                }
                held.insert(addr);
            }
            let guard = TcpPortGuard { addr, held: self.tcp_held.clone() };
            let bound = (|| -> io::Result<std::net::TcpListener> {
                let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
                if addr.is_ipv6() {
                    s.set_only_v6(true)?;
                }
                s.set_reuse_address(true)?;
                s.set_reuse_port(true)?;
                s.set_nonblocking(true)?;
                s.bind(&addr.into())?;
                s.listen(64)?;
                Ok(s.into())
            })();
            if let Ok(l) = bound {
                return Some((l, guard));
            }
        }
        None
    }

    /// EVEN-PORT with R: an even port for now and the next one held under a token.
    pub fn bind_pair(&self, ip: IpAddr) -> Option<(UdpSocket, u64)> {
        for _ in 0..self.span() {
            let first = self.bind(ip, true)?;
            let port = first.local_addr().ok()?.port();
            if port == self.max {
                continue;
            }
            if let Ok(second) = bind_udp(SocketAddr::new(ip, port + 1)) {
                let token: u64 = rand::random();
                let mut r = self.reservations.lock().unwrap_or_else(|p| p.into_inner());
                r.retain(|_, (_, at)| at.elapsed() < RESERVATION_TTL);
                r.insert(token, (second, Instant::now()));
                return Some((first, token));
            }
        }
        None
    }

    /// The socket reserved under `token`, if it is still held.
    pub fn take_reserved(&self, token: u64) -> Option<UdpSocket> {
        let mut r = self.reservations.lock().unwrap_or_else(|p| p.into_inner());
        r.retain(|_, (_, at)| at.elapsed() < RESERVATION_TTL);
        r.remove(&token).map(|(s, _)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhausts_and_reserves() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        // A tiny range high in the ephemeral space; skip if another process holds it.
        let pool = PortPool::new(64990, 64993);
        let mut held = Vec::new();
        while let Some(s) = pool.bind(ip, false) {
            held.push(s);
            assert!(held.len() <= 4);
        }
        assert!(held.len() <= 4);
        drop(held);
        let (s, token) = pool.bind_pair(ip).expect("an even/odd pair");
        let port = s.local_addr().unwrap().port();
        assert_eq!(port % 2, 0);
        let reserved = pool.take_reserved(token).expect("reserved");
        assert_eq!(reserved.local_addr().unwrap().port(), port + 1);
        assert!(pool.take_reserved(token).is_none(), "a token is good once");
    }
}

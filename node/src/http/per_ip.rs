//! Connections per source address on the HTTP listeners: past `http.connections_per_ip` a new
//! connection is shut down as it is accepted, so one address cannot take every descriptor.

use std::any::Any;
use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;
use tracing::warn;

/// How often a refused address is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Open connections per source address. Holds an entry only while the address has one open,
/// so it is bounded by the server's connection limit.
pub struct ConnectionsPerIp {
    limit: u32,
    open: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    count: HashMap<IpAddr, u32>,
    last_logged: Option<Instant>,
}

/// One admitted connection; kept in the connection's extensions, so it is dropped with it.
struct Admitted {
    table: Arc<ConnectionsPerIp>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut t = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = t.count.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.count.remove(&self.ip);
            }
        }
    }
}

impl ConnectionsPerIp {
    pub fn new(limit: u32) -> Arc<Self> {
        Arc::new(ConnectionsPerIp { limit, open: Mutex::new(Table::default()) })
    }

    /// `HttpServer::on_connect` hook: counts the connection against its source address, or shuts
    /// it down (the client sees the connection closed before any byte) when the address is over
    /// its limit. Returns whether it was admitted.
    pub fn admit(self: &Arc<Self>, conn: &dyn Any, ext: &mut Extensions) -> bool {
        let tcp = if let Some(tcp) = conn.downcast_ref::<TcpStream>() {
            tcp
        } else if let Some(tls) = conn.downcast_ref::<TlsStream<TcpStream>>() {
            tls.get_ref().0
        } else {
            return true;
        };
        let Ok(peer) = tcp.peer_addr() else { return true };
        let ip = canonical(peer);
        let mut t = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = t.count.entry(ip).or_insert(0);
        if *n >= self.limit {
            let now = Instant::now();
            if t.last_logged.is_none_or(|at| now.duration_since(at) >= LOG_EVERY) {
                t.last_logged = Some(now);
                warn!(%ip, limit = self.limit, "connections refused: the address is over http.connections_per_ip");
            }
            drop(t);
            metrics::counter!("switchboard_http_connections_refused_total").increment(1);
            let _ = socket2::SockRef::from(tcp).shutdown(Shutdown::Both);
            return false;
        }
        *n += 1;
        drop(t);
        ext.insert(Admitted { table: self.clone(), ip });
        true
    }
}

/// The source address, with an IPv4-mapped IPv6 address counted as the IPv4 one.
fn canonical(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_count_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:5000".parse().unwrap();
        assert_eq!(canonical(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        let v6: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        assert_eq!(canonical(v6), "2001:db8::1".parse::<IpAddr>().unwrap());
    }
}

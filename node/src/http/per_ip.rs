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

/// What each source address holds open (connections, sessions). An address has an entry only
/// while it holds something, so the table is bounded by what the server holds at once.
#[derive(Debug, Default)]
pub struct OpenPerAddress {
    count: HashMap<IpAddr, usize>,
}

impl OpenPerAddress {
    /// Counts one more for `ip`, unless it already holds `limit`.
    pub fn take(&mut self, ip: IpAddr, limit: usize) -> bool {
        let n = self.count.entry(ip).or_insert(0);
        if *n >= limit {
            if *n == 0 {
                self.count.remove(&ip);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// Gives back one that `take` counted.
    pub fn give_back(&mut self, ip: IpAddr) {
        if let Some(n) = self.count.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.count.remove(&ip);
            }
        }
    }
}

/// Open connections per source address.
pub struct ConnectionsPerIp {
    limit: u32,
    open: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    open: OpenPerAddress,
    last_logged: Option<Instant>,
}

/// One admitted connection; kept in the connection's extensions, so it is dropped with it.
struct Admitted {
    table: Arc<ConnectionsPerIp>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.table.open.lock().unwrap_or_else(|p| p.into_inner()).open.give_back(self.ip);
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
        if !t.open.take(ip, self.limit as usize) {
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
    fn an_address_holds_up_to_its_limit_and_leaves_no_entry() {
        let mut o = OpenPerAddress::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(o.take(ip, 2) && o.take(ip, 2));
        assert!(!o.take(ip, 2), "a third over a limit of two");
        assert!(o.take("192.0.2.8".parse().unwrap(), 2), "another address");
        o.give_back(ip);
        assert!(o.take(ip, 2), "room again after one went");
        o.give_back(ip);
        o.give_back(ip);
        assert!(!o.count.contains_key(&ip), "no entry once the address holds nothing");
        let mut fresh = OpenPerAddress::default();
        assert!(!fresh.take(ip, 0) && fresh.count.is_empty(), "a zero limit leaves nothing behind");
    }

    #[test]
    fn mapped_addresses_count_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:5000".parse().unwrap();
        assert_eq!(canonical(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        let v6: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        assert_eq!(canonical(v6), "2001:db8::1".parse::<IpAddr>().unwrap());
    }
}

//! One TURN allocation's state (RFC 8656 §6-§12): lifetime, permissions by peer IP, channel
//! bindings in both directions, with their expiries. Time is milliseconds passed in; nothing
//! here touches a socket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// First valid channel number (RFC 8656 §12).
pub const CHANNEL_MIN: u16 = 0x4000;
/// Last accepted channel number. RFC 8656 narrowed the range to 0x4FFF, but RFC 5766 clients
/// (coturn's among them) still pick numbers up to 0x7FFF, which cannot collide with STUN, so
/// they are accepted.
pub const CHANNEL_MAX: u16 = 0x7FFF;

/// How a client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientTransport {
    /// Datagrams.
    Udp,
    /// A TCP connection.
    Tcp,
    /// A TLS connection.
    Tls,
}

/// How the relay talks to peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayTransport {
    /// RFC 8656 UDP relay.
    Udp,
    /// RFC 6062 TCP relay.
    Tcp,
}

/// Why a ChannelBind was refused (each is a 400 Bad Request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// Outside 0x4000-0x7FFF.
    BadNumber,
    /// The number is bound to another peer.
    NumberInUse,
    /// The peer is bound to another number.
    PeerBound,
    /// The allocation holds as many channels as it may (508).
    Quota,
}

/// The state of one allocation.
#[derive(Debug, Clone)]
pub struct AllocationState {
    /// The client's transport address.
    pub client: SocketAddr,
    /// The server address the client reached.
    pub server: SocketAddr,
    /// The client's transport.
    pub transport: ClientTransport,
    /// The relayed transport address.
    pub relay: SocketAddr,
    /// How the relay reaches peers.
    pub relay_transport: RelayTransport,
    /// Whose credentials created it; later requests must use the same username (441).
    pub username: String,
    /// The transaction id of the Allocate, to answer a retransmission with the same success.
    pub allocate_transaction: [u8; 12],
    /// When it expires (ms).
    pub expires_ms: u64,
    permissions: HashMap<IpAddr, u64>,
    channels: HashMap<u16, (SocketAddr, u64)>,
    peer_channels: HashMap<SocketAddr, u16>,
    max_permissions: usize,
    max_channels: usize,
}

impl AllocationState {
    /// A new allocation living until `expires_ms`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: SocketAddr,
        server: SocketAddr,
        transport: ClientTransport,
        relay: SocketAddr,
        relay_transport: RelayTransport,
        username: String,
        allocate_transaction: [u8; 12],
        expires_ms: u64,
        max_permissions: usize,
        max_channels: usize,
    ) -> Self {
        AllocationState {
            client,
            server,
            transport,
            relay,
            relay_transport,
            username,
            allocate_transaction,
            expires_ms,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            peer_channels: HashMap::new(),
            max_permissions,
            max_channels,
        }
    }

    /// Whether the allocation has expired.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_ms
    }

    /// Installs or refreshes a permission for `ip` until `until_ms`. Refuses a new one beyond the
    /// quota (expired ones are dropped first).
    pub fn permit(&mut self, ip: IpAddr, until_ms: u64, now_ms: u64) -> bool {
        if !self.permissions.contains_key(&ip) && self.permissions.len() >= self.max_permissions {
            self.permissions.retain(|_, exp| *exp > now_ms);
            if self.permissions.len() >= self.max_permissions {
                return false;
            }
        }
        self.permissions.insert(ip, until_ms);
        true
    }

    /// Whether data to or from `ip` may pass.
    pub fn permitted(&self, ip: IpAddr, now_ms: u64) -> bool {
        self.permissions.get(&ip).is_some_and(|exp| *exp > now_ms)
    }

    /// Binds `number` to `peer` until `until_ms` (a refresh when already bound so). The caller
    /// refreshes the peer's permission too, as RFC 8656 §12.2 requires.
    pub fn bind_channel(&mut self, number: u16, peer: SocketAddr, until_ms: u64, now_ms: u64) -> Result<(), ChannelError> {
        if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&number) {
            return Err(ChannelError::BadNumber);
        }
        // Expired bindings free their number and peer (RFC 8656 §12: after 10 minutes; we keep
        // them reserved for no extra time).
        self.expire_channels(now_ms);
        match self.channels.get(&number) {
            Some((p, _)) if *p != peer => return Err(ChannelError::NumberInUse),
            _ => {}
        }
        if let Some(n) = self.peer_channels.get(&peer) {
            if *n != number {
                return Err(ChannelError::PeerBound);
            }
        }
        if !self.channels.contains_key(&number) && self.channels.len() >= self.max_channels {
            return Err(ChannelError::Quota);
        }
        self.channels.insert(number, (peer, until_ms));
        self.peer_channels.insert(peer, number);
        Ok(())
    }

    fn expire_channels(&mut self, now_ms: u64) {
        let peer_channels = &mut self.peer_channels;
        self.channels.retain(|_, (peer, exp)| {
            let live = *exp > now_ms;
            if !live {
                peer_channels.remove(peer);
            }
            live
        });
    }

    /// The peer bound to channel `number`, if the binding and the permission are live.
    pub fn channel_peer(&self, number: u16, now_ms: u64) -> Option<SocketAddr> {
        let (peer, exp) = self.channels.get(&number)?;
        (*exp > now_ms && self.permitted(peer.ip(), now_ms)).then_some(*peer)
    }

    /// The live channel bound to `peer`, if any.
    pub fn peer_channel(&self, peer: SocketAddr, now_ms: u64) -> Option<u16> {
        let n = *self.peer_channels.get(&peer)?;
        self.channels.get(&n).filter(|(_, exp)| *exp > now_ms).map(|_| n)
    }

    /// Live permissions.
    pub fn permission_count(&self, now_ms: u64) -> usize {
        self.permissions.values().filter(|e| **e > now_ms).count()
    }

    /// Live channels.
    pub fn channel_count(&self, now_ms: u64) -> usize {
        self.channels.values().filter(|(_, e)| *e > now_ms).count()
    }

    /// Drops expired permissions and channels (bounded tables stay small).
    pub fn purge(&mut self, now_ms: u64) {
        self.permissions.retain(|_, e| *e > now_ms);
        self.expire_channels(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn alloc() -> AllocationState {
        AllocationState::new(a("1.1.1.1:1000"), a("2.2.2.2:3478"), ClientTransport::Udp, a("2.2.2.2:50000"),
            RelayTransport::Udp, "u".into(), [0; 12], 600_000, 3, 2)
    }

    /// RFC 8656 §9: permissions are per IP, any port, and expire.
    #[test]
    fn permissions_by_ip_expire_and_are_bounded() {
        let mut s = alloc();
        let ip: IpAddr = "8.8.8.8".parse().unwrap();
        assert!(!s.permitted(ip, 0));
        assert!(s.permit(ip, 300_000, 0));
        assert!(s.permitted(ip, 299_999));
        assert!(!s.permitted(ip, 300_000));
        assert!(s.permit("8.8.4.4".parse().unwrap(), 300_000, 0));
        assert!(s.permit("1.0.0.1".parse().unwrap(), 300_000, 0));
        assert!(!s.permit("9.9.9.9".parse().unwrap(), 300_000, 0), "quota of 3");
        assert!(s.permit(ip, 400_000, 0), "refreshing an existing one is fine");
        assert!(s.permit("9.9.9.9".parse().unwrap(), 700_000, 350_000), "expired ones make room");
    }

    /// RFC 8656 §12.2: number range, one peer per number and one number per peer.
    #[test]
    fn channel_rules() {
        let mut s = alloc();
        let (p1, p2) = (a("8.8.8.8:1"), a("8.8.8.8:2"));
        assert_eq!(s.bind_channel(0x3FFF, p1, 600_000, 0), Err(ChannelError::BadNumber));
        assert_eq!(s.bind_channel(0x8000, p1, 600_000, 0), Err(ChannelError::BadNumber));
        assert_eq!(s.bind_channel(0x4000, p1, 600_000, 0), Ok(()));
        assert_eq!(s.bind_channel(0x4000, p1, 700_000, 0), Ok(()), "refresh");
        assert_eq!(s.bind_channel(0x4000, p2, 600_000, 0), Err(ChannelError::NumberInUse));
        assert_eq!(s.bind_channel(0x4001, p1, 600_000, 0), Err(ChannelError::PeerBound));
        assert_eq!(s.bind_channel(0x4001, p2, 600_000, 0), Ok(()));
        assert_eq!(s.bind_channel(0x4002, a("8.8.8.8:3"), 600_000, 0), Err(ChannelError::Quota));
        // A channel needs its permission too.
        assert_eq!(s.channel_peer(0x4000, 1), None);
        s.permit(p1.ip(), 300_000, 0);
        assert_eq!(s.channel_peer(0x4000, 1), Some(p1));
        assert_eq!(s.peer_channel(p1, 1), Some(0x4000));
        // Expired bindings free both the number and the peer.
        assert_eq!(s.bind_channel(0x4002, p1, 2_000_000, 800_000), Ok(()));
        assert_eq!(s.peer_channel(p1, 800_001), Some(0x4002));
    }
}

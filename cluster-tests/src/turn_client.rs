//! A small TURN client over real UDP or TCP sockets, for the checks coturn's clients cannot
//! express (exact error codes for each peer-address spelling, quotas, nonces).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use stun_types::attribute::{ErrorCode, Nonce, Realm, Username};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageWrite, MessageWriteExt, MessageWriteVec,
    Method, TransactionId, BINDING,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use turn_types::attribute::{ChannelNumber, ConnectionId, Lifetime, RequestedTransport, XorPeerAddress, XorRelayedAddress};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CONNECT, CONNECTION_BIND, CREATE_PERMISSION, REFRESH};

enum Link {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

/// A client with long-term credentials.
pub struct TurnClient {
    link: Link,
    server: SocketAddr,
    user: String,
    pass: String,
    realm: Option<String>,
    nonce: Option<String>,
    /// Every 401/438 challenge this client answered, in order.
    pub challenges: Vec<u16>,
}

/// A reply: its error code (0 for success) and the parsed bytes.
pub struct Answer {
    /// 0 on success, else the STUN error code.
    pub code: u16,
    /// The raw reply.
    pub bytes: Vec<u8>,
}

impl Answer {
    /// The CONNECTION-ID of an RFC 6062 Connect success.
    pub fn connection_id(&self) -> Option<u32> {
        let m = Message::from_bytes(&self.bytes).ok()?;
        m.attribute::<ConnectionId>().ok().map(|c| c.id())
    }

    /// The XOR-RELAYED-ADDRESS of an Allocate success.
    pub fn relayed(&self) -> Option<SocketAddr> {
        let m = Message::from_bytes(&self.bytes).ok()?;
        m.attribute::<XorRelayedAddress>().ok().map(|a| a.addr(m.transaction_id()))
    }
}

impl TurnClient {
    /// A UDP client of `server`.
    pub async fn udp(server: SocketAddr, user: &str, pass: &str) -> Result<Self> {
        let bind: SocketAddr = if server.is_ipv4() { "127.0.0.1:0".parse()? } else { "[::1]:0".parse()? };
        Self::udp_from(bind, server, user, pass).await
    }

    /// A UDP client of `server` bound to `local`.
    pub async fn udp_from(local: SocketAddr, server: SocketAddr, user: &str, pass: &str) -> Result<Self> {
        let sock = UdpSocket::bind(local).await?;
        Ok(TurnClient { link: Link::Udp(sock), server, user: user.into(), pass: pass.into(), realm: None, nonce: None, challenges: Vec::new() })
    }

    /// A TCP client of `server`.
    pub async fn tcp(server: SocketAddr, user: &str, pass: &str) -> Result<Self> {
        let s = TcpStream::connect(server).await?;
        Ok(TurnClient { link: Link::Tcp(s), server, user: user.into(), pass: pass.into(), realm: None, nonce: None, challenges: Vec::new() })
    }

    /// Uses a nonce learned elsewhere (to show nonces carry no per-client state).
    pub fn set_nonce(&mut self, realm: &str, nonce: &str) {
        self.realm = Some(realm.into());
        self.nonce = Some(nonce.into());
    }

    /// The realm and nonce this client holds.
    pub fn nonce(&self) -> Option<(String, String)> {
        Some((self.realm.clone()?, self.nonce.clone()?))
    }

    async fn exchange(&mut self, req: &[u8]) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        match &mut self.link {
            Link::Udp(s) => {
                for _ in 0..5 {
                    s.send_to(req, self.server).await?;
                    if let Ok(r) = tokio::time::timeout(Duration::from_millis(500), s.recv_from(&mut buf)).await {
                        let (n, _) = r?;
                        return Ok(buf[..n].to_vec());
                    }
                }
                bail!("no answer from {}", self.server)
            }
            Link::Tcp(s) => {
                s.write_all(req).await?;
                let mut head = [0u8; 20];
                tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut head)).await.context("timeout")??;
                let len = u16::from_be_bytes([head[2], head[3]]) as usize;
                let mut body = vec![0u8; len];
                s.read_exact(&mut body).await?;
                let mut all = head.to_vec();
                all.extend(body);
                Ok(all)
            }
        }
    }

    fn build(&self, method: Method, add: &(dyn Fn(&mut MessageWriteVec, TransactionId) + Sync)) -> Vec<u8> {
        let mut b = Message::builder_request(method, MessageWriteVec::new());
        let t = b.transaction_id();
        add(&mut b, t);
        if let (Some(realm), Some(nonce)) = (&self.realm, &self.nonce) {
            let _ = b.add_attribute(&Username::new(&self.user).expect("username"));
            let _ = b.add_attribute(&Realm::new(realm).expect("realm"));
            let _ = b.add_attribute(&Nonce::new(nonce).expect("nonce"));
            let creds = LongTermKeyCredentials::new(self.user.clone(), self.pass.clone(), realm.clone());
            let _ = b.add_message_integrity(&creds.into(), IntegrityAlgorithm::Sha1);
        }
        let _ = b.add_fingerprint();
        b.finish()
    }

    /// Sends a request, following one 401/438 challenge; the final answer.
    pub async fn request(&mut self, method: Method, add: &(dyn Fn(&mut MessageWriteVec, TransactionId) + Sync)) -> Result<Answer> {
        for _ in 0..3 {
            let bytes = self.exchange(&self.build(method, add)).await?;
            let m = Message::from_bytes(&bytes).map_err(|e| anyhow::anyhow!("bad reply: {e:?}"))?;
            if m.has_class(MessageClass::Success) {
                return Ok(Answer { code: 0, bytes });
            }
            let code = m.attribute::<ErrorCode>().map(|e| e.code()).unwrap_or(0);
            let challenge = (code == 401 && self.nonce.is_none()) || code == 438;
            if challenge {
                self.challenges.push(code);
                if let (Ok(r), Ok(n)) = (m.attribute::<Realm>(), m.attribute::<Nonce>()) {
                    self.realm = Some(r.realm().to_owned());
                    self.nonce = Some(n.nonce().to_owned());
                    continue;
                }
            }
            return Ok(Answer { code, bytes });
        }
        bail!("challenge loop")
    }

    /// A Binding request.
    pub async fn binding(&mut self) -> Result<Answer> {
        self.request(BINDING, &|_, _| {}).await
    }

    /// Allocate a UDP relay.
    pub async fn allocate(&mut self) -> Result<Answer> {
        self.request(ALLOCATE, &|b, _| {
            let _ = b.add_attribute(&RequestedTransport::new(RequestedTransport::UDP));
        })
        .await
    }

    /// Refresh with `lifetime` seconds (0 deletes).
    pub async fn refresh(&mut self, lifetime: u32) -> Result<Answer> {
        self.request(REFRESH, &|b, _| {
            let _ = b.add_attribute(&Lifetime::new(lifetime));
        })
        .await
    }

    /// CreatePermission for `peer`.
    pub async fn permit(&mut self, peer: SocketAddr) -> Result<Answer> {
        self.request(CREATE_PERMISSION, &|b, t| {
            let _ = b.add_attribute(&XorPeerAddress::new(peer, t));
        })
        .await
    }

    /// Sends `data` on channel `number` (a ChannelData message; UDP clients only).
    pub async fn send_channel(&mut self, number: u16, data: &[u8]) -> Result<()> {
        let Link::Udp(s) = &self.link else { bail!("ChannelData over UDP only") };
        let mut frame = Vec::with_capacity(4 + data.len());
        frame.extend_from_slice(&number.to_be_bytes());
        frame.extend_from_slice(&(data.len() as u16).to_be_bytes());
        frame.extend_from_slice(data);
        s.send_to(&frame, self.server).await?;
        Ok(())
    }

    /// The next ChannelData message from the server within `within`: (channel, data).
    pub async fn recv_channel(&mut self, within: Duration) -> Result<(u16, Vec<u8>)> {
        let Link::Udp(s) = &self.link else { bail!("ChannelData over UDP only") };
        let mut buf = vec![0u8; 2048];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (n, _) = tokio::time::timeout_at(deadline, s.recv_from(&mut buf)).await.context("no ChannelData")??;
            if n >= 4 && (0x40..0x80).contains(&buf[0]) {
                let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
                let data = buf.get(4..4 + len).context("short ChannelData")?.to_vec();
                return Ok((u16::from_be_bytes([buf[0], buf[1]]), data));
            }
        }
    }

    /// Allocate an RFC 6062 TCP relay (TCP/TLS clients).
    pub async fn allocate_tcp(&mut self) -> Result<Answer> {
        self.request(ALLOCATE, &|b, _| {
            let _ = b.add_attribute(&RequestedTransport::new(RequestedTransport::TCP));
        })
        .await
    }

    /// RFC 6062 Connect from the relay to `peer`.
    pub async fn connect(&mut self, peer: SocketAddr) -> Result<Answer> {
        self.request(CONNECT, &|b, t| {
            let _ = b.add_attribute(&XorPeerAddress::new(peer, t));
        })
        .await
    }

    /// RFC 6062 ConnectionBind of this (fresh) TCP connection to connection `id`; on success the
    /// connection is the data connection: raw bytes to and from the peer.
    pub async fn connection_bind(mut self, id: u32) -> Result<(Answer, TcpStream)> {
        let a = self
            .request(CONNECTION_BIND, &|b, _| {
                let _ = b.add_attribute(&ConnectionId::new(id));
            })
            .await?;
        let Link::Tcp(s) = self.link else { bail!("ConnectionBind over TCP only") };
        Ok((a, s))
    }

    /// ChannelBind `number` to `peer`.
    pub async fn bind(&mut self, number: u16, peer: SocketAddr) -> Result<Answer> {
        self.request(CHANNEL_BIND, &|b, t| {
            let _ = b.add_attribute(&ChannelNumber::new(number));
            let _ = b.add_attribute(&XorPeerAddress::new(peer, t));
        })
        .await
    }
}

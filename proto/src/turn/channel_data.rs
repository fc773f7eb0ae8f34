//! ChannelData messages (RFC 8656 §12.4): a 4-byte header (channel number, length) and the
//! data, padded to a multiple of 4 over TCP and TLS. The per-packet path; no allocation.

/// Whether `data` starts like ChannelData (first two bits `01`) rather than STUN (`00`).
pub fn is_channel_data(data: &[u8]) -> bool {
    data.first().is_some_and(|b| b & 0xC0 == 0x40)
}

/// The channel number and payload of a ChannelData message; `None` if it is shorter than its
/// length field says. Trailing padding is ignored.
pub fn parse(data: &[u8]) -> Option<(u16, &[u8])> {
    if data.len() < 4 {
        return None;
    }
    let number = u16::from_be_bytes([data[0], data[1]]);
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    data.get(4..4 + len).map(|p| (number, p))
}

/// Length of the ChannelData message at the start of a TCP stream (padding included), if the
/// header is there.
pub fn framed_len(data: &[u8]) -> Option<usize> {
    if data.len() < 4 {
        return None;
    }
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    Some(4 + len.div_ceil(4) * 4)
}

/// Writes a ChannelData message for `number`, padded when `padded` (stream transports).
pub fn write(number: u16, payload: &[u8], padded: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(&number.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    if padded {
        let pad = (4 - payload.len() % 4) % 4;
        out.extend_from_slice(&[0u8; 3][..pad]);
    }
}

const MAGIC: u32 = 0x2112_A442;

/// Appends a Data indication (RFC 8656 §11.4: XOR-PEER-ADDRESS and DATA) without allocating.
/// `transaction` only has to be unique enough for the client to tell indications apart.
pub fn write_data_indication(peer: std::net::SocketAddr, transaction: [u8; 12], payload: &[u8], out: &mut Vec<u8>) {
    let addr_len: u16 = if peer.is_ipv4() { 8 } else { 20 };
    let pad = (4 - payload.len() % 4) % 4;
    let body = 4 + addr_len as usize + 4 + payload.len() + pad;
    out.extend_from_slice(&0x0017u16.to_be_bytes()); // Data indication
    out.extend_from_slice(&(body as u16).to_be_bytes());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&transaction);
    out.extend_from_slice(&0x0012u16.to_be_bytes()); // XOR-PEER-ADDRESS
    out.extend_from_slice(&addr_len.to_be_bytes());
    out.push(0);
    out.push(if peer.is_ipv4() { 1 } else { 2 });
    out.extend_from_slice(&(peer.port() ^ (MAGIC >> 16) as u16).to_be_bytes());
    match peer.ip() {
        std::net::IpAddr::V4(v4) => out.extend_from_slice(&(u32::from(v4) ^ MAGIC).to_be_bytes()),
        std::net::IpAddr::V6(v6) => {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC.to_be_bytes());
            key[4..].copy_from_slice(&transaction);
            for (b, k) in v6.octets().iter().zip(key) {
                out.push(b ^ k);
            }
        }
    }
    out.extend_from_slice(&0x0013u16.to_be_bytes()); // DATA
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&[0u8; 3][..pad]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let mut out = Vec::new();
        write(0x4001, b"hello", false, &mut out);
        assert_eq!(out, [0x40, 0x01, 0, 5, b'h', b'e', b'l', b'l', b'o']);
        assert!(is_channel_data(&out));
        assert_eq!(parse(&out), Some((0x4001, &b"hello"[..])));
        out.clear();
        write(0x4001, b"hello", true, &mut out);
        assert_eq!(out.len(), 12);
        assert_eq!(framed_len(&out), Some(12));
        assert_eq!(parse(&out), Some((0x4001, &b"hello"[..])));
    }

    /// The hand-written Data indication is what stun-types parses, for IPv4 and IPv6 peers.
    #[test]
    fn data_indication_parses() {
        use stun_types::message::{Message, MessageClass};
        use turn_types::attribute::{Data, XorPeerAddress};
        for peer in ["192.0.2.7:4321", "[2001:db8::7]:4321"] {
            let peer: std::net::SocketAddr = peer.parse().unwrap();
            for payload in [&b""[..], b"a", b"abcd", b"hello"] {
                let mut out = vec![0xAA];
                write_data_indication(peer, [7; 12], payload, &mut out);
                let m = Message::from_bytes(&out[1..]).unwrap();
                assert!(m.has_method(turn_types::message::DATA) && m.has_class(MessageClass::Indication));
                assert_eq!(m.attribute::<XorPeerAddress>().unwrap().addr(m.transaction_id()), peer);
                assert_eq!(m.attribute::<Data>().unwrap().data(), payload);
            }
        }
    }

    /// Boundary cases: a length field longer than the buffer, empty payloads, STUN bytes.
    #[test]
    fn hostile_lengths() {
        assert_eq!(parse(&[0x40, 0, 0, 5, 1, 2, 3, 4]), None, "one byte short");
        assert_eq!(parse(&[0x40, 0, 0, 0]), Some((0x4000, &[][..])));
        assert_eq!(parse(&[0x40, 0, 0xff]), None);
        assert!(!is_channel_data(&[0x00, 0x01, 0, 0]));
        assert!(!is_channel_data(&[]));
        assert_eq!(framed_len(&[0x40, 0, 0xff, 0xff]), Some(4 + 65536));
    }
}

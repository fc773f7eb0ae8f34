//! Which peers a TURN relay may talk to. One function, [`check_peer`], decides for every
//! CreatePermission, ChannelBind, Send indication and Connect: it canonicalises IPv4 written as
//! IPv6 (mapped, compatible, NAT64, 6to4) and refuses every IANA special-purpose range unless an
//! explicit allow-list entry covers the address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A special-purpose range and why peers in it are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    /// The range, e.g. `127.0.0.0/8`.
    pub range: &'static str,
    /// What it is, e.g. `loopback`.
    pub what: &'static str,
}

const V4_DENY: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this network (unspecified)"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space (CGN)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.31.196.0/24", "AS112"),
    ("192.52.193.0/24", "AMT"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("192.175.48.0/24", "AS112 direct delegation"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (incl. broadcast)"),
];

const V6_DENY: &[(&str, &str)] = &[
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b::/96", "NAT64"),
    ("64:ff9b:1::/48", "local NAT64"),
    ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
];

/// The IPv4 address an IPv6 address stands for, if it embeds one: IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-compatible `::a.b.c.d` (all of `::/96` except `::` and `::1`), NAT64 `64:ff9b::/96` and
/// 6to4 `2002:AABB:CCDD::/48`.
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !(s[6] == 0 && s[7] <= 1) {
        return Some(tail);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8));
    }
    None
}

/// The address policy was compiled from these tables; parsing them cannot fail.
fn table<N: std::str::FromStr>(rows: &'static [(&'static str, &'static str)]) -> impl Iterator<Item = (N, Denied)>
where
    N::Err: std::fmt::Debug,
{
    rows.iter().map(|(r, w)| (r.parse::<N>().expect("static CIDR"), Denied { range: r, what: w }))
}

/// The special-purpose range `ip` falls in, if any (no allow-list applied).
pub fn special_range(ip: IpAddr) -> Option<Denied> {
    match ip {
        IpAddr::V4(v4) => table::<Ipv4Net>(V4_DENY).find(|(n, _)| n.contains(&v4)).map(|(_, d)| d),
        IpAddr::V6(v6) => {
            if let Some(d) = table::<Ipv6Net>(V6_DENY).find(|(n, _)| n.contains(&v6)).map(|(_, d)| d) {
                return Some(d);
            }
            embedded_v4(v6).and_then(|v4| special_range(IpAddr::V4(v4)))
        }
    }
}

/// Decides whether the relay may send to `peer`. An allow-list entry that covers the address
/// (as written, or the IPv4 address it embeds) lets it through; otherwise every special-purpose
/// range is refused, in whatever form the address is written.
pub fn check_peer(peer: IpAddr, allow: &[IpNet]) -> Result<(), Denied> {
    let canonical = match peer {
        IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    let allowed = |ip: IpAddr| allow.iter().any(|n| n.contains(&ip));
    if allowed(peer) || canonical.is_some_and(allowed) {
        return Ok(());
    }
    match special_range(peer) {
        Some(d) => Err(d),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Every range of the security checklist (TURN notes §8), probed at its first and last
    /// address, plus every IPv6 spelling of an IPv4 loopback and private address.
    #[test]
    fn every_special_range_is_refused() {
        let denied = [
            "0.0.0.0", "0.255.255.255", "10.0.0.1", "10.255.255.255", "100.64.0.1", "100.127.255.255",
            "127.0.0.1", "127.255.255.254", "169.254.169.254", "172.16.0.1", "172.31.255.255",
            "192.0.0.1", "192.0.2.1", "192.31.196.1", "192.52.193.1", "192.88.99.1", "192.168.1.1",
            "192.175.48.1", "198.18.0.1", "198.19.255.255", "198.51.100.1", "203.0.113.1",
            "224.0.0.1", "239.255.255.255", "240.0.0.1", "255.255.255.255",
            "::", "::1", "64:ff9b::808:808", "64:ff9b:1::1", "100::1", "2001::1", "2001:1ff::1",
            "2001:db8::1", "2002:808:808::1", "fc00::1", "fdff::1", "fe80::1", "febf::1", "fec0::1",
            "ff02::1",
            // IPv4 in IPv6 clothing (coturn 4.6.1 let the mapped forms through)
            "::ffff:127.0.0.1", "::ffff:7f00:1", "::127.0.0.1", "::ffff:10.0.0.1", "::ffff:0.0.0.0",
            "::ffff:169.254.169.254", "::10.1.2.3", "::ffff:192.168.0.1", "::ffff:224.0.0.1",
        ];
        for a in denied {
            assert!(check_peer(ip(a), &[]).is_err(), "{a} must be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for a in ["8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.0", "172.32.0.1", "198.20.0.1",
                  "223.255.255.255", "2606:4700::1111", "::ffff:8.8.8.8", "2001:200::1"] {
            assert_eq!(check_peer(ip(a), &[]), Ok(()), "{a} must pass");
        }
    }

    #[test]
    fn names_the_range() {
        assert_eq!(check_peer(ip("127.0.0.1"), &[]).unwrap_err().what, "loopback");
        assert_eq!(check_peer(ip("::ffff:127.0.0.1"), &[]).unwrap_err().range, "127.0.0.0/8");
        assert_eq!(check_peer(ip("169.254.169.254"), &[]).unwrap_err().what, "link-local (cloud metadata)");
    }

    #[test]
    fn allow_list_overrides_in_every_spelling() {
        let allow: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        for a in ["127.0.0.1", "::ffff:127.0.0.1", "::127.0.0.2", "fd12::1"] {
            assert_eq!(check_peer(ip(a), &allow), Ok(()), "{a}");
        }
        for a in ["::1", "10.0.0.1", "fc00::1", "0.0.0.0", "::"] {
            assert!(check_peer(ip(a), &allow).is_err(), "{a} is not allow-listed");
        }
    }

    #[test]
    fn embedded_forms() {
        assert_eq!(embedded_v4("::ffff:1.2.3.4".parse().unwrap()), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(embedded_v4("::1.2.3.4".parse().unwrap()), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(embedded_v4("64:ff9b::1.2.3.4".parse().unwrap()), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(embedded_v4("2002:102:304::".parse().unwrap()), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(embedded_v4("::1".parse().unwrap()), None);
        assert_eq!(embedded_v4("::".parse().unwrap()), None);
        assert_eq!(embedded_v4("2606:4700::1".parse().unwrap()), None);
    }
}

//! Any datagram or stream bytes a client may send, through the STUN/TURN/ChannelData path:
//! with and without an allocation, over UDP and TCP framing, and as peer data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use switchboard_proto::turn::allocation::RelayTransport;
use switchboard_proto::turn::auth::{FailureLimiter, UserDb};
use switchboard_proto::turn::server::{Ctx, NatDiscovery, QuotaReached, Quotas, TurnConfig, TurnServer};
use switchboard_proto::turn::{channel_data, AllocationState, ClientTransport};

struct Open;
impl Quotas for Open {
    fn may_allocate(&self, _: &str) -> Result<(), QuotaReached> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut users = UserDb { rest_secrets: vec![b"s".to_vec()], separator: ':', ..Default::default() };
    users.static_users.insert("u".into(), "p".into());
    let cfg = TurnConfig { allow_peers: vec!["127.0.0.0/8".parse().unwrap()], relay_v6: true, ..TurnConfig::default() };
    let server = TurnServer::new(cfg.clone(), users.clone(), b"n".to_vec(), 600);
    // The same bytes again with RFC 5780 on (CHANGE-REQUEST parsing, answers from elsewhere).
    let nat = TurnServer::new(
        TurnConfig {
            nat_discovery: Some(NatDiscovery { ips: ["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()], ports: [3478, 3479] }),
            ..cfg
        },
        users,
        b"n".to_vec(),
        600,
    );
    let limiter = FailureLimiter::new(5, 60, 16, std::hash::RandomState::new());
    let client: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let relay: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    for transport in [ClientTransport::Udp, ClientTransport::Tcp] {
        let ctx = Ctx { client, server: "127.0.0.1:3478".parse().unwrap(), transport, now_ms: 1_800_000_000_000 };
        let _ = server.handle(None, &Open, &limiter, &ctx, data);
        let _ = nat.handle(None, &Open, &limiter, &ctx, data);
        let mut a = AllocationState::new(client, ctx.server, transport, relay, RelayTransport::Udp, "u".into(), [0; 12], u64::MAX, 8, 8);
        a.permit("127.0.0.9".parse().unwrap(), u64::MAX, 0);
        let _ = a.bind_channel(0x4000, "127.0.0.9:1".parse().unwrap(), u64::MAX, 0);
        let _ = server.handle(Some(&mut a), &Open, &limiter, &ctx, data);
        let mut out = Vec::new();
        let _ = server.wrap_peer_data(&a, "127.0.0.9:1".parse().unwrap(), data, 1, &mut out);
        let _ = server.wrap_peer_data(&a, "127.0.0.9:2".parse().unwrap(), data, 1, &mut out);
    }
    let _ = channel_data::parse(data);
    let _ = channel_data::framed_len(data);
});

//! What a node tells its operator at start and in `/admin/status`: the addresses it advertises
//! to clients, and warnings about settings under which calls will not work for some of them.

use std::net::IpAddr;

use serde::Serialize;

use crate::config::Config;

/// The addresses clients are given.
#[derive(Debug, Clone, Serialize)]
pub struct Advertised {
    /// Where browsers and apps reach the room server and signaling.
    pub public_url: String,
    /// TURN URIs handed out; `{host}` stands for the host name the client used.
    pub turn_uris: Vec<String>,
    /// The address relay sockets bind to, and the one advertised for them behind NAT.
    pub relay_ip: Option<String>,
    pub external_ip: Option<String>,
}

impl Advertised {
    pub fn of(config: &Config) -> Self {
        let scheme = if config.tls().is_some() { "https" } else { "http" };
        let public_url = if config.cluster.public_url.is_empty() {
            format!("{scheme}://{}", config.http.listen)
        } else {
            config.cluster.public_url.clone()
        };
        let t = &config.turn;
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let turn_uris = crate::node::Derived::new(config, "").turn_urls;
        Advertised {
            public_url,
            turn_uris,
            relay_ip: t.enabled.then(|| t.relay_ip.clone()),
            external_ip: if t.enabled { non_empty(&t.external_ip) } else { None },
        }
    }
}

/// Settings that will keep calls from working for someone, each with what to do about it.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let listen = config.http.listen.ip();
    let local_only = listen.is_loopback();
    if local_only {
        out.push(format!(
            "http.listen is {}: only this machine can reach the node; listen on 0.0.0.0 or a public address to serve others",
            config.http.listen
        ));
    } else if config.tls().is_none() {
        out.push(
            "plain HTTP on a non-local address: browsers give camera and microphone only to https:// pages (or localhost); \
             set http.tls_cert and http.tls_key, or serve through a TLS proxy"
                .to_owned(),
        );
    }
    let t = &config.turn;
    if t.enabled && t.external_ip.is_empty() && !local_only {
        match t.relay_ip.parse::<IpAddr>() {
            Ok(ip) if ip.is_loopback() || ip.is_unspecified() => out.push(format!(
                "turn.relay_ip is {ip}: remote clients are given a relay address they cannot use; set it to this host's address \
                 (and turn.external_ip to the public one behind NAT)"
            )),
            Ok(ip) if is_private(ip) => out.push(format!(
                "turn.relay_ip {ip} is a private address and turn.external_ip is unset: clients outside this network get a relay \
                 address they cannot reach; behind NAT set turn.external_ip to the public IP"
            )),
            _ => {}
        }
    }
    if t.enabled && t.allow_peers.iter().any(|p| p.starts_with("127.") || p == "::1/128") {
        out.push("turn.allow_peers lets the relay reach loopback addresses: for local testing only".to_owned());
    }
    if t.enabled && config.ice.turn_secret.is_empty() && !config.cluster.enabled {
        out.push(
            "ice.turn_secret is unset: TURN credentials are signed with a secret made up at start and stop working when the \
             node restarts; set ice.turn_secret"
                .to_owned(),
        );
    }
    if config.cluster.admin_token.is_empty() {
        // Not a fault, but the reason `switchboard ctl` will be refused.
        out.push("cluster.admin_token is unset: the admin API and `switchboard ctl` are disabled".to_owned());
    }
    out
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xC0) == 64) || v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xFE00) == 0xFC00 || (v6.segments()[0] & 0xFFC0) == 0xFE80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(sets: &[&str]) -> Config {
        let mut args = vec!["switchboard".to_owned()];
        for s in sets {
            args.push("--set".into());
            args.push((*s).into());
        }
        Config::from_table(Config::merged(&crate::config::Cli::parse_from(args), &[]).unwrap()).unwrap()
    }

    fn warned(c: &Config, needle: &str) -> bool {
        warnings(c).iter().any(|w| w.contains(needle))
    }

    #[test]
    fn warns_about_what_breaks_calls() {
        let local = config(&[]);
        assert!(warned(&local, "only this machine"));
        assert!(!warned(&local, "relay address"), "a local node relays locally");
        let public = config(&["http.listen=\"0.0.0.0:8083\"", "turn.relay_ip=\"10.1.2.3\""]);
        assert!(warned(&public, "https:// pages"));
        assert!(warned(&public, "turn.external_ip"));
        let behind_nat = config(&["http.listen=\"0.0.0.0:8083\"", "turn.relay_ip=\"10.1.2.3\"", "turn.external_ip=\"203.0.113.7\""]);
        assert!(!warned(&behind_nat, "turn.external_ip"));
        assert_eq!(Advertised::of(&behind_nat).external_ip.as_deref(), Some("203.0.113.7"));
        let loopback_relay = config(&["http.listen=\"0.0.0.0:8083\""]);
        assert!(warned(&loopback_relay, "turn.relay_ip is 127.0.0.1"));
        assert!(warned(&config(&["turn.allow_peers=[\"127.0.0.0/8\"]"]), "loopback"));
        assert!(!warned(&config(&["ice.turn_secret=\"s\""]), "ice.turn_secret"));
    }
}

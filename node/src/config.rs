//! Node configuration: embedded defaults (`configs/single.toml`) < a TOML file < environment
//! (`SWITCHBOARD_SECTION__KEY=value`) < command-line flags. Unknown keys are errors, not typos
//! silently ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Deserialize;
use switchboard_proto::rooms::Limits;

/// The single-node configuration compiled into the binary.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../../configs/single.toml");

/// Prefix of environment overrides; `__` separates the section from the key.
const ENV_PREFIX: &str = "SWITCHBOARD_";

/// Command-line flags. Every setting can also be given with `--set section.key=value`.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about = "WebRTC rendezvous node: AppRTC room server, Collider signaling, STUN/TURN")]
pub struct Cli {
    /// TOML configuration file; without it the embedded single-node defaults apply.
    #[arg(short, long, env = "SWITCHBOARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Public HTTP(S) listener (room server, web client, signaling), e.g. 127.0.0.1:8083.
    #[arg(long)]
    pub listen: Option<String>,
    /// Node id in the cluster.
    #[arg(long)]
    pub node_id: Option<u64>,
    /// Any setting, as `section.key=value` (value in TOML syntax; bare words are strings).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Without a subcommand the node runs.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What the binary does besides running a node.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Operate a running node through its admin API.
    Ctl(crate::ctl::CtlArgs),
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeSection,
    pub http: HttpSection,
    pub rooms: RoomsSection,
    pub apprtc: ApprtcSection,
    pub ice: IceSection,
    pub turn: TurnSection,
    pub cluster: ClusterSection,
    pub ops: OpsSection,
    pub log: LogSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsSection {
    /// Listener of its own for `/metrics` and `/admin/...`; empty serves them on `http.listen`.
    pub listen: String,
}

impl OpsSection {
    /// The ops listener's address, when it has one of its own.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// This node's id (1 on a single node).
    pub id: u64,
    /// Where the node keeps its state.
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Public listener: room server, web client, REST, WebSocket signaling.
    pub listen: SocketAddr,
    /// Optional second listener with the same handlers, for deployments that split Collider
    /// onto its own port as AppRTC did (8089). Empty: none.
    pub signaling_listen: String,
    /// PEM certificate chain; with `tls_key` the listeners speak HTTPS/WSS.
    pub tls_cert: String,
    /// PEM private key.
    pub tls_key: String,
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// Most simultaneous connections per worker.
    pub max_connections: usize,
    /// Most simultaneous WebSocket sessions on this node.
    pub max_sessions: usize,
    /// Largest signaling message (HTTP body or WebSocket frame) in bytes.
    pub max_message_bytes: usize,
    /// Frames a session may have waiting for a slow socket before it is closed.
    pub session_send_queue: usize,
    /// Seconds a WebSocket may stay open without registering (then closed with 1008).
    pub register_timeout_secs: u64,
    /// Seconds a request body may take to arrive (then 408).
    pub body_timeout_secs: u64,
    /// Most simultaneous connections (WebSocket sessions included) from one source address.
    pub connections_per_ip: u32,
    /// Most simultaneous WebSocket sessions from one source address (then HTTP 429).
    pub sessions_per_ip: usize,
    /// Room-server joins per source IP per second (429 beyond).
    pub joins_per_second_per_ip: u32,
    /// `/message` posts per source IP per second (429 beyond).
    pub messages_per_second_per_ip: u32,
    /// Seconds the node waits for connections to finish on shutdown.
    pub shutdown_timeout_secs: u64,
}

impl HttpSection {
    /// How long a request body may take.
    pub fn body_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.body_timeout_secs)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomsSection {
    /// Milliseconds an unregistered Collider client is kept (AppRTC: 10 000).
    pub register_grace_ms: u64,
    /// Messages queued per client for a peer that has not registered (AppRTC: 1024).
    pub queue_cap: usize,
    /// Messages a lone member may store for the next joiner.
    pub stored_cap: usize,
    /// Most rooms at once (in a cluster, in the replicated state: cluster-wide).
    pub max_rooms: usize,
    /// Bytes a lone member may store for the next joiner.
    pub stored_bytes_per_room: usize,
    /// Bytes stored in all rooms together (every node of a cluster holds them all).
    pub stored_bytes_total: usize,
    /// Seconds a room without a connected socket lives after its last activity (AppRTC: 86 400).
    pub room_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprtcSection {
    /// Base of `ice_server_url`; empty means this server.
    pub ice_server_base_url: String,
    /// `key` of `ice_server_url` (AppRTC's ICE_SERVER_API_KEY).
    pub ice_server_api_key: String,
    /// Banner shown by the web client; empty for none.
    pub header_message: String,
    /// `host:port` put in `wss_url`; empty means the host the client used.
    pub signaling_host_port: String,
    /// `"auto"` follows the request's scheme, or `"true"` / `"false"`.
    pub signaling_tls: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceSection {
    /// `stun:` URIs handed out by `/v1alpha/iceconfig`. `{host}` is replaced by the host name
    /// the client used.
    pub stun_urls: Vec<String>,
    /// `turn:`/`turns:` URIs of a TURN server that shares `turn_secret` (until the built-in
    /// TURN server is enabled, an external coturn with `use-auth-secret`). `{host}` as above.
    pub turn_urls: Vec<String>,
    /// Shared secret for TURN REST credentials; empty hands out no TURN entry.
    pub turn_secret: String,
    /// Lifetime of issued TURN credentials in seconds.
    pub turn_ttl_secs: u64,
    /// Origins besides this deployment's own whose pages may fetch TURN credentials.
    pub allowed_origins: Vec<String>,
    /// Credentials minted per source IP per minute.
    pub credentials_per_minute: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnSection {
    /// Run the STUN/TURN server.
    pub enabled: bool,
    /// UDP and TCP listeners (3478, and 3479 as the alternate port).
    pub listen: Vec<SocketAddr>,
    /// TLS (`turns:`) listeners, e.g. `0.0.0.0:5349`; they need a certificate.
    pub tls_listen: Vec<SocketAddr>,
    /// PEM certificate and key for TURN over TLS; empty uses `http.tls_cert`/`http.tls_key`.
    pub tls_cert: String,
    pub tls_key: String,
    /// Address relay sockets bind to for IPv4 allocations.
    pub relay_ip: String,
    /// Address relay sockets bind to for IPv6 allocations (RFC 6156); empty: none.
    pub relay_ip6: String,
    /// Public IPv4 address advertised in XOR-RELAYED-ADDRESS when the node sits behind NAT.
    pub external_ip: String,
    /// Public IPv6 address advertised for IPv6 relays.
    pub external_ip6: String,
    /// First and last relay port.
    pub min_port: u16,
    pub max_port: u16,
    /// Realm of the long-term credentials.
    pub realm: String,
    /// More TURN REST secrets accepted besides `ice.turn_secret` (rotation: old ones stay valid).
    pub extra_secrets: Vec<String>,
    /// Static users as `name:password`.
    pub users: Vec<String>,
    /// Peers allowed although they are in a special-purpose range (CIDRs, e.g. a private SFU;
    /// tests use 127.0.0.0/8). Nothing else private, loopback or link-local is ever a peer.
    pub allow_peers: Vec<String>,
    /// UDP data-plane threads; 0 means one per core.
    pub threads: usize,
    /// Allocations on this node at once (then 486).
    pub max_allocations: usize,
    /// Allocations one user may hold at once (then 486).
    pub user_quota: usize,
    /// Permissions and channels one allocation may hold.
    pub max_permissions: usize,
    pub max_channels: usize,
    /// Allocation lifetimes (s): granted when the client asks for less, and the most granted.
    pub default_lifetime: u32,
    pub max_lifetime: u32,
    /// How long a nonce is good for (then 438).
    pub nonce_ttl_secs: u64,
    /// Bandwidth cap per allocation in bytes/s, both directions; 0 for none.
    pub max_bps: u64,
    /// Failed authentications per source per minute before its requests are ignored.
    pub auth_failures_per_minute: u32,
    /// SOFTWARE attribute in responses; empty for none.
    pub software: String,
    /// Offer RFC 6062 TCP relays to TCP/TLS clients.
    pub tcp_relay: bool,
    /// Socket buffer size for listeners (bytes).
    pub socket_buffer: usize,
    /// RFC 5780 NAT behaviour discovery: the node's second IP (the first is the first
    /// `listen` address's). Empty: off. When set, STUN listens on both IPs × both ports.
    pub alternate_ip: String,
}

impl TurnSection {
    /// The RFC 5780 addresses, when `alternate_ip` is set: the first listener's IP and port,
    /// the alternate IP, and the port of another listener on the first IP (or the next port).
    pub fn nat_discovery(&self) -> Option<switchboard_proto::turn::server::NatDiscovery> {
        let alt: std::net::IpAddr = self.alternate_ip.parse().ok()?;
        let first = *self.listen.first()?;
        let alt_port = self
            .listen
            .iter()
            .find(|a| a.ip() == first.ip() && a.port() != first.port())
            .map_or(first.port().checked_add(1)?, |a| a.port());
        Some(switchboard_proto::turn::server::NatDiscovery { ips: [first.ip(), alt], ports: [first.port(), alt_port] })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Run as a member of a Raft cluster (otherwise a single node keeps its rooms in memory).
    pub enabled: bool,
    /// Internal listener for the other nodes (Raft and forwarded messages). Keep it off public
    /// networks.
    pub listen: String,
    /// The base URL clients use to reach this node (`http(s)://host:port`).
    pub public_url: String,
    /// Initialise the Raft group with `peers` when this node has never stored anything.
    pub bootstrap: bool,
    /// Shared secret every member proves on connect; empty accepts any peer.
    pub secret: String,
    /// Bearer token of the admin API (`/admin/...`); empty disables it.
    pub admin_token: String,
    /// The initial members, this node included.
    pub peers: Vec<PeerSection>,
    /// Raft heartbeat interval.
    pub heartbeat_ms: u64,
    /// Shortest election timeout (the longest is twice this).
    pub election_timeout_ms: u64,
    /// A member whose link is silent this long is declared down.
    pub node_down_after_ms: u64,
    /// How long clients of a lost node have to register again before they are evicted.
    pub node_loss_grace_ms: u64,
    /// How long a membership change may wait for a majority before it fails.
    pub propose_timeout_ms: u64,
    /// Take a snapshot every this many log entries.
    pub snapshot_logs: u64,
    /// How long SIGTERM may take to hand leadership and sockets over.
    pub drain_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    pub id: u64,
    pub raft_addr: String,
    pub public_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `tracing` filter, e.g. `info` or `switchboard=debug`. `RUST_LOG` wins when set.
    pub filter: String,
    /// `text` or `json`.
    pub format: String,
}

impl Config {
    /// Loads the configuration from the CLI, file and environment.
    pub fn load(cli: &Cli) -> Result<Config> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(cli, &env)
    }

    fn load_from(cli: &Cli, env: &[(String, String)]) -> Result<Config> {
        Self::from_table(Self::merged(cli, env)?)
    }

    /// The configuration `table` (as [`Config::merged`] makes it) describes, checked.
    pub fn from_table(table: toml::Table) -> Result<Config> {
        let mut config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("invalid configuration: {e}"))?;
        config.validate()?;
        // RFC 5780 answers from all four address/port pairs, so all four are listeners.
        if let Some(nd) = config.turn.nat_discovery() {
            for a in nd.addresses() {
                if !config.turn.listen.contains(&a) {
                    config.turn.listen.push(a);
                }
            }
        }
        Ok(config)
    }

    /// Defaults, then the file, the environment and the flags, merged (not yet checked).
    pub fn merged(cli: &Cli, env: &[(String, String)]) -> Result<toml::Table> {
        let mut table: toml::Table =
            EMBEDDED_DEFAULTS.parse().context("embedded defaults are not valid TOML")?;
        if let Some(path) = &cli.config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            let file: toml::Table = text
                .parse()
                .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
            merge(&mut table, file);
        }
        for (key, value) in env {
            // Only SECTION__KEY names are settings; other SWITCHBOARD_* variables belong to
            // tools around the node.
            let Some(rest) = key.strip_prefix(ENV_PREFIX).filter(|r| r.contains("__")) else { continue };
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            set_path(&mut table, &path, value).with_context(|| format!("environment {key}"))?;
        }
        if let Some(listen) = &cli.listen {
            set_path(&mut table, &["http".into(), "listen".into()], listen)?;
        }
        if let Some(id) = cli.node_id {
            set_path(&mut table, &["node".into(), "id".into()], &id.to_string())?;
        }
        for kv in &cli.set {
            let Some((k, v)) = kv.split_once('=') else {
                bail!("--set {kv}: expected section.key=value");
            };
            let path: Vec<String> = k.split('.').map(str::to_owned).collect();
            set_path(&mut table, &path, v).with_context(|| format!("--set {kv}"))?;
        }
        Ok(table)
    }

    /// The configuration `--print-config` shows: every setting as TOML, as loaded from the
    /// defaults, file, environment and flags, with secrets replaced by `<redacted>` (an empty one
    /// stays empty, so it shows what is unset). Fails as loading would.
    pub fn printable(cli: &Cli) -> Result<String> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::printable_from(cli, &env)
    }

    fn printable_from(cli: &Cli, env: &[(String, String)]) -> Result<String> {
        Self::load_from(cli, env)?;
        let mut table = Self::merged(cli, env)?;
        redact(&mut table);
        toml::to_string_pretty(&table).context("cannot print the configuration as TOML")
    }

    fn validate(&self) -> Result<()> {
        if self.http.tls_cert.is_empty() != self.http.tls_key.is_empty() {
            bail!("http.tls_cert and http.tls_key must be given together");
        }
        if !self.http.signaling_listen.is_empty() {
            self.http
                .signaling_listen
                .parse::<SocketAddr>()
                .with_context(|| format!("http.signaling_listen {:?}", self.http.signaling_listen))?;
        }
        if self.http.max_message_bytes < 1024 {
            bail!("http.max_message_bytes must be at least 1024");
        }
        if self.http.session_send_queue == 0 || self.http.max_sessions == 0 {
            bail!("http.session_send_queue and http.max_sessions must be positive");
        }
        if !self.ops.listen.is_empty() {
            let ops: SocketAddr = self.ops.listen.parse().with_context(|| format!("ops.listen {:?}", self.ops.listen))?;
            if ops == self.http.listen {
                bail!("ops.listen must differ from http.listen (leave it empty to serve both on one listener)");
            }
        }
        if self.http.body_timeout_secs == 0 || self.http.connections_per_ip == 0 || self.http.sessions_per_ip == 0 {
            bail!("http.body_timeout_secs, http.connections_per_ip and http.sessions_per_ip must be positive");
        }
        if self.rooms.queue_cap == 0 || self.rooms.max_rooms == 0 {
            bail!("rooms.queue_cap and rooms.max_rooms must be positive");
        }
        if !matches!(self.apprtc.signaling_tls.as_str(), "auto" | "true" | "false") {
            bail!("apprtc.signaling_tls must be \"auto\", \"true\" or \"false\"");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!("log.format must be \"text\" or \"json\"");
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.filter).with_context(|| format!("log.filter {:?}", self.log.filter))?;
        if self.cluster.enabled {
            let c = &self.cluster;
            c.listen.parse::<SocketAddr>().with_context(|| format!("cluster.listen {:?}", c.listen))?;
            if c.public_url.is_empty() {
                bail!("cluster.public_url is required when cluster.enabled");
            }
            if c.secret.len() < 16 {
                bail!("cluster.secret must be at least 16 characters: the nodes authenticate each other with it");
            }
            if c.bootstrap && !c.peers.iter().any(|p| p.id == self.node.id) {
                bail!("cluster.peers must list this node (id {}) to bootstrap", self.node.id);
            }
            if c.heartbeat_ms == 0 || c.election_timeout_ms <= c.heartbeat_ms {
                bail!("cluster.election_timeout_ms must be larger than cluster.heartbeat_ms");
            }
        }
        if self.turn.enabled {
            let t = &self.turn;
            t.relay_ip.parse::<std::net::Ipv4Addr>().with_context(|| format!("turn.relay_ip {:?}", t.relay_ip))?;
            if !t.relay_ip6.is_empty() {
                t.relay_ip6.parse::<std::net::Ipv6Addr>().with_context(|| format!("turn.relay_ip6 {:?}", t.relay_ip6))?;
            }
            if !t.external_ip.is_empty() {
                t.external_ip.parse::<std::net::Ipv4Addr>().with_context(|| format!("turn.external_ip {:?}", t.external_ip))?;
            }
            if !t.external_ip6.is_empty() {
                t.external_ip6.parse::<std::net::Ipv6Addr>().with_context(|| format!("turn.external_ip6 {:?}", t.external_ip6))?;
            }
            if t.min_port == 0 || t.min_port > t.max_port {
                bail!("turn.min_port..turn.max_port is not a port range");
            }
            for a in &t.allow_peers {
                a.parse::<ipnet::IpNet>().with_context(|| format!("turn.allow_peers entry {a:?} is not a CIDR"))?;
            }
            for u in &t.users {
                if !u.contains(':') {
                    bail!("turn.users entries are name:password");
                }
            }
            if !t.tls_listen.is_empty() && t.tls_cert.is_empty() && self.http.tls_cert.is_empty() {
                bail!("turn.tls_listen needs turn.tls_cert/tls_key (or http.tls_cert/tls_key)");
            }
            if t.default_lifetime == 0 || t.default_lifetime > t.max_lifetime {
                bail!("turn.default_lifetime must be between 1 and turn.max_lifetime");
            }
            if !t.alternate_ip.is_empty() {
                let alt: std::net::IpAddr =
                    t.alternate_ip.parse().with_context(|| format!("turn.alternate_ip {:?}", t.alternate_ip))?;
                let Some(first) = t.listen.first() else { bail!("turn.alternate_ip needs a turn.listen address") };
                if first.ip().is_unspecified() || first.ip() == alt || first.is_ipv4() != alt.is_ipv4() {
                    bail!(
                        "turn.alternate_ip (RFC 5780) needs the first turn.listen address to be a specific IP of the same family, other than {alt}"
                    );
                }
                if t.nat_discovery().is_none() {
                    bail!("turn.alternate_ip: no alternate port next to {first}");
                }
            }
        }
        if !self.ice.turn_urls.is_empty() && self.ice.turn_secret.is_empty() {
            bail!("ice.turn_urls needs ice.turn_secret to issue credentials");
        }
        Ok(())
    }

    /// The bounds of the room state machine.
    pub fn limits(&self) -> Limits {
        Limits {
            queue_cap: self.rooms.queue_cap,
            stored_cap: self.rooms.stored_cap,
            register_grace_ms: self.rooms.register_grace_ms,
            room_ttl_ms: self.rooms.room_ttl_secs.saturating_mul(1000),
            max_rooms: self.rooms.max_rooms,
            stored_bytes_per_room: self.rooms.stored_bytes_per_room,
            stored_bytes_total: self.rooms.stored_bytes_total,
        }
    }

    /// Whether the public listeners speak TLS.
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        if self.http.tls_cert.is_empty() {
            None
        } else {
            Some((Path::new(&self.http.tls_cert), Path::new(&self.http.tls_key)))
        }
    }
}

/// Deep-merges `over` into `base`.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Sets `path` to `raw`, read as a TOML value when it parses as one and as a string otherwise.
fn set_path(table: &mut toml::Table, path: &[String], raw: &str) -> Result<()> {
    let (last, parents) = path.split_last().context("empty key")?;
    let mut t = table;
    for p in parents {
        t = match t.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new())) {
            toml::Value::Table(t) => t,
            _ => bail!("{p} is not a section"),
        };
    }
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    t.insert(last.clone(), value);
    Ok(())
}

/// Settings that are secrets, as `section.key`.
const SECRETS: [(&str, &str); 5] = [
    ("apprtc", "ice_server_api_key"),
    ("ice", "turn_secret"),
    ("turn", "extra_secrets"),
    ("cluster", "secret"),
    ("cluster", "admin_token"),
];

const REDACTED: &str = "<redacted>";

/// Replaces every secret of `table` (and the passwords of `turn.users`) with [`REDACTED`].
fn redact(table: &mut toml::Table) {
    fn hide(v: &mut toml::Value) {
        match v {
            toml::Value::String(s) if !s.is_empty() => *s = REDACTED.into(),
            toml::Value::Array(a) => a.iter_mut().for_each(hide),
            _ => {}
        }
    }
    for (section, key) in SECRETS {
        if let Some(v) = table.get_mut(section).and_then(|s| s.get_mut(key)) {
            hide(v);
        }
    }
    if let Some(toml::Value::Array(users)) = table.get_mut("turn").and_then(|t| t.get_mut("users")) {
        for u in users {
            if let toml::Value::String(s) = u {
                let name = s.split_once(':').map_or("", |(n, _)| n).to_owned();
                *s = format!("{name}:{REDACTED}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("switchboard").chain(args.iter().copied()))
    }

    #[test]
    fn printed_config_is_toml_without_secrets() {
        let args = [
            "--set", "cluster.secret=cluster-secret-0123456789",
            "--set", "cluster.admin_token=admin-token-xyz",
            "--set", "ice.turn_secret=turn-secret-abc",
            "--set", "apprtc.ice_server_api_key=api-key-def",
            "--set", "turn.extra_secrets=[\"old-secret-1\", \"old-secret-2\"]",
            "--set", "turn.users=[\"alice:alice-password\"]",
            "--set", "rooms.queue_cap=77",
        ];
        let printed = Config::printable_from(&cli(&args), &[]).unwrap();
        for secret in ["cluster-secret-0123456789", "admin-token-xyz", "turn-secret-abc", "api-key-def", "old-secret", "alice-password"] {
            assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
        }
        let table: toml::Table = printed.parse().expect("the printed configuration is TOML");
        assert_eq!(table["rooms"]["queue_cap"].as_integer(), Some(77));
        assert_eq!(table["cluster"]["secret"].as_str(), Some(REDACTED));
        assert_eq!(table["turn"]["users"][0].as_str(), Some("alice:<redacted>"));
        assert_eq!(table["turn"]["extra_secrets"].as_array().map(|a| a.len()), Some(2));
        // An unset secret stays visibly unset.
        let printed = Config::printable_from(&cli(&[]), &[]).unwrap();
        let table: toml::Table = printed.parse().unwrap();
        assert_eq!(table["ice"]["turn_secret"].as_str(), Some(""));
    }

    #[test]
    fn embedded_defaults_load() {
        let c = Config::load_from(&cli(&[]), &[]).unwrap();
        assert_eq!(c.http.listen.port(), 8083);
        assert_eq!(c.rooms.register_grace_ms, 10_000);
        assert_eq!(c.rooms.queue_cap, 1024);
        assert_eq!(c.http.max_message_bytes, 65_536);
    }

    #[test]
    fn env_and_flags_override_in_order() {
        let env = vec![
            ("SWITCHBOARD_HTTP__LISTEN".to_string(), "127.0.0.9:9000".to_string()),
            ("SWITCHBOARD_ROOMS__REGISTER_GRACE_MS".to_string(), "1000".to_string()),
            ("SWITCHBOARD_BIN".to_string(), "/not/a/setting".to_string()),
        ];
        let c = Config::load_from(&cli(&[]), &env).unwrap();
        assert_eq!(c.http.listen.to_string(), "127.0.0.9:9000");
        assert_eq!(c.rooms.register_grace_ms, 1000);
        let c = Config::load_from(&cli(&["--listen", "127.0.0.2:1", "--set", "rooms.queue_cap=5"]), &env).unwrap();
        assert_eq!(c.http.listen.to_string(), "127.0.0.2:1");
        assert_eq!(c.rooms.queue_cap, 5);
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let e = Config::load_from(&cli(&["--set", "http.lisen=1"]), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("unknown field `lisen`"), "{e:#}");
        let e = Config::load_from(&cli(&["--set", "http.listen=nowhere"]), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("invalid"), "{e:#}");
        let e = Config::load_from(&cli(&["--set", "http.tls_cert=a.pem"]), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("tls_key"), "{e:#}");
        let e = Config::load_from(&cli(&["--config", "/nonexistent.toml"]), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("cannot read config file"), "{e:#}");
    }

    #[test]
    fn rfc5780_listens_on_both_ips_and_ports() {
        let c = Config::load_from(&cli(&["--set", "turn.alternate_ip=\"127.0.0.2\""]), &[]).unwrap();
        let nd = c.turn.nat_discovery().unwrap();
        assert_eq!(nd.ports, [3478, 3479]);
        for a in nd.addresses() {
            assert!(c.turn.listen.contains(&a), "{a} missing from {:?}", c.turn.listen);
        }
        assert!(Config::load_from(&cli(&[]), &[]).unwrap().turn.nat_discovery().is_none(), "off by default");
        let e = Config::load_from(&cli(&["--set", "turn.alternate_ip=\"127.0.0.1\""]), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("RFC 5780"), "{e:#}");
        let e = Config::load_from(&cli(&["--set", "turn.alternate_ip=\"::2\""]), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("same family"), "{e:#}");
    }
}

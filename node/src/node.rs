//! What every handler of a node shares: configuration, the membership, the room registry, the
//! open sessions and the counters Collider reports on `/status`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use arc_swap::ArcSwap;
use switchboard_proto::apprtc;
use switchboard_proto::rooms::Binding;
use tracing::debug;

use crate::config::Config;
use crate::membership::Membership;
use crate::rooms::{RoomRegistry, ToRoom};
use crate::signaling::Directory;

/// Shared state of a node.
pub struct Node {
    /// The configuration in force: a reload swaps it while requests go on.
    config: ArcSwap<Config>,
    /// What the node derives from it.
    derived: ArcSwap<Derived>,
    /// The TURN REST secret when `ice.turn_secret` is empty.
    fallback_turn_secret: String,
    pub membership: Membership,
    pub registry: Addr<RoomRegistry>,
    pub sessions: Directory,
    pub stats: ColliderStats,
    /// The built-in TURN server, when it runs.
    pub turn: Option<std::sync::Arc<crate::turn::Shared>>,
    pub started: Instant,
    /// TURN credentials minted, joins and `/message` posts, per source address.
    pub minted: switchboard_proto::limits::PerSource,
    pub joins: switchboard_proto::limits::PerSource,
    pub messages: switchboard_proto::limits::PerSource,
    /// Join times, for the call set-up histogram.
    pub setup_times: crate::setup_times::SetupTimes,
    draining: AtomicBool,
    /// The admin API asked for a drain (`shutdown_on_signal` waits on it beside the signals).
    pub drain_requested: tokio::sync::Notify,
    /// Re-reads the configuration on SIGHUP and `POST /admin/reload`.
    pub reloader: crate::reload::Reloader,
}

/// What the node derives from its configuration; a reload recomputes it.
pub struct Derived {
    pub apprtc: apprtc::Settings,
    /// The TURN REST secret credentials are issued with.
    pub turn_secret: String,
    /// TURN URIs handed out (`{host}` left to fill).
    pub turn_urls: Vec<String>,
}

impl Derived {
    /// `fallback_turn_secret` serves when `ice.turn_secret` is empty.
    pub fn new(config: &Config, fallback_turn_secret: &str) -> Derived {
        let turn_secret = if config.ice.turn_secret.is_empty() { fallback_turn_secret } else { &config.ice.turn_secret };
        let turn_urls = if config.ice.turn_urls.is_empty() && config.turn.enabled {
            crate::turn::TurnService::uris(config)
        } else {
            config.ice.turn_urls.clone()
        };
        Derived { apprtc: apprtc_settings(config), turn_secret: turn_secret.to_owned(), turn_urls }
    }
}

impl Node {
    pub fn new(
        config: Config,
        membership: Membership,
        registry: Addr<RoomRegistry>,
        fallback_turn_secret: String,
        turn: Option<std::sync::Arc<crate::turn::Shared>>,
        reloader: crate::reload::Reloader,
    ) -> Self {
        Node {
            derived: ArcSwap::from_pointee(Derived::new(&config, &fallback_turn_secret)),
            fallback_turn_secret,
            turn,
            reloader,
            sessions: Directory::new(config.http.max_sessions, config.http.sessions_per_ip),
            minted: switchboard_proto::limits::PerSource::new(config.ice.credentials_per_minute, 60, 65_536, std::hash::RandomState::new()),
            joins: switchboard_proto::limits::PerSource::new(config.http.joins_per_second_per_ip, 1, 65_536, std::hash::RandomState::new()),
            messages: switchboard_proto::limits::PerSource::new(config.http.messages_per_second_per_ip, 1, 65_536, std::hash::RandomState::new()),
            config: ArcSwap::from_pointee(config),
            membership,
            registry,
            stats: ColliderStats::default(),
            started: Instant::now(),
            setup_times: Default::default(),
            draining: AtomicBool::new(false),
            drain_requested: tokio::sync::Notify::new(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// What the node derives from the configuration in force (TURN secret and URIs, AppRTC
    /// settings).
    pub fn derived(&self) -> Arc<Derived> {
        self.derived.load_full()
    }

    /// Puts a reloaded configuration in force: every limit, secret and list read per request
    /// or per new session, and the ones captured by the session table, the per-source limits
    /// and the TURN server.
    pub fn apply(&self, config: Config) {
        let h = &config.http;
        self.sessions.set_limits(h.max_sessions, h.sessions_per_ip);
        self.joins.set_max(h.joins_per_second_per_ip);
        self.messages.set_max(h.messages_per_second_per_ip);
        self.minted.set_max(config.ice.credentials_per_minute);
        let derived = Derived::new(&config, &self.fallback_turn_secret);
        if let Some(t) = &self.turn {
            t.reconfigure(&config.turn, &derived.turn_secret);
        }
        self.derived.store(Arc::new(derived));
        self.config.store(Arc::new(config));
    }

    /// Whether the node is shutting down (not ready, refuses new work).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Drains the node and stops it, as SIGTERM does.
    pub fn request_drain(&self) {
        self.drain_requested.notify_one();
    }

    /// Marks the node as shutting down.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Writes `msg` from client `from` to the socket bound at `at`, which the membership says
    /// is the peer's: here, or over the peer link to its node (no Raft round trip). It is
    /// written after every message the log delivered in the room up to `barrier`. Returns once
    /// the message is queued where the client's next message (by any path) queues behind it.
    pub async fn deliver(&self, room: &str, from: &str, at: Binding, msg: String, barrier: u64) {
        if at.node == self.membership.node_id() {
            // Through the registry and into the room's mailbox before the answer: a `send` the
            // client makes next over its socket goes straight to the room, and must come after.
            let to = ToRoom { room: room.to_owned(), session: at.session, messages: vec![msg], barrier, ack: None };
            if self.registry.send(to).await.is_err() {
                debug!(room, "room registry gone; message dropped");
            }
        } else if let Some(c) = self.membership.as_cluster() {
            if !c.links.forward(at.node, room.to_owned(), from.to_owned(), at.session, vec![msg], barrier) {
                debug!(node = at.node, "no link to the node holding the peer's socket");
            }
        } else {
            debug!(node = at.node, "delivery to another node without a cluster");
        }
    }

    /// TURN URI sets to hand out, best first: in a cluster the least-loaded live node and a
    /// backup (each set names its node); otherwise this node's (or the configured) URIs, with
    /// `{host}` replaced by the host the client used.
    pub fn turn_uri_sets(&self, host: &str) -> Vec<Vec<String>> {
        if let Some(c) = self.membership.as_cluster() {
            let placed: Vec<Vec<String>> = c.turn_placement().into_iter().take(2).map(|(_, uris)| uris).collect();
            if !placed.is_empty() {
                return placed;
            }
        }
        let d = self.derived.load();
        if d.turn_urls.is_empty() {
            return Vec::new();
        }
        vec![d.turn_urls.iter().map(|u| u.replace("{host}", host)).collect()]
    }

    /// The AppRTC settings for one request: the live nodes change as the cluster does.
    pub fn apprtc_settings(&self) -> apprtc::Settings {
        let mut s = self.derived.load().apprtc.clone();
        s.signaling_nodes = self.membership.live_nodes();
        s
    }
}

fn apprtc_settings(config: &Config) -> apprtc::Settings {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    apprtc::Settings {
        ice_server_base_url: non_empty(&config.apprtc.ice_server_base_url),
        ice_server_api_key: config.apprtc.ice_server_api_key.clone(),
        ice_servers_override: None,
        header_message: non_empty(&config.apprtc.header_message),
        signaling_host_port: non_empty(&config.apprtc.signaling_host_port),
        signaling_tls: match config.apprtc.signaling_tls.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        signaling_nodes: Vec::new(),
    }
}

/// Collider's `/status` counters.
#[derive(Default)]
pub struct ColliderStats {
    open: AtomicU64,
    total: AtomicU64,
    ws_errors: AtomicU64,
    http_errors: AtomicU64,
}

impl ColliderStats {
    pub fn registered(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("switchboard_registrations_total").increment(1);
    }

    pub fn unregistered(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn wserror(&self) {
        self.ws_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("switchboard_errors_total", "kind" => "websocket").increment(1);
    }

    pub fn httperror(&self) {
        self.http_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("switchboard_errors_total", "kind" => "http").increment(1);
    }

    /// (openws, totalws, wserrors, httperrors).
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.open.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
            self.ws_errors.load(Ordering::Relaxed),
            self.http_errors.load(Ordering::Relaxed),
        )
    }
}

//! # switchboard
//!
//! One node of Switchboard: AppRTC room server, Collider signaling and the web client on one
//! HTTP(S) listener.
//!
//! ## Layout
//! - `config`: TOML + environment + flags; `reload`: SIGHUP and `POST /admin/reload`.
//! - `ctl/`: `switchboard ctl`, the admin API from a shell.
//! - `membership`: the door to the room state machine (`switchboard-proto::rooms`).
//! - `rooms/`: `RoomRegistry` and one `RoomActor` per room with a socket here.
//! - `signaling/`: one `SignalingSession` actor per WebSocket, Collider's HTTP handlers.
//! - `http/`: routes, room-server API, web pages, operations endpoints, TLS.
//! - `web/`: the static web client, compiled in.
//!
//! ## Lifecycle
//! Start: load config → metrics → registry + membership → listeners. SIGTERM/SIGINT: mark the
//! node draining (`/readyz` 503), tell every socket to go away (close 1001), then stop the
//! listeners within `http.shutdown_timeout_secs`.
#![forbid(unsafe_code)]

mod banner;
mod cluster;
mod config;
mod ctl;
mod http;
mod logging;
mod membership;
mod node;
mod reload;
mod rooms;
mod setup_times;
mod signaling;
mod systemd;
mod turn;

use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, App, HttpServer};
use anyhow::{Context as _, Result};
use clap::Parser;
use switchboard_proto::credentials;
use switchboard_proto::rooms::Command;
use tracing::{error, info, warn};

use crate::config::{Cli, Config};
use crate::membership::Membership;
use crate::node::Node;
use crate::rooms::{now_ms, RoomRegistry};

/// How often the node checks for register-grace and room-idle deadlines.
const TICK_INTERVAL: Duration = Duration::from_millis(200);

fn main() {
    let mut cli = Cli::parse();
    if let Some(config::Command::Ctl(args)) = cli.command.take() {
        std::process::exit(ctl::run(args));
    }
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard: {e:#}");
            std::process::exit(2);
        }
    };
    if cli.print_config {
        match Config::printable(&cli) {
            Ok(toml) => print!("{toml}"),
            Err(e) => {
                eprintln!("switchboard: {e:#}");
                std::process::exit(2);
            }
        }
        return;
    }
    let log = logging::init(&config);
    if let Err(e) = actix_web::rt::System::new().block_on(run(cli, config, log)) {
        error!("{e:#}");
        eprintln!("switchboard: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli, config: Config, log: logging::LogFilter) -> Result<()> {
    // What a reload compares its new reading with.
    let running = Config::merged(&cli, &std::env::vars().collect::<Vec<_>>())?;
    http::ops::install_metrics()?;
    std::fs::create_dir_all(&config.node.data_dir)
        .with_context(|| format!("cannot create node.data_dir {}", config.node.data_dir.display()))?;
    let _ = rustls::crypto::ring::default_provider().install_default();

    let registry_ctx = Context::<RoomRegistry>::new();
    let registry = registry_ctx.address();
    let membership = if config.cluster.enabled {
        let c = cluster::Cluster::start(
            config.node.id,
            config.cluster.clone(),
            &config.node.data_dir,
            config.limits(),
            registry.clone(),
        )
        .await?;
        Membership::cluster(c)
    } else {
        Membership::local(config.node.id, config.limits(), registry.clone().recipient())
    };
    registry_ctx.run(RoomRegistry::new(membership.clone()));

    // TURN credentials: the configured shared secret; without one, in a cluster one derived
    // from the cluster secret (every node must accept every node's credentials); alone, one
    // made up per process.
    let fallback_turn_secret = if config.cluster.enabled {
        credentials::derive_secret(config.cluster.secret.as_bytes(), "switchboard turn-rest")
    } else {
        format!("{:032x}", rand::random::<u128>())
    };
    let turn_secret = node::Derived::new(&config, &fallback_turn_secret).turn_secret;
    let turn_service = if config.turn.enabled {
        // Nonces signed with the cluster secret are good on every node.
        let nonce_secret = if config.cluster.enabled && !config.cluster.secret.is_empty() {
            credentials::derive_secret(config.cluster.secret.as_bytes(), "switchboard turn-nonce").into_bytes()
        } else {
            rand::random::<[u8; 32]>().to_vec()
        };
        Some(turn::TurnService::start(&config, turn_secret.clone(), nonce_secret, actix::Arbiter::new().handle())?)
    } else {
        None
    };
    let node = web::Data::new(Node::new(
        config.clone(),
        membership.clone(),
        registry,
        fallback_turn_secret,
        turn_service.as_ref().map(|t| t.shared.clone()),
        reload::Reloader::new(cli, running, log),
    ));
    spawn_ticker(membership.clone());
    if let Some(c) = membership.as_cluster() {
        report_load(c.clone(), &config, node.clone(), turn_service.as_ref().map(|t| t.shared.clone()));
    }

    let tls = match config.tls() {
        Some((cert, key)) => Some(http::tls::server_config(cert, key)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };

    // One count per source address across every HTTP listener.
    let per_ip = http::per_ip::ConnectionsPerIp::new(config.http.connections_per_ip);
    let listener = Listener { config: &config, node: &node, tls: tls.as_ref(), per_ip: &per_ip };
    let ops_on_main = config.ops.listen_addr().is_none();
    let listen = config.http.listen;
    let main = listener.serve(listen, "", config.http.workers, move |c| http::routes(c, ops_on_main))?;
    let mut handles = vec![main.handle()];
    let mut servers = vec![main];

    if !config.http.signaling_listen.is_empty() {
        let addr: std::net::SocketAddr = config.http.signaling_listen.parse()?;
        let sig = listener.serve(addr, "", config.http.workers, http::signaling_routes)?;
        info!("Collider-style signaling listener on {scheme}://{addr}");
        handles.push(sig.handle());
        servers.push(sig);
    }

    if let Some(addr) = config.ops.listen_addr() {
        let ops = listener.serve(addr, " (ops.listen)", 1, http::ops_listener_routes)?;
        info!("metrics and admin API on {scheme}://{addr}");
        handles.push(ops.handle());
        servers.push(ops);
    }

    info!(node = config.node.id, "Switchboard listening on {scheme}://{listen}");
    let ad = banner::Advertised::of(&config);
    info!(
        public_url = %ad.public_url, turn_uris = ?ad.turn_uris, relay_ip = ad.relay_ip.as_deref().unwrap_or("-"),
        external_ip = ad.external_ip.as_deref().unwrap_or("-"), "advertised to clients"
    );
    for w in banner::warnings(&config) {
        warn!("{w}");
    }
    let example_room: String = format!("{:06}", rand::random::<u32>() % 1_000_000);
    info!("open {scheme}://{listen}/r/{example_room} in two browsers to start a call");

    actix_web::rt::spawn(shutdown_on_signal(node.clone(), handles));
    systemd::ready(&format!("serving {scheme}://{listen}"));
    systemd::watchdog(node.registry.clone());
    // Every listener runs only while polled: wait for all of them together.
    futures_util::future::try_join_all(servers).await.context("HTTP server failed")?;
    if let Some(t) = &turn_service {
        t.stop();
    }
    info!("stopped");
    Ok(())
}

/// Puts this node's load and TURN service into the replicated state, and lets the TURN server
/// accept the other nodes' relays as peers.
fn report_load(cluster: std::sync::Arc<cluster::Cluster>, config: &Config, node: web::Data<Node>, turn: Option<std::sync::Arc<turn::Shared>>) {
    // Clients reach this node's TURN server at its external address, else the host of its
    // public URL.
    let public_host = if !config.turn.external_ip.is_empty() {
        config.turn.external_ip.clone()
    } else {
        config.cluster.public_url.parse::<actix_web::http::Uri>().ok().and_then(|u| u.host().map(str::to_owned)).unwrap_or_default()
    };
    let uris: Vec<String> = if turn.is_some() && !public_host.is_empty() {
        turn::TurnService::uris(config).iter().map(|u| u.replace("{host}", &public_host)).collect()
    } else {
        Vec::new()
    };
    let t = &config.turn;
    let mut relay_ips: Vec<std::net::IpAddr> = Vec::new();
    if turn.is_some() {
        let advertised = if t.external_ip.is_empty() { &t.relay_ip } else { &t.external_ip };
        relay_ips.extend(advertised.parse::<std::net::IpAddr>().ok());
        relay_ips.extend(t.relay_ip6.parse::<std::net::IpAddr>().ok());
    }
    let (min_port, max_port) = (t.min_port, t.max_port);
    let measure_turn = turn.clone();
    cluster.report_load(
        move || switchboard_proto::cluster::LoadReport {
            sessions: node.sessions.open() as u64,
            allocations: measure_turn.as_ref().map_or(0, |t| t.quotas.total() as u64),
            relay_bps: 0,
            turn_uris: uris.clone(),
            relay_ips: relay_ips.clone(),
            relay_min_port: min_port,
            relay_max_port: max_port,
        },
        move |relays| {
            if let Some(t) = &turn {
                t.server.set_cluster_relays(relays);
            }
        },
    );
}

/// Applies `Tick` whenever a register grace or idle room is due (a cluster's leader does this
/// for everyone).
fn spawn_ticker(membership: Membership) {
    if !membership.runs_timers() {
        return;
    }
    actix_web::rt::spawn(async move {
        let mut interval = actix_web::rt::time::interval(TICK_INTERVAL);
        loop {
            interval.tick().await;
            let now = now_ms();
            if membership.read(|r| r.next_deadline()).is_some_and(|d| d <= now) {
                if let Err(e) = membership.propose(Command::Tick { now_ms: now }).await {
                    warn!(error = %e, "tick failed");
                }
            }
        }
    });
}

/// What every HTTP listener of the node shares: its settings, TLS and the per-address count.
struct Listener<'a> {
    config: &'a Config,
    node: &'a web::Data<Node>,
    tls: Option<&'a rustls::ServerConfig>,
    per_ip: &'a std::sync::Arc<http::per_ip::ConnectionsPerIp>,
}

impl Listener<'_> {
    /// An HTTP server of `routes` on `addr` (`what` names it in errors), with `workers` threads
    /// (0: one per core).
    fn serve<R>(&self, addr: std::net::SocketAddr, what: &str, workers: usize, routes: R) -> Result<actix_web::dev::Server>
    where
        R: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
    {
        let node = self.node.clone();
        let mut server = HttpServer::new(move || App::new().app_data(node.clone()).configure(routes.clone()))
            .disable_signals()
            .shutdown_timeout(self.config.http.shutdown_timeout_secs)
            .max_connections(self.config.http.max_connections)
            .client_request_timeout(Duration::from_secs(10))
            .on_connect(http::on_connect(self.per_ip.clone()));
        if workers > 0 {
            server = server.workers(workers);
        }
        let socket = http::listener(addr).with_context(|| format!("cannot listen on {addr}{what}"))?;
        let server = match self.tls {
            Some(t) => server.listen_rustls_0_23(socket, t.clone()),
            None => server.listen(socket),
        }
        .with_context(|| format!("cannot listen on {addr}{what}"))?;
        Ok(server.run())
    }
}

async fn shutdown_on_signal(node: web::Data<Node>, handles: Vec<actix_web::dev::ServerHandle>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        error!("cannot install signal handlers");
        return;
    };
    // SIGHUP (a closed terminal, a `kill -HUP` meant as a reload) must not end every call.
    let mut hup = signal(SignalKind::hangup()).ok();
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: draining"); break }
            _ = int.recv() => { info!("SIGINT: draining"); break }
            _ = node.drain_requested.notified() => { info!("admin API: draining"); break }
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                info!("SIGHUP: reloading the configuration");
                // The outcome is logged either way; a bad file leaves the node as it was.
                let _ = node.reloader.reload(&node);
            }
        }
    }
    node.start_draining();
    systemd::stopping();
    let cluster = node.membership.as_cluster().cloned();
    let drain = Duration::from_secs(if cluster.is_some() { node.config().cluster.drain_timeout_secs } else { 2 });
    let deadline = std::time::Instant::now() + drain;
    if let Some(c) = &cluster {
        c.hand_over(drain / 2).await;
    }
    let n = node.sessions.going_away();
    info!(sessions = n, "told sockets to reconnect elsewhere (1001 Going Away)");
    // Give the close frames a moment to reach the wire (and, in a cluster, the released
    // bindings a moment to commit) before the listeners stop.
    while node.sessions.open() > 0 && std::time::Instant::now() < deadline {
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(c) = &cluster {
        actix_web::rt::time::sleep(Duration::from_millis(200).min(deadline.saturating_duration_since(std::time::Instant::now()))).await;
        c.shutdown().await;
    }
    for h in handles {
        h.stop(true).await;
    }
}

//! Operations endpoints: `/healthz` (the process is up), `/readyz` (it takes new work) and
//! Prometheus `/metrics`, on the main listener or on `ops.listen`.

use std::sync::OnceLock;

use actix_web::{web, HttpResponse};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::node::Node;

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide metrics recorder. Call once, before any metric is touched.
pub fn install_metrics() -> anyhow::Result<()> {
    // Latencies as Prometheus histograms (dashboards take quantiles across nodes from buckets).
    let buckets = [0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .map_err(|e| anyhow::anyhow!("metrics buckets: {e}"))?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    let _ = PROMETHEUS.set(handle);
    zero_counters();
    Ok(())
}

/// Series the shipped alerts and dashboard use, at 0 from the start: a rate over a series that
/// does not exist yet is empty, and an alert on it could never fire.
fn zero_counters() {
    for name in [
        "switchboard_registrations_total",
        "switchboard_http_connections_refused_total",
        "switchboard_forwarded_total",
        "switchboard_forwards_received_total",
        "switchboard_forward_dropped_total",
        "switchboard_forwards_resent_total",
        "switchboard_turn_allocations_total",
        "switchboard_turn_allocations_expired_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    for path in ["direct", "forwarded", "log", "stored"] {
        metrics::counter!("switchboard_messages_total", "path" => path).absolute(0);
    }
    for reason in ["no_relay_port", "send_or_cap", "no_permission"] {
        metrics::counter!("switchboard_turn_dropped_total", "reason" => reason).absolute(0);
    }
    for result in ["ok", "error"] {
        metrics::counter!("switchboard_config_reloads_total", "result" => result).absolute(0);
    }
    metrics::counter!("switchboard_turn_auth_failures_total", "transport" => "udp").absolute(0);
    metrics::counter!("switchboard_errors_total", "kind" => "http").absolute(0);
}

/// `GET /healthz`: 200 while the process runs, draining included.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok\n")
}

/// `GET /readyz`: 200 when the node takes new joins and sockets, 503 otherwise.
pub async fn readyz(node: web::Data<Node>) -> HttpResponse {
    if node.is_draining() {
        HttpResponse::ServiceUnavailable().body("draining\n")
    } else if !node.membership.ready() {
        HttpResponse::ServiceUnavailable().body("no cluster leader\n")
    } else {
        HttpResponse::Ok().body("ready\n")
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(node: web::Data<Node>) -> HttpResponse {
    let (open, _, _, _) = node.stats.snapshot();
    let (rooms, bound) = node.membership.read(|r| (r.room_count(), r.bound_count()));
    metrics::gauge!("switchboard_rooms").set(rooms as f64);
    metrics::gauge!("switchboard_bound_clients").set(bound as f64);
    metrics::gauge!("switchboard_sessions").set(node.sessions.open() as f64);
    metrics::gauge!("switchboard_registered_sessions").set(open as f64);
    let config = node.config();
    if let Some(t) = &node.turn {
        metrics::gauge!("switchboard_turn_allocations").set(t.quotas.total() as f64);
        metrics::gauge!("switchboard_turn_allocations_limit").set(config.turn.max_allocations as f64);
        let ports = u32::from(config.turn.max_port - config.turn.min_port) + 1;
        metrics::gauge!("switchboard_turn_relay_ports").set(f64::from(ports));
    }
    metrics::gauge!("switchboard_draining").set(if node.is_draining() { 1.0 } else { 0.0 });
    let ready = !node.is_draining() && node.membership.ready();
    metrics::gauge!("switchboard_ready").set(if ready { 1.0 } else { 0.0 });
    metrics::gauge!("switchboard_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    match PROMETHEUS.get() {
        Some(h) => HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(h.render()),
        None => HttpResponse::ServiceUnavailable().body("metrics recorder not installed\n"),
    }
}

/// `/metrics` and `/admin/...` on the main listener when `ops.listen` serves them.
pub async fn elsewhere() -> HttpResponse {
    HttpResponse::NotFound().body("not served here: metrics and the admin API are on this node's ops.listen\n")
}

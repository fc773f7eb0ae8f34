//! Operations endpoints: `/healthz` (the process is up), `/readyz` (it takes new work) and
//! Prometheus `/metrics`, on the main listener or on `ops.listen`.

use std::sync::OnceLock;

use actix_web::{web, HttpResponse};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::node::Node;

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide metrics recorder. Call once, before any metric is touched.
pub fn install_metrics() -> anyhow::Result<()> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    let _ = PROMETHEUS.set(handle);
    Ok(())
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
    if let Some(t) = &node.turn {
        metrics::gauge!("switchboard_turn_allocations").set(t.quotas.total() as f64);
    }
    metrics::gauge!("switchboard_draining").set(if node.is_draining() { 1.0 } else { 0.0 });
    match PROMETHEUS.get() {
        Some(h) => HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(h.render()),
        None => HttpResponse::ServiceUnavailable().body("metrics recorder not installed\n"),
    }
}

/// `/metrics` and `/admin/...` on the main listener when `ops.listen` serves them.
pub async fn elsewhere() -> HttpResponse {
    HttpResponse::NotFound().body("not served here: metrics and the admin API are on this node's ops.listen\n")
}

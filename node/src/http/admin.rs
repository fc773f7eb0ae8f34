//! The cluster admin API (bearer-token protected): the cluster's status and members, the rooms.
//! Disabled (403) unless `cluster.admin_token` is set; `admin_node` has one node's operations.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use switchboard_proto::credentials::constant_time_eq;
use tracing::{info, warn};

use crate::cluster::types::PeerInfo;
use crate::node::Node;

/// `Err` is the response to send instead (403 when the admin API is off, else 401).
#[allow(clippy::result_large_err)]
pub(super) fn authorised(req: &HttpRequest, node: &Node) -> Result<(), HttpResponse> {
    let token = &node.config().cluster.admin_token;
    if token.is_empty() {
        return Err(HttpResponse::Forbidden().json(json!({"error": "admin API disabled: set cluster.admin_token"})));
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        warn!("admin request with a wrong token refused");
        metrics::counter!("switchboard_errors_total", "kind" => "admin_auth").increment(1);
        Err(HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .json(json!({"error": "wrong or missing bearer token"})))
    }
}

fn not_clustered() -> HttpResponse {
    HttpResponse::NotFound().json(json!({"error": "this node is not a cluster member"}))
}

/// `GET /admin/cluster/status`.
pub async fn status(req: HttpRequest, node: web::Data<Node>) -> HttpResponse {
    if let Err(r) = authorised(&req, &node) {
        return r;
    }
    let Some(c) = node.membership.as_cluster() else { return not_clustered() };
    // With what this node advertises and warns about, as its start-up banner says.
    let mut status = serde_json::to_value(c.status()).unwrap_or_default();
    let config = node.config();
    if let Some(o) = status.as_object_mut() {
        o.insert("advertised".into(), serde_json::to_value(crate::banner::Advertised::of(&config)).unwrap_or_default());
        o.insert("warnings".into(), json!(crate::banner::warnings(&config)));
    }
    HttpResponse::Ok().json(status)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddNode {
    id: u64,
    raft_addr: String,
    public_url: String,
    /// `voter` (the default) or `learner`.
    #[serde(default)]
    role: Role,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Voter,
    Learner,
}

/// `POST /admin/cluster/nodes` `{"id", "raft_addr", "public_url", "role"}`: adds a node (it
/// must be running with an empty data directory); it catches up as a learner, then votes,
/// unless `role` is `learner`: then it serves clients, signaling and TURN like any node without
/// counting for commits (promote it later with `POST /admin/cluster/nodes/{id}/promote`).
pub async fn add_node(req: HttpRequest, payload: web::Payload, node: web::Data<Node>) -> HttpResponse {
    if let Err(r) = authorised(&req, &node) {
        return r;
    }
    // Read only once authorised, and by the deadline of every body.
    let body = match crate::http::read_body(payload, 64 * 1024, node.config().http.body_timeout()).await {
        Ok(b) => b,
        Err(e) => return HttpResponse::build(e.status()).json(json!({"error": format!("request body: {e}")})),
    };
    let b: AddNode = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return HttpResponse::BadRequest().json(json!({"error": format!("request body: {e}")})),
    };
    let Some(c) = node.membership.as_cluster() else { return not_clustered() };
    info!(id = b.id, raft = %b.raft_addr, "adding a node");
    let voter = b.role == Role::Voter;
    match c.add_node(b.id, PeerInfo { raft_addr: b.raft_addr, public_url: b.public_url }, voter).await {
        Ok(()) => HttpResponse::Ok().json(json!({"result": "added", "id": b.id, "voter": voter})),
        Err(e) => HttpResponse::Conflict().json(json!({"error": e})),
    }
}

/// `POST /admin/cluster/nodes/{id}/promote`: a learner becomes a voter.
pub async fn promote_node(req: HttpRequest, path: web::Path<u64>, node: web::Data<Node>) -> HttpResponse {
    if let Err(r) = authorised(&req, &node) {
        return r;
    }
    let Some(c) = node.membership.as_cluster() else { return not_clustered() };
    let id = path.into_inner();
    info!(id, "promoting a learner to voter");
    match c.promote_node(id).await {
        Ok(()) => HttpResponse::Ok().json(json!({"result": "promoted", "id": id})),
        Err(e) => HttpResponse::Conflict().json(json!({"error": e})),
    }
}

/// `DELETE /admin/cluster/nodes/{id}`.
pub async fn remove_node(req: HttpRequest, path: web::Path<u64>, node: web::Data<Node>) -> HttpResponse {
    if let Err(r) = authorised(&req, &node) {
        return r;
    }
    let Some(c) = node.membership.as_cluster() else { return not_clustered() };
    let id = path.into_inner();
    info!(id, "removing a node");
    match c.remove_node(id).await {
        Ok(()) => HttpResponse::Ok().json(json!({"result": "removed", "id": id})),
        Err(e) => HttpResponse::Conflict().json(json!({"error": e})),
    }
}

#[derive(Deserialize)]
pub struct RoomsQuery {
    limit: Option<usize>,
    prefix: Option<String>,
}

/// `GET /admin/rooms?limit=N&prefix=P`: the rooms this node has applied (members, clients and
/// where their sockets are), up to 1000 by default, only those whose id starts with `P` if given.
pub async fn rooms(req: HttpRequest, q: web::Query<RoomsQuery>, node: web::Data<Node>) -> HttpResponse {
    if let Err(r) = authorised(&req, &node) {
        return r;
    }
    let limit = q.limit.unwrap_or(1000).min(100_000);
    let prefix = q.prefix.as_deref().unwrap_or_default();
    let (total, rooms) = node.membership.read(|r| (r.room_count(), r.views(prefix, limit)));
    HttpResponse::Ok().json(json!({ "total": total, "rooms": rooms }))
}

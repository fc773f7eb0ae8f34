//! One node's operations in the admin API (the token of `admin`): its status, sessions and TURN
//! allocations, closing one, removing a client from its room, draining, credentials, reload.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard_proto::ids::validate_id;
use switchboard_proto::rooms::{Command, Outcome};
use tracing::{info, warn};

use super::admin::authorised;
use crate::banner::Advertised;
use crate::node::Node;
use crate::rooms::now_ms;

/// Most entries one listing returns, whatever `limit` asks.
const MAX_LIST: usize = 100_000;

/// `GET /admin/status`.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub node: u64,
    pub version: &'static str,
    pub uptime_secs: u64,
    pub draining: bool,
    /// Rooms in this node's copy of the state (in a cluster: all of them).
    pub rooms: usize,
    pub sessions: usize,
    pub allocations: usize,
    pub advertised: Advertised,
    pub warnings: Vec<String>,
    /// The cluster as this node sees it, when it is a member.
    pub cluster: Option<crate::cluster::status::ClusterStatus>,
}

pub async fn status(req: HttpRequest, node: web::Data<Node>) -> HttpResponse {
    if let Err(r) = authorised(&req, &node) {
        return r;
    }
    let config = node.config();
    HttpResponse::Ok().json(NodeStatus {
        node: node.membership.node_id(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: node.started.elapsed().as_secs(),
        draining: node.is_draining(),
        rooms: node.membership.read(|r| r.room_count()),
        sessions: node.sessions.open(),
        allocations: node.turn.as_ref().map_or(0, |t| t.quotas.total()),
        advertised: Advertised::of(&config),
        warnings: crate::banner::warnings(&config),
        cluster: node.membership.as_cluster().map(|c| c.status()),
    })
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
    /// Sessions: only those registered in this room.
    room: Option<String>,
    /// Allocations: only those of this username.
    username: Option<String>,
}

/// `GET /admin/sessions?room=R&limit=N`: this node's WebSocket sessions, oldest first.
pub async fn sessions(req: HttpRequest, q: web::Query<ListQuery>, node: web::Data<Node>) -> HttpResponse {
    if let Err(r) = authorised(&req, &node) {
        return r;
    }
    let (total, sessions) = node.sessions.list(q.room.as_deref(), q.limit.unwrap_or(1000).min(MAX_LIST));
    HttpResponse::Ok().json(json!({ "total": total, "sessions": sessions }))
}

/// `DELETE /admin/sessions/{id}`: closes a socket (1008); a registered client may come back.
pub async fn kick_session(req: HttpRequest, path: web::Path<String>, node: web::Data<Node>) -> HttpResponse {
    if let Err(r) = authorised(&req, &node) {
        return r;
    }
    let id = path.into_inner();
    if node.sessions.kick(&id) {
        HttpResponse::Ok().json(json!({ "result": "closed", "session": id }))
    } else {
        HttpResponse::NotFound().json(json!({ "error": format!("no session {id} on this node") }))
    }
}

/// `GET /admin/allocations?username=U&limit=N`: this node's TURN allocations, oldest first.
pub async fn allocations(req: HttpRequest, q: web::Query<ListQuery>, node: web::Data<Node>) -> HttpResponse {
    if let Err(r) = authorised(&req, &node) {
        return r;
    }
    let Some(t) = &node.turn else { return no_turn() };
    let (total, allocations) = t.allocations.list(q.username.as_deref(), q.limit.unwrap_or(1000).min(MAX_LIST));
    HttpResponse::Ok().json(json!({ "total": total, "allocations": allocations }))
}

/// `DELETE /admin/allocations/{id}`: ends an allocation now (relay closed, quota back).
pub async fn kick_allocation(req: HttpRequest, path: web::Path<u64>, node: web::Data<Node>) -> HttpResponse {
    if let Err(r) = authorised(&req, &node) {
        return r;
    }
    let Some(t) = &node.turn else { return no_turn() };
    let id = path.into_inner();
    if t.allocations.kick(id) {
        info!(id, "TURN allocation ended by the operator");
        HttpResponse::Ok().json(json!({ "result": "ended", "allocation": id }))
    } else {
        HttpResponse::NotFound().json(json!({ "error": format!("no allocation {id} on this node") }))
    }
}

fn no_turn() -> HttpResponse {
    HttpResponse::NotFound().json(json!({ "error": "this node runs no TURN server" }))
}

/// `DELETE /admin/rooms/{room}/clients/{client}`: the client leaves its room as `/leave` does
/// and, as Collider's `DELETE` does, loses its socket, on whichever node it is (through the
/// cluster).
pub async fn kick_client(req: HttpRequest, path: web::Path<(String, String)>, node: web::Data<Node>) -> HttpResponse {
    if let Err(r) = authorised(&req, &node) {
        return r;
    }
    let (room, client) = path.into_inner();
    if validate_id(&room).is_err() || validate_id(&client).is_err() {
        return HttpResponse::BadRequest().json(json!({ "error": "room and client ids match [A-Za-z0-9_-]{1,64}" }));
    }
    let now = now_ms();
    let left = node.membership.propose(Command::Leave { room: room.clone(), client: client.clone(), now_ms: now }).await;
    let removed = node.membership.propose(Command::Remove { room: room.clone(), client: client.clone(), now_ms: now }).await;
    match (left, removed) {
        (Ok(l), Ok(r)) if l == Outcome::Left(true) || r == Outcome::Removed(true) => {
            info!(%room, %client, "client removed from its room by the operator");
            HttpResponse::Ok().json(json!({ "result": "removed", "room": room, "client": client }))
        }
        (Ok(_), Ok(_)) => HttpResponse::NotFound().json(json!({ "error": format!("{client} is not in room {room}") })),
        (Err(e), _) | (_, Err(e)) => {
            warn!(%room, %client, error = %e, "removing a client failed");
            HttpResponse::ServiceUnavailable().json(json!({ "error": e.to_string() }))
        }
    }
}

/// `POST /admin/drain`: what SIGTERM does — the node stops taking work, hands Raft leadership
/// over, tells its sockets to reconnect elsewhere (1001) and exits 0 (systemd's
/// `Restart=on-failure` leaves it stopped).
pub async fn drain(req: HttpRequest, node: web::Data<Node>) -> HttpResponse {
    if let Err(r) = authorised(&req, &node) {
        return r;
    }
    info!("drain requested through the admin API");
    node.request_drain();
    HttpResponse::Accepted().json(json!({ "result": "draining", "node": node.membership.node_id() }))
}

#[derive(Deserialize)]
pub struct CredentialsQuery {
    username: Option<String>,
    ttl: Option<u64>,
}

/// `POST /admin/credentials?username=U&ttl=S`: TURN REST credentials, as `/turn` gives a page,
/// for an operator's tools (no origin or rate check).
pub async fn credentials(req: HttpRequest, q: web::Query<CredentialsQuery>, node: web::Data<Node>) -> HttpResponse {
    if let Err(r) = authorised(&req, &node) {
        return r;
    }
    if q.username.as_deref().is_some_and(|u| validate_id(u).is_err()) {
        return HttpResponse::BadRequest().json(json!({ "error": "username must match [A-Za-z0-9_-]{1,64}" }));
    }
    if q.ttl.is_some_and(|t| t == 0 || t > 7 * 86_400) {
        return HttpResponse::BadRequest().json(json!({ "error": "ttl must be between 1 and 604800 seconds" }));
    }
    match super::room_api::rest_credentials(&req, &node, q.username.as_deref(), q.ttl) {
        Some(c) => HttpResponse::Ok().json(c),
        None => HttpResponse::NotFound().json(json!({ "error": "no TURN server is configured" })),
    }
}

/// `POST /admin/reload`: reads the configuration again, as SIGHUP does. 200 with the settings
/// applied and those that need a restart; 400 when the new configuration is refused (the
/// running one stays).
pub async fn reload(req: HttpRequest, node: web::Data<Node>) -> HttpResponse {
    if let Err(r) = authorised(&req, &node) {
        return r;
    }
    match node.reloader.reload(&node) {
        Ok(outcome) => HttpResponse::Ok().json(outcome),
        Err(e) => HttpResponse::BadRequest().json(json!({"error": format!("{e:#}")})),
    }
}

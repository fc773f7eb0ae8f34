//! Collider's HTTP side: `POST /{room}/{client}` sends a message as that client,
//! `DELETE /{room}/{client}` removes the client, any other method answers the CORS preflight,
//! and `GET /status` reports counters. Errors are Go `http.Error` style: 500 and `text\n`.

use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use serde_json::json;
use switchboard_proto::apprtc::html_escape;
use switchboard_proto::ids::validate_id;
use switchboard_proto::rooms::{Command, Outcome, Route};
use tracing::{debug, warn};

use crate::http::{read_body, BodyError};
use crate::node::Node;
use crate::rooms::now_ms;

fn cors(status: StatusCode, methods: &'static str) -> HttpResponseBuilder {
    let mut b = HttpResponse::build(status);
    b.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, methods));
    b
}

fn error(node: &Node, status: StatusCode, text: String) -> HttpResponse {
    node.stats.httperror();
    cors(status, "POST, DELETE")
        .insert_header((header::CONTENT_TYPE, "text/plain; charset=utf-8"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(format!("{text}\n"))
}

fn ok() -> HttpResponse {
    cors(StatusCode::OK, "POST, DELETE").body("OK\n")
}

/// Every path no other route took: Collider's `/{room}/{client}` handler.
pub async fn collider_handler(
    req: HttpRequest,
    payload: web::Payload,
    node: web::Data<Node>,
) -> HttpResponse {
    let path = req.path();
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() != 3 {
        return error(&node, StatusCode::INTERNAL_SERVER_ERROR, format!("Invalid path: {}", html_escape(path)));
    }
    let (room, client) = (parts[1], parts[2]);
    let method = req.method();
    if method != Method::POST && method != Method::DELETE {
        // The CORS preflight of the web client's cross-origin DELETE depends on this.
        return cors(StatusCode::OK, "POST, DELETE").finish();
    }
    if let Err(e) = validate_id(room).and_then(|_| validate_id(client)) {
        return error(&node, StatusCode::BAD_REQUEST, format!("Invalid room or client id: {e}"));
    }
    if *method == Method::DELETE {
        return delete(&node, room, client).await;
    }
    let body = match read_body(payload, node.config().http.max_message_bytes, node.config().http.body_timeout()).await {
        Ok(b) => b,
        Err(e @ BodyError::Read(_)) => {
            return error(&node, StatusCode::INTERNAL_SERVER_ERROR, format!("Failed to read request body: {e}"));
        }
        Err(e) => return error(&node, e.status(), format!("Failed to read request body: {e}")),
    };
    if body.is_empty() {
        return error(&node, StatusCode::INTERNAL_SERVER_ERROR, "Empty request body".into());
    }
    let Ok(msg) = String::from_utf8(body.to_vec()) else {
        return error(&node, StatusCode::BAD_REQUEST, "Failed to read request body: not UTF-8".into());
    };
    match send(&node, room, client, msg).await {
        Ok(()) => ok(),
        Err(text) => error(&node, StatusCode::INTERNAL_SERVER_ERROR, format!("Failed to send the message: {text}")),
    }
}

/// Collider's `send(room, client, msg)`: straight to a bound peer when nothing changes,
/// otherwise through the membership (creating the sender, queueing the message).
pub async fn send(node: &Node, room: &str, client: &str, msg: String) -> Result<(), String> {
    if let (Route::Direct(at), barrier) = node.membership.read(|r| (r.collider_route(room, client), r.delivered_at(room))) {
        metrics::counter!("switchboard_messages_total", "path" => "direct").increment(1);
        node.deliver(room, client, at, msg, barrier).await;
        return Ok(());
    }
    metrics::counter!("switchboard_messages_total", "path" => "log").increment(1);
    let cmd = Command::Send { room: room.into(), client: client.into(), body: msg, now_ms: now_ms() };
    match node.membership.propose(cmd).await {
        Ok(Outcome::Send(Ok(_))) => Ok(()),
        Ok(Outcome::Send(Err(e))) => Err(e.to_string()),
        Ok(other) => {
            warn!(?other, "send answered with another outcome");
            Err("internal error".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn delete(node: &Node, room: &str, client: &str) -> HttpResponse {
    let cmd = Command::Remove { room: room.into(), client: client.into(), now_ms: now_ms() };
    match node.membership.propose(cmd).await {
        Ok(o) => debug!(%room, %client, outcome = ?o, "removed"),
        Err(e) => {
            return error(node, StatusCode::SERVICE_UNAVAILABLE, format!("Failed to remove the client: {e}"));
        }
    }
    ok()
}

/// `GET /status`.
pub async fn status(node: web::Data<Node>) -> HttpResponse {
    let (openws, totalws, wserrors, httperrors) = node.stats.snapshot();
    let body = json!({
        "upsec": node.started.elapsed().as_secs_f64(),
        "openws": openws,
        "totalws": totalws,
        "wserrors": wserrors,
        "httperrors": httperrors,
    });
    cors(StatusCode::OK, "GET").json(body)
}

//! AppRTC room-server endpoints (§1 of the protocol notes): join, message, leave, params, the
//! ICE configuration and TURN REST credentials. Outcomes map to AppRTC `result` strings here
//! and nowhere else.

use actix_web::{web, HttpRequest, HttpResponse};
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use switchboard_proto::apprtc::{room_params, JoinResponse, ResultCode, ResultOnly};
use switchboard_proto::credentials;
use switchboard_proto::ids::validate_id;
use switchboard_proto::rooms::{Command, JoinOutcome, MessageOutcome, Outcome, Route};
use tracing::{debug, warn};

use super::{ice_access, read_body, request_info, BodyError};
use crate::node::Node;
use crate::rooms::now_ms;

fn result(code: ResultCode) -> HttpResponse {
    HttpResponse::Ok().json(ResultOnly { result: code })
}

/// AppRTC's routes only match `[A-Za-z0-9_-]`; anything else is not found.
fn bad_id(what: &str, e: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::NotFound()
        .content_type("text/plain; charset=utf-8")
        .body(format!("invalid {what} id: {e} (ids match [A-Za-z0-9_-]{{1,64}})\n"))
}

/// AppRTC client ids: 8 random decimal digits.
fn generate_client_id() -> String {
    format!("{:08}", rand::rng().random_range(0..100_000_000u32))
}

/// `POST /join/{room}`.
pub async fn join(req: HttpRequest, path: web::Path<String>, node: web::Data<Node>) -> HttpResponse {
    let room = path.into_inner();
    if let Err(e) = validate_id(&room) {
        return bad_id("room", e);
    }
    if node.is_draining() {
        return HttpResponse::Ok().json(JoinResponse::failed(ResultCode::Error));
    }
    if let Some(refused) = over_rate(&req, &node.joins, "joins") {
        return refused;
    }
    let info = request_info(&req);
    let client = generate_client_id();
    let cmd = Command::Join { room: room.clone(), client: client.clone(), loopback: info.loopback(), now_ms: now_ms() };
    let started = std::time::Instant::now();
    let outcome = node.membership.propose(cmd).await;
    metrics::histogram!("switchboard_join_seconds").record(started.elapsed().as_secs_f64());
    let response = match outcome {
        Ok(Outcome::Join(JoinOutcome::Joined { initiator, messages })) => {
            debug!(%room, %client, initiator, "joined");
            node.setup_times.joined(&room, &client);
            let params = room_params(&node.apprtc_settings(), &info, Some(&room)).for_join(&room, &client, initiator, messages);
            JoinResponse::success(&params)
        }
        Ok(Outcome::Join(JoinOutcome::Full)) => JoinResponse::failed(ResultCode::Full),
        Ok(Outcome::Join(JoinOutcome::DuplicateClient)) => JoinResponse::failed(ResultCode::DuplicateClient),
        Ok(Outcome::Join(JoinOutcome::TooManyRooms)) => {
            warn!(%room, "join refused: room limit reached");
            JoinResponse::failed(ResultCode::Error)
        }
        Ok(other) => {
            warn!(?other, "join answered with another outcome");
            JoinResponse::failed(ResultCode::Error)
        }
        Err(e) => {
            warn!(%room, error = %e, "join failed");
            JoinResponse::failed(ResultCode::Error)
        }
    };
    HttpResponse::Ok().json(response)
}

/// Counts a request against its source address; the 429 to answer once it is over.
fn over_rate(req: &HttpRequest, limit: &switchboard_proto::limits::PerSource, what: &'static str) -> Option<HttpResponse> {
    let ip = req.peer_addr()?.ip();
    if limit.admit(ip, now_ms() / 1000) {
        return None;
    }
    metrics::counter!("switchboard_errors_total", "kind" => "rate_limited", "what" => what).increment(1);
    debug!(%ip, what, "over the per-address rate");
    Some(
        HttpResponse::TooManyRequests()
            .insert_header((actix_web::http::header::RETRY_AFTER, "1"))
            .json(ResultOnly { result: ResultCode::Error }),
    )
}

/// `POST /message/{room}/{client}`: the raw body is the message, never parsed.
pub async fn message(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    node: web::Data<Node>,
) -> HttpResponse {
    if let Some(refused) = over_rate(&req, &node.messages, "messages") {
        return refused;
    }
    let (room, client) = path.into_inner();
    if let Err(e) = validate_id(&room) {
        return bad_id("room", e);
    }
    if let Err(e) = validate_id(&client) {
        return bad_id("client", e);
    }
    let body = match read_body(payload, node.config().http.max_message_bytes, node.config().http.body_timeout()).await {
        Ok(b) => b,
        Err(e @ (BodyError::TooLarge(_) | BodyError::TooSlow(_))) => {
            warn!(%room, %client, "message refused: {e}");
            return HttpResponse::build(e.status()).json(ResultOnly { result: ResultCode::Error });
        }
        Err(BodyError::Read(_)) => return result(ResultCode::Error),
    };
    let Ok(msg) = String::from_utf8(body.to_vec()) else {
        return result(ResultCode::Error);
    };
    if let (Route::Direct(at), barrier) = node.membership.read(|r| (r.message_route(&room, &client), r.delivered_at(&room))) {
        metrics::counter!("switchboard_messages_total", "path" => "direct").increment(1);
        node.deliver(&room, &client, at, msg, barrier).await;
        return result(ResultCode::Success);
    }
    let cmd = Command::Message { room: room.clone(), client: client.clone(), body: msg, now_ms: now_ms() };
    match node.membership.propose(cmd).await {
        Ok(Outcome::Message(m)) => match m {
            MessageOutcome::Stored => {
                metrics::counter!("switchboard_messages_total", "path" => "stored").increment(1);
                result(ResultCode::Success)
            }
            MessageOutcome::Sent(_) => {
                metrics::counter!("switchboard_messages_total", "path" => "log").increment(1);
                result(ResultCode::Success)
            }
            MessageOutcome::UnknownRoom => result(ResultCode::UnknownRoom),
            MessageOutcome::UnknownClient => result(ResultCode::UnknownClient),
            MessageOutcome::StoreFull => {
                warn!(%room, %client, "message store full");
                result(ResultCode::Error)
            }
            MessageOutcome::StoreOverBudget { total } => {
                let which = if total { "all rooms' stored messages (rooms.stored_bytes_total)" } else { "this room's stored messages (rooms.stored_bytes_per_room)" };
                warn!(%room, %client, budget = which, "message refused: byte budget reached");
                metrics::counter!("switchboard_errors_total", "kind" => if total { "stored_bytes_total" } else { "stored_bytes_room" }).increment(1);
                result(ResultCode::Error)
            }
            // AppRTC: Collider refused the forwarded message → HTTP 500 with an empty body.
            MessageOutcome::SendFailed(e) => {
                warn!(%room, %client, error = %e, "message refused by signaling");
                HttpResponse::InternalServerError().finish()
            }
        },
        Ok(other) => {
            warn!(?other, "message answered with another outcome");
            result(ResultCode::Error)
        }
        Err(e) => {
            warn!(%room, error = %e, "message failed");
            result(ResultCode::Error)
        }
    }
}

/// `POST /leave/{room}/{client}` (and `/bye/...`): always 200 with an empty body.
pub async fn leave(path: web::Path<(String, String)>, node: web::Data<Node>) -> HttpResponse {
    let (room, client) = path.into_inner();
    if validate_id(&room).is_err() || validate_id(&client).is_err() {
        return HttpResponse::Ok().finish();
    }
    match node.membership.propose(Command::Leave { room: room.clone(), client: client.clone(), now_ms: now_ms() }).await {
        Ok(Outcome::Left(true)) => debug!(%room, %client, "left"),
        Ok(_) => debug!(%room, %client, "leave of a client that is not a member"),
        Err(e) => warn!(%room, %client, error = %e, "leave failed"),
    }
    HttpResponse::Ok().finish()
}

/// `GET /params`: the room-independent parameters.
pub async fn params(req: HttpRequest, node: web::Data<Node>) -> HttpResponse {
    HttpResponse::Ok().json(room_params(&node.apprtc_settings(), &request_info(&req), None))
}

/// `POST /a/`: AppRTC's analytics sink; the web client ignores the answer.
pub async fn analytics() -> HttpResponse {
    result(ResultCode::Success)
}

/// The host name the client used, without the port (`[::1]` keeps its brackets).
fn host_name(host: &str) -> &str {
    if let Some(end) = host.find(']') {
        return &host[..=end];
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn expand(urls: &[String], host: &str) -> Vec<String> {
    urls.iter().map(|u| u.replace("{host}", host)).collect()
}

/// `POST` (or `GET`) `/v1alpha/iceconfig`: `{"iceServers": [...]}`, every `urls` an array; TURN
/// entries carry fresh REST credentials.
pub async fn iceconfig(req: HttpRequest, q: web::Query<KeyQuery>, node: web::Data<Node>) -> HttpResponse {
    let allow = match ice_access::check(&req, &node, q.key.as_deref()) {
        Ok(a) => a,
        Err(refused) => return refused.response(),
    };
    let conn_host = req.connection_info().host().to_owned();
    let host = host_name(&conn_host);
    let config = node.config();
    let ice = &config.ice;
    let secret = &node.derived().turn_secret;
    let mut servers: Vec<Value> = Vec::new();
    let sets = node.turn_uri_sets(host);
    if !secret.is_empty() && !sets.is_empty() {
        // One credential for every set: the secret is the same on every node.
        let user = format!("{:08}", rand::rng().random_range(0..100_000_000u32));
        let cred = credentials::issue(secret.as_bytes(), Some(&user), now_ms() / 1000, ice.turn_ttl_secs);
        for urls in sets {
            servers.push(json!({
                "urls": urls,
                "username": cred.username,
                "credential": cred.password,
            }));
        }
    }
    if !ice.stun_urls.is_empty() {
        servers.push(json!({ "urls": expand(&ice.stun_urls, host) }));
    }
    ice_access::respond(allow, HttpResponse::Ok().json(json!({ "iceServers": servers })))
}

#[derive(Deserialize)]
pub struct KeyQuery {
    key: Option<String>,
}

#[derive(Deserialize)]
pub struct TurnQuery {
    service: Option<String>,
    username: Option<String>,
    key: Option<String>,
}

/// `GET /turn?service=turn&username=U`: draft-uberti-behave-turn-rest-00.
pub async fn turn_rest(req: HttpRequest, q: web::Query<TurnQuery>, node: web::Data<Node>) -> HttpResponse {
    if q.service.as_deref() != Some("turn") {
        return HttpResponse::BadRequest().json(json!({ "error": "service must be \"turn\"" }));
    }
    let allow = match ice_access::check(&req, &node, q.key.as_deref()) {
        Ok(a) => a,
        Err(refused) => return refused.response(),
    };
    let user = q.username.as_deref().filter(|u| validate_id(u).is_ok());
    if q.username.is_some() && user.is_none() {
        return HttpResponse::BadRequest().json(json!({ "error": "username must match [A-Za-z0-9_-]{1,64}" }));
    }
    match rest_credentials(&req, &node, user, None) {
        Some(cred) => ice_access::respond(allow, HttpResponse::Ok().json(cred)),
        None => HttpResponse::NotFound().json(json!({ "error": "no TURN server is configured" })),
    }
}

/// TURN REST credentials for `user` (or a made-up one) valid for `ttl` seconds (or
/// `ice.turn_ttl_secs`), with the URIs to use them on, as `/turn` answers them; `None` without a
/// TURN server to use them on.
pub fn rest_credentials(req: &HttpRequest, node: &Node, user: Option<&str>, ttl: Option<u64>) -> Option<Value> {
    let ttl = ttl.unwrap_or(node.config().ice.turn_ttl_secs);
    let secret = &node.derived().turn_secret;
    let conn_host = req.connection_info().host().to_owned();
    let uris: Vec<String> = node.turn_uri_sets(host_name(&conn_host)).into_iter().flatten().collect();
    if secret.is_empty() || uris.is_empty() {
        return None;
    }
    let cred = credentials::issue(secret.as_bytes(), user, now_ms() / 1000, ttl);
    Some(json!({ "username": cred.username, "password": cred.password, "ttl": ttl, "uris": uris }))
}

#[cfg(test)]
mod tests {
    use super::host_name;

    #[test]
    fn host_name_strips_the_port() {
        assert_eq!(host_name("127.0.0.1:8083"), "127.0.0.1");
        assert_eq!(host_name("example.com"), "example.com");
        assert_eq!(host_name("[::1]:8083"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
    }
}

//! The public HTTP listener: AppRTC room server, web client, ICE/TURN REST, Collider signaling
//! and operations endpoints. Room-server routes come first; every other path is Collider's.

pub mod admin;
pub mod admin_node;
pub mod close;
pub mod ice_access;
pub mod ops;
pub mod pages;
pub mod per_ip;
pub mod room_api;
pub mod tls;

use actix_web::http::{header, Method};
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use switchboard_proto::apprtc::RequestInfo;

use crate::signaling;

/// Routes of the main listener; `ops_here`: metrics and the admin API too (no `ops.listen`).
pub fn routes(cfg: &mut web::ServiceConfig, ops_here: bool) {
    // Paths with a parameter sit in a scope of their static prefix: the router then tries one
    // pattern match per request instead of every parameterised pattern in turn (the matching
    // showed up as ~5 % of a call's CPU). A scope's own default is Collider's handler, so a path
    // no resource takes goes where it went before.
    cfg.route("/", web::get().to(pages::index))
        .service(scope("/r").service(web::resource("/{room}").route(web::get().to(pages::room))))
        .service(scope("/js").service(web::resource("/{file}").route(web::get().to(pages::asset))))
        .service(scope("/css").service(web::resource("/{file}").route(web::get().to(pages::asset))))
        .service(web::resource("/favicon.ico").route(web::get().to(pages::favicon)))
        .service(scope("/join").service(api(web::resource("/{room}").route(web::post().to(room_api::join)))))
        .service(
            scope("/message").service(api(web::resource("/{room}/{client}").route(web::post().to(room_api::message)))),
        )
        .service(scope("/leave").service(api(web::resource("/{room}/{client}").route(web::post().to(room_api::leave)))))
        // AppRTC's old name for leave, which Collider still posts to.
        .service(scope("/bye").service(api(web::resource("/{room}/{client}").route(web::post().to(room_api::leave)))))
        .service(api(web::resource("/params").route(web::get().to(room_api::params))))
        // TURN credentials: only for this deployment's pages (see `ice_access`), so no `*`.
        .service(web::resource("/v1alpha/iceconfig")
            .route(web::post().to(room_api::iceconfig))
            .route(web::get().to(room_api::iceconfig))
            .route(web::method(Method::OPTIONS).to(ice_access::preflight)))
        .service(web::resource("/turn")
            .route(web::get().to(room_api::turn_rest))
            .route(web::method(Method::OPTIONS).to(ice_access::preflight)))
        .service(web::resource("/a/").route(web::post().to(room_api::analytics)))
        .service(web::resource("/healthz").route(web::get().to(ops::healthz)))
        .service(web::resource("/readyz").route(web::get().to(ops::readyz)));
    if ops_here {
        ops_routes(cfg);
    } else {
        cfg.service(web::resource("/metrics").to(ops::elsewhere)).service(web::scope("/admin").default_service(web::to(ops::elsewhere)));
    }
    signaling_routes(cfg);
}

/// Metrics and the admin API, on the main listener or on `ops.listen`.
pub fn ops_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/metrics").route(web::get().to(ops::metrics))).service(
        web::scope("/admin")
            .service(web::resource("/cluster/status").route(web::get().to(admin::status)))
            .service(web::resource("/rooms").route(web::get().to(admin::rooms)))
            .service(web::resource("/status").route(web::get().to(admin_node::status)))
            .service(web::resource("/sessions").route(web::get().to(admin_node::sessions)))
            .service(web::resource("/sessions/{id}").route(web::delete().to(admin_node::kick_session)))
            .service(web::resource("/allocations").route(web::get().to(admin_node::allocations)))
            .service(web::resource("/allocations/{id}").route(web::delete().to(admin_node::kick_allocation)))
            .service(web::resource("/rooms/{room}/clients/{client}").route(web::delete().to(admin_node::kick_client)))
            .service(web::resource("/drain").route(web::post().to(admin_node::drain)))
            .service(web::resource("/credentials").route(web::post().to(admin_node::credentials)))
            .service(web::resource("/reload").route(web::post().to(admin_node::reload)))
            .service(web::resource("/cluster/nodes").route(web::post().to(admin::add_node)))
            .service(web::resource("/cluster/nodes/{id}").route(web::delete().to(admin::remove_node)))
            .service(web::resource("/cluster/nodes/{id}/promote").route(web::post().to(admin::promote_node))),
    );
}

/// The ops listener's routes: health as well, so a probe can use either port.
pub fn ops_listener_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/healthz").route(web::get().to(ops::healthz)))
        .service(web::resource("/readyz").route(web::get().to(ops::readyz)));
    ops_routes(cfg);
}

/// A scope under a static prefix whose unmatched paths go to Collider's handler, as they would
/// without the scope.
fn scope(prefix: &str) -> actix_web::Scope {
    web::scope(prefix).default_service(web::to(signaling::http::collider_handler))
}

/// A room-server API resource that any origin may call. In a cluster a page goes on talking to
/// the live nodes after the node it came from died, so its requests are cross-origin; these
/// endpoints use no cookies or other ambient authority, so `*` gives nothing away.
fn api(resource: actix_web::Resource) -> impl actix_web::dev::HttpServiceFactory {
    resource
        .route(web::method(Method::OPTIONS).to(preflight))
        .wrap(DefaultHeaders::new().add((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")))
}

/// CORS preflight of a room-server API call (a JSON body makes the browser ask first).
async fn preflight() -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, "content-type"))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
        .finish()
}

/// Collider's routes alone, for the optional separate signaling listener.
pub fn signaling_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/ws").route(web::get().to(signaling::session::ws_handler)))
        .service(web::resource("/status").route(web::get().to(signaling::http::status)))
        .default_service(web::to(signaling::http::collider_handler));
}

/// The `HttpServer::on_connect` hook of every HTTP listener: the per-address connection count,
/// then the descriptor `close` needs.
pub fn on_connect(
    per_ip: std::sync::Arc<per_ip::ConnectionsPerIp>,
) -> impl Fn(&dyn std::any::Any, &mut actix_web::dev::Extensions) + Send + Sync + 'static {
    move |conn, ext| {
        if per_ip.admit(conn, ext) {
            close::remember_socket(conn, ext);
        }
    }
}

/// A listening socket for an HTTP server. Sockets accepted from it inherit `TCP_NODELAY`: a burst
/// of frames to one WebSocket (an offer and its candidates) must not wait for the client's
/// delayed ACK between frames (Nagle), which costs ~40 ms per round.
pub fn listener(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    // Room for bursts of connections (every client of a failed node reconnecting at once, or a
    // flood that the per-address cap then closes) while the workers are busy; the kernel caps
    // it at net.core.somaxconn.
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Why a request body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Longer than the limit (bytes).
    TooLarge(usize),
    /// Not all there by the deadline (`http.body_timeout_secs`).
    TooSlow(std::time::Duration),
    /// The connection failed mid-body.
    Read(String),
}

impl BodyError {
    /// The HTTP status that says what went wrong.
    pub fn status(&self) -> actix_web::http::StatusCode {
        use actix_web::http::StatusCode;
        match self {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TooSlow(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Read(_) => StatusCode::BAD_REQUEST,
        }
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge(limit) => write!(f, "larger than {limit} bytes"),
            BodyError::TooSlow(d) => write!(f, "not received within {} s", d.as_secs()),
            BodyError::Read(e) => write!(f, "{e}"),
        }
    }
}

/// Reads a whole body, refusing more than `limit` bytes without buffering them, or a body not
/// all there within `deadline` (a client trickling it would hold the handler and its memory).
pub async fn read_body(payload: web::Payload, limit: usize, deadline: std::time::Duration) -> Result<Bytes, BodyError> {
    let read = async move {
        let mut payload = payload;
        let mut buf = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
            if buf.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge(limit));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(r) => r,
        Err(_) => {
            metrics::counter!("switchboard_http_slow_bodies_total").increment(1);
            Err(BodyError::TooSlow(deadline))
        }
    }
}

/// What the AppRTC parameters need from a request.
pub fn request_info(req: &HttpRequest) -> RequestInfo {
    let conn = req.connection_info();
    let scheme = conn.scheme().to_owned();
    let host = conn.host().to_owned();
    let query = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    RequestInfo {
        base_url: format!("{scheme}://{host}"),
        secure: scheme == "https",
        host,
        query,
        user_agent: req
            .headers()
            .get(actix_web::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

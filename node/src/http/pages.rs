//! The web client: `/` and `/r/{room}` render the page with AppRTC's `loadingParams`, a full
//! room renders the "room is full" page, and the static assets are compiled into the binary.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use switchboard_proto::apprtc::{room_params, RoomParams};
use switchboard_proto::collider::push_go_json_string;
use switchboard_proto::ids::validate_id;
use switchboard_proto::rooms::ROOM_CAPACITY;

use super::request_info;
use crate::node::Node;

const INDEX: &str = include_str!("../web/index.html");
const FULL: &str = include_str!("../web/full.html");

/// Static files, embedded so that the binary alone serves the client.
const ASSETS: &[(&str, &str, &str)] = &[
    ("/js/app.js", "text/javascript; charset=utf-8", include_str!("../web/js/app.js")),
    ("/js/loopback.js", "text/javascript; charset=utf-8", include_str!("../web/js/loopback.js")),
    ("/css/main.css", "text/css; charset=utf-8", include_str!("../web/css/main.css")),
];

fn html(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}

/// A JSON value safe inside `<script>`: `<`, `>` and `&` are escaped.
fn js_string(s: &str) -> String {
    let mut out = String::new();
    push_go_json_string(&mut out, s);
    out
}

fn js_strings(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| js_string(s)).collect();
    format!("[{}]", items.join(", "))
}

/// JSON held in a string (already produced by us) re-escaped for a `<script>` block.
fn js_raw(json: &str) -> String {
    json.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026")
}

/// AppRTC's `loadingParams` object, one key per line (`roomId: 'R'` as the template had it).
fn loading_params(p: &RoomParams) -> String {
    let mut lines = vec![
        format!("errorMessages: {}", js_strings(&p.error_messages)),
        format!("isLoopback: {}", p.is_loopback),
        format!("warningMessages: {}", js_strings(&p.warning_messages)),
    ];
    if let (Some(room), Some(link)) = (&p.room_id, &p.room_link) {
        // Room ids are [A-Za-z0-9_-] only, so quoting them plainly is safe.
        lines.push(format!("roomId: '{room}'"));
        lines.push(format!("roomLink: {}", js_string(link)));
    }
    lines.extend([
        format!("mediaConstraints: {}", js_raw(&p.media_constraints)),
        format!("offerOptions: {}", js_raw(&p.offer_options)),
        format!("peerConnectionConfig: {}", js_raw(&p.pc_config)),
        format!("peerConnectionConstraints: {}", js_raw(&p.pc_constraints)),
        format!("iceServerRequestUrl: {}", js_string(&p.ice_server_url)),
        format!("iceServerTransports: {}", js_string(&p.ice_server_transports)),
        format!("wssUrl: {}", js_string(&p.wss_url)),
        format!("wssPostUrl: {}", js_string(&p.wss_post_url)),
        format!("bypassJoinConfirmation: {}", p.bypass_join_confirmation),
        format!("versionInfo: {}", p.version_info),
        format!("headerMessage: {}", js_string(p.header_message.as_deref().unwrap_or_default())),
        format!("signalingNodes: {}", js_strings(&p.signaling_nodes)),
    ]);
    format!("{{\n      {}\n    }}", lines.join(",\n      "))
}

fn render(p: &RoomParams) -> String {
    INDEX
        .replace("{{LOADING_PARAMS}}", &loading_params(p))
        .replace("{{INCLUDE_LOOPBACK_JS}}", &p.include_loopback_js)
}

/// `GET /`: the landing page (no room).
pub async fn index(req: HttpRequest, node: web::Data<Node>) -> HttpResponse {
    html(render(&room_params(&node.apprtc_settings(), &request_info(&req), None)))
}

/// `GET /r/{room}`: the call page, or the "room is full" page (still 200, as AppRTC).
pub async fn room(req: HttpRequest, path: web::Path<String>, node: web::Data<Node>) -> HttpResponse {
    let room = path.into_inner();
    if let Err(e) = validate_id(&room) {
        return HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body(format!("invalid room id: {e} (ids match [A-Za-z0-9_-]{{1,64}})\n"));
    }
    if node.membership.read(|r| r.occupancy(&room)) >= ROOM_CAPACITY {
        return html(FULL.replace("{{ROOM}}", &room));
    }
    html(render(&room_params(&node.apprtc_settings(), &request_info(&req), Some(&room))))
}

/// `GET /js/*` and `/css/*`.
pub async fn asset(req: HttpRequest) -> HttpResponse {
    match ASSETS.iter().find(|(path, _, _)| *path == req.path()) {
        Some((_, mime, body)) => HttpResponse::Ok()
            .content_type(*mime)
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .body(*body),
        None => HttpResponse::NotFound().body("not found\n"),
    }
}

/// `GET /favicon.ico`: none, but not Collider's "Invalid path" either.
pub async fn favicon() -> HttpResponse {
    HttpResponse::NoContent().finish()
}

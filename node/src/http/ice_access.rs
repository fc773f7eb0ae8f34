//! Who may have TURN credentials from `/v1alpha/iceconfig` and `/turn`: pages of this
//! deployment (or of origins the operator allowed), holders of `apprtc.ice_server_api_key`
//! when one is set, and no source more often than `ice.credentials_per_minute`.
//!
//! Without this, any page on the web could fetch credentials in its visitors' browsers and use
//! the deployment as a free relay. Requests without an `Origin` (apps, curl) are not pages and
//! pass the origin check; the key and the rate limit still apply to them.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse};
use serde_json::json;
use switchboard_proto::credentials::constant_time_eq;
use tracing::warn;

use crate::node::Node;
use crate::rooms::now_ms;

/// `scheme://host[:port]` of a URL, lower-cased, without path or trailing slash.
fn origin_of(url: &str) -> String {
    let url = url.trim().to_ascii_lowercase();
    match url.find("://") {
        Some(i) => match url[i + 3..].find('/') {
            Some(j) => url[..i + 3 + j].to_owned(),
            None => url,
        },
        None => url,
    }
}

/// Whether a page from `origin` may read credentials from this node.
fn origin_allowed(origin: &str, req: &HttpRequest, node: &Node) -> bool {
    let origin = origin_of(origin);
    let info = req.connection_info();
    // The page this node served itself.
    if origin == origin_of(&format!("{}://{}", info.scheme(), info.host())) {
        return true;
    }
    let mut own = node.membership.member_urls();
    let config = node.config();
    if config.cluster.enabled {
        own.push(config.cluster.public_url.clone());
    }
    own.iter().chain(config.ice.allowed_origins.iter()).any(|o| o == "*" || origin_of(o) == origin)
}

/// Why a credential request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A page of an origin that is not this deployment's (403).
    Origin,
    /// `apprtc.ice_server_api_key` is set and the request did not carry it (403).
    Key,
    /// Too many credentials for this address this minute (429).
    Rate,
}

impl Refused {
    /// The answer to give.
    pub fn response(self) -> HttpResponse {
        match self {
            Refused::Origin => HttpResponse::Forbidden().json(json!({ "error": "this origin may not use this TURN service" })),
            Refused::Key => HttpResponse::Forbidden().json(json!({ "error": "missing or wrong key" })),
            Refused::Rate => HttpResponse::TooManyRequests()
                .insert_header((header::RETRY_AFTER, "60"))
                .json(json!({ "error": "too many credential requests from this address; try again in a minute" })),
        }
    }
}

/// Checks a credential request; `Ok` carries the CORS header value to answer with (the
/// request's own origin when it had one).
pub fn check(req: &HttpRequest, node: &Node, key: Option<&str>) -> Result<Option<HeaderValue>, Refused> {
    let origin = req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if let Some(o) = origin {
        if !origin_allowed(o, req, node) {
            warn!(origin = o, "TURN credentials refused to a page of another origin");
            metrics::counter!("switchboard_errors_total", "kind" => "ice_origin").increment(1);
            return Err(Refused::Origin);
        }
    }
    let want = &node.config().apprtc.ice_server_api_key;
    if !want.is_empty() && !key.is_some_and(|k| constant_time_eq(k.as_bytes(), want.as_bytes())) {
        metrics::counter!("switchboard_errors_total", "kind" => "ice_key").increment(1);
        return Err(Refused::Key);
    }
    if req.peer_addr().is_some_and(|peer| !node.minted.admit(peer.ip(), now_ms() / 1000)) {
        metrics::counter!("switchboard_errors_total", "kind" => "ice_rate").increment(1);
        return Err(Refused::Rate);
    }
    Ok(origin.and_then(|o| HeaderValue::from_str(o).ok()))
}

/// CORS preflight of a credential request: allowed origins are told so, others are not (and
/// the browser then never sends the request).
pub async fn preflight(req: HttpRequest, node: actix_web::web::Data<Node>) -> HttpResponse {
    let origin = req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok());
    let mut resp = HttpResponse::NoContent();
    resp.insert_header((header::VARY, "Origin"));
    if let Some(o) = origin.filter(|o| origin_allowed(o, &req, &node)) {
        resp.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, o))
            .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST"))
            .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, "content-type"))
            .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"));
    }
    resp.finish()
}

/// A credential answer with its CORS headers: the allowed origin, never `*`.
pub fn respond(allow: Option<HeaderValue>, mut resp: HttpResponse) -> HttpResponse {
    let h = resp.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    match allow {
        Some(o) => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        }
        None => {
            h.remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::origin_of;

    #[test]
    fn origins_compare_without_path_or_case() {
        assert_eq!(origin_of("HTTPS://RTC1.example.com/"), "https://rtc1.example.com");
        assert_eq!(origin_of("http://127.0.0.1:8083/r/x"), "http://127.0.0.1:8083");
        assert_eq!(origin_of("http://127.0.0.1:8083"), "http://127.0.0.1:8083");
    }
}

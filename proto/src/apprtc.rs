//! AppRTC room-server JSON: result strings, the room parameters of `/join`, `/params` and the
//! web page, and how the query parameters of AppRTC (§1.8) change them.

use serde::Serialize;
use serde_json::{json, Map, Value};

/// The `result` strings of the room server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResultCode {
    /// The request did what it asked.
    Success,
    /// Something failed on our side (also: no Raft majority, room limit reached).
    Error,
    /// The room already holds two members.
    Full,
    /// `/message` to a room that does not exist.
    UnknownRoom,
    /// `/message` from a client that is not a member.
    UnknownClient,
    /// The generated client id collided with a member.
    DuplicateClient,
    /// `/a/` with a body it cannot use.
    InvalidRequest,
}

/// `{"result": ...}` alone, as `/message` and `/a/` answer.
#[derive(Debug, Serialize)]
pub struct ResultOnly {
    /// The outcome.
    pub result: ResultCode,
}

/// The answer of `POST /join/{room}`.
#[derive(Debug, Serialize)]
pub struct JoinResponse {
    /// The outcome.
    pub result: ResultCode,
    /// Room parameters on success; `{"messages": []}` otherwise.
    pub params: Value,
}

impl JoinResponse {
    /// A failed join: `{"result": R, "params": {"messages": []}}`.
    pub fn failed(result: ResultCode) -> Self {
        JoinResponse { result, params: json!({ "messages": [] }) }
    }

    /// A successful join.
    pub fn success(params: &RoomParams) -> Self {
        JoinResponse {
            result: ResultCode::Success,
            params: serde_json::to_value(params).unwrap_or_else(|_| json!({})),
        }
    }
}

/// Server-side settings that shape the room parameters.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Base URL of the ICE server endpoint; `None` means this server.
    pub ice_server_base_url: Option<String>,
    /// Default `key` of `ice_server_url` (AppRTC's `ICE_SERVER_API_KEY`).
    pub ice_server_api_key: String,
    /// Fixed `iceServers` for `pc_config` (AppRTC's `ICE_SERVER_OVERRIDE`).
    pub ice_servers_override: Option<Value>,
    /// Banner shown by the web client (AppRTC's `HEADER_MESSAGE`).
    pub header_message: Option<String>,
    /// `host:port` of the signaling server; `None` means the request's host.
    pub signaling_host_port: Option<String>,
    /// Whether signaling URLs use TLS; `None` follows the request's scheme.
    pub signaling_tls: Option<bool>,
    /// Signaling URLs of every live node, so a client can reconnect elsewhere (Switchboard
    /// extension; empty on a single node).
    pub signaling_nodes: Vec<String>,
}

/// What the parameters depend on from the request.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// `scheme://host[:port]` as the client reached us.
    pub base_url: String,
    /// The `Host` the client used.
    pub host: String,
    /// Whether the client reached us over TLS.
    pub secure: bool,
    /// Decoded query arguments, in order.
    pub query: Vec<(String, String)>,
    /// The `User-Agent` header, if any (never required).
    pub user_agent: Option<String>,
}

impl RequestInfo {
    /// The first value of a query argument.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Whether `?debug=loopback` was given.
    pub fn loopback(&self) -> bool {
        self.arg("debug") == Some("loopback")
    }
}

/// The parameter object of §1.2. Values that hold JSON are strings, as AppRTC clients expect.
#[allow(missing_docs)] // the keys are AppRTC's, documented in the protocol notes
#[derive(Debug, Clone, Serialize)]
pub struct RoomParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_link: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_initiator: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<String>>,
    pub wss_url: String,
    pub wss_post_url: String,
    pub ice_server_url: String,
    pub ice_server_transports: String,
    pub pc_config: String,
    pub pc_constraints: String,
    pub offer_options: String,
    pub media_constraints: String,
    pub is_loopback: String,
    pub bypass_join_confirmation: String,
    pub version_info: String,
    pub include_loopback_js: String,
    pub header_message: Option<String>,
    pub error_messages: Vec<String>,
    pub warning_messages: Vec<String>,
    /// Switchboard extension: signaling URLs of the live nodes, for reconnecting elsewhere.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signaling_nodes: Vec<String>,
}

impl RoomParams {
    /// Adds what a successful join knows.
    pub fn for_join(mut self, room: &str, client: &str, initiator: bool, messages: Vec<String>) -> Self {
        self.room_id = Some(room.to_owned());
        self.client_id = Some(client.to_owned());
        self.is_initiator = Some(initiator.to_string());
        self.messages = Some(messages);
        self
    }
}

/// Builds the room parameters for `room` (or none, for `/` and `/params`).
pub fn room_params(settings: &Settings, req: &RequestInfo, room: Option<&str>) -> RoomParams {
    let mut warnings = Vec::new();
    let loopback = req.loopback();

    let host_port = req
        .arg("wshpp")
        .map(str::to_owned)
        .or_else(|| settings.signaling_host_port.clone())
        .unwrap_or_else(|| req.host.clone());
    let tls = match req.arg("wstls") {
        Some(v) => v != "false",
        None => settings.signaling_tls.unwrap_or(req.secure),
    };
    let (wss_url, wss_post_url) = if tls {
        (format!("wss://{host_port}/ws"), format!("https://{host_port}"))
    } else {
        (format!("ws://{host_port}/ws"), format!("http://{host_port}"))
    };

    let api_key = req.arg("apikey").unwrap_or(&settings.ice_server_api_key);
    let ice_base = match req.arg("ts") {
        Some(ts) => ts.to_owned(),
        None => settings.ice_server_base_url.clone().unwrap_or_else(|| req.base_url.clone()),
    };
    let ice_server_url = if ice_base.is_empty() {
        String::new()
    } else {
        format!("{ice_base}/v1alpha/iceconfig?key={api_key}")
    };

    let mut pc_config = Map::new();
    pc_config.insert(
        "iceServers".into(),
        settings.ice_servers_override.clone().unwrap_or_else(|| json!([])),
    );
    pc_config.insert("bundlePolicy".into(), json!("max-bundle"));
    pc_config.insert("rtcpMuxPolicy".into(), json!("require"));
    if let Some(it) = req.arg("it") {
        pc_config.insert("iceTransports".into(), json!(it));
    }

    let mut optional = Vec::new();
    let dtls_off = loopback || req.arg("dtls").is_some_and(|v| v.eq_ignore_ascii_case("false"));
    if dtls_off {
        optional.push(json!({ "DtlsSrtpKeyAgreement": false }));
    }
    if req.arg("dscp").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        optional.push(json!({ "googDscp": true }));
    }
    if req.arg("ipv6").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        optional.push(json!({ "googIPv6": true }));
    }

    if req.arg("minre").is_some() || req.arg("maxre").is_some() {
        warnings.push(
            "The \"minre\" and \"maxre\" parameters are no longer supported. Use \"video\" instead."
                .to_owned(),
        );
    }
    let media = media_constraints(req, &mut warnings);

    let (room_id, room_link) = match room {
        Some(r) => (Some(r.to_owned()), Some(room_link(&req.base_url, r, &req.query))),
        None => (None, None),
    };

    RoomParams {
        client_id: None,
        room_id,
        room_link,
        is_initiator: None,
        messages: None,
        wss_url,
        wss_post_url,
        ice_server_url,
        ice_server_transports: req.arg("tt").unwrap_or_default().to_owned(),
        pc_config: Value::Object(pc_config).to_string(),
        pc_constraints: json!({ "optional": optional }).to_string(),
        offer_options: "{}".to_owned(),
        media_constraints: media.to_string(),
        is_loopback: loopback.to_string(),
        bypass_join_confirmation: "false".to_owned(),
        version_info: "null".to_owned(),
        include_loopback_js: if loopback {
            "<script src=\"/js/loopback.js\"></script>".to_owned()
        } else {
            String::new()
        },
        header_message: settings.header_message.clone(),
        error_messages: Vec::new(),
        warning_messages: warnings,
        signaling_nodes: settings.signaling_nodes.clone(),
    }
}

/// `base/r/room` followed by the request's arguments, HTML-escaped as AppRTC does.
fn room_link(base_url: &str, room: &str, query: &[(String, String)]) -> String {
    let mut link = format!("{base_url}/r/{room}");
    for (i, (k, v)) in query.iter().enumerate() {
        link.push(if i == 0 { '?' } else { '&' });
        link.push_str(&html_escape(k));
        link.push('=');
        link.push_str(&html_escape(v));
    }
    link
}

/// Escapes `&`, `<`, `>`, `"` and `'` for HTML text and attributes.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            _ => out.push(c),
        }
    }
    out
}

/// `media_constraints` from `audio`, `video`, `hd` and `firefox_fake_device`, in AppRTC's legacy
/// `{mandatory, optional}` form (our web client translates it to modern constraints).
fn media_constraints(req: &RequestInfo, warnings: &mut Vec<String>) -> Value {
    let audio = req.arg("audio").unwrap_or_default();
    let mut video = req.arg("video").unwrap_or_default().to_owned();
    let hd = req.arg("hd").unwrap_or_default().to_ascii_lowercase();
    if !hd.is_empty() && !video.is_empty() {
        warnings.push(format!("The \"hd\" parameter has overridden video={video}"));
    }
    if hd == "true" {
        video = "mandatory:minWidth=1280,mandatory:minHeight=720".to_owned();
    } else if hd.is_empty() && video.is_empty() && is_desktop_chrome(req.user_agent.as_deref()) {
        video = "optional:minWidth=1280,optional:minHeight=720".to_owned();
    }
    let mut out = Map::new();
    out.insert("audio".into(), track_constraints(audio, warnings));
    out.insert("video".into(), track_constraints(&video, warnings));
    if req.arg("firefox_fake_device").is_some_and(|v| !v.is_empty()) {
        out.insert("fake".into(), json!(true));
    }
    Value::Object(out)
}

fn is_desktop_chrome(user_agent: Option<&str>) -> bool {
    user_agent.is_some_and(|ua| ua.contains("Chrome") && !ua.contains("Android") && !ua.contains("Mobile"))
}

/// `"true"`, `"false"`, or `key=value,mandatory:key=value,...`.
fn track_constraints(spec: &str, warnings: &mut Vec<String>) -> Value {
    if spec.is_empty() || spec.eq_ignore_ascii_case("true") {
        return json!(true);
    }
    if spec.eq_ignore_ascii_case("false") {
        return json!(false);
    }
    let mut mandatory = Map::new();
    let mut optional = Vec::new();
    for part in spec.split(',') {
        let Some((key, value)) = part.split_once('=') else {
            warnings.push(format!("Ignoring malformed constraint: {part}"));
            continue;
        };
        if let Some(k) = key.strip_prefix("mandatory:") {
            mandatory.insert(k.to_owned(), json!(value));
        } else {
            let k = key.strip_prefix("optional:").unwrap_or(key);
            optional.push(json!({ k: value }));
        }
    }
    json!({ "mandatory": mandatory, "optional": optional })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(query: &[(&str, &str)]) -> RequestInfo {
        RequestInfo {
            base_url: "http://127.0.0.1:8083".into(),
            host: "127.0.0.1:8083".into(),
            secure: false,
            query: query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            user_agent: None,
        }
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn defaults_follow_the_request() {
        let p = room_params(&Settings::default(), &req(&[]), Some("R"));
        assert_eq!(p.wss_url, "ws://127.0.0.1:8083/ws");
        assert_eq!(p.wss_post_url, "http://127.0.0.1:8083");
        assert_eq!(p.ice_server_url, "http://127.0.0.1:8083/v1alpha/iceconfig?key=");
        assert_eq!(p.room_link.as_deref(), Some("http://127.0.0.1:8083/r/R"));
        let pc = parse(&p.pc_config);
        assert_eq!(pc["iceServers"], json!([]));
        assert_eq!(pc["bundlePolicy"], "max-bundle");
        assert_eq!(p.is_loopback, "false");
        assert_eq!(parse(&p.media_constraints), json!({"audio": true, "video": true}));
    }

    /// §1.8: every parameter that changes the answer.
    #[test]
    fn query_parameters_change_params() {
        let p = room_params(
            &Settings::default(),
            &req(&[("wshpp", "sig.example:443"), ("wstls", "true"), ("ts", "https://ice.example"), ("apikey", "K"), ("it", "relay"), ("tt", "udp"), ("dscp", "true"), ("ipv6", "true")]),
            Some("R"),
        );
        assert_eq!(p.wss_url, "wss://sig.example:443/ws");
        assert_eq!(p.wss_post_url, "https://sig.example:443");
        assert_eq!(p.ice_server_url, "https://ice.example/v1alpha/iceconfig?key=K");
        assert_eq!(parse(&p.pc_config)["iceTransports"], "relay");
        assert_eq!(p.ice_server_transports, "udp");
        assert_eq!(parse(&p.pc_constraints), json!({"optional": [{"googDscp": true}, {"googIPv6": true}]}));
        let p = room_params(&Settings::default(), &req(&[("ts", "")]), None);
        assert_eq!(p.ice_server_url, "");
        assert!(p.room_id.is_none() && p.room_link.is_none());
    }

    #[test]
    fn loopback_turns_dtls_off_and_adds_the_script() {
        let p = room_params(&Settings::default(), &req(&[("debug", "loopback")]), Some("R"));
        assert_eq!(p.is_loopback, "true");
        assert_eq!(parse(&p.pc_constraints), json!({"optional": [{"DtlsSrtpKeyAgreement": false}]}));
        assert!(p.include_loopback_js.contains("/js/loopback.js"));
        assert_eq!(p.room_link.as_deref(), Some("http://127.0.0.1:8083/r/R?debug=loopback"));
    }

    #[test]
    fn room_link_escapes_arguments() {
        let p = room_params(&Settings::default(), &req(&[("x", "<b>&\"")]), Some("R"));
        assert_eq!(p.room_link.as_deref(), Some("http://127.0.0.1:8083/r/R?x=&lt;b&gt;&amp;&quot;"));
    }

    #[test]
    fn media_constraints_from_arguments() {
        let mut r = req(&[("audio", "false"), ("video", "mandatory:minWidth=640,frameRate=30"), ("firefox_fake_device", "1")]);
        let p = room_params(&Settings::default(), &r, None);
        assert_eq!(
            parse(&p.media_constraints),
            json!({"audio": false, "video": {"mandatory": {"minWidth": "640"}, "optional": [{"frameRate": "30"}]}, "fake": true})
        );
        r.query = vec![("hd".into(), "true".into())];
        let p = room_params(&Settings::default(), &r, None);
        assert_eq!(parse(&p.media_constraints)["video"]["mandatory"], json!({"minWidth": "1280", "minHeight": "720"}));
        r.query.clear();
        r.user_agent = Some("Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0 Safari/537.36".into());
        let p = room_params(&Settings::default(), &r, None);
        assert_eq!(parse(&p.media_constraints)["video"]["optional"], json!([{"minWidth": "1280"}, {"minHeight": "720"}]));
        r.query = vec![("minre".into(), "1".into())];
        assert_eq!(room_params(&Settings::default(), &r, None).warning_messages.len(), 1);
    }

    #[test]
    fn join_response_shapes() {
        let full = serde_json::to_value(JoinResponse::failed(ResultCode::Full)).unwrap();
        assert_eq!(full, json!({"result": "FULL", "params": {"messages": []}}));
        let p = room_params(&Settings::default(), &req(&[]), Some("R")).for_join("R", "12345678", true, vec![]);
        let ok = serde_json::to_value(JoinResponse::success(&p)).unwrap();
        assert_eq!(ok["result"], "SUCCESS");
        assert_eq!(ok["params"]["is_initiator"], "true");
        assert_eq!(ok["params"]["messages"], json!([]));
        assert!(ok["params"]["pc_config"].is_string());
        assert!(ok["params"]["header_message"].is_null());
        assert!(ok["params"].get("signaling_nodes").is_none());
        let only = serde_json::to_value(ResultOnly { result: ResultCode::UnknownRoom }).unwrap();
        assert_eq!(only, json!({"result": "UNKNOWN_ROOM"}));
    }
}

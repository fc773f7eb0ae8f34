//! The admin API as `switchboard ctl` reaches it: one node's URL, its bearer token, a deadline
//! on every request, and the API's JSON errors turned into messages.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

/// How long one admin request may take (a drain answers at once; adding a node waits for Raft).
const TIMEOUT: Duration = Duration::from_secs(30);

/// A node's admin API.
pub struct AdminClient {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl AdminClient {
    /// `base` is `http(s)://host:port`; `ca` a PEM file of roots to trust instead of the
    /// public ones (a deployment's own CA).
    pub fn new(base: &str, token: String, ca: Option<&std::path::Path>) -> Result<Self> {
        let mut config = ureq::Agent::config_builder().timeout_global(Some(TIMEOUT)).http_status_as_error(false);
        if let Some(path) = ca {
            let pem = std::fs::read(path).with_context(|| format!("cannot read --ca {}", path.display()))?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                bail!("--ca {} holds no PEM certificate", path.display());
            }
            let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs))).build();
            config = config.tls_config(tls);
        }
        Ok(AdminClient { agent: config.build().into(), base: base.trim_end_matches('/').to_owned(), token })
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Value> {
        let r = self.agent.get(self.url(path)).header("Authorization", self.bearer()).call();
        self.answer("GET", path, r)
    }

    /// `POST path` with a JSON body, or none.
    pub fn post(&self, path: &str, body: Option<&Value>) -> Result<Value> {
        let req = self.agent.post(self.url(path)).header("Authorization", self.bearer());
        let r = match body {
            Some(b) => req.content_type("application/json").send(b.to_string()),
            None => req.send_empty(),
        };
        self.answer("POST", path, r)
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Result<Value> {
        let r = self.agent.delete(self.url(path)).header("Authorization", self.bearer()).call();
        self.answer("DELETE", path, r)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    fn answer(&self, method: &str, path: &str, r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Value> {
        let mut r = r.with_context(|| format!("{method} {}{path}", self.base))?;
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().with_context(|| format!("{method} {}{path}: reading the answer", self.base))?;
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if (200..300).contains(&status) {
            return Ok(json);
        }
        let why = json.get("error").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| json.to_string());
        let hint = match status {
            401 => " (check --token, SWITCHBOARD_ADMIN_TOKEN or --token-file)",
            403 => " (set cluster.admin_token on the node)",
            _ => "",
        };
        bail!("{method} {path}: HTTP {status}: {why}{hint}")
    }
}

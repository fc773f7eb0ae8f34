//! HTTP calls of AppRTC clients: the room server (`/join`, `/message`, `/leave`, ...) and
//! Collider's `POST`/`DELETE /{room}/{client}`.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

/// A status and body.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body as text.
    pub body: String,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    /// The body parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An HTTP client bound to one node.
#[derive(Clone)]
pub struct Http {
    /// `http://ip:port`.
    pub base: String,
    client: reqwest::Client,
}

impl Http {
    /// A client for the node at `base`.
    pub fn new(base: &str) -> Self {
        crate::init_crypto();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client");
        Http { base: base.trim_end_matches('/').to_owned(), client }
    }

    /// Any request.
    pub async fn request(&self, method: &str, path: &str, body: impl Into<reqwest::Body>) -> Result<Reply> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        self.send(self.client.request(method, format!("{}{}", self.base, path)).body(body), path).await
    }

    /// A request to the admin API with its bearer token.
    pub async fn admin(&self, method: &str, path: &str, token: &str) -> Result<Reply> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        self.send(self.client.request(method, format!("{}{}", self.base, path)).bearer_auth(token), path).await
    }

    async fn send(&self, req: reqwest::RequestBuilder, path: &str) -> Result<Reply> {
        let r = req.send().await.with_context(|| format!("request to {}{path}", self.base))?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.text().await?;
        Ok(Reply { status, body, headers })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Reply> {
        self.request("GET", path, "").await
    }

    /// `POST path` with a body.
    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> Result<Reply> {
        self.request("POST", path, body).await
    }

    /// `POST /join/{room}`; the whole JSON answer.
    pub async fn join(&self, room: &str) -> Result<Value> {
        let r = self.post(&format!("/join/{room}"), "").await?;
        anyhow::ensure!(r.status == 200, "join answered {}: {}", r.status, r.body);
        Ok(r.json())
    }

    /// Joins and expects SUCCESS; returns (client_id, is_initiator, messages).
    pub async fn join_ok(&self, room: &str) -> Result<(String, bool, Vec<String>)> {
        let j = self.join(room).await?;
        anyhow::ensure!(j["result"] == "SUCCESS", "join of {room} failed: {j}");
        let p = &j["params"];
        let messages = p["messages"].as_array().context("messages")?.iter().map(|m| m.as_str().unwrap_or_default().to_owned()).collect();
        Ok((p["client_id"].as_str().context("client_id")?.to_owned(), p["is_initiator"] == "true", messages))
    }

    /// `POST /message/{room}/{client}`; the `result` string (or the HTTP status for non-200).
    pub async fn message(&self, room: &str, client: &str, body: &str) -> Result<String> {
        let r = self.post(&format!("/message/{room}/{client}"), body.to_owned()).await?;
        if r.status != 200 {
            return Ok(format!("HTTP {}", r.status));
        }
        Ok(r.json()["result"].as_str().unwrap_or_default().to_owned())
    }

    /// `POST /leave/{room}/{client}`.
    pub async fn leave(&self, room: &str, client: &str) -> Result<Reply> {
        self.post(&format!("/leave/{room}/{client}"), "").await
    }

    /// Collider `POST /{room}/{client}`.
    pub async fn collider_post(&self, room: &str, client: &str, body: &str) -> Result<Reply> {
        self.post(&format!("/{room}/{client}"), body.to_owned()).await
    }

    /// Collider `DELETE /{room}/{client}`.
    pub async fn collider_delete(&self, room: &str, client: &str) -> Result<Reply> {
        self.request("DELETE", &format!("/{room}/{client}"), "").await
    }

    /// `GET /status` as JSON.
    pub async fn status(&self) -> Result<Value> {
        Ok(self.get("/status").await?.json())
    }
}

//! Configuration reload (SIGHUP, `POST /admin/reload`): reads the file, environment and flags
//! again, puts the settings that can change live in force and names the ones that need a restart.

use std::sync::Mutex;

use anyhow::Result;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::{Cli, Config};
use crate::logging::LogFilter;
use crate::node::Node;

/// Settings a reload puts in force while calls go on, as `section.key`. Limits apply to what
/// starts after the reload (sessions, allocations, requests); what is open keeps going.
pub const LIVE: &[&str] = &[
    // Limits of the public listener and of signaling.
    "http.max_sessions",
    "http.sessions_per_ip",
    "http.joins_per_second_per_ip",
    "http.messages_per_second_per_ip",
    "http.max_message_bytes",
    "http.body_timeout_secs",
    "http.register_timeout_secs",
    "http.session_send_queue",
    // What `/join`, `/params` and the web client are told.
    "apprtc.ice_server_base_url",
    "apprtc.ice_server_api_key",
    "apprtc.header_message",
    "apprtc.signaling_host_port",
    "apprtc.signaling_tls",
    // TURN credentials handed out, and who may fetch them.
    "ice.stun_urls",
    "ice.turn_urls",
    "ice.turn_secret",
    "ice.turn_ttl_secs",
    "ice.allowed_origins",
    "ice.credentials_per_minute",
    // The TURN server's users (secret rotation), peer policy, quotas and caps.
    "turn.extra_secrets",
    "turn.users",
    "turn.allow_peers",
    "turn.max_allocations",
    "turn.user_quota",
    "turn.max_bps",
    "turn.auth_failures_per_minute",
    // Operations.
    "cluster.admin_token",
    "cluster.drain_timeout_secs",
    "log.filter",
];

/// Why a changed setting was not put in force.
const NEEDS_RESTART: &str = "needs a restart";
const SAME_ON_EVERY_NODE: &str = "needs a restart, with the same value on every node (the replicated room rules use it)";
const RUST_LOG_WINS: &str = "RUST_LOG is set and wins over log.filter";

/// What a reload did.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Outcome {
    /// Changed settings now in force.
    pub applied: Vec<String>,
    /// Changed settings left at their running value, and why.
    pub not_applied: Vec<NotApplied>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct NotApplied {
    pub setting: String,
    pub reason: &'static str,
}

/// Re-reads the configuration the node was started with.
pub struct Reloader {
    cli: Cli,
    /// The settings in force, as a table: what a reload compares the new reading with.
    running: Mutex<toml::Table>,
    log: LogFilter,
}

impl Reloader {
    /// `running` is what `cli` and the environment gave at start.
    pub fn new(cli: Cli, running: toml::Table, log: LogFilter) -> Self {
        Reloader { cli, running: Mutex::new(running), log }
    }

    /// Reads the configuration again and applies it to `node`. An error (a file that does not
    /// parse or check) leaves every setting as it was. Logs what it did.
    pub fn reload(&self, node: &Node) -> Result<Outcome> {
        crate::systemd::reloading();
        let result = self.reload_inner(node);
        crate::systemd::reloaded(if result.is_ok() { "serving; configuration reloaded" } else { "serving; configuration reload refused" });
        match &result {
            Ok(o) if o.applied.is_empty() && o.not_applied.is_empty() => info!("configuration reloaded: nothing changed"),
            Ok(o) => {
                info!(applied = ?o.applied, "configuration reloaded");
                for n in &o.not_applied {
                    warn!(setting = %n.setting, "changed setting not applied: {}; the running value stays", n.reason);
                }
            }
            Err(e) => warn!("configuration reload refused, the running configuration stays: {e:#}"),
        }
        metrics::counter!("switchboard_config_reloads_total", "result" => if result.is_ok() { "ok" } else { "error" }).increment(1);
        result
    }

    fn reload_inner(&self, node: &Node) -> Result<Outcome> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let fresh = Config::merged(&self.cli, &env)?;
        // The whole new reading must be valid, the settings that need a restart too.
        Config::from_table(fresh.clone())?;
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = running.clone();
        let mut outcome = Outcome::default();
        for (section, key, value) in changes(&running, &fresh) {
            let setting = format!("{section}.{key}");
            let reason = if setting == "log.filter" && self.log.env_wins {
                Some(RUST_LOG_WINS)
            } else if LIVE.contains(&setting.as_str()) {
                None
            } else if section == "rooms" {
                Some(SAME_ON_EVERY_NODE)
            } else {
                Some(NEEDS_RESTART)
            };
            match reason {
                None => {
                    set(&mut next, &section, &key, value);
                    outcome.applied.push(setting);
                }
                Some(reason) => outcome.not_applied.push(NotApplied { setting, reason }),
            }
        }
        if outcome.applied.is_empty() {
            return Ok(outcome);
        }
        let config = Config::from_table(next.clone()).map_err(|e| {
            anyhow::anyhow!("the live settings do not fit the settings that need a restart: {e:#}")
        })?;
        if outcome.applied.iter().any(|s| s == "log.filter") {
            self.log.set(&config.log.filter)?;
        }
        node.apply(config);
        *running = next;
        Ok(outcome)
    }
}

/// The settings whose value differs between `old` and `new`, with the new value (`Null`-like
/// removal cannot happen: both come from the same defaults, which name every setting).
fn changes(old: &toml::Table, new: &toml::Table) -> Vec<(String, String, toml::Value)> {
    let mut out = Vec::new();
    for (section, v) in new {
        let Some(new_keys) = v.as_table() else { continue };
        let old_keys = old.get(section).and_then(|s| s.as_table());
        for (key, value) in new_keys {
            if old_keys.and_then(|o| o.get(key)) != Some(value) {
                out.push((section.clone(), key.clone(), value.clone()));
            }
        }
    }
    out
}

fn set(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    if let Some(toml::Value::Table(s)) = table.get_mut(section) {
        s.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::bail;

    /// Fails unless every setting of [`LIVE`] exists (a renamed setting must not silently drop
    /// out of reloads).
    fn check_live_list(defaults: &toml::Table) -> Result<()> {
        for s in LIVE {
            let (section, key) = s.split_once('.').unwrap_or((s, ""));
            if defaults.get(section).and_then(|t| t.get(key)).is_none() {
                bail!("live setting {s} is not a setting");
            }
        }
        Ok(())
    }

    fn table(s: &str) -> toml::Table {
        s.parse().unwrap()
    }

    #[test]
    fn every_live_setting_exists() {
        check_live_list(&table(crate::config::EMBEDDED_DEFAULTS)).unwrap();
        assert!(check_live_list(&table("[http]\nlisten = 1")).is_err());
    }

    #[test]
    fn changes_are_per_setting() {
        let old = table("[http]\na = 1\nb = [1, 2]\n[turn]\nc = \"x\"");
        let new = table("[http]\na = 1\nb = [1, 3]\n[turn]\nc = \"y\"");
        let c: Vec<String> = changes(&old, &new).into_iter().map(|(s, k, _)| format!("{s}.{k}")).collect();
        assert_eq!(c, ["http.b", "turn.c"]);
        assert!(changes(&old, &old).is_empty());
    }
}

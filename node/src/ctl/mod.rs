//! `switchboard ctl`: the admin API from a shell — status, rooms, sessions, allocations, kick,
//! drain, reload, credentials and cluster membership, as tables or (`--json`) as the API's JSON.

mod client;
mod table;

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use self::client::AdminClient;
use self::table::Table;
use crate::config::{Cli, Config};

/// Where the admin API is and how to prove the right to it.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The node's admin API, e.g. http://127.0.0.1:8083 (its `ops.listen` when it has one).
    /// Default: from the node's --config, else http://127.0.0.1:8083.
    #[arg(long, env = "SWITCHBOARD_ADMIN_URL")]
    url: Option<String>,
    /// The admin token (`cluster.admin_token`). Prefer --token-file or the environment: a flag
    /// shows in the process list.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the admin token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The node's configuration file: its admin token and listener serve as defaults.
    #[arg(short, long, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// PEM roots to trust for an https:// URL (a deployment's own CA).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// The node: version, uptime, what it advertises, warnings, and the cluster as it sees it.
    Status,
    /// Rooms in the (replicated) state, with their members and where their sockets are.
    Rooms {
        /// Only rooms whose id starts with this.
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// This node's WebSocket sessions.
    Sessions {
        /// Only sessions registered in this room.
        #[arg(long)]
        room: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// This node's TURN allocations.
    Allocations {
        /// Only allocations of this TURN username.
        #[arg(long)]
        username: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Remove a client from its room, close a session, or end a TURN allocation.
    #[command(subcommand)]
    Kick(KickTarget),
    /// Drain the node as SIGTERM does (sockets reconnect elsewhere) and stop it.
    Drain,
    /// Reload the node's configuration as SIGHUP does.
    Reload,
    /// Mint TURN REST credentials.
    Credentials {
        #[arg(long)]
        username: Option<String>,
        /// Seconds they stay valid (default `ice.turn_ttl_secs`).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Change the cluster's membership.
    #[command(subcommand)]
    Nodes(NodesCommand),
}

#[derive(Debug, Subcommand)]
enum KickTarget {
    /// The client leaves its room (through the cluster); its socket, wherever it is, closes.
    Client { room: String, client: String },
    /// Close one WebSocket session of this node (1008).
    Session { id: String },
    /// End one TURN allocation of this node now.
    Allocation { id: u64 },
}

#[derive(Debug, Subcommand)]
enum NodesCommand {
    /// Add a running node with an empty data directory (a voter unless --learner).
    Add {
        id: u64,
        /// Its cluster listener, host:port.
        raft_addr: String,
        /// The URL its clients use.
        public_url: String,
        /// Serve clients without voting (promote it later).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster.
    Remove { id: u64 },
    /// Make a learner a voter.
    Promote { id: u64 },
}

/// Runs `switchboard ctl …`; the process exit code (0 done, 1 refused or unreachable, 2 usage).
pub fn run(args: CtlArgs) -> i32 {
    let client = match connect(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard ctl: {e:#}");
            return 2;
        }
    };
    match execute(&client, &args) {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            eprintln!("switchboard ctl: {e:#}");
            1
        }
    }
}

fn connect(args: &CtlArgs) -> Result<AdminClient> {
    let node = match &args.config {
        Some(path) => {
            let cli = <Cli as clap::Parser>::parse_from([std::ffi::OsString::from("switchboard"), "--config".into(), path.into()]);
            Some(Config::load(&cli)?)
        }
        None => None,
    };
    let url = match (&args.url, &node) {
        (Some(u), _) => u.clone(),
        (None, Some(c)) => admin_url(c),
        (None, None) => "http://127.0.0.1:8083".to_owned(),
    };
    let token = if let Some(t) = &args.token {
        t.clone()
    } else if let Some(f) = &args.token_file {
        std::fs::read_to_string(f).with_context(|| format!("cannot read --token-file {}", f.display()))?.trim().to_owned()
    } else if let Some(c) = node.as_ref().filter(|c| !c.cluster.admin_token.is_empty()) {
        c.cluster.admin_token.clone()
    } else {
        bail!("no admin token: give --token-file, SWITCHBOARD_ADMIN_TOKEN, --token or the node's --config");
    };
    AdminClient::new(&url, token, args.ca.as_deref())
}

/// Where a node with this configuration serves its admin API, as seen from its own host.
fn admin_url(c: &Config) -> String {
    let scheme = if c.tls().is_some() { "https" } else { "http" };
    let mut addr = c.ops.listen_addr().unwrap_or(c.http.listen);
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    format!("{scheme}://{addr}")
}

fn execute(api: &AdminClient, args: &CtlArgs) -> Result<String> {
    let (answer, human): (Value, fn(&Value) -> String) = match &args.command {
        CtlCommand::Status => (api.get("/admin/status")?, show_status),
        CtlCommand::Rooms { prefix, limit } => {
            let p = prefix.as_deref().map(|p| format!("&prefix={}", query(p))).unwrap_or_default();
            (api.get(&format!("/admin/rooms?limit={limit}{p}"))?, show_rooms)
        }
        CtlCommand::Sessions { room, limit } => {
            let r = room.as_deref().map(|r| format!("&room={}", query(r))).unwrap_or_default();
            (api.get(&format!("/admin/sessions?limit={limit}{r}"))?, show_sessions)
        }
        CtlCommand::Allocations { username, limit } => {
            let u = username.as_deref().map(|u| format!("&username={}", query(u))).unwrap_or_default();
            (api.get(&format!("/admin/allocations?limit={limit}{u}"))?, show_allocations)
        }
        CtlCommand::Kick(KickTarget::Client { room, client }) => {
            (api.delete(&format!("/admin/rooms/{}/clients/{}", query(room), query(client)))?, show_result)
        }
        CtlCommand::Kick(KickTarget::Session { id }) => (api.delete(&format!("/admin/sessions/{}", query(id)))?, show_result),
        CtlCommand::Kick(KickTarget::Allocation { id }) => (api.delete(&format!("/admin/allocations/{id}"))?, show_result),
        CtlCommand::Drain => (api.post("/admin/drain", None)?, show_result),
        CtlCommand::Reload => (api.post("/admin/reload", None)?, show_reload),
        CtlCommand::Credentials { username, ttl } => {
            let mut q = Vec::new();
            if let Some(u) = username {
                q.push(format!("username={}", query(u)));
            }
            if let Some(t) = ttl {
                q.push(format!("ttl={t}"));
            }
            (api.post(&format!("/admin/credentials?{}", q.join("&")), None)?, show_credentials)
        }
        CtlCommand::Nodes(NodesCommand::Add { id, raft_addr, public_url, learner }) => {
            let body = json!({"id": id, "raft_addr": raft_addr, "public_url": public_url, "role": if *learner { "learner" } else { "voter" }});
            (api.post("/admin/cluster/nodes", Some(&body))?, show_result)
        }
        CtlCommand::Nodes(NodesCommand::Remove { id }) => (api.delete(&format!("/admin/cluster/nodes/{id}"))?, show_result),
        CtlCommand::Nodes(NodesCommand::Promote { id }) => (api.post(&format!("/admin/cluster/nodes/{id}/promote"), None)?, show_result),
    };
    Ok(if args.json { format!("{answer:#}\n") } else { human(&answer) })
}

/// Percent-encodes what goes into a path segment or a query value.
fn query(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A duration in seconds, briefly: `42s`, `5m07s`, `3h12m`, `2d04h`.
fn brief(secs: i64) -> String {
    let (sign, s) = if secs < 0 { ("-", -secs) } else { ("", secs) };
    let out = match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    };
    format!("{sign}{out}")
}

fn now_ms() -> i64 {
    crate::rooms::now_ms() as i64
}

fn show_status(s: &Value) -> String {
    let mut out = format!(
        "node {}  version {}  up {}  {}\nrooms {}  sessions {}  allocations {}\n",
        text(&s["node"]),
        text(&s["version"]),
        brief(s["uptime_secs"].as_i64().unwrap_or(0)),
        if s["draining"] == true { "draining" } else { "serving" },
        text(&s["rooms"]),
        text(&s["sessions"]),
        text(&s["allocations"]),
    );
    let ad = &s["advertised"];
    out.push_str(&format!("public URL   {}\n", text(&ad["public_url"])));
    let uris: Vec<String> = ad["turn_uris"].as_array().map(|a| a.iter().map(text).collect()).unwrap_or_default();
    out.push_str(&format!("TURN URIs    {}\n", if uris.is_empty() { "-".to_owned() } else { uris.join(" ") }));
    if !ad["relay_ip"].is_null() {
        let ext = if ad["external_ip"].is_null() { String::new() } else { format!(" (advertised as {})", text(&ad["external_ip"])) };
        out.push_str(&format!("relay IP     {}{ext}\n", text(&ad["relay_ip"])));
    }
    for w in s["warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!("warning: {}\n", text(w)));
    }
    let c = &s["cluster"];
    if c.is_object() {
        out.push_str(&format!(
            "cluster: {} here, leader {}, term {}, last applied {}\n",
            text(&c["state"]),
            text(&c["leader"]),
            text(&c["term"]),
            text(&c["last_applied"])
        ));
        let mut t = Table::new(&["ID", "ROLE", "UP", "LINK", "RTT", "SOCKETS", "PUBLIC URL", "RAFT"]);
        for m in c["members"].as_array().into_iter().flatten() {
            t.row(vec![
                text(&m["id"]),
                if m["voter"] == true { "voter" } else { "learner" }.to_owned(),
                if m["up"] == true { "up" } else { "down" }.to_owned(),
                if m["link_up"] == true { "up" } else { "down" }.to_owned(),
                m["link_rtt_ms"].as_f64().map_or("-".to_owned(), |r| format!("{r:.1}ms")),
                text(&m["bindings"]),
                text(&m["public_url"]),
                text(&m["raft_addr"]),
            ]);
        }
        out.push_str(&t.render());
    }
    out
}

fn footer(v: &Value, key: &str, what: &str) -> String {
    let shown = v[key].as_array().map_or(0, Vec::len);
    format!("{shown} of {} {what}\n", text(&v["total"]))
}

fn show_rooms(v: &Value) -> String {
    let mut t = Table::new(&["ROOM", "MEMBERS", "SOCKETS", "WAITING"]);
    for r in v["rooms"].as_array().into_iter().flatten() {
        let members: Vec<String> = r["members"].as_array().into_iter().flatten().map(text).collect();
        let sockets: Vec<String> = r["clients"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| match &c[1] {
                Value::Null => format!("{} (unbound)", text(&c[0])),
                n => format!("{}@node{}", text(&c[0]), text(n)),
            })
            .collect();
        t.row(vec![text(&r["room"]), members.join(","), sockets.join(","), text(&r["waiting"])]);
    }
    t.render() + &footer(v, "rooms", "rooms")
}

fn show_sessions(v: &Value) -> String {
    let mut t = Table::new(&["ID", "REMOTE", "ROOM", "CLIENT", "AGE"]);
    let now = now_ms();
    for s in v["sessions"].as_array().into_iter().flatten() {
        let age = (now - s["opened_unix_ms"].as_i64().unwrap_or(now)) / 1000;
        t.row(vec![text(&s["id"]), text(&s["remote"]), text(&s["room"]), text(&s["client"]), brief(age)]);
    }
    t.render() + &footer(v, "sessions", "sessions")
}

fn show_allocations(v: &Value) -> String {
    let mut t = Table::new(&["ID", "USERNAME", "CLIENT", "TRANSPORT", "RELAY", "EXPIRES IN"]);
    let now = now_ms();
    for a in v["allocations"].as_array().into_iter().flatten() {
        let left = (a["expires_unix_ms"].as_i64().unwrap_or(now) - now) / 1000;
        let transport = format!("{}/{}", text(&a["transport"]), text(&a["relay_transport"]));
        t.row(vec![text(&a["id"]), text(&a["username"]), text(&a["client"]), transport, text(&a["relay"]), brief(left)]);
    }
    t.render() + &footer(v, "allocations", "allocations")
}

fn show_result(v: &Value) -> String {
    let mut out = text(&v["result"]);
    if let Some(o) = v.as_object() {
        for (k, val) in o.iter().filter(|(k, _)| *k != "result") {
            out.push_str(&format!("  {k}={}", text(val)));
        }
    }
    out + "\n"
}

fn show_reload(v: &Value) -> String {
    let applied: Vec<String> = v["applied"].as_array().into_iter().flatten().map(text).collect();
    let not: Vec<&Value> = v["not_applied"].as_array().into_iter().flatten().collect();
    if applied.is_empty() && not.is_empty() {
        return "reloaded: nothing changed\n".to_owned();
    }
    let mut out = String::new();
    if !applied.is_empty() {
        out.push_str(&format!("applied: {}\n", applied.join(", ")));
    }
    for n in not {
        out.push_str(&format!("not applied: {} ({})\n", text(&n["setting"]), text(&n["reason"])));
    }
    out
}

fn show_credentials(v: &Value) -> String {
    let uris: Vec<String> = v["uris"].as_array().into_iter().flatten().map(text).collect();
    format!("username  {}\npassword  {}\nttl       {}s\nuris      {}\n", text(&v["username"]), text(&v["password"]), text(&v["ttl"]), uris.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brief_durations_and_escapes() {
        assert_eq!(brief(42), "42s");
        assert_eq!(brief(307), "5m07s");
        assert_eq!(brief(3 * 3600 + 12 * 60), "3h12m");
        assert_eq!(brief(-5), "-5s");
        assert_eq!(query("a b/c"), "a%20b%2Fc");
    }
}

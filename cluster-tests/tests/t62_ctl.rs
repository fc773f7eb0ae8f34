//! `switchboard ctl` against a real three-node cluster (and a spare node to add): every
//! subcommand, its table and its `--json`, and what each did to the cluster.

use std::time::{Duration, Instant};

use cluster_tests::cluster::{Cluster, ClusterOptions, ADMIN_TOKEN};
use cluster_tests::turn_client::TurnClient;
use cluster_tests::{binary, fresh_room, WsClient};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(5);

struct Ctl {
    token_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

struct Run {
    code: Option<i32>,
    out: String,
    err: String,
}

impl Run {
    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "stdout:\n{}\nstderr:\n{}", self.out, self.err);
        &self.out
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("{e}: {}", self.out))
    }
}

impl Ctl {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
        Ctl { token_file, _dir: dir }
    }

    /// `switchboard ctl --url <node> --token-file … args`.
    async fn run(&self, base: &str, args: &[&str]) -> Run {
        let out = tokio::process::Command::new(binary())
            .arg("ctl")
            .arg("--url")
            .arg(base)
            .arg("--token-file")
            .arg(&self.token_file)
            .args(args)
            .env_remove("SWITCHBOARD_ADMIN_TOKEN")
            .env_remove("SWITCHBOARD_CONFIG")
            .output()
            .await
            .unwrap();
        Run { code: out.status.code(), out: String::from_utf8_lossy(&out.stdout).into_owned(), err: String::from_utf8_lossy(&out.stderr).into_owned() }
    }
}

/// Runs `args` on `base` until `ok` holds for the JSON answer.
async fn until(ctl: &Ctl, base: &str, args: &[&str], what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = ctl.run(base, args).await.json();
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} not seen within 15 s: {v:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn members(v: &Value) -> Vec<(u64, bool)> {
    v["cluster"]["members"].as_array().into_iter().flatten().map(|m| (m["id"].as_u64().unwrap(), m["voter"] == true)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t62_ctl_subcommands_on_a_cluster() {
    let mut c = Cluster::start(ClusterOptions { sets: vec!["cluster.node_down_after_ms=600".into()], spare: 1, ..Default::default() })
        .await
        .unwrap();
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap() as usize;
    let ctl = Ctl::new();
    let (b1, b2, b3) = (c.base(1), c.base(2), c.base(3));

    // status: the node, what it advertises, the cluster's members.
    let s = until(&ctl, &b1, &["status", "--json"], "three members up", |v| members(v).len() == 3).await;
    assert_eq!(s["node"], 1);
    assert_eq!(s["advertised"]["public_url"], b1.as_str());
    assert!(s["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("only this machine")), "{s}");
    let cs = c.status(1).await.unwrap();
    assert_eq!(cs["advertised"], s["advertised"], "/admin/cluster/status says it too");
    assert_eq!(cs["warnings"], s["warnings"]);
    let table = ctl.run(&b1, &["status"]).await;
    let table = table.ok();
    assert!(table.starts_with("node 1  version "), "{table}");
    assert!(table.contains(&format!("public URL   {b1}")), "{table}");
    assert_eq!(table.lines().filter(|l| l.contains(" voter ")).count(), 3, "{table}");
    assert!(table.contains("ID  ROLE"), "{table}");

    // A call: one person on node 1, the other on node 2.
    let room = fresh_room("ctl");
    let (c1, _, _) = c.http(1).join_ok(&room).await.unwrap();
    let (c2, _, _) = c.http(2).join_ok(&room).await.unwrap();
    let mut a = WsClient::connect(&c.ws_url(1)).await.unwrap();
    a.register(&room, &c1).await.unwrap();
    let mut b = WsClient::connect(&c.ws_url(2)).await.unwrap();
    b.register(&room, &c2).await.unwrap();

    // rooms: both members, each socket on its node (from any node: the state is replicated).
    let v = until(&ctl, &b3, &["rooms", "--prefix", &room, "--json"], "both sockets bound", |v| {
        v["rooms"][0]["clients"].as_array().is_some_and(|c| c.len() == 2 && c.iter().all(|x| !x[1].is_null()))
    })
    .await;
    assert_eq!(v["total"], 1, "{v}");
    let t = ctl.run(&b3, &["rooms", "--prefix", &room]).await;
    let t = t.ok();
    assert!(t.lines().any(|l| l.starts_with(&room) && l.contains(&format!("{c1}@node1")) && l.contains(&format!("{c2}@node2"))), "{t}");
    assert!(t.ends_with("1 of 1 rooms\n"), "{t}");

    // sessions on node 2, then close that one: its client sees 1008.
    let v = ctl.run(&b2, &["sessions", "--room", &room, "--json"]).await.json();
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["sessions"][0]["client"], c2.as_str());
    let id = v["sessions"][0]["id"].as_str().unwrap().to_owned();
    let t = ctl.run(&b2, &["sessions"]).await;
    assert!(t.ok().lines().any(|l| l.starts_with(&id) && l.contains(&room) && l.contains(&c2)), "{}", t.out);
    let k = ctl.run(&b2, &["kick", "session", &id]).await;
    assert!(k.ok().starts_with("closed"), "{}", k.out);
    assert_eq!(b.expect_closed(WAIT).await.unwrap(), Some(1008));
    assert_eq!(ctl.run(&b2, &["kick", "session", &id]).await.code, Some(1), "a session that is gone");

    // kick client: c1 leaves the room through the cluster and its socket on node 1 closes.
    let k = ctl.run(&b3, &["kick", "client", &room, &c1]).await;
    assert!(k.ok().starts_with("removed"), "{}", k.out);
    a.expect_closed(WAIT).await.unwrap();
    let v = until(&ctl, &b1, &["rooms", "--prefix", &room, "--json"], "c1 gone", |v| {
        v["rooms"][0]["members"].as_array().is_some_and(|m| !m.iter().any(|x| x == c1.as_str()))
    })
    .await;
    assert_eq!(v["rooms"][0]["members"], serde_json::json!([c2]), "{v}");
    let again = ctl.run(&b3, &["kick", "client", &room, &c1]).await;
    assert_eq!(again.code, Some(1));
    assert!(again.err.contains("404") && again.err.contains("is not in room"), "{}", again.err);

    // credentials, used on node 3's TURN server; the allocation listed, then ended.
    let cred = ctl.run(&b3, &["credentials", "--username", "operator", "--ttl", "600", "--json"]).await.json();
    let (user, pass) = (cred["username"].as_str().unwrap(), cred["password"].as_str().unwrap());
    assert!(user.ends_with(":operator") && cred["ttl"] == 600, "{cred}");
    let t = ctl.run(&b3, &["credentials"]).await;
    assert!(t.ok().starts_with("username  ") && t.out.contains("\nuris      turn:"), "{}", t.out);
    let mut turn = TurnClient::udp(c.turn_addr(3), user, pass).await.unwrap();
    assert_eq!(turn.allocate().await.unwrap().code, 0);
    let v = ctl.run(&b3, &["allocations", "--username", user, "--json"]).await.json();
    assert_eq!(v["total"], 1, "{v}");
    let alloc = v["allocations"][0]["id"].as_u64().unwrap().to_string();
    assert_eq!(v["allocations"][0]["transport"], "udp");
    let t = ctl.run(&b3, &["allocations"]).await;
    assert!(t.ok().lines().any(|l| l.starts_with(&alloc) && l.contains(user) && l.contains("udp/udp")), "{}", t.out);
    assert!(ctl.run(&b3, &["kick", "allocation", &alloc]).await.ok().starts_with("ended"));
    until(&ctl, &b3, &["allocations", "--json"], "the allocation gone", |v| v["total"] == 0).await;
    assert_ne!(turn.refresh(600).await.unwrap().code, 0, "the ended allocation is gone for its client too");

    // reload.
    assert_eq!(ctl.run(&b2, &["reload"]).await.ok(), "reloaded: nothing changed\n");
    assert_eq!(ctl.run(&b2, &["reload", "--json"]).await.json()["applied"], serde_json::json!([]));

    // nodes: add the spare node 4 as a learner, promote it, remove it.
    let (raft4, base4) = (format!("127.0.0.4:{}", c.raft_port()), c.base(4));
    let lb = c.base(leader);
    let r = ctl.run(&lb, &["nodes", "add", "4", &raft4, &base4, "--learner"]).await;
    assert!(r.ok().starts_with("added") && r.out.contains("voter=false"), "{}", r.out);
    until(&ctl, &lb, &["status", "--json"], "node 4 a learner", |v| members(v).contains(&(4, false))).await;
    assert!(ctl.run(&lb, &["nodes", "promote", "4"]).await.ok().starts_with("promoted"));
    until(&ctl, &lb, &["status", "--json"], "node 4 a voter", |v| members(v).contains(&(4, true))).await;
    assert!(ctl.run(&lb, &["nodes", "remove", "4"]).await.ok().starts_with("removed"));
    until(&ctl, &lb, &["status", "--json"], "node 4 gone", |v| members(v).len() == 3).await;

    // Refusals: a wrong token is a clear error and exit 1; no token at all is a usage error.
    let bad = tokio::process::Command::new(binary()).args(["ctl", "--url", &b1, "--token", "wrong", "status"]).output().await.unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("HTTP 401"), "{}", String::from_utf8_lossy(&bad.stderr));
    let none = tokio::process::Command::new(binary())
        .args(["ctl", "--url", &b1, "status"])
        .env_remove("SWITCHBOARD_ADMIN_TOKEN")
        .env_remove("SWITCHBOARD_CONFIG")
        .output()
        .await
        .unwrap();
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no admin token"));

    // drain node 3 (not the leader if it can be helped): it drains and exits 0.
    let victim = if leader == 3 { 2 } else { 3 };
    let d = ctl.run(&c.base(victim), &["drain"]).await;
    assert!(d.ok().starts_with("draining"), "{}", d.out);
    let status = c.node(victim).wait_exit(Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "drained node exit: {status:?}");
    assert!(c.node(victim).log().contains("admin API: draining"));
}

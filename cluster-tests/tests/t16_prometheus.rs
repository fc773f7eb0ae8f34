//! The shipped monitoring: `promtool` accepts the alert rules; a real Prometheus (Debian's)
//! scrapes a three-node cluster through a call, finds every metric the Grafana dashboard and the
//! alerts use, evaluates every dashboard query, keeps quiet while the cluster is healthy and
//! raises the node-down alert when a node dies.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster_tests::cluster::{Cluster, ClusterOptions};
use cluster_tests::turn_client::TurnClient;
use cluster_tests::{free_port, fresh_room, WsClient};
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Every `switchboard_*` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("switchboard_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        out.insert(text[start..end].to_owned());
        i = end;
    }
    out
}

fn encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

#[test]
fn t16_promtool_accepts_the_alert_rules() {
    let out = Command::new("promtool").arg("check").arg("rules").arg(repo("contrib/prometheus/alerts.yml")).output().expect("promtool (scripts/install-test-deps.sh installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 13 rules found"), "{text}");
    // A broken rule is caught, so the check above means something.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: rate(switchboard_x_total[5m] > 1\n").unwrap();
    assert!(!Command::new("promtool").arg("check").arg("rules").arg(&bad).output().unwrap().status.success());
}

struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `targets` as job "switchboard" every second, with the shipped rules.
    async fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port(&[std::net::Ipv4Addr::LOCALHOST]);
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - '{}'\nscrape_configs:\n  - job_name: switchboard\n    static_configs:\n      - targets: [{}]\n",
            repo("contrib/prometheus/alerts.yml").display(),
            list.join(", ")
        );
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (scripts/install-test-deps.sh installs it)");
        let p = Prometheus { child, base: format!("http://127.0.0.1:{port}"), _dir: dir };
        p.until("Prometheus ready", |_| true, "up").await;
        p
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
        let r = reqwest::Client::new().get(format!("{}{path}?{}", self.base, q.join("&"))).timeout(Duration::from_secs(5)).send().await.ok()?;
        r.json().await.ok()
    }

    /// Runs `query` until `ok` holds for its result.
    async fn until(&self, what: &str, ok: impl Fn(&Value) -> bool, query: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(v) = self.api("/api/v1/query", &[("query", query)]).await {
                if v["status"] == "success" && ok(&v["data"]["result"]) {
                    return v["data"]["result"].clone();
                }
            }
            assert!(Instant::now() < deadline, "{what}: not within 30 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn alerts(&self) -> Vec<(String, String)> {
        let v = self.api("/api/v1/alerts", &[]).await.unwrap();
        v["data"]["alerts"].as_array().unwrap().iter().map(|a| (a["labels"]["alertname"].as_str().unwrap().to_owned(), a["state"].as_str().unwrap().to_owned())).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t16_prometheus_scrapes_every_metric_the_dashboard_and_alerts_use() {
    let dashboard = std::fs::read_to_string(repo("contrib/grafana/switchboard.json")).unwrap();
    let alerts = std::fs::read_to_string(repo("contrib/prometheus/alerts.yml")).unwrap();
    let mut c = Cluster::start(ClusterOptions { sets: vec!["cluster.node_down_after_ms=600".into()], ..Default::default() }).await.unwrap();
    let targets: Vec<String> = (1..=3).map(|n| c.base(n).trim_start_matches("http://").to_owned()).collect();
    let prom = Prometheus::start(&targets).await;
    prom.until("three targets up", |r| r.as_array().is_some_and(|a| a.len() == 3 && a.iter().all(|s| s["value"][1] == "1")), "up{job=\"switchboard\"}").await;

    // A call: people on nodes 1 and 2, messages both ways; a TURN allocation on node 1.
    let room = fresh_room("prom");
    let (c1, _, _) = c.http(1).join_ok(&room).await.unwrap();
    let (c2, _, _) = c.http(2).join_ok(&room).await.unwrap();
    let mut a = WsClient::connect(&c.ws_url(1)).await.unwrap();
    a.register(&room, &c1).await.unwrap();
    let mut b = WsClient::connect(&c.ws_url(2)).await.unwrap();
    b.register(&room, &c2).await.unwrap();
    for i in 0..5 {
        a.send_msg(&format!("a{i}")).await.unwrap();
        b.expect_msg(Duration::from_secs(5)).await.unwrap();
        b.send_msg(&format!("b{i}")).await.unwrap();
        a.expect_msg(Duration::from_secs(5)).await.unwrap();
    }
    let cred = c.http(1).get("/turn?service=turn&username=prom").await.unwrap().json();
    let mut turn = TurnClient::udp(c.turn_addr(1), cred["username"].as_str().unwrap(), cred["password"].as_str().unwrap()).await.unwrap();
    assert_eq!(turn.allocate().await.unwrap().code, 0);

    // Scraped after the call: every histogram has observations.
    for h in ["switchboard_join_seconds_count", "switchboard_raft_commit_seconds_count", "switchboard_call_setup_seconds_count"] {
        prom.until(h, |r| r.as_array().is_some_and(|a| !a.is_empty()), &format!("sum({h}) > 0")).await;
    }
    prom.until("the allocation", |r| r.as_array().is_some_and(|a| !a.is_empty()), "sum(switchboard_turn_allocations) > 0").await;

    let names: BTreeSet<String> = prom.api("/api/v1/label/__name__/values", &[]).await.unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let used: BTreeSet<String> = metric_names(&dashboard).into_iter().chain(metric_names(&alerts)).collect();
    assert!(used.len() >= 25, "the dashboard and alerts use {} metrics", used.len());
    // A histogram named in prose is scraped as its `_bucket`, `_sum` and `_count` series.
    let missing: Vec<&String> = used.iter().filter(|m| !names.contains(*m) && !names.contains(&format!("{m}_bucket"))).collect();
    assert!(missing.is_empty(), "used by the dashboard or alerts but not scraped: {missing:?}");
    println!("{} metrics used by the dashboard and alerts, all scraped", used.len());

    // Every dashboard query is valid PromQL that Prometheus evaluates.
    let d: Value = serde_json::from_str(&dashboard).unwrap();
    let mut queries = 0;
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let q = t["expr"].as_str().unwrap().replace("$__rate_interval", "1m").replace("$instance", ".*");
            let v = prom.api("/api/v1/query", &[("query", &q)]).await.unwrap();
            assert_eq!(v["status"], "success", "panel {:?}: {q}: {v}", p["title"]);
            queries += 1;
        }
    }
    assert!(queries >= 30, "{queries} queries");

    // The rules load and are healthy, and a healthy cluster raises none of them.
    prom.until("a rule evaluation", |_| true, "up").await;
    let rules = prom.api("/api/v1/rules", &[]).await.unwrap();
    let loaded: Vec<&Value> = rules["data"]["groups"][0]["rules"].as_array().unwrap().iter().collect();
    assert_eq!(loaded.len(), 13);
    let deadline = Instant::now() + Duration::from_secs(10);
    while loaded.iter().any(|r| r["health"] != "ok") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rules = prom.api("/api/v1/rules", &[]).await.unwrap();
    for r in rules["data"]["groups"][0]["rules"].as_array().unwrap() {
        assert_eq!(r["health"], "ok", "{r}");
    }
    assert_eq!(prom.alerts().await, vec![], "a healthy cluster raises no alert");

    // A node dies: its scrape fails and the node-down alert is raised (pending for its `for:`).
    c.kill(3);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts = prom.alerts().await;
        if alerts.iter().any(|(n, _)| n == "SwitchboardNodeDown") {
            println!("after killing node 3: {alerts:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no SwitchboardNodeDown within 30 s: {alerts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

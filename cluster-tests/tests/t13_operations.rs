//! Operating a node: health, readiness and metrics endpoints, configuration errors, graceful
//! shutdown (1001 Going Away), HTTPS/WSS, and the separate Collider-style signaling listener.

use std::process::Command;

use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;

use cluster_tests::{binary, fresh_room, free_port, Http, NodeProcess, NodeSpec, WsClient};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WAIT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn t13_health_ready_metrics() {
    let n = NodeProcess::start(NodeSpec::single()).await.unwrap();
    let http = Http::new(&n.base());
    assert_eq!(http.get("/healthz").await.unwrap().status, 200);
    assert_eq!(http.get("/readyz").await.unwrap().status, 200);
    let r = fresh_room("m");
    let (c1, _, _) = http.join_ok(&r).await.unwrap();
    http.message(&r, &c1, "stored").await.unwrap();
    let mut a = WsClient::connect(&n.ws_url()).await.unwrap();
    a.register(&r, &c1).await.unwrap();
    http.collider_post(&r, "x", "m").await.unwrap();
    a.expect_msg(WAIT).await.unwrap();
    let m = http.get("/metrics").await.unwrap();
    assert_eq!(m.status, 200);
    // The start-up banner: what clients are given, and why others could not reach the node.
    let log = n.log();
    assert!(log.contains(&format!("advertised to clients public_url={}", n.base())), "{log}");
    assert!(log.contains("only this machine can reach the node"), "{log}");
    for needle in [
        "switchboard_rooms 1",
        "switchboard_sessions 1",
        "switchboard_registered_sessions 1",
        "switchboard_messages_total{path=\"stored\"} 1",
        "switchboard_registrations_total 1",
    ] {
        assert!(m.body.contains(needle), "metrics lack {needle}:\n{}", m.body);
    }
}

#[test]
fn t13_bad_config_is_a_clear_error() {
    let out = Command::new(binary()).args(["--set", "http.lisen=1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `lisen`"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[http]\nlisten = 8083\n").unwrap();
    let out = Command::new(binary()).arg("--config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid configuration"));
    let out = Command::new(binary()).env("SWITCHBOARD_ROOMS__QUEUE_CAP", "many").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// SIGTERM: `/readyz` turns 503 while `/healthz` stays 200, sockets get 1001, the process exits 0.
#[tokio::test]
async fn t13_sigterm_drains() {
    let mut n = NodeProcess::start(NodeSpec::single().set("http.shutdown_timeout_secs=3")).await.unwrap();
    let r = fresh_room("term");
    let mut a = WsClient::connect(&n.ws_url()).await.unwrap();
    a.register(&r, "a").await.unwrap();
    let mut b = WsClient::connect(&n.ws_url()).await.unwrap();
    b.register(&r, "b").await.unwrap();
    a.send_msg("x").await.unwrap();
    b.expect_msg(WAIT).await.unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let s = n.terminate(Duration::from_secs(10));
        (s, n)
    });
    assert_eq!(a.expect_closed(WAIT).await.unwrap(), Some(1001));
    assert_eq!(b.expect_closed(WAIT).await.unwrap(), Some(1001));
    let (s, _n) = status.await.unwrap();
    let s = s.expect("node exited within its deadline");
    assert!(s.success(), "exit status {s}");
}

fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key, ck.cert.der().to_vec())
}

/// Starts a node serving HTTPS. The harness polls plain HTTP, so the process is started by
/// hand and the caller polls over TLS.
fn spawn_tls_node(spec: &NodeSpec) -> std::process::Child {
    Command::new(binary())
        .arg("--listen")
        .arg(spec.http.to_string())
        .args(spec.sets.iter().flat_map(|s| ["--set".to_string(), s.clone()]))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// HTTPS and WSS with a configured certificate; `wss_url` follows the scheme.
#[tokio::test]
async fn t13_tls() {
    cluster_tests::init_crypto();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = self_signed(dir.path());
    let spec = NodeSpec::single()
        .set(&format!("http.tls_cert=\"{}\"", cert.display()))
        .set(&format!("http.tls_key=\"{}\"", key.display()));
    let addr = spec.http;
    let mut child = spawn_tls_node(&spec);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(der)).unwrap();
    let pem = std::fs::read(&cert).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{}", addr.port());
    let mut up = false;
    for _ in 0..100 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "HTTPS listener did not come up");
    let j: serde_json::Value = client.post(format!("{base}/join/tls1")).send().await.unwrap().json().await.unwrap();
    assert_eq!(j["params"]["wss_url"], format!("wss://127.0.0.1:{}/ws", addr.port()));
    assert_eq!(j["params"]["wss_post_url"], base);

    // WSS: register two clients and relay a message.
    let config = Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth());
    let mut sockets = Vec::new();
    for c in ["a", "b"] {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        let req = format!("wss://127.0.0.1:{}/ws", addr.port()).into_client_request().unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
        ws.send(tokio_tungstenite::tungstenite::Message::text(format!("{{\"cmd\":\"register\",\"roomid\":\"tls1\",\"clientid\":\"{c}\"}}")))
            .await
            .unwrap();
        sockets.push(ws);
    }
    sockets[0].send(tokio_tungstenite::tungstenite::Message::text("{\"cmd\":\"send\",\"msg\":\"over tls\"}")).await.unwrap();
    let got = tokio::time::timeout(WAIT, sockets[1].next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got.into_text().unwrap().as_str(), "{\"msg\":\"over tls\",\"error\":\"\"}\n");
    let _ = child.kill();
    let _ = child.wait();
}

/// The optional Collider-style listener (AppRTC ran Collider on its own port) shares rooms with
/// the main listener.
#[tokio::test]
async fn t13_separate_signaling_listener() {
    let sig_port = free_port(&[std::net::Ipv4Addr::LOCALHOST]);
    let n = NodeProcess::start(NodeSpec::single().set(&format!("http.signaling_listen=\"127.0.0.1:{sig_port}\""))).await.unwrap();
    let sig = Http::new(&format!("http://127.0.0.1:{sig_port}"));
    assert!(sig.status().await.unwrap()["upsec"].is_f64());
    let r = fresh_room("split");
    let mut a = WsClient::connect(&n.ws_url()).await.unwrap();
    a.register(&r, "a").await.unwrap();
    let mut b = WsClient::connect(&format!("ws://127.0.0.1:{sig_port}/ws")).await.unwrap();
    b.register(&r, "b").await.unwrap();
    a.send_msg("across listeners").await.unwrap();
    assert_eq!(b.expect_msg(WAIT).await.unwrap(), "across listeners");
    // Room-server routes are not on the signaling listener: there, /join/x is Collider's
    // POST to room "join" as client "x".
    let reply = sig.post("/params", "").await.unwrap();
    assert_eq!(reply.status, 500, "{}", reply.body);
}

/// A renewed certificate (the files rewritten, as certbot does) is served without a restart;
/// a broken replacement is refused and the last good one kept.
#[tokio::test]
async fn t13_tls_certificate_reload() {
    cluster_tests::init_crypto();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der_a) = self_signed(dir.path());
    let next = tempfile::tempdir().unwrap();
    let (cert_b, key_b, der_b) = self_signed(next.path());
    let spec = NodeSpec::single()
        .set(&format!("http.tls_cert=\"{}\"", cert.display()))
        .set(&format!("http.tls_key=\"{}\"", key.display()));
    let addr = spec.http;
    let mut child = spawn_tls_node(&spec);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(der_a.clone())).unwrap();
    roots.add(rustls::pki_types::CertificateDer::from(der_b.clone())).unwrap();
    let config = Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth());
    // The certificate the listener presents now.
    let served = || {
        let config = config.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await
                .ok()?;
            tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec())
        }
    };
    let mut first = None;
    for _ in 0..100 {
        first = served().await;
        if first.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(first.as_deref(), Some(&der_a[..]), "the configured certificate");
    std::fs::copy(&key_b, &key).unwrap();
    std::fs::copy(&cert_b, &cert).unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(served().await.as_deref(), Some(&der_b[..]), "the renewed certificate, without a restart");
    std::fs::write(&cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(served().await.as_deref(), Some(&der_b[..]), "a broken file keeps the last good certificate");
    let _ = child.kill();
    let _ = child.wait();
}

/// `ops.listen`: metrics and the admin API on a listener of their own, and gone from the public
/// one (a clear 404); health on both.
#[tokio::test]
async fn t13_ops_listener() {
    let ops_port = free_port(&[std::net::Ipv4Addr::LOCALHOST]);
    let n = NodeProcess::start(
        NodeSpec::single().set(&format!("ops.listen=\"127.0.0.1:{ops_port}\"")).set("cluster.admin_token=\"ops-token\""),
    )
    .await
    .unwrap();
    let ops_base = format!("http://127.0.0.1:{ops_port}");
    let (public, ops) = (Http::new(&n.base()), Http::new(&ops_base));
    let m = ops.get("/metrics").await.unwrap();
    assert_eq!(m.status, 200);
    assert!(m.body.contains("switchboard_sessions"), "{}", m.body);
    let m = public.get("/metrics").await.unwrap();
    assert_eq!(m.status, 404);
    assert!(m.body.contains("ops.listen"), "{}", m.body);
    let client = reqwest::Client::new();
    let rooms = |base: String| {
        let client = client.clone();
        async move { client.get(format!("{base}/admin/rooms")).bearer_auth("ops-token").send().await.unwrap().status().as_u16() }
    };
    assert_eq!(rooms(ops_base.clone()).await, 200);
    assert_eq!(rooms(n.base()).await, 404);
    for h in [&public, &ops] {
        assert_eq!(h.get("/healthz").await.unwrap().status, 200);
        assert_eq!(h.get("/readyz").await.unwrap().status, 200);
    }
    // The public listener still does its job.
    let r = fresh_room("ops");
    public.join_ok(&r).await.unwrap();
}

/// `--print-config`: the effective configuration as TOML a node accepts back, secrets redacted.
#[test]
fn t13_print_config_is_toml_without_secrets() {
    let out = Command::new(binary())
        .args([
            "--print-config",
            "--set", "ice.turn_secret=\"very-secret-turn\"",
            "--set", "cluster.admin_token=\"very-secret-admin\"",
            "--set", "rooms.queue_cap=99",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(!printed.contains("very-secret"), "{printed}");
    assert!(printed.contains("queue_cap = 99"), "{printed}");
    assert!(printed.contains("turn_secret = \"<redacted>\""), "{printed}");
    // What it printed is a configuration file the node loads.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("printed.toml");
    std::fs::write(&file, &printed).unwrap();
    let again = Command::new(binary()).arg("--config").arg(&file).arg("--print-config").output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(String::from_utf8(again.stdout).unwrap(), printed);
}

/// systemd's `Type=notify` protocol, read from a `NOTIFY_SOCKET` of the test's own: READY=1 once
/// the node serves, WATCHDOG=1 at half the `WATCHDOG_USEC` interval, RELOADING=1 and READY=1
/// around a SIGHUP reload, STOPPING=1 on SIGTERM.
#[tokio::test]
async fn t13_systemd_notify_ready_watchdog_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let sock = tokio::net::UnixDatagram::bind(&path).unwrap();
    let mut spec = NodeSpec::single();
    spec.env.push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    spec.env.push(("WATCHDOG_USEC".into(), "400000".into()));
    let started = std::time::Instant::now();
    let mut n = NodeProcess::start(spec).await.unwrap();
    let next = || async {
        let mut buf = vec![0u8; 4096];
        let len = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf)).await.expect("a notification within 5 s").unwrap();
        String::from_utf8_lossy(&buf[..len]).into_owned()
    };
    let first = next().await;
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    assert!(first.contains("STATUS=serving http://"), "{first:?}");
    assert_eq!(Http::new(&n.base()).get("/readyz").await.unwrap().status, 200, "READY means it serves");
    // Pings every 200 ms: ten within about two seconds.
    let from = std::time::Instant::now();
    for i in 0..10 {
        let m = next().await;
        assert_eq!(m.trim(), "WATCHDOG=1", "message {i}");
    }
    let took = from.elapsed();
    println!("READY within {:?}; 10 watchdog pings in {took:?}", from.duration_since(started));
    assert!(took > Duration::from_millis(1_500) && took < Duration::from_millis(3_000), "10 pings in {took:?} at 200 ms");
    // SIGHUP reloads the configuration (here unchanged), between RELOADING=1 (with the monotonic
    // time systemd asks for) and READY=1; the node goes on serving.
    n.sighup();
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.lines().any(|l| l == "READY=1")) {
        let m = next().await;
        if m.trim() != "WATCHDOG=1" {
            seen.push(m);
        }
    }
    assert!(seen[0].lines().any(|l| l == "RELOADING=1") && seen[0].contains("MONOTONIC_USEC="), "{seen:?}");
    assert!(seen.last().unwrap().contains("STATUS=serving; configuration reloaded"), "{seen:?}");
    for _ in 0..3 {
        assert_eq!(next().await.trim(), "WATCHDOG=1", "the node lives on after SIGHUP");
    }
    assert_eq!(Http::new(&n.base()).get("/readyz").await.unwrap().status, 200);
    assert!(n.log().contains("configuration reloaded: nothing changed"), "SIGHUP is a reload:\n{}", n.log());
    n.sigterm();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = next().await;
        if m.lines().any(|l| l == "STOPPING=1") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no STOPPING=1 after SIGTERM");
    }
    let status = tokio::task::spawn_blocking(move || n.terminate(Duration::from_secs(10))).await.unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// `contrib/systemd/switchboard.service` passes `systemd-analyze verify` without a word (it
/// exits 0 even on a unit it ignores lines of, so the check is on what it prints: a unit with a
/// mistake in it is shown to be caught).
#[test]
fn t13_systemd_unit_verifies() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
    let unit = std::fs::read_to_string(root.join("contrib/systemd/switchboard.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="), "the unit uses sd_notify and the watchdog");
    let dir = tempfile::tempdir().unwrap();
    let verify = |text: &str| {
        // verify wants ExecStart's binary to exist: the one under test.
        let path = dir.path().join("switchboard.service");
        std::fs::write(&path, text.replace("/usr/local/bin/switchboard", &binary().display().to_string())).unwrap();
        let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze (Debian's systemd)");
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout)))
    };
    let (ok, said) = verify(&unit);
    assert!(ok && said.trim().is_empty(), "systemd-analyze verify: {said}");
    let (_, said) = verify(&unit.replace("Type=notify", "Type=bogus"));
    assert!(said.contains("bogus"), "a broken unit goes unnoticed: {said:?}");
}

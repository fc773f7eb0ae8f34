//! TURN credentials go only to this deployment's pages: a page of another origin is refused
//! (403, no CORS grant, preflight denied), a page served by any node of the cluster gets them;
//! with `apprtc.ice_server_api_key` set, no key means 403; one address cannot mint without
//! limit; and `turn.user_quota` limits REST users per client address, however many
//! credentials it minted. Each check keeps a legitimate call's credentials flowing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use cluster_tests::cluster::{Cluster, ClusterOptions};
use cluster_tests::turn_client::TurnClient;
use cluster_tests::calls::{self, CallSpec, Clients, Target};
use cluster_tests::{fresh_room, free_port, NodeProcess, NodeSpec};
use serde_json::Value;

struct Answer {
    status: u16,
    allow: Option<String>,
    body: Value,
}

async fn ice(base: &str, origin: Option<&str>, query: &str, from: Option<IpAddr>) -> Answer {
    let client = reqwest::Client::builder().local_address(from).build().unwrap();
    let mut r = client.post(format!("{base}/v1alpha/iceconfig{query}"));
    if let Some(o) = origin {
        r = r.header("Origin", o);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let allow = resp.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned());
    let body = resp.json().await.unwrap_or(Value::Null);
    Answer { status, allow, body }
}

fn has_turn(body: &Value) -> bool {
    body["iceServers"].as_array().is_some_and(|s| s.iter().any(|e| e["username"].is_string()))
}

#[tokio::test]
async fn t25_only_the_deployments_pages_get_turn_credentials() {
    let c = Cluster::start(ClusterOptions::default()).await.unwrap();
    let (b1, b2) = (c.base(1), c.base(2));

    // A page on another origin: refused, and the browser is told nothing it could use.
    let evil = ice(&b1, Some("https://free-relay.example"), "", None).await;
    assert_eq!(evil.status, 403, "{:?}", evil.body);
    assert!(evil.allow.is_none() && !has_turn(&evil.body));
    let pre = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, format!("{b1}/v1alpha/iceconfig"))
        .header("Origin", "https://free-relay.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert!(pre.headers().get("access-control-allow-origin").is_none(), "preflight granted another origin");
    let turn = reqwest::Client::new().get(format!("{b1}/turn?service=turn")).header("Origin", "http://127.0.0.9:1").send().await.unwrap();
    assert_eq!(turn.status().as_u16(), 403, "/turn too");

    // This node's own page, another node's page (a page goes on using the live nodes after its
    // own died), and callers that are not pages at all.
    for origin in [Some(b1.as_str()), Some(b2.as_str()), None] {
        let a = ice(&b1, origin, "", None).await;
        assert_eq!(a.status, 200, "{origin:?}: {:?}", a.body);
        assert!(has_turn(&a.body), "{origin:?}: {:?}", a.body);
        assert_eq!(a.allow.as_deref(), origin, "the grant names the page's own origin, never *");
    }
    let pre = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, format!("{b1}/v1alpha/iceconfig"))
        .header("Origin", &b2)
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some(b2.as_str()));
    // The room API itself stays open to any origin (no credentials in it).
    let params = reqwest::Client::new().get(format!("{b1}/params")).header("Origin", "https://elsewhere.example").send().await.unwrap();
    assert_eq!(params.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some("*"));
}

async fn single(extra: &[&str]) -> (NodeProcess, SocketAddr) {
    let ip = Ipv4Addr::new(127, 0, 0, 1);
    let port = free_port(&[ip]);
    let turn = SocketAddr::from((ip, port));
    let mut spec = NodeSpec::single().set(&format!("turn.listen=[\"{turn}\"]")).set("ice.turn_secret=\"t25-secret\"");
    for e in extra {
        spec = spec.set(e);
    }
    (NodeProcess::start(spec).await.unwrap(), turn)
}

#[tokio::test]
async fn t25_the_api_key_is_enforced_when_set() {
    let (n, _) = single(&["apprtc.ice_server_api_key=\"k-123\""]).await;
    let base = n.base();
    assert_eq!(ice(&base, None, "", None).await.status, 403);
    assert_eq!(ice(&base, None, "?key=k-12", None).await.status, 403);
    let ok = ice(&base, Some(&base), "?key=k-123", None).await;
    assert_eq!(ok.status, 200);
    assert!(has_turn(&ok.body));
    // The room's own page learns the key from its parameters, as AppRTC's client does.
    let params: Value = reqwest::get(format!("{base}/params")).await.unwrap().json().await.unwrap();
    let url = params["ice_server_url"].as_str().unwrap();
    assert!(url.ends_with("/v1alpha/iceconfig?key=k-123"), "{url}");
}

#[tokio::test]
async fn t25_minting_is_limited_per_address_and_quota_counts_rest_users_per_address() {
    let (n, turn) = single(&["ice.credentials_per_minute=5", "turn.user_quota=2"]).await;
    let base = n.base();
    let a = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    let b = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut creds = Vec::new();
    let rss_before = n.rss_kib();
    // 200 requests for credentials from one address while a call goes on from another.
    let flooder = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    let flood = futures_util::future::join_all((0..200).map(|_| ice(&base, None, "", Some(flooder))));
    let call = async {
        let mut clients = Clients::new(&[Target::new(&base)]);
        calls::call(&mut clients, &CallSpec::default(), &fresh_room("calm"), 0, 0).await
    };
    let (answers, called) = tokio::join!(flood, call);
    called.expect("a call during the minting flood");
    let granted = answers.iter().filter(|r| r.status == 200).count();
    println!("200 credential requests from one address: {granted} granted, node RSS {rss_before} → {} KiB", n.rss_kib());
    assert_eq!(granted, 5, "credentials in a minute at a limit of 5");
    for _ in 0..5 {
        let r = ice(&base, None, "", Some(a)).await;
        assert_eq!(r.status, 200);
        let e = &r.body["iceServers"][0];
        creds.push((e["username"].as_str().unwrap().to_owned(), e["credential"].as_str().unwrap().to_owned()));
    }
    assert_eq!(ice(&base, None, "", Some(a)).await.status, 429, "a sixth credential within the minute");
    assert_eq!(ice(&base, None, "", Some(b)).await.status, 200, "another address is not limited");

    // Three different credentials, one client address: the quota of two holds.
    let mut held = Vec::new();
    for (i, (user, pass)) in creds.iter().take(3).enumerate() {
        let mut t = TurnClient::udp_from(SocketAddr::new(a, 0), turn, user, pass).await.unwrap();
        let code = t.allocate().await.unwrap().code;
        assert_eq!(code, if i < 2 { 0 } else { 486 }, "allocation {i} with its own credential");
        held.push(t);
    }
    // From another address the same kind of credential allocates.
    let (user, pass) = &creds[3];
    let mut t = TurnClient::udp_from(SocketAddr::new(b, 0), turn, user, pass).await.unwrap();
    assert_eq!(t.allocate().await.unwrap().code, 0);
    // Giving one back makes room again.
    assert_eq!(held[0].refresh(0).await.unwrap().code, 0);
    let (user, pass) = &creds[4];
    let mut again = TurnClient::udp_from(SocketAddr::new(a, 0), turn, user, pass).await.unwrap();
    let mut code = 486;
    for _ in 0..20 {
        code = again.allocate().await.unwrap().code;
        if code == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(code, 0, "the quota came back");
}

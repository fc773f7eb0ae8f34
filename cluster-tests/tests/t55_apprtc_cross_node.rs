//! The AppRTC acceptance checks of the single node (protocol notes §7) with the two clients of
//! each room on different nodes of a three-node cluster, plus the admin API.

use std::time::Duration;

use cluster_tests::cluster::{Cluster, ClusterOptions, ADMIN_TOKEN};
use cluster_tests::faults::SlowSyscalls;
use cluster_tests::ws::stream_across_registration;
use cluster_tests::{fresh_room, WsClient};

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

async fn cluster() -> Cluster {
    Cluster::start(ClusterOptions { sets: vec!["rooms.register_grace_ms=1500".into()], ..Default::default() }).await.unwrap()
}

async fn registered(c: &Cluster, node: usize, room: &str, client: &str) -> WsClient {
    let mut ws = WsClient::connect(&c.ws_url(node)).await.unwrap();
    ws.register(room, client).await.unwrap();
    ws
}

/// Rows 1-3, 5-7, 10-12 across nodes.
#[tokio::test]
async fn t55_room_server_rows_across_nodes() {
    let c = cluster().await;
    // 1-3
    let r = fresh_room("x");
    let (c1, i1, _) = c.http(1).join_ok(&r).await.unwrap();
    let (c2, i2, _) = c.http(2).join_ok(&r).await.unwrap();
    assert!(i1 && !i2 && c1 != c2);
    assert_eq!(c.http(3).join(&r).await.unwrap(), serde_json::json!({"result": "FULL", "params": {"messages": []}}));
    // 4: the full page on any node
    assert!(c.http(3).get(&format!("/r/{r}")).await.unwrap().body.contains("Sorry, this room is full."));
    // 10: /message on node 1 reaches c2's socket on node 2
    let mut w2 = registered(&c, 2, &r, &c2).await;
    let mut got = None;
    for _ in 0..20 {
        assert_eq!(c.http(1).message(&r, &c1, "B").await.unwrap(), "SUCCESS");
        if let Some(e) = w2.recv(Duration::from_millis(200)).await {
            got = e.msg().map(str::to_owned);
            break;
        }
    }
    assert_eq!(got.as_deref(), Some("B"));
    // 11: leave on node 3 hands the initiator to c2
    let leave = c.http(3).leave(&r, &c1).await.unwrap();
    assert_eq!((leave.status, leave.body.as_str()), (200, ""));
    let (c3, i3, _) = c.http(1).join_ok(&r).await.unwrap();
    assert!(!i3);
    // 12: both leave (on different nodes) → the room is recreated
    c.http(1).leave(&r, &c2).await.unwrap();
    c.http(2).leave(&r, &c3).await.unwrap();
    let (_, i, _) = c.http(3).join_ok(&r).await.unwrap();
    assert!(i);
    // 5-7: stored through node 2, handed over once through node 3
    let s = fresh_room("s");
    let (s1, _, _) = c.http(2).join_ok(&s).await.unwrap();
    assert_eq!(c.http(2).message(&s, &s1, "{\"type\":\"offer\",\"sdp\":\"x\"}").await.unwrap(), "SUCCESS");
    let (_, _, msgs) = c.http(3).join_ok(&s).await.unwrap();
    assert_eq!(msgs, vec!["{\"type\":\"offer\",\"sdp\":\"x\"}"]);
    assert_eq!(c.http(1).join(&s).await.unwrap()["result"], "FULL");
    // 8-9
    assert_eq!(c.http(3).message("NOPE", "123", "x").await.unwrap(), "UNKNOWN_ROOM");
    assert_eq!(c.http(3).message(&s, "99999999", "x").await.unwrap(), "UNKNOWN_CLIENT");
    // 14: loopback
    let l = fresh_room("l");
    assert_eq!(c.http(1).post(&format!("/join/{l}?debug=loopback"), "").await.unwrap().json()["params"]["is_loopback"], "true");
    assert_eq!(c.http(2).join(&l).await.unwrap()["result"], "FULL");
}

/// Rows 17-20 and 25-26, 28, 30 with sockets on different nodes.
#[tokio::test]
async fn t55_collider_rows_across_nodes() {
    let c = cluster().await;
    // 17
    let r = fresh_room("fw");
    let mut a = registered(&c, 1, &r, "a").await;
    let mut b = registered(&c, 2, &r, "b").await;
    a.send_msg("hello").await.unwrap();
    assert_eq!(b.expect_msg(WAIT).await.unwrap(), "hello");
    b.expect_silence(QUIET).await.unwrap();
    a.expect_silence(QUIET).await.unwrap();
    // 19: a second socket for a on node 3 is refused; the first is unaffected
    let mut dup = registered(&c, 3, &r, "a").await;
    assert_eq!(dup.recv(WAIT).await.unwrap().error(), Some("Duplicated registration"));
    b.send_msg("still a").await.unwrap();
    assert_eq!(a.expect_msg(WAIT).await.unwrap(), "still a");
    // 20: a third client on node 3
    let mut x = registered(&c, 3, &r, "x").await;
    assert_eq!(x.recv(WAIT).await.unwrap().error(), Some("Max room capacity reached"));
    // 28: POST as a third client through node 3
    let full = c.http(3).collider_post(&r, "y", "hi").await.unwrap();
    assert_eq!(full.status, 500);
    assert!(full.body.starts_with("Failed to send the message: Max room capacity reached"));
    // 25: POST on node 3 reaches a's socket on node 1
    let q = fresh_room("post");
    let mut qa = registered(&c, 1, &q, "a").await;
    assert_eq!(c.http(3).collider_post(&q, "b", "hello!").await.unwrap().body, "OK\n");
    assert_eq!(qa.expect_msg(WAIT).await.unwrap(), "hello!");
    // 26: queued through node 2, flushed in order to a socket on node 3
    let z = fresh_room("queue");
    for m in ["m1", "m2"] {
        assert_eq!(c.http(2).collider_post(&z, "b", m).await.unwrap().body, "OK\n");
    }
    let mut za = registered(&c, 3, &z, "a").await;
    assert_eq!(za.expect_msg(WAIT).await.unwrap(), "m1");
    assert_eq!(za.expect_msg(WAIT).await.unwrap(), "m2");
    // 30: DELETE on node 2 closes the socket on node 1 and frees the slot
    let d = fresh_room("del");
    let (d1, _, _) = c.http(1).join_ok(&d).await.unwrap();
    let mut dw = registered(&c, 1, &d, &d1).await;
    c.http(3).collider_post(&d, "probe", "p").await.unwrap();
    assert_eq!(dw.expect_msg(WAIT).await.unwrap(), "p");
    assert_eq!(c.http(2).collider_delete(&d, &d1).await.unwrap().body, "OK\n");
    dw.expect_closed(WAIT).await.unwrap();
    let (_, init, _) = c.http(3).join_ok(&d).await.unwrap();
    assert!(init);
}

/// Rows 33-35: the register grace holds across nodes; a client may come back on another node.
#[tokio::test]
async fn t55_grace_across_nodes() {
    let c = cluster().await;
    let r = fresh_room("rr");
    let mut a = registered(&c, 1, &r, "a").await;
    let mut b = registered(&c, 2, &r, "b").await;
    b.send_msg("p").await.unwrap();
    assert_eq!(a.expect_msg(WAIT).await.unwrap(), "p");
    a.drop_connection();
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.send_msg("m").await.unwrap();
    let mut again = None;
    for _ in 0..30 {
        let mut ws = registered(&c, 3, &r, "a").await;
        match ws.recv(Duration::from_millis(500)).await {
            Some(e) if e.error() == Some("Duplicated registration") => tokio::time::sleep(Duration::from_millis(100)).await,
            Some(e) => {
                assert_eq!(e.msg(), Some("m"), "{e:?}");
                again = Some(ws);
                break;
            }
            None => panic!("nothing after re-registering on node 3"),
        }
    }
    let mut a = again.expect("re-registered on node 3");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    b.send_msg("later").await.unwrap();
    assert_eq!(a.expect_msg(WAIT).await.unwrap(), "later");
    // 33: a POST-only client times out and frees its slot on every node
    let t = fresh_room("to");
    assert_eq!(c.http(1).collider_post(&t, "b", "hi").await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(c.http(2).collider_post(&t, "c", "x").await.unwrap().status, 200);
    assert_eq!(c.http(3).collider_post(&t, "d", "x").await.unwrap().status, 200);
}

/// The admin API refuses a wrong token, reports status, and adds and removes a node.
#[tokio::test]
async fn t56_admin_api() {
    let c = cluster().await;
    let client = reqwest::Client::new();
    let url = format!("{}/admin/cluster/status", c.base(2));
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(client.get(&url).bearer_auth("wrong").send().await.unwrap().status(), 401);
    let s: serde_json::Value = client.get(&url).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!(s["node"], 2);
    assert_eq!(s["members"].as_array().unwrap().len(), 3);
    let leader = s["leader"].as_u64().unwrap();
    // A socket on node 3, whose binding must go with the node.
    let held = fresh_room("removed");
    let _w3 = registered(&c, 3, &held, "x").await;
    let binding = |c: &Cluster| {
        let (client, url) = (reqwest::Client::new(), format!("{}/admin/rooms?prefix={held}", c.base(1)));
        async move {
            let v: serde_json::Value = client.get(url).bearer_auth(ADMIN_TOKEN).send().await.ok()?.json().await.ok()?;
            Some(v["rooms"][0]["clients"][0][1].clone())
        }
    };
    let mut bound = false;
    for _ in 0..50 {
        if binding(&c).await == Some(serde_json::json!(3)) {
            bound = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(bound, "the socket on node 3 is registered");
    // Remove node 3 through the leader, then check the membership.
    let del = client
        .delete(format!("{}/admin/cluster/nodes/3", c.base(leader as usize)))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200, "{:?}", del.text().await);
    let s = c.status(1).await.unwrap();
    assert_eq!(s["members"].as_array().unwrap().len(), 2, "{s}");
    // Its bindings are released, as for a lost node: the client is in its grace, unbound.
    let mut released = false;
    for _ in 0..50 {
        if binding(&c).await == Some(serde_json::Value::Null) {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "node 3's socket is still bound after its removal: {:?}", binding(&c).await);
    // Two members still take joins.
    c.http(1).join_ok(&fresh_room("two")).await.unwrap();
    let m = c.http(1).get("/metrics").await.unwrap().body;
    for needle in ["switchboard_raft_term", "switchboard_raft_leader", "switchboard_raft_last_applied", "switchboard_peer_link_up"] {
        assert!(m.contains(needle), "metrics lack {needle}");
    }
}

/// A lone member's burst over its socket, as a caller's offer and its trickled candidates are:
/// on a cluster node exactly what one node (and Collider) does — 1 024 queued for the next
/// client, the excess dropped silently, no error frame — and the next client gets them in order.
#[tokio::test]
async fn t55_lone_member_burst() {
    async fn burst(sender: &str, receiver: &str, room: &str) -> (Vec<String>, Vec<String>) {
        let mut a = WsClient::connect(sender).await.unwrap();
        a.register(room, "a").await.unwrap();
        for i in 0..1030 {
            a.send_msg(&format!("m{i}")).await.unwrap();
        }
        // Whatever the sender gets back (it must be nothing).
        let mut back = Vec::new();
        while let Some(e) = a.recv(Duration::from_secs(2)).await {
            back.push(format!("{e:?}"));
        }
        let mut b = WsClient::connect(receiver).await.unwrap();
        b.register(room, "b").await.unwrap();
        let mut got = Vec::new();
        while let Some(e) = b.recv(Duration::from_secs(2)).await {
            match e.msg() {
                Some(m) => got.push(m.to_owned()),
                None => panic!("unexpected {e:?}"),
            }
        }
        (back, got)
    }
    let c = cluster().await;
    let single = cluster_tests::NodeProcess::start(cluster_tests::NodeSpec::single()).await.unwrap();
    let want: Vec<String> = (0..1024).map(|i| format!("m{i}")).collect();
    for (name, sender, receiver) in [
        ("one node", single.ws_url(), single.ws_url()),
        ("cluster, sender on a follower", c.ws_url(2), c.ws_url(3)),
        ("cluster, sender on node 1", c.ws_url(1), c.ws_url(2)),
    ] {
        let (back, got) = burst(&sender, &receiver, &fresh_room("burst")).await;
        assert!(back.is_empty(), "{name}: the sender got frames back: {back:?}");
        assert_eq!(got.len(), want.len(), "{name}: the joiner got {} messages", got.len());
        assert_eq!(got, want, "{name}: in order");
    }
}

/// The same check as one node's `t11_registering_during_a_stream_keeps_order` with the two
/// sockets of each room on different nodes, both nodes' system calls slowed: the messages queued
/// before the registration come through the log, those after over the peer link.
#[tokio::test]
async fn t55_registering_during_a_stream_keeps_order() {
    let c = cluster().await;
    let _slow: Vec<SlowSyscalls> = vec![
        SlowSyscalls::attach(c.nodes[0].pid().expect("node 1 pid")).await.unwrap(),
        SlowSyscalls::attach(c.nodes[1].pid().expect("node 2 pid")).await.unwrap(),
    ];
    stream_across_registration(&c.ws_url(1), &c.ws_url(2), 40, 200).await.unwrap();
}

//! Real browsers: two headless Chromium pages open `/r/{room}` on one node and call each other
//! with fake camera and microphone. Runs in a private network namespace (only `lo`).

use std::time::Duration;

use cluster_tests::browser::{rerun_in_netns, Browser};
use cluster_tests::{fresh_room, NodeProcess, NodeSpec};

const CONNECT: Duration = Duration::from_secs(40);

async fn two_pages_in_a_call(node: &NodeProcess, room: &str) -> (Browser, Browser) {
    let url = format!("{}/r/{room}", node.base());
    let a = Browser::launch().await.expect("browser A");
    a.open(&url).await.unwrap();
    a.wait_until("window.switchboard.state === 'waiting'", CONNECT).await.expect("A waits for a peer");
    let b = Browser::launch().await.expect("browser B");
    b.open(&url).await.unwrap();
    for (name, p) in [("A", &a), ("B", &b)] {
        p.wait_until("window.switchboard.state === 'connected'", CONNECT)
            .await
            .unwrap_or_else(|e| panic!("page {name} did not connect: {e:#}"));
    }
    (a, b)
}

/// Both pages reach `connected` and each decodes the other's video.
#[tokio::test]
async fn t15_browser_call() {
    if rerun_in_netns("t15_browser_call") {
        return;
    }
    let node = NodeProcess::start(NodeSpec::single()).await.unwrap();
    let room = fresh_room("web");
    let (a, b) = two_pages_in_a_call(&node, &room).await;
    for (name, p) in [("A", &a), ("B", &b)] {
        let s = p.wait_frames(0, CONNECT).await.unwrap_or_else(|e| panic!("page {name}: {e:#}"));
        assert!(s["framesDecoded"].as_u64().unwrap() > 0, "{name}: {s}");
    }
    assert_eq!(a.eval("window.switchboard.isInitiator").await.unwrap(), true);
    assert_eq!(b.eval("window.switchboard.isInitiator").await.unwrap(), false);
    // Hang-up follows AppRTC's order and the other page goes back to waiting as the initiator.
    b.eval("document.getElementById('hangup').click()").await.unwrap();
    if let Err(e) = a.wait_until("window.switchboard.state === 'waiting' && window.switchboard.isInitiator", CONNECT).await {
        panic!("A waits for a new peer after B hung up: {e:#}\nB's log: {:?}", b.eval("window.switchboard.log").await);
    }
    b.quit().await;
    a.quit().await;
}

/// The signaling socket of one page dies: the page re-registers with the same room and client
/// id, the call survives, and signaling works through the new socket (an ICE restart).
#[tokio::test]
async fn t15_browser_socket_reconnect() {
    if rerun_in_netns("t15_browser_socket_reconnect") {
        return;
    }
    let node = NodeProcess::start(NodeSpec::single()).await.unwrap();
    let http = cluster_tests::Http::new(&node.base());
    let room = fresh_room("reconnect");
    let (a, b) = two_pages_in_a_call(&node, &room).await;
    b.wait_frames(0, CONNECT).await.unwrap();
    let client = b.eval("window.switchboard.clientId").await.unwrap();
    let before = http.status().await.unwrap()["totalws"].as_u64().unwrap();

    b.eval("window.switchboard.call.ws.close(), true").await.unwrap();
    b.wait_until("window.switchboard.log.some(function (l) { return l.indexOf('signaling closed') >= 0; })", Duration::from_secs(5))
        .await
        .unwrap();
    b.wait_until("window.switchboard.signaling === 'registered'", Duration::from_secs(10)).await.unwrap();
    assert_eq!(b.eval("window.switchboard.clientId").await.unwrap(), client, "same client id");
    // A confirmed registration starts the reconnect backoff over (no message needed).
    assert_eq!(b.eval("window.switchboard.call.wsAttempts").await.unwrap(), 0, "backoff reset");
    // The server counted a new registration and still holds both clients.
    let mut registered = false;
    for _ in 0..50 {
        let s = http.status().await.unwrap();
        if s["totalws"].as_u64().unwrap() > before && s["openws"] == 2 {
            registered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(registered, "re-registration did not reach the server");

    // Signaling through the new socket: B restarts ICE, its offer goes over the WebSocket and
    // A's answer comes back to it.
    let ufrag = "(window.switchboard.pc.remoteDescription.sdp.match(/a=ice-ufrag:(\\S+)/) || [])[1]";
    let a_before = a.eval(ufrag).await.unwrap();
    b.eval("window.switchboard.call.restartIce(), true").await.unwrap();
    a.wait_until(&format!("{ufrag} !== {a_before}"), Duration::from_secs(15)).await.expect("A got B's restart offer");
    b.wait_until("window.switchboard.pc.signalingState === 'stable' && window.switchboard.state === 'connected'", CONNECT)
        .await
        .expect("B's restart completed");
    let frames = b.stats().await.unwrap()["framesDecoded"].as_u64().unwrap();
    b.wait_frames(frames, CONNECT).await.expect("video keeps flowing");
    a.quit().await;
    b.quit().await;
}

/// A page that joins to receive only (no camera, no microphone) sends no media: the other page
/// must not take its silence for a dead relay and restart ICE over and over.
#[tokio::test]
async fn t15_browser_receive_only_peer() {
    if rerun_in_netns("t15_browser_receive_only_peer") {
        return;
    }
    let node = NodeProcess::start(NodeSpec::single()).await.unwrap();
    let room = fresh_room("recvonly");
    let a = Browser::launch().await.expect("browser A");
    a.open(&format!("{}/r/{room}", node.base())).await.unwrap();
    a.wait_until("window.switchboard.state === 'waiting'", CONNECT).await.unwrap();
    let b = Browser::launch().await.expect("browser B");
    b.open(&format!("{}/r/{room}?audio=false&video=false", node.base())).await.unwrap();
    for p in [&a, &b] {
        p.wait_until("window.switchboard.state === 'connected'", CONNECT).await.unwrap();
    }
    b.wait_frames(0, CONNECT).await.expect("B receives A's video");
    // Three times the stall a sending peer would be allowed.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(a.eval("window.switchboard.state").await.unwrap(), "connected");
    assert_eq!(a.eval("window.switchboard.call.restarts").await.unwrap(), 0, "A restarted ICE: {:?}", a.eval("window.switchboard.log").await);
    a.quit().await;
    b.quit().await;
}

/// The web client's call tools: the `i` key opens the statistics panel, which shows non-zero
/// bitrate, resolution, round trip and the selected candidate pair's types; the quality
/// indicator rates the connection; another (fake) camera can be chosen mid-call and the peer
/// keeps decoding video; the fullscreen button fills the screen. Screenshots are saved under
/// `target/screenshots/`.
#[tokio::test]
async fn t15_browser_info_panel_devices_fullscreen() {
    if rerun_in_netns("t15_browser_info_panel_devices_fullscreen") {
        return;
    }
    let node = NodeProcess::start(NodeSpec::single()).await.unwrap();
    let room = fresh_room("tools");
    let url = format!("{}/r/{room}", node.base());
    // Page A has three fake cameras. Chromium fakes the second as a depth sensor (Y16), whose
    // frames no encoder takes, so the test switches to the third, an MJPEG camera.
    let a = Browser::launch_with(&["--use-fake-device-for-media-stream=device-count=3"]).await.unwrap();
    a.driver.set_window_rect(0, 0, 1280, 720).await.unwrap();
    a.open(&url).await.unwrap();
    a.wait_until("window.switchboard.state === 'waiting'", CONNECT).await.unwrap();
    let b = Browser::launch().await.unwrap();
    b.open(&url).await.unwrap();
    for p in [&a, &b] {
        p.wait_until("window.switchboard.state === 'connected'", CONNECT).await.unwrap();
        p.wait_frames(0, CONNECT).await.unwrap();
    }

    // Statistics panel on `i`.
    assert_eq!(a.eval("document.getElementById('info').hidden").await.unwrap(), true);
    a.press("i").await.unwrap();
    a.wait_until("!document.getElementById('info').hidden", Duration::from_secs(5)).await.unwrap();
    let info = a
        .wait_until("window.switchboard.info && window.switchboard.info.bitrateIn > 0 && window.switchboard.info.resolution && window.switchboard.info", Duration::from_secs(15))
        .await
        .unwrap();
    println!("info panel: {info}");
    assert_eq!(info["localCandidate"], "host", "{info}");
    assert_eq!(info["remoteCandidate"], "host", "{info}");
    assert!(info["bitrateOut"].as_u64().unwrap() > 0, "{info}");
    assert!(info["rttMs"].as_u64().is_some(), "{info}");
    let text = a.eval("document.getElementById('info-list').innerText").await.unwrap();
    let text = text.as_str().unwrap();
    for needle in ["Resolution", "kbit/s", "host → host", "Round trip", "none (direct path)"] {
        assert!(text.contains(needle), "the panel shows {needle}: {text}");
    }
    let quality = a.wait_until("window.switchboard.quality !== 'none' && window.switchboard.quality", Duration::from_secs(10)).await.unwrap();
    assert_eq!(quality, "good", "loopback is a good connection");
    assert_eq!(a.eval("document.getElementById('quality').dataset.level").await.unwrap(), "good");
    println!("screenshot {}", a.screenshot("web-client-info-panel").await.unwrap().display());
    a.press("i").await.unwrap();
    a.wait_until("document.getElementById('info').hidden", Duration::from_secs(5)).await.unwrap();

    // Another camera, mid-call: the track sent changes and B keeps decoding.
    a.click("#choose-devices").await.unwrap();
    let cameras = a.eval("Array.from(document.querySelectorAll('#camera-select option')).map(o => o.value)").await.unwrap();
    let cameras: Vec<String> = cameras.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert_eq!(cameras.len(), 3, "three fake cameras: {cameras:?}");
    let before = a.eval("window.switchboard.devices.camera").await.unwrap();
    assert_eq!(before.as_str(), Some(cameras[0].as_str()), "the call starts on the first camera");
    let other = cameras[2].clone();
    a.eval(&format!("(s => {{ s.value = {other:?}; s.dispatchEvent(new Event('change')); return true; }})(document.getElementById('camera-select'))"))
        .await
        .unwrap();
    a.wait_until(&format!("window.switchboard.devices.camera === {other:?}"), Duration::from_secs(10)).await.unwrap();
    let sent = a.eval("window.switchboard.pc.getSenders().find(s => s.track && s.track.kind === 'video').track.getSettings().deviceId").await.unwrap();
    assert_eq!(sent.as_str(), Some(other.as_str()), "the call sends the chosen camera");
    let frames = b.stats().await.unwrap()["framesDecoded"].as_u64().unwrap();
    if let Err(e) = b.wait_frames(frames + 30, Duration::from_secs(15)).await {
        let out = a.eval_async("window.switchboard.pc.getStats().then(r => { const o = []; r.forEach(s => { if (s.type === 'outbound-rtp' || s.type === 'media-source') o.push(s); }); return o; })").await;
        let inb = b.eval_async("window.switchboard.pc.getStats().then(r => { const o = []; r.forEach(s => { if (s.type === 'inbound-rtp') o.push(s); }); return o; })").await;
        panic!("B keeps decoding after the camera change: {e:#}\nA out: {out:?}\nB in: {inb:?}\nA log: {:?}", a.eval("window.switchboard.log").await);
    }
    println!("screenshot {}", a.screenshot("web-client-devices").await.unwrap().display());

    // Fullscreen and back.
    a.click("#fullscreen").await.unwrap();
    // The page's state follows the fullscreenchange event, which comes after the element is set.
    let on = "document.fullscreenElement && document.fullscreenElement.id === 'call' && window.switchboard.fullscreen === true \
              && document.getElementById('fullscreen').getAttribute('aria-pressed') === 'true'";
    a.wait_until(on, Duration::from_secs(5)).await.unwrap();
    println!("screenshot {}", a.screenshot("web-client-fullscreen").await.unwrap().display());
    a.click("#fullscreen").await.unwrap();
    a.wait_until("!document.fullscreenElement && window.switchboard.fullscreen === false", Duration::from_secs(5)).await.unwrap();
    a.quit().await;
    b.quit().await;
}

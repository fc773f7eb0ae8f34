//! Opens one call page in headless Chromium and reports how it connected: used by the NAT test,
//! which runs one copy in each client's network namespace (a browser must live in its host's
//! namespace, where the test's own process cannot reach its WebDriver port).
//! Prints the page's `switchboard.stats()` as JSON and exits 0 once the call is connected and
//! the remote video decodes, 1 otherwise.

use std::time::Duration;

use anyhow::Result;
use cluster_tests::browser::Browser;

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::args().nth(1).expect("usage: nat_page URL");
    let origin = url.split('/').take(3).collect::<Vec<_>>().join("/");
    let secure = format!("--unsafely-treat-insecure-origin-as-secure={origin}");
    let b = Browser::launch_with(&[&secure]).await?;
    b.open(&url).await?;
    let connected = b.wait_until("window.switchboard.state === 'connected'", Duration::from_secs(60)).await;
    let stats = b.wait_frames(0, Duration::from_secs(30)).await;
    let log = b.eval("window.switchboard.log.join('\\n')").await.unwrap_or_default();
    match (connected, stats) {
        (Ok(_), Ok(s)) => {
            println!("{s}");
            // Keep the call up until the other page has seen video too.
            tokio::time::sleep(Duration::from_secs(8)).await;
            b.quit().await;
            Ok(())
        }
        (c, s) => {
            eprintln!("not connected: {c:?} {s:?}\npage log:\n{}", log.as_str().unwrap_or_default());
            b.quit().await;
            std::process::exit(1)
        }
    }
}

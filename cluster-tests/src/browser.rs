//! Real browsers: Debian's headless Chromium driven through chromedriver (WebDriver), with fake
//! camera and microphone. Tests that use it run inside a private network namespace (see
//! [`rerun_in_netns`]) so ICE only ever sees loopback.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use thirtyfour::prelude::*;

pub use crate::netns::rerun_in_netns;
use crate::process::free_port;

/// One headless Chromium with its own chromedriver and profile.
pub struct Browser {
    /// The WebDriver session.
    pub driver: WebDriver,
    chromedriver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a Chromium session with fake media devices.
    pub async fn launch() -> Result<Browser> {
        Self::launch_with(&[]).await
    }

    /// Like [`Browser::launch`], with extra Chromium flags.
    pub async fn launch_with(extra: &[&str]) -> Result<Browser> {
        crate::init_crypto();
        let port = free_port(&[std::net::Ipv4Addr::LOCALHOST]);
        let chromedriver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("chromedriver not found: install Debian's chromium-driver (scripts/install-test-deps.sh)")?;
        let profile = tempfile::Builder::new().prefix("switchboard-chromium-").tempdir()?;
        let mut caps = DesiredCapabilities::chrome();
        caps.set_binary("/usr/bin/chromium")?;
        for arg in [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--autoplay-policy=no-user-gesture-required",
        ] {
            caps.add_arg(arg)?;
        }
        caps.add_arg(&format!("--user-data-dir={}", profile.path().display()))?;
        for arg in extra {
            caps.add_arg(arg)?;
        }
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let driver = loop {
            match WebDriver::new(&url, caps.clone()).await {
                Ok(d) => break d,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => bail!("cannot start Chromium through chromedriver: {e}"),
            }
        };
        Ok(Browser { driver, chromedriver, _profile: profile })
    }

    /// Navigates to `url`.
    pub async fn open(&self, url: &str) -> Result<()> {
        self.driver.goto(url).await?;
        Ok(())
    }

    /// Clicks the element `css` selects as a user would (a user gesture, which fullscreen needs).
    pub async fn click(&self, css: &str) -> Result<()> {
        self.driver.find(By::Css(css)).await?.click().await?;
        Ok(())
    }

    /// Types `key` into the page (its keydown handlers see it).
    pub async fn press(&self, key: &str) -> Result<()> {
        self.driver.find(By::Css("body")).await?.send_keys(key).await?;
        Ok(())
    }

    /// Saves a PNG of the page as `target/screenshots/{name}.png`; returns the path.
    pub async fn screenshot(&self, name: &str) -> Result<std::path::PathBuf> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.png"));
        self.driver.screenshot(&path).await?;
        Ok(path)
    }

    /// Evaluates `return (expr)` in the page.
    pub async fn eval(&self, expr: &str) -> Result<Value> {
        let r = self.driver.execute(format!("return ({expr});"), Vec::<Value>::new()).await?;
        Ok(r.json().clone())
    }

    /// Awaits a promise-valued expression in the page.
    pub async fn eval_async(&self, expr: &str) -> Result<Value> {
        let script = format!(
            "const done = arguments[arguments.length - 1]; Promise.resolve({expr}).then(done, e => done({{error: String(e)}}));"
        );
        let r = self.driver.execute_async(script, Vec::<Value>::new()).await?;
        Ok(r.json().clone())
    }

    /// Polls `expr` until it is truthy.
    pub async fn wait_until(&self, expr: &str, within: Duration) -> Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let v = self.eval(expr).await?;
            if !(v.is_null() || v == Value::Bool(false)) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                let log = self.eval("window.switchboard && window.switchboard.log.join('\\n')").await.unwrap_or_default();
                bail!("timed out after {within:?} waiting for {expr}; page log:\n{}", log.as_str().unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The page's `switchboard.stats()`: decoded frames and the selected candidate pair.
    pub async fn stats(&self) -> Result<Value> {
        self.eval_async("window.switchboard.stats()").await
    }

    /// Polls until the remote video has decoded more than `frames` frames.
    pub async fn wait_frames(&self, frames: u64, within: Duration) -> Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let s = self.stats().await?;
            if s["framesDecoded"].as_u64().unwrap_or(0) > frames {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("remote video decoded no more than {frames} frames within {within:?}: {s}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Ends the session and chromedriver.
    pub async fn quit(self) {
        let _ = self.driver.clone().quit().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.chromedriver.kill();
        let _ = self.chromedriver.wait();
        // chromedriver does not take Chromium down with it; its profile path names it.
        let _ = Command::new("pkill").arg("-f").arg(self._profile.path()).status();
    }
}

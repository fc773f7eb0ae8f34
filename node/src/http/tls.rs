//! TLS for the public listeners (HTTPS/WSS and `turns:`) with rustls and the ring provider.
//! Certificates are re-read when their files change, so a renewal needs no restart.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tracing::{info, warn};

/// How often a handshake may look at the files' modification times.
const RECHECK: Duration = Duration::from_secs(1);

/// A rustls server configuration serving the PEM certificate chain and key at these paths,
/// reloaded when the files change.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig> {
    let resolver = ReloadingCert::new(cert, key)?;
    let mut config = ServerConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn load(cert: &Path, key: &Path) -> Result<CertifiedKey> {
    let mut reader = BufReader::new(
        File::open(cert).with_context(|| format!("cannot open TLS certificate {}", cert.display()))?,
    );
    let chain = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("cannot read TLS certificate {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in {}", cert.display());
    let mut reader = BufReader::new(
        File::open(key).with_context(|| format!("cannot open TLS key {}", key.display()))?,
    );
    let der = rustls_pemfile::private_key(&mut reader)
        .with_context(|| format!("cannot read TLS key {}", key.display()))?
        .with_context(|| format!("no private key in {}", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .with_context(|| format!("unsupported TLS key in {}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().context("TLS certificate and key do not match")?;
    Ok(certified)
}

fn stamp(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(cert)?, m(key)?))
}

/// The certificate of one listener, re-read when its files' modification times change. A new
/// pair that does not load (half-written, mismatched) is logged and the old one kept.
#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<CertState>,
}

#[derive(Debug)]
struct CertState {
    current: Arc<CertifiedKey>,
    stamp: Option<(SystemTime, SystemTime)>,
    checked: Instant,
}

impl ReloadingCert {
    fn new(cert: &Path, key: &Path) -> Result<Self> {
        let stamp = stamp(cert, key);
        let current = Arc::new(load(cert, key)?);
        Ok(ReloadingCert {
            cert: cert.to_owned(),
            key: key.to_owned(),
            state: Mutex::new(CertState { current, stamp, checked: Instant::now() }),
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.checked.elapsed() >= RECHECK {
            s.checked = Instant::now();
            let now = stamp(&self.cert, &self.key);
            if now.is_some() && now != s.stamp {
                // Remembered either way: a broken pair is read (and reported) once, not every
                // second; writing the files again changes their times and brings another try.
                s.stamp = now;
                match load(&self.cert, &self.key) {
                    Ok(c) => {
                        s.current = Arc::new(c);
                        info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    }
                    Err(e) => warn!(cert = %self.cert.display(), error = %format!("{e:#}"), "keeping the old TLS certificate"),
                }
            }
        }
        Some(s.current.clone())
    }
}

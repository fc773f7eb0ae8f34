//! TLS for the public listeners (HTTPS/WSS) with rustls and the ring provider.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::{Context, Result};
use rustls::ServerConfig;

/// A rustls server configuration from a PEM certificate chain and key.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig> {
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
    let key = rustls_pemfile::private_key(&mut reader)
        .with_context(|| format!("cannot read TLS key {}", key.display()))?
        .with_context(|| format!("no private key in {}", key.display()))?;
    let mut config = ServerConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("TLS certificate and key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

//! The node's log output (text or JSON on stderr) and its filter, which a configuration reload
//! may change while the node runs.

use anyhow::{Context as _, Result};
use tracing_subscriber::EnvFilter;

use crate::config::Config;

/// Changes the log filter of the running node.
pub struct LogFilter {
    set: Box<dyn Fn(EnvFilter) -> Result<()> + Send + Sync>,
    /// `RUST_LOG` was set at start: it wins over `log.filter`, then and on reload.
    pub env_wins: bool,
}

impl LogFilter {
    /// Puts `filter` (a `log.filter` value) in force.
    pub fn set(&self, filter: &str) -> Result<()> {
        let f = EnvFilter::try_new(filter).with_context(|| format!("log.filter {filter:?}"))?;
        (self.set)(f)
    }
}

/// Installs the global subscriber: `RUST_LOG` if set, else `log.filter`; `log.format`.
pub fn init(config: &Config) -> LogFilter {
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_wins = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(&config.log.filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // The two formats are two subscriber types, so two handles behind one closure.
    let set: Box<dyn Fn(EnvFilter) -> Result<()> + Send + Sync> = if config.log.format == "json" {
        let builder = builder.json().with_filter_reloading();
        let handle = builder.reload_handle();
        builder.init();
        Box::new(move |f| handle.reload(f).context("cannot change the log filter"))
    } else {
        let builder = builder.with_filter_reloading();
        let handle = builder.reload_handle();
        builder.init();
        Box::new(move |f| handle.reload(f).context("cannot change the log filter"))
    };
    LogFilter { set, env_wins }
}

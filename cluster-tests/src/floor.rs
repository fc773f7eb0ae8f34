//! The accept loop of the calibration servers (`barerelay`, `callfloor`): one thread, no
//! framework, every connection a local task sharing `state` — the floor Switchboard is measured
//! against, never a server.

use std::future::Future;

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};

/// Serves `listen` on the current thread, each accepted connection (with `TCP_NODELAY`) handed to
/// `serve` with a clone of `state`. Runs until accepting fails.
pub fn serve_local<S, F, Fut>(listen: &str, state: S, serve: F) -> Result<()>
where
    S: Clone + 'static,
    F: Fn(TcpStream, S) -> Fut + 'static,
    Fut: Future + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (tcp, _) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            tokio::task::spawn_local(serve(tcp, state.clone()));
        }
    })
}

//! Telling systemd how the node is (`Type=notify`): READY once every listener is bound, WATCHDOG
//! for as long as the room registry answers, RELOADING around a configuration reload, STOPPING
//! when it drains. Outside systemd (no
//! `NOTIFY_SOCKET`) every call does nothing.


use actix::Addr;
use sd_notify::NotifyState;
use tracing::{debug, warn};

use crate::rooms::{Heartbeat, RoomRegistry};

/// The listeners are bound and the node takes work; `status` is shown by `systemctl status`.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A configuration reload begins (systemd wants the monotonic time with it).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// A configuration reload ended, applied or refused; `status` says which.
pub fn reloaded(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The node is draining and will exit.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "cannot tell systemd the node's state");
    }
}

/// When systemd asked for a watchdog (`WatchdogSec=`), pings it twice per interval, each time
/// only after the room registry has answered: a node whose actors are stuck stops pinging and
/// systemd restarts it.
pub fn watchdog(registry: Addr<RoomRegistry>) {
    let Some(interval) = sd_notify::watchdog_enabled().filter(|d| !d.is_zero()) else { return };
    let every = interval / 2;
    debug!(?every, "systemd watchdog enabled");
    actix::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match tokio::time::timeout(every, registry.send(Heartbeat)).await {
                Ok(Ok(())) => notify(&[NotifyState::Watchdog]),
                _ => warn!("the room registry did not answer; not pinging the systemd watchdog"),
            }
        }
    });
}

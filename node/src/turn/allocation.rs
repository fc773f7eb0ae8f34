//! `Allocation`: the lifecycle of one TURN allocation. The data plane (a UDP shard or a TCP
//! connection) moves its packets without a mailbox hop; this actor owns what happens over time:
//! the lifetime timer (refreshed by the client, expiry tells the data plane to drop the relay),
//! the user's quota while it lives, and the allocation gauge.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::debug;

use super::directory::AllocationView;
use super::Shared;
use crate::rooms::now_ms;

/// Identifies an allocation within its data plane.
pub type AllocId = u64;

/// Tells the data plane to drop an expired allocation (it answers with [`Gone`]).
pub type ExpireFn = Arc<dyn Fn(AllocId) + Send + Sync>;

/// The client refreshed the allocation.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Refreshed {
    pub expires_ms: u64,
}

/// The data plane dropped the allocation (deleted by the client, expired, or its connection
/// closed).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Gone;

/// One per allocation.
pub struct Allocation {
    id: AllocId,
    quota_key: String,
    client: SocketAddr,
    relay: SocketAddr,
    expires_ms: u64,
    expire: ExpireFn,
    shared: Arc<Shared>,
    /// What the admin API lists, and its id there once started.
    view: AllocationView,
    listed: u64,
    timer: Option<SpawnHandle>,
}

impl Allocation {
    /// The allocation `id` of its data plane, counted against `quota_key`; the quota is
    /// already taken and is given back when the actor stops.
    pub fn new(id: AllocId, quota_key: String, view: AllocationView, expire: ExpireFn, shared: Arc<Shared>) -> Self {
        let (client, relay, expires_ms) = (view.client, view.relay, view.expires_unix_ms);
        Allocation { id, quota_key, client, relay, expires_ms, expire, shared, view, listed: 0, timer: None }
    }

    fn arm(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        let wait = Duration::from_millis(self.expires_ms.saturating_sub(now_ms()));
        self.timer = Some(ctx.run_later(wait, |act, _| {
            debug!(id = act.id, client = %act.client, relay = %act.relay, "allocation expired");
            metrics::counter!("switchboard_turn_allocations_expired_total").increment(1);
            (act.expire)(act.id);
        }));
    }
}

impl Actor for Allocation {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        metrics::counter!("switchboard_turn_allocations_total").increment(1);
        self.listed = self.shared.allocations.insert(self.view.clone(), self.expire.clone(), self.id);
        self.arm(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.shared.allocations.remove(self.listed);
        self.shared.quotas.release(&self.quota_key);
    }
}

impl Handler<Refreshed> for Allocation {
    type Result = ();

    fn handle(&mut self, msg: Refreshed, ctx: &mut Context<Self>) {
        self.expires_ms = msg.expires_ms;
        self.shared.allocations.refreshed(self.listed, msg.expires_ms);
        self.arm(ctx);
    }
}

impl Handler<Gone> for Allocation {
    type Result = ();

    fn handle(&mut self, _: Gone, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

//! Rooms on this node: the [`RoomRegistry`] (one per node) and a [`RoomActor`] per room that has
//! a socket here. They hold the node's sockets; who is in which room lives in the membership.

mod registry;
mod room;

pub use registry::{ApplyEffects, Heartbeat, RebindAll, RegisterSession, RoomRegistry, ToRoom};
pub use room::{now_ms, Attach, Detach, Flush, Relay, Release, RoomActor};

use actix::{Message, Recipient};

/// What a room tells one of its sessions.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum ToSession {
    /// Write this signaling message to the socket as a Collider frame.
    Deliver(String),
    /// Close the socket: the client was removed (Collider `DELETE`) or evicted.
    Close,
    /// Close with 1001 Going Away: the node drains and has released the client's binding, so
    /// it registers elsewhere at once and messages sent to it meanwhile wait in its queue.
    GoAway,
}

/// A session of a room on this node.
pub type SessionRecipient = Recipient<ToSession>;

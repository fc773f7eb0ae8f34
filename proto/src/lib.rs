//! # switchboard-proto
//!
//! The sans-IO half of Switchboard: wire types and protocol rules with no sockets, no runtime
//! and no clock (time is always an argument). The node crate feeds bytes and commands in and
//! carries outcomes and effects out.
//!
//! ## Layout
//! - [`ids`]: the one rule for room and client ids (`[A-Za-z0-9_-]{1,64}`).
//! - [`apprtc`]: AppRTC room-server JSON (join/message results, room parameters, §1.8 query).
//! - [`collider`]: Collider WebSocket frames (`register`/`send`, `{"msg","error"}` replies).
//! - [`rooms`]: the room state machine driven by [`rooms::Command`]s; the Raft state machine of
//!   a cluster and the in-place state of a single node.
//! - [`credentials`]: TURN REST credentials (coturn `use-auth-secret`).
//! - [`cluster`]: the replicated cluster state (rooms + node liveness) and the peer-link frames.
//! - [`limits`]: per-source-address counters (O(1), bounded) for what anyone may repeat.
//! - [`peer_security`]: the cluster link's mutual authentication (Noise `NNpsk0` over the
//!   cluster secret) and the sealed record stream after it.
//! - [`turn`]: STUN/TURN request logic, allocations, credentials, the peer address policy.
//!
//! ## Failure model
//! Nothing here panics on peer input: parsers return typed errors whose `Display` is the exact
//! text the protocol sends back.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod apprtc;
pub mod cluster;
pub mod collider;
pub mod credentials;
pub mod ids;
pub mod limits;
pub mod peer_security;
pub mod rooms;
pub mod turn;

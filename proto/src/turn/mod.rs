//! STUN/TURN, sans-IO: the address policy, long-term credentials with stateless nonces, the
//! state of one allocation, ChannelData framing, and the request logic that ties them together.
//! The node's listeners feed bytes in and send what comes out.

pub mod allocation;
pub mod auth;
pub mod channel_data;
pub mod policy;
pub mod server;

pub use allocation::{AllocationState, ClientTransport, RelayTransport};
pub use server::{Ctx, Handled, TurnConfig, TurnServer};

#[cfg(test)]
mod tests;

//! Collider-compatible signaling: the WebSocket session actor, its HTTP twin
//! (`POST`/`DELETE /{room}/{client}`, `/status`) and the directory of open sessions.

pub mod directory;
pub mod http;
pub mod session;

pub use directory::Directory;

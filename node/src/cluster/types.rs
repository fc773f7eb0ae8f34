//! The Raft type configuration: commands and outcomes come from `switchboard-proto`, nodes are
//! identified by `u64` and described by their peer-link and public addresses.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};
use switchboard_proto::cluster::ClusterCommand;
use switchboard_proto::rooms::Outcome;

/// How to reach a member of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its internal listener (peer links, Raft).
    pub raft_addr: String,
    /// The base URL clients use (`http(s)://host:port`).
    pub public_url: String,
}

impl fmt::Display for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.public_url, self.raft_addr)
    }
}

openraft::declare_raft_types!(
    /// Switchboard's Raft types.
    pub TypeConfig:
        D = ClusterCommand,
        R = Outcome,
        NodeId = u64,
        Node = PeerInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A stored log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<u64>;
/// A membership as stored with the state.
pub type StoredMembership = openraft::StoredMembership<u64, PeerInfo>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<u64, PeerInfo>;
/// A storage error.
pub type StorageError = openraft::StorageError<u64>;

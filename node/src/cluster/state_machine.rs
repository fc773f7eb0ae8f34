//! The Raft state machine: `ClusterState` from `switchboard-proto`, applied in log order on every
//! node. Every applied batch goes to the room registry with its log index and the effects that
//! name this node (deliver, close), so that rooms order direct messages after them.
//! Snapshots are the postcard state in `snapshot.bin`, written durably (fsync, then rename, the
//! previous one kept as `snapshot.prev.bin`) with a format version and a checksum, so that a
//! node killed mid-write starts from the last good snapshot and the log, never from a torn file.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use actix::Recipient;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use switchboard_proto::cluster::ClusterState;
use switchboard_proto::rooms::{Effect, NodeId, Outcome};
use tokio::sync::watch;
use tracing::{info, warn};

use super::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::rooms::ApplyEffects;

/// The applied state, shared with readers (routing, pages, status).
pub type SharedState = Arc<RwLock<ClusterState>>;

/// First bytes of a snapshot file: a name and the format version. A file of another version
/// is refused with a clear error rather than misread.
const SNAPSHOT_MAGIC: &[u8; 8] = b"SWBSNAP1";

#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// Called after every apply with the last applied log id.
pub type OnApply = Arc<dyn Fn(&Option<LogId>) + Send + Sync>;

/// The state machine handed to openraft.
pub struct StateMachine {
    node: NodeId,
    state: SharedState,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    dir: PathBuf,
    effects: Recipient<ApplyEffects>,
    applied: watch::Sender<u64>,
    on_apply: OnApply,
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(ErrorSubject::StateMachine, verb, std::io::Error::other(e.to_string()))
}

fn current(dir: &Path) -> PathBuf {
    dir.join("snapshot.bin")
}

fn previous(dir: &Path) -> PathBuf {
    dir.join("snapshot.prev.bin")
}

/// Encodes a snapshot file: magic, payload length, SHA-256 of the payload, payload.
fn encode_file(stored: &StoredSnapshot) -> Result<Vec<u8>, postcard::Error> {
    let payload = postcard::to_allocvec(stored)?;
    let mut out = Vec::with_capacity(payload.len() + 48);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    out.extend_from_slice(&Sha256::digest(&payload));
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads and checks a snapshot file; `Ok(None)` if there is none.
fn read_file(path: &Path) -> anyhow::Result<Option<StoredSnapshot>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    anyhow::ensure!(bytes.len() >= 48, "{} is truncated ({} bytes)", path.display(), bytes.len());
    anyhow::ensure!(&bytes[..8] == SNAPSHOT_MAGIC, "{} is not a snapshot of this version", path.display());
    let len = u64::from_be_bytes(bytes[8..16].try_into()?) as usize;
    let payload = &bytes[48..];
    anyhow::ensure!(payload.len() == len, "{} is torn: {} of {len} bytes", path.display(), payload.len());
    anyhow::ensure!(Sha256::digest(payload).as_slice() == &bytes[16..48], "{} fails its checksum", path.display());
    Ok(Some(postcard::from_bytes(payload)?))
}

/// The newest good snapshot: the current file, else the previous one (a crash mid-write).
fn read_latest(dir: &Path) -> Option<StoredSnapshot> {
    for path in [current(dir), previous(dir)] {
        match read_file(&path) {
            Ok(Some(s)) => return Some(s),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "snapshot unusable; trying an older one"),
        }
    }
    None
}

/// Writes a snapshot durably: a temporary file, fsynced, renamed over the current one (which
/// becomes the previous one), then the directory fsynced.
fn save_file(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if std::env::var_os("SWITCHBOARD_FAILPOINT").is_some_and(|v| v == "snapshot-torn-write") {
        // Test hook: the process dies half-way through writing the current file, as an
        // unsynced write would leave it after a power cut.
        let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(current(dir))?;
        f.write_all(&bytes[..bytes.len() / 2])?;
        f.sync_all()?;
        std::process::abort();
    }
    let tmp = dir.join("snapshot.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    if current(dir).exists() {
        std::fs::rename(current(dir), previous(dir))?;
    }
    std::fs::rename(&tmp, current(dir))?;
    std::fs::File::open(dir)?.sync_all()
}

impl StateMachine {
    /// Opens the state machine, starting from the latest good snapshot in `dir` if there is one.
    /// `applied` follows the last applied log index.
    pub fn open(
        node: NodeId,
        dir: PathBuf,
        state: SharedState,
        effects: Recipient<ApplyEffects>,
        applied: watch::Sender<u64>,
        on_apply: OnApply,
    ) -> anyhow::Result<Self> {
        let mut sm = StateMachine {
            node,
            state,
            last_applied: None,
            membership: StoredMembership::default(),
            dir,
            effects,
            applied,
            on_apply,
        };
        if let Some(stored) = read_latest(&sm.dir) {
            let restored = ClusterState::from_snapshot(&stored.data)
                .map_err(|e| anyhow::anyhow!("snapshot state is corrupt: {e}"))?;
            *sm.state.write().unwrap_or_else(|p| p.into_inner()) = restored;
            sm.last_applied = stored.meta.last_log_id;
            sm.membership = stored.meta.last_membership.clone();
            sm.applied.send_replace(sm.last_applied.map_or(0, |l| l.index));
            info!(last_applied = ?sm.last_applied, "state restored from snapshot");
        }
        Ok(sm)
    }

    fn mine(&self, index: u64, effects: Vec<Effect>, out: &mut Vec<(u64, Effect)>) {
        out.extend(
            effects
                .into_iter()
                .filter(|e| match e {
                    Effect::Deliver { at, .. } | Effect::Close { at, .. } => at.node == self.node,
                })
                .map(|e| (index, e)),
        );
    }

    fn published(&self, resync: bool, effects: Vec<(u64, Effect)>) {
        let through = self.last_applied.map_or(0, |l| l.index);
        // The registry hears of every applied index (rooms wait on it), then readers.
        self.effects.do_send(ApplyEffects { through, effects, resync });
        self.applied.send_replace(through);
        (self.on_apply)(&self.last_applied);
    }
}

/// Builds a snapshot of the state at the moment it is asked for.
pub struct SnapshotBuilder {
    data: Vec<u8>,
    meta: SnapshotMeta,
    dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let stored = StoredSnapshot { meta: self.meta.clone(), data: std::mem::take(&mut self.data) };
        let bytes = encode_file(&stored).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let dir = self.dir.clone();
        // A failed save fails the snapshot: openraft then keeps the log it would have purged.
        tokio::task::spawn_blocking(move || save_file(&dir, &bytes))
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut out = Vec::new();
        let mut effects = Vec::new();
        {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            for entry in entries {
                self.last_applied = Some(entry.log_id);
                let index = entry.log_id.index;
                match entry.payload {
                    EntryPayload::Blank => out.push(Outcome::Noop),
                    EntryPayload::Normal(cmd) => {
                        let applied = state.apply_at(index, cmd);
                        self.mine(index, applied.effects, &mut effects);
                        out.push(applied.outcome);
                    }
                    EntryPayload::Membership(m) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), m);
                        out.push(Outcome::Noop);
                    }
                }
            }
        }
        self.published(false, effects);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let data = self.state.read().unwrap_or_else(|p| p.into_inner()).to_snapshot().unwrap_or_default();
        let id = format!(
            "{}-{}",
            self.last_applied.map(|l| l.leader_id.term).unwrap_or(0),
            self.last_applied.map(|l| l.index).unwrap_or(0)
        );
        SnapshotBuilder {
            data,
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id: id,
            },
            dir: self.dir.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<Cursor<Vec<u8>>>) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let restored = ClusterState::from_snapshot(&data).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let stored = StoredSnapshot { meta: meta.clone(), data };
        // Durable before it counts: a node that applied it and then lost it would be behind the
        // index it acknowledged.
        let bytes = encode_file(&stored).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || save_file(&dir, &bytes))
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = restored;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        info!(last_applied = ?self.last_applied, "snapshot installed");
        // The entries it covers were never applied here one by one: their effects on this
        // node's sockets are unknown, so every room checks its sockets against the new state.
        self.published(true, Vec::new());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let dir = self.dir.clone();
        let stored = tokio::task::spawn_blocking(move || read_latest(&dir)).await.map_err(|e| sm_err(ErrorVerb::Read, e))?;
        Ok(stored.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(index: u64) -> StoredSnapshot {
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("1-{index}"),
        };
        StoredSnapshot { meta, data: vec![index as u8; 100] }
    }

    #[test]
    fn a_torn_snapshot_falls_back_to_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        save_file(dir.path(), &encode_file(&stored(1)).unwrap()).unwrap();
        save_file(dir.path(), &encode_file(&stored(2)).unwrap()).unwrap();
        let latest = read_latest(dir.path()).unwrap();
        assert_eq!(latest.meta.last_log_id.map(|l| l.index), Some(2));
        // Tear the current file: the previous one is used.
        let bytes = std::fs::read(current(dir.path())).unwrap();
        std::fs::write(current(dir.path()), &bytes[..bytes.len() - 10]).unwrap();
        assert!(read_file(&current(dir.path())).is_err());
        assert_eq!(read_latest(dir.path()).unwrap().meta.last_log_id.map(|l| l.index), Some(1));
        // A flipped byte fails the checksum.
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(current(dir.path()), &bad).unwrap();
        assert!(read_file(&current(dir.path())).unwrap_err().to_string().contains("checksum"));
        // Another version is refused by name.
        std::fs::write(current(dir.path()), b"SWBSNAP9 and more bytes than the header needs.........").unwrap();
        assert!(read_file(&current(dir.path())).unwrap_err().to_string().contains("version"));
    }
}

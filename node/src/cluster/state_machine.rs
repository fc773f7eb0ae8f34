//! The Raft state machine: `ClusterState` from `switchboard-proto`, applied in log order on every
//! node. Applying hands the effects that name this node (deliver, close) to its room registry.
//! Snapshots are the postcard state, kept in memory and in `snapshot.bin` so a restarted node
//! starts from its latest snapshot and replays only the log after it.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use actix::Recipient;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot};
use serde::{Deserialize, Serialize};
use switchboard_proto::cluster::ClusterState;
use switchboard_proto::rooms::{Effect, NodeId, Outcome};
use tracing::{info, warn};

use super::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::rooms::ApplyEffects;

/// The applied state, shared with readers (routing, pages, status).
pub type SharedState = Arc<RwLock<ClusterState>>;

#[derive(Serialize, Deserialize)]
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
    snapshot_file: PathBuf,
    effects: Recipient<ApplyEffects>,
    on_apply: OnApply,
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(ErrorSubject::StateMachine, verb, std::io::Error::other(e.to_string()))
}

impl StateMachine {
    /// Opens the state machine, starting from `dir/snapshot.bin` if there is one.
    pub fn open(
        node: NodeId,
        dir: PathBuf,
        state: SharedState,
        effects: Recipient<ApplyEffects>,
        on_apply: OnApply,
    ) -> anyhow::Result<Self> {
        let snapshot_file = dir.join("snapshot.bin");
        let mut sm = StateMachine {
            node,
            state,
            last_applied: None,
            membership: StoredMembership::default(),
            snapshot_file,
            effects,
            on_apply,
        };
        if let Ok(bytes) = std::fs::read(&sm.snapshot_file) {
            let stored: StoredSnapshot = postcard::from_bytes(&bytes)
                .map_err(|e| anyhow::anyhow!("snapshot {} is corrupt: {e}", sm.snapshot_file.display()))?;
            let restored = ClusterState::from_snapshot(&stored.data)
                .map_err(|e| anyhow::anyhow!("snapshot state is corrupt: {e}"))?;
            *sm.state.write().unwrap_or_else(|p| p.into_inner()) = restored;
            sm.last_applied = stored.meta.last_log_id;
            sm.membership = stored.meta.last_membership.clone();
            info!(last_applied = ?sm.last_applied, "state restored from snapshot");
        }
        Ok(sm)
    }

    fn dispatch(&self, effects: Vec<Effect>) {
        let mine: Vec<Effect> = effects
            .into_iter()
            .filter(|e| match e {
                Effect::Deliver { at, .. } | Effect::Close { at, .. } => at.node == self.node,
            })
            .collect();
        if !mine.is_empty() {
            self.effects.do_send(ApplyEffects(mine));
        }
    }

    #[allow(clippy::result_large_err)] // openraft's error type
    fn save(&self, stored: &StoredSnapshot) -> Result<(), StorageError> {
        let bytes = postcard::to_allocvec(stored).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let tmp = self.snapshot_file.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        std::fs::rename(&tmp, &self.snapshot_file).map_err(|e| sm_err(ErrorVerb::Write, e))
    }
}

/// Builds a snapshot of the state at the moment it is asked for.
pub struct SnapshotBuilder {
    data: Vec<u8>,
    meta: SnapshotMeta,
    file: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let stored = StoredSnapshot { meta: self.meta.clone(), data: std::mem::take(&mut self.data) };
        let bytes = postcard::to_allocvec(&stored).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let tmp = self.file.with_extension("tmp");
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &file)
        })
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
                match entry.payload {
                    EntryPayload::Blank => out.push(Outcome::Noop),
                    EntryPayload::Normal(cmd) => {
                        let applied = state.apply(cmd);
                        effects.extend(applied.effects);
                        out.push(applied.outcome);
                    }
                    EntryPayload::Membership(m) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), m);
                        out.push(Outcome::Noop);
                    }
                }
            }
        }
        self.dispatch(effects);
        (self.on_apply)(&self.last_applied);
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
            file: self.snapshot_file.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<Cursor<Vec<u8>>>) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let restored = ClusterState::from_snapshot(&data).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = restored;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        let stored = StoredSnapshot { meta: meta.clone(), data };
        if let Err(e) = self.save(&stored) {
            warn!(error = %e, "could not persist the installed snapshot");
        }
        info!(last_applied = ?self.last_applied, "snapshot installed");
        (self.on_apply)(&self.last_applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let bytes = match std::fs::read(&self.snapshot_file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(sm_err(ErrorVerb::Read, e)),
        };
        let stored: StoredSnapshot = postcard::from_bytes(&bytes).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}

//! The Raft log, vote and commit index: an append-only write-ahead log in the node's data
//! directory (the `raft-log` crate: chunk files, one fdatasync for every write waiting, recent
//! entries served from memory). `append` reports durability through openraft's callback.

// openraft's traits return its StorageError, which is large; errors are rare (disk failure) and
// boxing would only convert back at every trait boundary.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{CommittedLeaderId, ErrorSubject, ErrorVerb, LogState, RaftLogReader, Vote};
use raft_log::api::raft_log_writer::RaftLogWriter;
use tokio::sync::oneshot;

use super::types::{Entry, LogId, StorageError, TypeConfig};

/// How `raft-log` stores Switchboard's log: ids as `((term, node), index)`, which orders as
/// Raft does; entries as their postcard bytes; a vote as `((term, node), committed)`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct WalTypes;

type WalLogId = ((u64, u64), u64);
type WalVote = ((u64, u64), u64);

impl raft_log::Types for WalTypes {
    type LogId = WalLogId;
    type LogPayload = Vec<u8>;
    type Vote = WalVote;
    type Callback = Done;
    type UserData = ();

    fn log_index(log_id: &WalLogId) -> u64 {
        log_id.1
    }

    fn payload_size(payload: &Vec<u8>) -> u64 {
        payload.len() as u64
    }
}

/// Who waits for a flush.
enum Done {
    /// openraft, for appended entries.
    Append(LogFlushed<TypeConfig>),
    /// A caller of this store (vote, truncation).
    Wait(oneshot::Sender<io::Result<()>>),
    /// A caller that blocks (at start).
    Sync(std::sync::mpsc::SyncSender<io::Result<()>>),
}

impl raft_log::Callback for Done {
    fn send(self, res: io::Result<()>) {
        match self {
            Done::Append(cb) => cb.log_io_completed(res),
            Done::Wait(tx) => {
                let _ = tx.send(res);
            }
            Done::Sync(tx) => {
                let _ = std::sync::mpsc::SyncSender::send(&tx, res);
            }
        }
    }
}

fn wal_id(id: &LogId) -> WalLogId {
    ((id.leader_id.term, id.leader_id.node_id), id.index)
}

fn raft_id(((term, node), index): &WalLogId) -> LogId {
    LogId::new(CommittedLeaderId::new(*term, *node), *index)
}

fn wal_vote(v: &Vote<u64>) -> WalVote {
    ((v.leader_id.term, v.leader_id.node_id), u64::from(v.committed))
}

fn raft_vote(((term, node), committed): &WalVote) -> Vote<u64> {
    let mut v = Vote::new(*term, *node);
    v.committed = *committed != 0;
    v
}

fn err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageError::from_io_error(subject, verb, io::Error::other(e.to_string()))
}

fn read_err(e: impl ToString) -> StorageError {
    err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: impl ToString) -> StorageError {
    err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

/// Entries kept in memory for readers (replication, apply): the newest, up to these bounds.
const CACHE_ENTRIES: usize = 50_000;
const CACHE_BYTES: usize = 128 << 20;
/// A chunk file is closed past these and removed once a purge passes its last entry. Opening
/// the next chunk syncs a new file while Raft waits (tens of milliseconds on a busy disk), so
/// chunks are large: at full load one closes every few minutes, and the log keeps at most
/// about two chunks on disk.
const CHUNK_RECORDS: usize = 1_000_000;
const CHUNK_BYTES: usize = 256 << 20;

/// The log store; cheap to clone (readers share the log).
#[derive(Clone)]
pub struct LogStore {
    wal: Arc<Mutex<raft_log::RaftLog<WalTypes>>>,
}

impl LogStore {
    /// Opens (or creates) the log in `dir/wal`. A log kept by an earlier version of the node in
    /// `dir/raft.redb` is carried over first (see `migrate`).
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        Self::open_with(dir, CHUNK_RECORDS, CHUNK_BYTES)
    }

    fn open_with(dir: &Path, chunk_records: usize, chunk_bytes: usize) -> anyhow::Result<Self> {
        let wal_dir = dir.join("wal");
        std::fs::create_dir_all(&wal_dir)?;
        let config = raft_log::Config {
            dir: wal_dir.to_string_lossy().into_owned(),
            log_cache_max_items: Some(CACHE_ENTRIES),
            log_cache_capacity: Some(CACHE_BYTES),
            chunk_max_records: Some(chunk_records),
            chunk_max_size: Some(chunk_bytes),
            ..Default::default()
        };
        let wal = raft_log::RaftLog::<WalTypes>::open(Arc::new(config))?;
        let store = LogStore { wal: Arc::new(Mutex::new(wal)) };
        migrate::from_redb(dir, &store)?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, raft_log::RaftLog<WalTypes>> {
        self.wal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes with `write`, then waits until everything written so far is on disk.
    async fn durably(&self, write: impl FnOnce(&mut raft_log::RaftLog<WalTypes>) -> io::Result<()>) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut wal = self.lock();
            write(&mut wal).map_err(write_err)?;
            wal.flush(Some(Done::Wait(tx))).map_err(write_err)?;
        }
        match rx.await {
            Ok(r) => r.map_err(write_err),
            Err(_) => Err(write_err("raft log flush worker stopped")),
        }
    }

    fn read_range(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, StorageError> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        let wal = self.lock();
        wal.read(from, to)
            .map(|r| {
                let (_, bytes) = r.map_err(read_err)?;
                postcard::from_bytes(&bytes).map_err(read_err)
            })
            .collect()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_range(range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let wal = self.lock();
        let state = wal.log_state();
        let purged = state.purged().map(raft_id);
        let last = state.last().map(raft_id).or(purged);
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let v = wal_vote(vote);
        self.durably(|wal| wal.save_vote(v).map(drop)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(self.lock().log_state().vote().map(raft_vote))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Need not be durable (openraft recovers it from a quorum): it goes with the next flush.
        // The log refuses a commit index that goes back; openraft never moves it back, and an
        // older one has nothing to add.
        if let Some(c) = committed.map(|c| wal_id(&c)) {
            let mut wal = self.lock();
            if wal.log_state().committed().is_none_or(|now| c > *now) {
                wal.commit(c).map_err(write_err)?;
            }
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.lock().log_state().committed().map(raft_id))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        for e in entries {
            rows.push((wal_id(&e.log_id), postcard::to_allocvec(&e).map_err(write_err)?));
        }
        let mut wal = self.lock();
        wal.append(rows).map_err(write_err)?;
        // Durable when the flush worker calls back; openraft goes on meanwhile.
        wal.flush(Some(Done::Append(callback))).map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.durably(|wal| wal.truncate(log_id.index).map(drop)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Chunk files wholly before `log_id` are removed once the purge record is on disk.
        self.durably(|wal| wal.purge(wal_id(&log_id)).map(drop)).await
    }
}

/// Earlier versions kept the log in a redb database (`raft.redb`). A node upgraded in place
/// carries its vote, commit index and entries over to the new log once, then renames the
/// database `raft.redb.migrated` (removable once the node runs well).
mod migrate {
    use std::path::Path;

    use anyhow::{Context as _, Result};
    use raft_log::api::raft_log_writer::RaftLogWriter;
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};

    use super::{wal_id, wal_vote, LogStore};
    use crate::cluster::types::{Entry, LogId};

    const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

    pub(super) fn from_redb(dir: &Path, store: &LogStore) -> Result<()> {
        let old = dir.join("raft.redb");
        if !old.exists() {
            return Ok(());
        }
        let db = redb::Database::open(&old).with_context(|| format!("cannot open {} to carry it over", old.display()))?;
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let get = |key: &str| -> Result<Option<Vec<u8>>> { Ok(meta.get(key)?.map(|v| v.value().to_vec())) };
        let mut wal = store.lock();
        if wal.log_state().last().is_some() || wal.log_state().vote().is_some() {
            anyhow::bail!("both {} and a log in {} exist: move one away", old.display(), dir.join("wal").display());
        }
        if let Some(v) = get("vote")? {
            wal.save_vote(wal_vote(&postcard::from_bytes(&v)?))?;
        }
        let purged: Option<LogId> = get("last_purged")?.map(|v| postcard::from_bytes(&v)).transpose()?;
        if let Some(p) = purged {
            wal.purge(wal_id(&p))?;
        }
        let log = txn.open_table(LOG)?;
        let mut rows = Vec::new();
        for item in log.iter()? {
            let (_, v) = item?;
            let e: Entry = postcard::from_bytes(v.value())?;
            rows.push((wal_id(&e.log_id), v.value().to_vec()));
        }
        let count = rows.len();
        wal.append(rows)?;
        let committed: Option<Option<LogId>> = get("committed")?.map(|v| postcard::from_bytes(&v)).transpose()?;
        if let Some(Some(c)) = committed {
            wal.commit(wal_id(&c))?;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        wal.flush(Some(super::Done::Sync(tx)))?;
        drop(wal);
        rx.recv().context("raft log flush worker stopped")??;
        drop((log, meta, txn, db));
        std::fs::rename(&old, dir.join("raft.redb.migrated"))?;
        tracing::info!(entries = count, "carried the Raft log over from raft.redb to the write-ahead log");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use actix::{Actor, Context, Handler};
    use openraft::testing::{StoreBuilder, Suite};
    use switchboard_proto::cluster::ClusterState;
    use switchboard_proto::rooms::Limits;

    use super::*;
    use crate::cluster::state_machine::StateMachine;
    use crate::rooms::ApplyEffects;

    /// Takes the state machine's effects (the conformance suite applies only blank and
    /// membership entries).
    struct Sink;
    impl Actor for Sink {
        type Context = Context<Self>;
    }
    impl Handler<ApplyEffects> for Sink {
        type Result = ();
        fn handle(&mut self, _: ApplyEffects, _: &mut Context<Self>) {}
    }

    /// A log store and state machine in a fresh directory each; the effects go to a sink on an
    /// actix system of its own thread.
    struct Builder {
        sink: actix::Addr<Sink>,
        dirs: Mutex<Vec<tempfile::TempDir>>,
    }

    impl Builder {
        fn new() -> Self {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let sys = actix::System::new();
                sys.block_on(async { tx.send(Sink.start()).unwrap() });
                sys.run().unwrap();
            });
            Builder { sink: rx.recv().unwrap(), dirs: Mutex::new(Vec::new()) }
        }
    }

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for Builder {
        async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().unwrap();
            let log = LogStore::open(dir.path()).map_err(write_err)?;
            let state = Arc::new(RwLock::new(ClusterState::new(Limits::default())));
            let (applied, _) = tokio::sync::watch::channel(0);
            let sm = StateMachine::open(1, dir.path().to_path_buf(), state, self.sink.clone().recipient(), applied, Arc::new(|_: &Option<LogId>| {}))
                .map_err(write_err)?;
            self.dirs.lock().unwrap().push(dir);
            Ok(((), log, sm))
        }
    }

    /// openraft's own conformance suite for log stores and state machines: vote, append,
    /// reads, truncation, purges, membership, snapshots. Left out:
    /// `get_initial_state_membership_from_log_and_sm`, which appends an entry below the point
    /// the log was purged to; openraft itself never does, and this log refuses it (a log id may
    /// not go back) where a more lenient store would overwrite.
    #[test]
    fn passes_openrafts_storage_suite() {
        type S = Suite<TypeConfig, LogStore, StateMachine, Builder, ()>;
        let b = Builder::new();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            macro_rules! run {
                ($t:ident) => {{
                    let ((), store, sm) = b.build().await.unwrap();
                    if let Err(e) = S::$t(store, sm).await {
                        panic!("{}: {e}", stringify!($t));
                    }
                }};
            }
            run!(last_membership_in_log_initial);
            run!(last_membership_in_log);
            run!(last_membership_in_log_multi_step);
            run!(get_membership_initial);
            run!(get_membership_from_log_and_empty_sm);
            run!(get_membership_from_empty_log_and_sm);
            run!(get_membership_from_log_le_sm_last_applied);
            run!(get_membership_from_log_gt_sm_last_applied_1);
            run!(get_membership_from_log_gt_sm_last_applied_2);
            run!(get_initial_state_without_init);
            run!(get_initial_state_with_state);
            run!(get_initial_state_last_log_gt_sm);
            run!(get_initial_state_last_log_lt_sm);
            run!(get_initial_state_log_ids);
            run!(get_initial_state_re_apply_committed);
            run!(save_vote);
            run!(get_log_entries);
            run!(limited_get_log_entries);
            run!(try_get_log_entry);
            run!(initial_logs);
            run!(get_log_state);
            run!(get_log_id);
            run!(last_id_in_log);
            run!(last_applied_state);
            run!(purge_logs_upto_0);
            run!(purge_logs_upto_5);
            run!(purge_logs_upto_20);
            run!(delete_logs_since_11);
            run!(delete_logs_since_0);
            run!(append_to_log);
            run!(snapshot_meta);
            S::transfer_snapshot(&b).await.unwrap_or_else(|e| panic!("transfer_snapshot: {e}"));
        });
    }

    fn entry(term: u64, index: u64) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(term, 1), index), payload: openraft::EntryPayload::Blank }
    }

    /// What a node wrote is there after it restarts: vote, commit index, entries, truncation
    /// and purge.
    #[tokio::test]
    async fn a_reopened_log_has_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = LogStore::open(dir.path()).unwrap();
            log.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
            let (tx, rx) = oneshot::channel();
            {
                let mut wal = log.lock();
                wal.append((1..=20).map(|i| (wal_id(&entry(3, i).log_id), postcard::to_allocvec(&entry(3, i)).unwrap()))).unwrap();
                wal.flush(Some(Done::Wait(tx))).unwrap();
            }
            rx.await.unwrap().unwrap();
            log.save_committed(Some(entry(3, 15).log_id)).await.unwrap();
            log.truncate(entry(3, 18).log_id).await.unwrap();
            log.purge(entry(3, 4).log_id).await.unwrap();
        }
        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new_committed(3, 2)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(entry(3, 4).log_id));
        assert_eq!(state.last_log_id, Some(entry(3, 17).log_id));
        assert_eq!(log.read_committed().await.unwrap(), Some(entry(3, 15).log_id));
        let got: Vec<u64> = log.try_get_log_entries(0..100).await.unwrap().iter().map(|e| e.log_id.index).collect();
        assert_eq!(got, (5..=17).collect::<Vec<_>>());
    }

    /// Purged entries leave the disk: chunk files wholly before the purge point are removed.
    #[tokio::test]
    async fn purged_chunks_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open_with(dir.path(), 20_000, CHUNK_BYTES).unwrap();
        let n = 3 * 20_000;
        for start in (1..=n).step_by(1000) {
            let (tx, rx) = oneshot::channel();
            {
                let mut wal = log.lock();
                wal.append((start..start + 1000).map(|i| (wal_id(&entry(1, i).log_id), postcard::to_allocvec(&entry(1, i)).unwrap())))
                    .unwrap();
                wal.flush(Some(Done::Wait(tx))).unwrap();
            }
            rx.await.unwrap().unwrap();
        }
        let chunks = || {
            std::fs::read_dir(dir.path().join("wal")).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "wal")).count()
        };
        let before = chunks();
        assert!(before >= 3, "{before} chunk files for {n} entries");
        log.purge(entry(1, n - 10).log_id).await.unwrap();
        // Removal follows the flush of the purge record, on the log's own thread.
        let mut after = chunks();
        for _ in 0..100 {
            if after <= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            after = chunks();
        }
        assert!(after <= 2, "{after} chunk files left of {before} after purging all but 10 entries");
        let got = log.try_get_log_entries(0..u64::MAX).await.unwrap();
        assert_eq!(got.first().map(|e| e.log_id.index), Some(n - 9));
    }

    /// A node upgraded from a version that kept its log in redb carries it over once.
    #[tokio::test]
    async fn a_redb_log_is_carried_over() {
        use redb::TableDefinition;
        const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
        const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
        let dir = tempfile::tempdir().unwrap();
        {
            let db = redb::Database::create(dir.path().join("raft.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut log = txn.open_table(LOG).unwrap();
                for i in 6..=9 {
                    log.insert(i, postcard::to_allocvec(&entry(2, i)).unwrap().as_slice()).unwrap();
                }
                let mut meta = txn.open_table(META).unwrap();
                meta.insert("vote", postcard::to_allocvec(&Vote::<u64>::new_committed(2, 1)).unwrap().as_slice()).unwrap();
                meta.insert("last_purged", postcard::to_allocvec(&entry(2, 5).log_id).unwrap().as_slice()).unwrap();
                meta.insert("committed", postcard::to_allocvec(&Some(entry(2, 8).log_id)).unwrap().as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let mut log = LogStore::open(dir.path()).unwrap();
        assert!(!dir.path().join("raft.redb").exists());
        assert!(dir.path().join("raft.redb.migrated").exists());
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new_committed(2, 1)));
        assert_eq!(log.read_committed().await.unwrap(), Some(entry(2, 8).log_id));
        let state = log.get_log_state().await.unwrap();
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(entry(2, 5).log_id), Some(entry(2, 9).log_id)));
        let got: Vec<Entry> = log.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![6, 7, 8, 9]);
        drop(log);
        // Once only: the next start uses the new log alone.
        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(entry(2, 9).log_id));
    }
}

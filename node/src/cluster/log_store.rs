//! The Raft log, vote and commit index in one redb file in the node's data directory. Every
//! write transaction is durable when it commits (redb's default), which is what openraft asks
//! of `append` and `save_vote`; writes run on the blocking pool so the node's threads never wait
//! on fsync.

// openraft's traits return its StorageError, which is large; errors are rare (disk failure) and
// boxing would only convert back at every trait boundary.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::types::{Entry, LogId, StorageError, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";

/// The log store; cheap to clone (readers share the database).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

impl LogStore {
    /// Opens (or creates) `raft.redb` in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join("raft.redb"))?;
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(LogStore { db: Arc::new(db) })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let t = txn.open_table(META).map_err(read_err)?;
        match t.get(key).map_err(read_err)? {
            Some(v) => postcard::from_bytes(v.value()).map(Some).map_err(read_err),
            None => Ok(None),
        }
    }

    async fn put_meta<T: serde::Serialize>(&self, key: &'static str, value: &T) -> Result<(), StorageError> {
        let bytes = postcard::to_allocvec(value).map_err(write_err)?;
        let db = self.db.clone();
        run_blocking(move || {
            let txn = db.begin_write().map_err(write_err)?;
            txn.open_table(META).map_err(write_err)?.insert(key, bytes.as_slice()).map_err(write_err)?;
            txn.commit().map_err(write_err)
        })
        .await
    }

    /// Entries of `range`, as stored.
    fn read_range(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let t = txn.open_table(LOG).map_err(read_err)?;
        let mut out = Vec::new();
        for item in t.range::<u64>(range).map_err(read_err)? {
            let (_, v) = item.map_err(read_err)?;
            out.push(postcard::from_bytes(v.value()).map_err(read_err)?);
        }
        Ok(out)
    }
}

/// Runs a redb write on the blocking pool.
async fn run_blocking<F>(f: F) -> Result<(), StorageError>
where
    F: FnOnce() -> Result<(), StorageError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(write_err)?
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
        let last_purged: Option<LogId> = self.get_meta(PURGED)?;
        let last = {
            let txn = self.db.begin_read().map_err(read_err)?;
            let t = txn.open_table(LOG).map_err(read_err)?;
            let last = t.last().map_err(read_err)?;
            let id = match last {
                Some((_, v)) => Some(postcard::from_bytes::<Entry>(v.value()).map_err(read_err)?.log_id),
                None => None,
            };
            id
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last.or(last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.put_meta(VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta(COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        for e in entries {
            rows.push((e.log_id.index, postcard::to_allocvec(&e).map_err(write_err)?));
        }
        let db = self.db.clone();
        let res = run_blocking(move || {
            let txn = db.begin_write().map_err(write_err)?;
            {
                let mut t = txn.open_table(LOG).map_err(write_err)?;
                for (i, bytes) in &rows {
                    t.insert(*i, bytes.as_slice()).map_err(write_err)?;
                }
            }
            txn.commit().map_err(write_err)
        })
        .await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        run_blocking(move || {
            let txn = db.begin_write().map_err(write_err)?;
            txn.open_table(LOG).map_err(write_err)?.retain_in(log_id.index.., |_, _| false).map_err(write_err)?;
            txn.commit().map_err(write_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = postcard::to_allocvec(&log_id).map_err(write_err)?;
        let db = self.db.clone();
        run_blocking(move || {
            let txn = db.begin_write().map_err(write_err)?;
            txn.open_table(META).map_err(write_err)?.insert(PURGED, bytes.as_slice()).map_err(write_err)?;
            txn.open_table(LOG).map_err(write_err)?.retain_in(..=log_id.index, |_, _| false).map_err(write_err)?;
            txn.commit().map_err(write_err)
        })
        .await
    }
}

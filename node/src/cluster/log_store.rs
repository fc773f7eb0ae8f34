//! The Raft log, vote and commit index in one redb file in the node's data directory. Writes go
//! to one writer thread that commits everything waiting as one durable transaction (group
//! commit: one fsync for many entries, on every node). `append` hands its entries over and
//! reports durability through openraft's callback; entries not yet on disk are served to readers
//! from memory. (openraft 0.9 still waits for that callback before it replicates an entry.)

// openraft's traits return its StorageError, which is large; errors are rare (disk failure) and
// boxing would only convert back at every trait boundary.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::types::{Entry, LogId, StorageError, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";

/// The log store; cheap to clone (readers share the database and the entries in flight).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// Appended, not yet committed to disk: what readers see beside the database.
    pending: Arc<Mutex<BTreeMap<u64, Entry>>>,
    writer: std::sync::mpsc::Sender<Op>,
}

/// Most operations one transaction takes: bounds the latency of the first of them.
const MAX_GROUP: usize = 4096;

/// A write, in the order the writer must apply it.
enum Op {
    Append { rows: Vec<(LogId, Vec<u8>)>, done: LogFlushed<TypeConfig> },
    Truncate { from: u64, done: oneshot::Sender<Result<(), String>> },
    Purge { upto: u64, meta: Vec<u8>, done: oneshot::Sender<Result<(), String>> },
    Meta { key: &'static str, value: Vec<u8>, done: Option<oneshot::Sender<Result<(), String>>> },
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
        let db = Arc::new(db);
        let pending = Arc::new(Mutex::new(BTreeMap::new()));
        let (writer, ops) = std::sync::mpsc::channel();
        let (wdb, wpending) = (db.clone(), pending.clone());
        std::thread::Builder::new().name("raft-log".into()).spawn(move || write_loop(&wdb, &wpending, &ops))?;
        Ok(LogStore { db, pending, writer })
    }

    /// Hands `op` to the writer; an error only if the writer is gone (it never exits first).
    fn submit(&self, op: Op) -> Result<(), StorageError> {
        self.writer.send(op).map_err(|_| write_err(std::io::Error::other("raft log writer stopped")))
    }

    /// Hands `op` to the writer and waits until it is on disk.
    async fn submit_wait(&self, op: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Op) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.submit(op(tx))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(write_err(std::io::Error::other(e))),
            Err(_) => Err(write_err(std::io::Error::other("raft log writer stopped"))),
        }
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
        let value = postcard::to_allocvec(value).map_err(write_err)?;
        self.submit_wait(|done| Op::Meta { key, value, done: Some(done) }).await
    }

    /// Entries of `range`: from disk, and those still on their way there. The pending ones are
    /// read first: an entry the writer commits meanwhile is then found on disk.
    fn read_range(&self, range: impl RangeBounds<u64> + Clone) -> Result<Vec<Entry>, StorageError> {
        let mut out: BTreeMap<u64, Entry> =
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).range(range.clone()).map(|(i, e)| (*i, e.clone())).collect();
        let txn = self.db.begin_read().map_err(read_err)?;
        let t = txn.open_table(LOG).map_err(read_err)?;
        for item in t.range::<u64>(range).map_err(read_err)? {
            let (k, v) = item.map_err(read_err)?;
            if let std::collections::btree_map::Entry::Vacant(slot) = out.entry(k.value()) {
                slot.insert(postcard::from_bytes(v.value()).map_err(read_err)?);
            }
        }
        Ok(out.into_values().collect())
    }
}

/// The writer thread: takes every operation waiting, applies them in order in one transaction,
/// commits once, then answers each.
fn write_loop(db: &Database, pending: &Mutex<BTreeMap<u64, Entry>>, ops: &std::sync::mpsc::Receiver<Op>) {
    while let Ok(first) = ops.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match ops.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        let result = write_group(db, &group).map_err(|e| e.to_string());
        if result.is_err() {
            metrics::counter!("switchboard_errors_total", "kind" => "raft_log_write").increment(1);
        }
        metrics::histogram!("switchboard_raft_log_group_ops").record(group.len() as f64);
        for op in group {
            match op {
                Op::Append { rows, done } => {
                    if result.is_ok() {
                        // Now readable from disk; a newer entry at the same index (after a
                        // truncation) stays pending.
                        let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
                        for (id, _) in &rows {
                            if p.get(&id.index).is_some_and(|e| e.log_id == *id) {
                                p.remove(&id.index);
                            }
                        }
                    }
                    done.log_io_completed(result.clone().map_err(std::io::Error::other));
                }
                Op::Truncate { done, .. } | Op::Purge { done, .. } => {
                    let _ = done.send(result.clone());
                }
                Op::Meta { done, .. } => {
                    if let Some(done) = done {
                        let _ = done.send(result.clone());
                    }
                }
            }
        }
    }
}

fn write_group(db: &Database, group: &[Op]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut log = txn.open_table(LOG)?;
        let mut meta = txn.open_table(META)?;
        for op in group {
            match op {
                Op::Append { rows, .. } => {
                    for (id, bytes) in rows {
                        log.insert(id.index, bytes.as_slice())?;
                    }
                }
                Op::Truncate { from, .. } => log.retain_in(*from.., |_, _| false)?,
                Op::Purge { upto, meta: m, .. } => {
                    meta.insert(PURGED, m.as_slice())?;
                    log.retain_in(..=*upto, |_, _| false)?;
                }
                Op::Meta { key, value, .. } => {
                    meta.insert(*key, value.as_slice())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
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
        let in_flight = self.pending.lock().unwrap_or_else(|p| p.into_inner()).last_key_value().map(|(_, e)| e.log_id);
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
        let last = in_flight.max(last);
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
        // Need not be durable (openraft recovers it from a quorum): it goes with the next group.
        let value = postcard::to_allocvec(&committed).map_err(write_err)?;
        self.submit(Op::Meta { key: COMMITTED, value, done: None })
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
        {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for e in entries {
                rows.push((e.log_id, postcard::to_allocvec(&e).map_err(write_err)?));
                p.insert(e.log_id.index, e);
            }
        }
        // Durable when the writer calls back; openraft goes on meanwhile.
        self.submit(Op::Append { rows, done: callback })
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).split_off(&log_id.index);
        self.submit_wait(|done| Op::Truncate { from: log_id.index, done }).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let meta = postcard::to_allocvec(&log_id).map_err(write_err)?;
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).retain(|i, _| *i > log_id.index);
        self.submit_wait(|done| Op::Purge { upto: log_id.index, meta, done }).await
    }
}

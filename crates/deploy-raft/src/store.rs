//! The RocksDB log store and state machine of one group on one node.
//!
//! Follows openraft's `stores/rocksstore-v2` at v0.9.25: logs, vote and metadata live in
//! RocksDB column families; an append is acknowledged only after the WAL is flushed to disk,
//! and a vote is durable before `save_vote` returns.
//!
//! Appends commit as a group: `append` writes its entries (readable at once) and hands the
//! acknowledgement to a sync thread, which syncs the WAL once for every append queued since
//! its last sync and then acknowledges them all, in order. openraft keeps appending and
//! replicating meanwhile, so one fsync covers many client writes under load, and a write is
//! still never acknowledged before it is on disk. The state machine ([`crate::state_machine`])
//! is kept in memory and persisted by snapshot files; the committed log id is saved too, so on
//! restart openraft re-applies the committed tail from the log and a node recovers its full
//! state from its own disk.
//!
//! Every record is in the binary, versioned format of [`crate::codec`], and the store itself
//! records the format it was written in: a build that does not know it refuses to open the
//! store, names the version, and changes nothing.
//!
//! Unlike the example, nothing here unwraps data read from disk: a corrupt record is a
//! `StorageError`, which openraft treats as fatal for the group rather than the process.

// openraft's storage traits fix the error type; its size is not ours to choose.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, DB};
use serde::Serialize;

use crate::codec;
pub use crate::state_machine::{StateMachineData, StateMachineStore, StateReader};
use crate::types::{GroupTypes, NodeId};
pub(crate) type StorageResult<T> = Result<T, StorageError<NodeId>>;

const CF_META: &str = "meta";
const CF_LOGS: &str = "logs";
pub(crate) const CF_SM: &str = "sm";
const KEY_VOTE: &str = "vote";
const KEY_LAST_PURGED: &str = "last_purged_log_id";
const KEY_COMMITTED: &str = "committed";
/// The record format the store was written in: one byte, [`codec::FORMAT_VERSION`].
const KEY_FORMAT: &str = "format";

/// Opens (or creates) the store of one group in `dir`: RocksDB in `dir`, snapshot files in
/// `dir/snapshots`.
pub fn open<C: GroupTypes>(
    dir: &Path,
) -> Result<(LogStore<C>, StateMachineStore<C>), StorageError<NodeId>> {
    let mut opts = db_options();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = [CF_META, CF_LOGS, CF_SM, crate::history::CF_HISTORY]
        .map(|name| ColumnFamilyDescriptor::new(name, opts.clone()));
    let db = DB::open_cf_descriptors(&opts, dir, cfs)
        .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, &e))?;
    let db = Arc::new(db);
    check_format(&db)?;
    let sm = StateMachineStore::restore(db.clone(), dir)?;
    let sync = start_syncer(&db).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
    Ok((LogStore { db, sync }, sm))
}

/// The block cache of one group's database. Index and filter blocks are charged to it too, so
/// what RocksDB keeps in memory to read its files does not grow with the history on disk.
pub const BLOCK_CACHE_BYTES: usize = 16 << 20;
/// One memtable of one column family: it is flushed to a file when it reaches this.
pub const WRITE_BUFFER_BYTES: usize = 8 << 20;
/// All memtables of one group's database together: past this the largest is flushed.
pub const DB_WRITE_BUFFERS_BYTES: usize = 32 << 20;

/// RocksDB's memory for one group, bounded: at most [`BLOCK_CACHE_BYTES`] of cached blocks
/// (indexes and filters among them) and [`DB_WRITE_BUFFERS_BYTES`] of memtables. RocksDB's
/// defaults give every column family its own 32 MiB cache and 64 MiB memtables, and keep
/// every file's index in memory outside any cache, so a node's memory grew with the history
/// it keeps on disk.
fn db_options() -> Options {
    let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts.set_write_buffer_size(WRITE_BUFFER_BYTES);
    opts.set_db_write_buffer_size(DB_WRITE_BUFFERS_BYTES);
    opts
}

type Acks<C> = std::sync::mpsc::Sender<LogFlushed<C>>;

/// The group-commit thread: waits for an acknowledgement to give, takes every other one queued
/// behind it, syncs the WAL once (which covers every entry written before), then gives them
/// all. It holds the database weakly so that dropping the store closes it, and ends when the
/// last `LogStore` clone is gone.
fn start_syncer<C: GroupTypes>(db: &Arc<DB>) -> std::io::Result<Acks<C>> {
    let (tx, rx) = std::sync::mpsc::channel::<LogFlushed<C>>();
    let db = Arc::downgrade(db);
    std::thread::Builder::new()
        .name("raft-log-sync".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut acks = vec![first];
                acks.extend(rx.try_iter());
                let result = match db.upgrade() {
                    Some(db) => db.flush_wal(true).map_err(|e| e.into_string()),
                    None => Err("the log store was closed".to_string()),
                };
                for ack in acks {
                    ack.log_io_completed(result.clone().map_err(std::io::Error::other));
                }
            }
        })?;
    Ok(tx)
}

/// Refuses a store written in a format this build does not know, before anything reads or
/// writes a record of it; marks a new store with this build's format.
fn check_format(db: &DB) -> StorageResult<()> {
    let meta = cf(db, CF_META)?;
    let found = db
        .get_cf(meta, KEY_FORMAT)
        .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, &e))?;
    match found.as_deref() {
        Some([v]) if *v == codec::FORMAT_VERSION => Ok(()),
        Some(other) => {
            let found = other.first().copied().unwrap_or(0);
            Err(io_err(
                ErrorSubject::Store,
                ErrorVerb::Read,
                &codec::CodecError::UnknownVersion {
                    what: "this store",
                    found,
                },
            ))
        }
        None => {
            db.put_cf(meta, KEY_FORMAT, [codec::FORMAT_VERSION])
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
            db.flush_wal(true)
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))
        }
    }
}

pub(crate) fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: &(impl std::error::Error + 'static),
) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::new(e)),
    }
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> StorageResult<&'a ColumnFamily> {
    db.cf_handle(name).ok_or_else(|| StorageError::IO {
        source: StorageIOError::new(
            ErrorSubject::Store,
            ErrorVerb::Read,
            AnyError::error(format!("column family {name} is missing")),
        ),
    })
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> StorageResult<u64> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StorageError::IO {
        source: StorageIOError::new(
            ErrorSubject::Logs,
            ErrorVerb::Read,
            AnyError::error(format!("log key has {} bytes, expected 8", key.len())),
        ),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// The log and vote of one group.
#[derive(Debug)]
pub struct LogStore<C: GroupTypes> {
    db: Arc<DB>,
    /// Appends waiting for the WAL sync that acknowledges them.
    sync: Acks<C>,
}

// By hand: a derived `Clone` would ask `C: Clone` of the sender's type parameter too.
impl<C: GroupTypes> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            sync: self.sync.clone(),
        }
    }
}

impl<C: GroupTypes> LogStore<C> {
    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        subject: ErrorSubject<NodeId>,
    ) -> StorageResult<Option<T>> {
        let bytes = self
            .db
            .get_cf(cf(&self.db, CF_META)?, key)
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, &e))?;
        bytes
            .map(|b| {
                codec::decode(key_what(key), &b)
                    .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, &e))
            })
            .transpose()
    }

    fn put_meta<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> StorageResult<()> {
        let bytes = codec::encode(key_what(key), value)
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Write, &e))?;
        self.db
            .put_cf(cf(&self.db, CF_META)?, key, bytes)
            .map_err(|e| io_err(subject, ErrorVerb::Write, &e))
    }

    fn flush(&self, subject: ErrorSubject<NodeId>) -> StorageResult<()> {
        self.db
            .flush_wal(true)
            .map_err(|e| io_err(subject, ErrorVerb::Write, &e))
    }
}

fn key_what(key: &str) -> &'static str {
    match key {
        KEY_VOTE => "stored vote",
        KEY_LAST_PURGED => "stored last purged log id",
        KEY_COMMITTED => "stored committed log id",
        _ => "stored metadata",
    }
}

/// The most one AppendEntries carries, in encoded entry bytes (one entry more if the first is
/// larger). openraft gives each AppendEntries one heartbeat interval to be sent, appended and
/// answered, and sends nothing else to that follower meanwhile, heartbeats included. Without a
/// bound, the range behind a slow follower grows with every write, each try times out, and the
/// follower hears nothing until it stands for election (issue 20: 256 writes of 64 KiB cost
/// elections this way). A bounded read makes openraft send the rest at once in the next
/// AppendEntries, so each one is small enough to arrive within the interval.
pub const MAX_APPEND_BYTES: usize = 512 * 1024;

impl<C: GroupTypes> LogStore<C> {
    /// The entries in `range`, in order, stopping once `max_bytes` of encoded entries are read
    /// (never before the first).
    fn read_entries<RB: RangeBounds<u64>>(
        &self,
        range: RB,
        max_bytes: usize,
    ) -> StorageResult<Vec<openraft::Entry<C>>> {
        let start = match range.start_bound() {
            std::ops::Bound::Included(x) => *x,
            std::ops::Bound::Excluded(x) => x.saturating_add(1),
            std::ops::Bound::Unbounded => 0,
        };
        let start = index_key(start);
        let mut out = Vec::new();
        let read_err = |e: &dyn std::fmt::Display| StorageError::IO {
            source: StorageIOError::new(
                ErrorSubject::Logs,
                ErrorVerb::Read,
                AnyError::error(e.to_string()),
            ),
        };
        let mut bytes = 0usize;
        for item in self.db.iterator_cf(
            cf(&self.db, CF_LOGS)?,
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (key, value) = item.map_err(|e| read_err(&e))?;
            let index = key_index(&key)?;
            if !range.contains(&index) || (!out.is_empty() && bytes >= max_bytes) {
                break;
            }
            bytes = bytes.saturating_add(value.len());
            let entry: openraft::Entry<C> =
                codec::decode("stored log entry", &value).map_err(|e| read_err(&e))?;
            if entry.log_id.index != index {
                return Err(read_err(&format!(
                    "log entry under key {index} has index {}",
                    entry.log_id.index
                )));
            }
            out.push(entry);
        }
        Ok(out)
    }
}

impl<C: GroupTypes> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<openraft::Entry<C>>> {
        self.read_entries(range, usize::MAX)
    }

    /// What replication sends: at most [`MAX_APPEND_BYTES`] at a time.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> StorageResult<Vec<openraft::Entry<C>>> {
        self.read_entries(start..end, MAX_APPEND_BYTES)
    }
}

impl<C: GroupTypes> RaftLogStorage<C> for LogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<C>> {
        let last = match self
            .db
            .iterator_cf(cf(&self.db, CF_LOGS)?, IteratorMode::End)
            .next()
        {
            None => None,
            Some(item) => {
                let (_, value) =
                    item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
                let entry: openraft::Entry<C> = codec::decode("stored log entry", &value)
                    .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
                Some(entry.log_id)
            }
        };
        let last_purged_log_id: Option<LogId<NodeId>> =
            self.get_meta(KEY_LAST_PURGED, ErrorSubject::Store)?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.put_meta(KEY_VOTE, vote, ErrorSubject::Vote)?;
        // A vote must survive a crash: a node that forgot its vote could vote twice in a term.
        self.flush(ErrorSubject::Vote)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_meta(KEY_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not flushed: losing it only means re-learning the commit index from the leader.
        self.put_meta(KEY_COMMITTED, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self
            .get_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED, ErrorSubject::Store)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> StorageResult<()>
    where
        I: IntoIterator<Item = openraft::Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let logs = cf(&self.db, CF_LOGS)?;
        let mut batch = rocksdb::WriteBatch::default();
        for entry in entries {
            let bytes = codec::encode("log entry", &entry)
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
            batch.put_cf(logs, index_key(entry.log_id.index), bytes);
        }
        // Written, so readable now; acknowledged only once on disk, by the sync thread: this
        // is the durability promise of the whole log.
        self.db
            .write(batch)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        if let Err(std::sync::mpsc::SendError(callback)) = self.sync.send(callback) {
            // The sync thread is gone (it never exits while a store lives): sync here.
            self.flush(ErrorSubject::Logs)?;
            callback.log_io_completed(Ok(()));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        tracing::debug!(%log_id, "truncate log from");
        self.db
            .delete_range_cf(
                cf(&self.db, CF_LOGS)?,
                index_key(log_id.index),
                index_key(u64::MAX),
            )
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        // The last key itself is outside delete_range's half-open range.
        self.db
            .delete_cf(cf(&self.db, CF_LOGS)?, index_key(u64::MAX))
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        self.flush(ErrorSubject::Logs)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        tracing::debug!(%log_id, "purge log up to");
        // Record the purge point first: entries at or before it are ignored from then on, so
        // a crash between the two writes leaves a consistent store.
        self.put_meta(KEY_LAST_PURGED, &log_id, ErrorSubject::Store)?;
        self.db
            .delete_range_cf(
                cf(&self.db, CF_LOGS)?,
                index_key(0),
                index_key(log_id.index.saturating_add(1)),
            )
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, &e))
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{EntryPayload, RaftSnapshotBuilder};
    use tempfile::TempDir;

    use super::*;

    use crate::types::{GlobalTypes, RegionTypes};

    struct Builder;

    impl<C: GroupTypes> StoreBuilder<C, LogStore<C>, StateMachineStore<C>, TempDir> for Builder {
        async fn build(&self) -> StorageResult<(TempDir, LogStore<C>, StateMachineStore<C>)> {
            let dir =
                TempDir::new().map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
            let (log, sm) = open::<C>(dir.path())?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's storage conformance suite on our RocksDB store, for both kinds of group.
    #[test]
    fn openraft_storage_suite() -> StorageResult<()> {
        Suite::<GlobalTypes, _, _, _, _>::test_all(Builder)?;
        Suite::<RegionTypes, _, _, _, _>::test_all(Builder)
    }

    /// A snapshot of 40,000 builds (more than one record may hold, were it one record) is
    /// written as a file and restored from it after a restart.
    #[tokio::test]
    async fn a_large_snapshot_is_restored_from_its_file() -> StorageResult<()> {
        use deploy_state::{BuildCommand, GlobalCommand as Command};
        let dir = TempDir::new().map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        let leader = openraft::CommittedLeaderId::new(1, 7);
        let builds = 40_000u64;
        let before = {
            let (_log, mut sm) = open::<GlobalTypes>(dir.path())?;
            // Each build submitted, then cancelled: the queue stays under its bound while
            // the state (every build, with its history) grows.
            let entries = (1..=builds).flat_map(|i| {
                let submit = Command::Build(BuildCommand::Submit {
                    service: "web".into(),
                    repo: "https://example.com/a-repository-with-a-long-enough-name.git".into(),
                    commit: format!("{i:040x}"),
                    now_ms: i,
                    by: None,
                    max_queued: None,
                });
                let cancel = Command::Build(BuildCommand::Cancel {
                    id: format!("b-{i}"),
                    now_ms: i,
                    by: None,
                });
                [(2 * i - 1, submit), (2 * i, cancel)].map(|(index, cmd)| openraft::Entry::<
                    GlobalTypes,
                > {
                    log_id: LogId::new(leader, index),
                    payload: EntryPayload::Normal(cmd),
                })
            });
            sm.apply(entries).await?;
            let snap = sm.get_snapshot_builder().await.build_snapshot().await?;
            let len = std::fs::metadata(snap.snapshot.path())
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, &e))?
                .len();
            assert!(len > 1_000_000, "snapshot file of {len} bytes");
            sm.reader().read(|d| d.state.clone())
        };
        let (_log, mut sm) = open::<GlobalTypes>(dir.path())?;
        let (applied, _) = sm.applied_state().await?;
        assert_eq!(applied.map(|l| l.index), Some(2 * builds));
        assert_eq!(
            sm.reader().read(|d| d.state.builds.by_seq.len()) as u64,
            builds
        );
        assert!(
            sm.reader().read(|d| d.state == before),
            "restored state differs"
        );
        Ok(())
    }

    /// A store written in a format this build does not know is refused by name, and nothing
    /// in it changes: a build that knows the format opens it as it was.
    #[tokio::test]
    async fn a_store_of_an_unknown_format_is_refused_and_kept() -> StorageResult<()> {
        let dir = TempDir::new().map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        {
            let (mut log, _sm) = open::<GlobalTypes>(dir.path())?;
            log.save_vote(&Vote::new(4, 2)).await?;
        }
        let set_format = |v: u8| -> StorageResult<()> {
            let cfs = [CF_META, CF_LOGS, CF_SM, crate::history::CF_HISTORY];
            let db = DB::open_cf(&Options::default(), dir.path(), cfs)
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
            db.put_cf(cf(&db, CF_META)?, KEY_FORMAT, [v])
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))
        };
        set_format(codec::FORMAT_VERSION + 1)?;
        let err = open::<GlobalTypes>(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains(&format!(
                "format version {} is not one this build knows",
                codec::FORMAT_VERSION + 1
            )),
            "error was: {err}"
        );
        // Refused twice over: the refusal itself changed nothing.
        assert!(open::<GlobalTypes>(dir.path()).is_err());
        set_format(codec::FORMAT_VERSION)?;
        let (mut log, _sm) = open::<GlobalTypes>(dir.path())?;
        assert_eq!(log.read_vote().await?, Some(Vote::new(4, 2)));
        Ok(())
    }

    #[tokio::test]
    async fn state_and_vote_survive_reopen() -> StorageResult<()> {
        use deploy_state::{RegionalCommand as Command, StateMachine};
        let dir = TempDir::new().map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        let leader = openraft::CommittedLeaderId::new(1, 7);
        let entry = |index, key: &str| openraft::Entry::<RegionTypes> {
            log_id: LogId::new(leader, index),
            payload: EntryPayload::Normal(Command::SetMeta {
                key: key.into(),
                value: Some("v".into()),
            }),
        };
        {
            let (mut log, mut sm) = open::<RegionTypes>(dir.path())?;
            log.save_vote(&Vote::new(3, 7)).await?;
            sm.apply([entry(1, "a"), entry(2, "b")]).await?;
            sm.get_snapshot_builder().await.build_snapshot().await?;
            sm.apply([entry(3, "c")]).await?;
        }
        let (mut log, mut sm) = open::<RegionTypes>(dir.path())?;
        assert_eq!(log.read_vote().await?, Some(Vote::new(3, 7)));
        // The snapshot is what persists the state machine; entry 3 is re-applied from the log.
        let (applied, _) = sm.applied_state().await?;
        assert_eq!(applied.map(|l| l.index), Some(2));
        assert!(sm.reader().read(|d| d.state.get_meta("b").is_some()));
        Ok(())
    }

    /// Replication reads at most `MAX_APPEND_BYTES` at a time (plus the entry that crosses
    /// it), and always at least one entry, however large; a plain read takes the whole range.
    #[tokio::test]
    async fn replication_reads_the_log_in_bounded_pieces() -> StorageResult<()> {
        use deploy_state::RegionalCommand as Command;
        let dir = TempDir::new().map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        let (mut log, _sm) = open::<RegionTypes>(dir.path())?;
        let leader = openraft::CommittedLeaderId::new(1, 7);
        let value_bytes = |index: u64| {
            if index == 9 {
                3 * MAX_APPEND_BYTES
            } else {
                200 * 1024
            }
        };
        for index in 1..=12u64 {
            let entry = openraft::Entry::<RegionTypes> {
                log_id: LogId::new(leader, index),
                payload: EntryPayload::Normal(Command::SetMeta {
                    key: format!("k{index}"),
                    value: Some("v".repeat(value_bytes(index))),
                }),
            };
            let bytes = codec::encode("log entry", &entry)
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
            log.db
                .put_cf(cf(&log.db, CF_LOGS)?, index_key(index), bytes)
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        }
        let indexes = |entries: Vec<openraft::Entry<RegionTypes>>| {
            entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>()
        };
        // 200 KiB entries: the third crosses 512 KiB and ends the piece.
        assert_eq!(
            indexes(log.limited_get_log_entries(1, 13).await?),
            [1, 2, 3]
        );
        assert_eq!(
            indexes(log.limited_get_log_entries(4, 13).await?),
            [4, 5, 6]
        );
        assert_eq!(
            indexes(log.limited_get_log_entries(7, 13).await?),
            [7, 8, 9]
        );
        // An entry larger than the bound still goes, alone.
        assert_eq!(indexes(log.limited_get_log_entries(9, 13).await?), [9]);
        // The end of the range bounds it too.
        assert_eq!(
            indexes(log.limited_get_log_entries(10, 12).await?),
            [10, 11]
        );
        assert_eq!(log.try_get_log_entries(1..13).await?.len(), 12);
        Ok(())
    }
}

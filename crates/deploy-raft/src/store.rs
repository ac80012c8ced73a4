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
//! still never acknowledged before it is on disk. The state machine is kept in memory and
//! persisted by snapshots; the committed log id is saved too, so on restart openraft re-applies
//! the committed tail from the log and a node recovers its full state from its own disk.
//!
//! Unlike the example, nothing here unwraps data read from disk: a corrupt record is a
//! `StorageError`, which openraft treats as fatal for the group rather than the process.

// openraft's storage traits fix the error type; its size is not ours to choose.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use deploy_state::{GroupState, Response};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, DB};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::types::{DeployNode, NodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;
type StorageResult<T> = Result<T, StorageError<NodeId>>;

const CF_META: &str = "meta";
const CF_LOGS: &str = "logs";
const CF_SM: &str = "sm";
const KEY_VOTE: &str = "vote";
const KEY_LAST_PURGED: &str = "last_purged_log_id";
const KEY_COMMITTED: &str = "committed";
const KEY_SNAPSHOT: &str = "snapshot";

/// Opens (or creates) the store of one group in `dir`.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StorageError<NodeId>> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs =
        [CF_META, CF_LOGS, CF_SM].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = DB::open_cf_descriptors(&opts, dir, cfs)
        .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, &e))?;
    let db = Arc::new(db);
    let sm = StateMachineStore::restore(db.clone())?;
    let sync = start_syncer(&db).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
    Ok((LogStore { db, sync }, sm))
}

type Acks = std::sync::mpsc::Sender<LogFlushed<TypeConfig>>;

/// The group-commit thread: waits for an acknowledgement to give, takes every other one queued
/// behind it, syncs the WAL once (which covers every entry written before), then gives them
/// all. It holds the database weakly so that dropping the store closes it, and ends when the
/// last `LogStore` clone is gone.
fn start_syncer(db: &Arc<DB>) -> std::io::Result<Acks> {
    let (tx, rx) = std::sync::mpsc::channel::<LogFlushed<TypeConfig>>();
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

fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: &(impl std::error::Error + 'static),
) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::new(e)),
    }
}

fn cf<'a>(db: &'a DB, name: &str) -> StorageResult<&'a ColumnFamily> {
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
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<DB>,
    /// Appends waiting for the WAL sync that acknowledges them.
    sync: Acks,
}

impl LogStore {
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

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry>> {
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
        for item in self.db.iterator_cf(
            cf(&self.db, CF_LOGS)?,
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (key, value) = item.map_err(|e| read_err(&e))?;
            let index = key_index(&key)?;
            if !range.contains(&index) {
                break;
            }
            let entry: Entry =
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

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last = match self
            .db
            .iterator_cf(cf(&self.db, CF_LOGS)?, IteratorMode::End)
            .next()
        {
            None => None,
            Some(item) => {
                let (_, value) =
                    item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
                let entry: Entry = codec::decode("stored log entry", &value)
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

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
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

/// What the state machine holds: the pure group state plus openraft's bookkeeping.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StateMachineData {
    pub last_applied: Option<LogId<NodeId>>,
    pub last_membership: StoredMembership<NodeId, DeployNode>,
    pub state: GroupState,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, DeployNode>,
    data: Vec<u8>,
}

/// A read handle on a group's applied state, shared with the API layer.
#[derive(Debug, Clone)]
pub struct StateReader(Arc<RwLock<StateMachineData>>);

impl StateReader {
    /// Runs `f` on the applied state. Keep `f` short: applying waits while it runs.
    pub fn read<T>(&self, f: impl FnOnce(&StateMachineData) -> T) -> T {
        let guard = self.0.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }
}

/// The state machine of one group: applied in memory, persisted by snapshots.
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    db: Arc<DB>,
    data: Arc<RwLock<StateMachineData>>,
}

impl StateMachineStore {
    fn restore(db: Arc<DB>) -> StorageResult<Self> {
        let store = Self {
            db,
            data: Arc::default(),
        };
        if let Some(snap) = store.read_stored_snapshot()? {
            let data: StateMachineData = codec::decode_snapshot("stored snapshot data", &snap.data)
                .map_err(|e| {
                    io_err(
                        ErrorSubject::Snapshot(Some(snap.meta.signature())),
                        ErrorVerb::Read,
                        &e,
                    )
                })?;
            *store.write() = data;
        }
        Ok(store)
    }

    pub fn reader(&self) -> StateReader {
        StateReader(self.data.clone())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, StateMachineData> {
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read_stored_snapshot(&self) -> StorageResult<Option<StoredSnapshot>> {
        let subject = || ErrorSubject::Snapshot(None);
        let bytes = self
            .db
            .get_cf(cf(&self.db, CF_SM)?, KEY_SNAPSHOT)
            .map_err(|e| io_err(subject(), ErrorVerb::Read, &e))?;
        bytes
            .map(|b| {
                codec::decode_snapshot("stored snapshot", &b)
                    .map_err(|e| io_err(subject(), ErrorVerb::Read, &e))
            })
            .transpose()
    }

    fn save_snapshot(&self, snap: &StoredSnapshot) -> StorageResult<()> {
        let subject = || ErrorSubject::Snapshot(Some(snap.meta.signature()));
        let bytes =
            codec::encode("snapshot", snap).map_err(|e| io_err(subject(), ErrorVerb::Write, &e))?;
        self.db
            .put_cf(cf(&self.db, CF_SM)?, KEY_SNAPSHOT, bytes)
            .map_err(|e| io_err(subject(), ErrorVerb::Write, &e))?;
        self.db
            .flush_wal(true)
            .map_err(|e| io_err(subject(), ErrorVerb::Write, &e))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (data, last_applied, last_membership) = {
            let sm = self.data.read().unwrap_or_else(|p| p.into_inner());
            let data = codec::encode("snapshot data", &*sm)
                .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, &e))?;
            (data, sm.last_applied, sm.last_membership.clone())
        };
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{stamp}", l.leader_id, l.index),
            None => format!("--{stamp}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership,
            snapshot_id,
        };
        self.save_snapshot(&StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        })?;
        tracing::info!(snapshot_id = %meta.snapshot_id, bytes = data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, DeployNode>)> {
        let sm = self.data.read().unwrap_or_else(|p| p.into_inner());
        Ok((sm.last_applied, sm.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut sm = self.write();
        let mut out = Vec::new();
        for entry in entries {
            sm.last_applied = Some(entry.log_id);
            let resp = match entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(cmd) => sm.state.apply(&cmd),
                EntryPayload::Membership(m) => {
                    sm.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::None
                }
            };
            out.push(resp);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, DeployNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let new: StateMachineData =
            codec::decode_snapshot("received snapshot", &data).map_err(|e| {
                io_err(
                    ErrorSubject::Snapshot(Some(meta.signature())),
                    ErrorVerb::Read,
                    &e,
                )
            })?;
        // Persist before switching, so a crash never leaves a state that no snapshot backs.
        self.save_snapshot(&StoredSnapshot {
            meta: meta.clone(),
            data,
        })?;
        tracing::info!(snapshot_id = %meta.snapshot_id, "installed snapshot");
        *self.write() = new;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.read_stored_snapshot()?.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};
    use tempfile::TempDir;

    use super::*;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
        async fn build(&self) -> StorageResult<(TempDir, LogStore, StateMachineStore)> {
            let dir =
                TempDir::new().map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
            let (log, sm) = open(dir.path())?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's storage conformance suite on our RocksDB store.
    #[test]
    fn openraft_storage_suite() -> StorageResult<()> {
        Suite::test_all(Builder)
    }

    /// A snapshot larger than one record (its stored form holds the state as a JSON array of
    /// bytes, several times the state's size) is still restored after a restart.
    #[tokio::test]
    async fn a_snapshot_over_the_record_bound_is_restored() -> StorageResult<()> {
        use deploy_state::{BuildCommand, Command};
        let dir = TempDir::new().map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        let leader = openraft::CommittedLeaderId::new(1, 7);
        let builds = 40_000u64;
        {
            let (_log, mut sm) = open(dir.path())?;
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
                    TypeConfig,
                > {
                    log_id: LogId::new(leader, index),
                    payload: EntryPayload::Normal(cmd),
                })
            });
            sm.apply(entries).await?;
            sm.get_snapshot_builder().await.build_snapshot().await?;
            let stored = sm
                .db
                .get_cf(cf(&sm.db, CF_SM)?, KEY_SNAPSHOT)
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, &e))?
                .map(|b| b.len())
                .unwrap_or(0);
            assert!(
                stored > codec::MAX_RECORD_BYTES,
                "stored snapshot of {stored} bytes"
            );
        }
        let (_log, mut sm) = open(dir.path())?;
        let (applied, _) = sm.applied_state().await?;
        assert_eq!(applied.map(|l| l.index), Some(2 * builds));
        assert_eq!(
            sm.reader().read(|d| d.state.builds.by_seq.len()) as u64,
            builds
        );
        Ok(())
    }

    #[tokio::test]
    async fn state_and_vote_survive_reopen() -> StorageResult<()> {
        use deploy_state::Command;
        let dir = TempDir::new().map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        let leader = openraft::CommittedLeaderId::new(1, 7);
        let entry = |index, key: &str| openraft::Entry::<TypeConfig> {
            log_id: LogId::new(leader, index),
            payload: EntryPayload::Normal(Command::SetMeta {
                key: key.into(),
                value: Some("v".into()),
            }),
        };
        {
            let (mut log, mut sm) = open(dir.path())?;
            log.save_vote(&Vote::new(3, 7)).await?;
            sm.apply([entry(1, "a"), entry(2, "b")]).await?;
            sm.get_snapshot_builder().await.build_snapshot().await?;
            sm.apply([entry(3, "c")]).await?;
        }
        let (mut log, mut sm) = open(dir.path())?;
        assert_eq!(log.read_vote().await?, Some(Vote::new(3, 7)));
        // The snapshot is what persists the state machine; entry 3 is re-applied from the log.
        let (applied, _) = sm.applied_state().await?;
        assert_eq!(applied.map(|l| l.index), Some(2));
        assert!(sm.reader().read(|d| d.state.get_meta("b").is_some()));
        Ok(())
    }
}

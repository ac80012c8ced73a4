//! The state machine of one group: the pure `deploy-state` logic applied in memory, persisted
//! by snapshot files.
//!
//! The state's collections are persistent (copy-on-write) maps, so cloning the whole state is
//! a handful of reference-count bumps. Building a snapshot holds the lock only for that clone;
//! encoding and writing the file happen on a blocking thread while applying goes on. A
//! received snapshot is decoded from its file, off the lock, and swapped in at the end.

// openraft's storage traits fix the error type; its size is not ours to choose.
#![allow(clippy::result_large_err)]

use std::io::{Seek, SeekFrom};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use deploy_state::{Response, StateMachine};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StoredMembership,
};
use rocksdb::DB;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::snapshot::{SnapshotDir, SnapshotFile};
use crate::stats::StoreStats;
pub(crate) use crate::store::StorageResult;
use crate::store::{cf, io_err, CF_SM};
use crate::types::{DeployNode, GroupTypes, NodeId};

const KEY_SNAPSHOT: &str = "snapshot";

/// What the state machine holds: the pure group state plus openraft's bookkeeping.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StateMachineData<S> {
    pub last_applied: Option<LogId<NodeId>>,
    pub last_membership: StoredMembership<NodeId, DeployNode>,
    pub state: S,
}

/// The record naming the current snapshot: its meta and the file that holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, DeployNode>,
    file: String,
}

/// A read handle on a group's applied state and its history, shared with the API layer.
#[derive(Debug, Clone)]
pub struct StateReader<S> {
    data: Arc<RwLock<StateMachineData<S>>>,
    db: Arc<DB>,
    stats: Arc<StoreStats>,
}

impl<S: StateMachine> StateReader<S> {
    /// Runs `f` on the applied state. Keep `f` short: applying waits while it runs.
    pub fn read<T>(&self, f: impl FnOnce(&StateMachineData<S>) -> T) -> T {
        let guard = self.data.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    /// What retention did with build `seq` on this node, if it collected it: the build
    /// (within the history period) or its tombstone.
    pub fn collected_build(
        &self,
        seq: u64,
    ) -> StorageResult<Option<crate::history::HistoryRow<deploy_state::Build>>> {
        crate::history::build(&self.db, seq)
    }

    /// The same for release `seq`.
    pub fn collected_release(
        &self,
        seq: u64,
    ) -> StorageResult<Option<crate::history::HistoryRow<deploy_state::releases::Release>>> {
        crate::history::release(&self.db, seq)
    }

    /// Builds retention collected on this node with a seq below `before`, newest first, read
    /// from disk as the caller iterates (`None`: a tombstone, its record expired).
    #[allow(clippy::type_complexity)]
    pub fn collected_builds_before(
        &self,
        before: u64,
    ) -> StorageResult<
        Box<dyn Iterator<Item = StorageResult<(u64, Option<deploy_state::Build>)>> + '_>,
    > {
        crate::history::builds_before(&self.db, before)
    }

    /// The same for releases.
    #[allow(clippy::type_complexity)]
    pub fn collected_releases_before(
        &self,
        before: u64,
    ) -> StorageResult<
        Box<
            dyn Iterator<Item = StorageResult<(u64, Option<deploy_state::releases::Release>)>> + '_,
        >,
    > {
        crate::history::releases_before(&self.db, before)
    }

    /// What the store measured about itself.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// The applied state as of now, as a cheap copy-on-write clone: for a long read that
    /// must not hold up applying.
    pub fn snapshot(&self) -> StateMachineData<S> {
        self.read(Clone::clone)
    }
}

/// The state machine of one group.
#[derive(Debug, Clone)]
pub struct StateMachineStore<C: GroupTypes> {
    db: Arc<DB>,
    data: Arc<RwLock<StateMachineData<C::State>>>,
    snapshots: Arc<SnapshotDir>,
    /// Serialises replacing the current snapshot, so a slow build never replaces a newer one.
    saving: Arc<Mutex<()>>,
    stats: Arc<StoreStats>,
}

fn snap_err(
    meta: Option<&SnapshotMeta<NodeId, DeployNode>>,
    verb: ErrorVerb,
) -> impl Fn(&dyn std::error::Error) -> StorageError<NodeId> + '_ {
    move |e| {
        let subject = ErrorSubject::Snapshot(meta.map(|m| m.signature()));
        StorageError::IO {
            source: openraft::StorageIOError::new(
                subject,
                verb,
                openraft::AnyError::error(e.to_string()),
            ),
        }
    }
}

impl<C: GroupTypes> StateMachineStore<C> {
    pub(crate) fn restore(db: Arc<DB>, group_dir: &std::path::Path) -> StorageResult<Self> {
        let snapshots = SnapshotDir::open(group_dir)
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e))?;
        let store = Self {
            db,
            data: Arc::default(),
            snapshots: Arc::new(snapshots),
            saving: Arc::default(),
            stats: Arc::default(),
        };
        if let Some(stored) = store.read_stored()? {
            let err = snap_err(Some(&stored.meta), ErrorVerb::Read);
            let (file, _, len) = store
                .snapshots
                .open_file(&stored.file)
                .map_err(|e| err(&e))?;
            let data: StateMachineData<C::State> =
                codec::read_snapshot("stored snapshot", file, len).map_err(|e| err(&e))?;
            *store.write() = data;
            store.stats.snapshot(len, std::time::Duration::ZERO);
        }
        Ok(store)
    }

    pub fn reader(&self) -> StateReader<C::State> {
        StateReader {
            data: self.data.clone(),
            db: self.db.clone(),
            stats: self.stats.clone(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, StateMachineData<C::State>> {
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read_stored(&self) -> StorageResult<Option<StoredSnapshot>> {
        let err = snap_err(None, ErrorVerb::Read);
        let bytes = self
            .db
            .get_cf(cf(&self.db, CF_SM)?, KEY_SNAPSHOT)
            .map_err(|e| err(&e))?;
        bytes
            .map(|b| codec::decode("stored snapshot record", &b).map_err(|e| err(&e)))
            .transpose()
    }

    /// Makes the finished temporary file `temp` the current snapshot, unless the current one
    /// is already as new (then `temp` is removed).
    fn save(
        &self,
        meta: &SnapshotMeta<NodeId, DeployNode>,
        file: &std::fs::File,
        temp: &std::path::Path,
    ) -> StorageResult<()> {
        let err = snap_err(Some(meta), ErrorVerb::Write);
        let _saving = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = self.read_stored()? {
            if current.meta.last_log_id >= meta.last_log_id
                && current.meta.snapshot_id != meta.snapshot_id
            {
                return std::fs::remove_file(temp).map_err(|e| err(&e));
            }
        }
        let name = SnapshotDir::final_name(&meta.snapshot_id).map_err(|e| err(&e))?;
        self.snapshots
            .finish(file, temp, &name)
            .map_err(|e| err(&e))?;
        let record = codec::encode(
            "snapshot record",
            &StoredSnapshot {
                meta: meta.clone(),
                file: name.clone(),
            },
        )
        .map_err(|e| err(&e))?;
        self.db
            .put_cf(cf(&self.db, CF_SM)?, KEY_SNAPSHOT, record)
            .map_err(|e| err(&e))?;
        self.db.flush_wal(true).map_err(|e| err(&e))?;
        self.snapshots.remove_all_but(&name).map_err(|e| err(&e))
    }

    fn open_current(&self) -> StorageResult<Option<Snapshot<C>>> {
        let Some(stored) = self.read_stored()? else {
            return Ok(None);
        };
        let opened = self.snapshots.open_file(&stored.file);
        let (file, path, _) =
            opened.map_err(|e| snap_err(Some(&stored.meta), ErrorVerb::Read)(&e))?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(SnapshotFile::new(file, path)),
        }))
    }
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> StorageResult<T> + Send + 'static,
) -> StorageResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        io_err(
            ErrorSubject::StateMachine,
            ErrorVerb::Write,
            &std::io::Error::other(e),
        )
    })?
}

impl<C: GroupTypes> RaftSnapshotBuilder<C> for StateMachineStore<C> {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<C>> {
        // The only time the lock is held: a copy-on-write clone of the state.
        let started = Instant::now();
        let data = self.reader().snapshot();
        let held = started.elapsed();
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let snapshot_id = match data.last_applied {
            Some(l) => format!(
                "{}-{}-{}-{stamp}",
                l.leader_id.term, l.leader_id.node_id, l.index
            ),
            None => format!("0-0-0-{stamp}"),
        };
        let meta = SnapshotMeta {
            last_log_id: data.last_applied,
            last_membership: data.last_membership.clone(),
            snapshot_id,
        };
        let this = self.clone();
        let built = meta.clone();
        let len = blocking(move || {
            let err = snap_err(Some(&built), ErrorVerb::Write);
            let (file, temp) = this.snapshots.temp("building").map_err(|e| err(&e))?;
            let mut out = std::io::BufWriter::with_capacity(1024 * 1024, file);
            out = codec::write_snapshot("snapshot", &data, out).map_err(|e| err(&e))?;
            let file = out.into_inner().map_err(|e| err(e.error()))?;
            let len = file.metadata().map_err(|e| err(&e))?.len();
            this.save(&built, &file, &temp)?;
            Ok(len)
        })
        .await?;
        self.stats.snapshot(len, held);
        tracing::info!(snapshot_id = %meta.snapshot_id, bytes = len, lock_held_us = held.as_micros() as u64, "built snapshot");
        // The current one: this snapshot, or a newer one installed meanwhile.
        self.open_current()?.ok_or_else(|| {
            snap_err(Some(&meta), ErrorVerb::Read)(&std::io::Error::other(
                "the built snapshot is gone",
            ))
        })
    }
}

impl<C: GroupTypes> RaftStateMachine<C> for StateMachineStore<C> {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, DeployNode>)> {
        let sm = self.data.read().unwrap_or_else(|p| p.into_inner());
        Ok((sm.last_applied, sm.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = openraft::Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = Instant::now();
        let mut sm = self.write();
        let mut out = Vec::new();
        for entry in entries {
            sm.last_applied = Some(entry.log_id);
            let resp = match entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(cmd) => {
                    let resp = sm.state.apply(&cmd);
                    crate::history::record::<C::State>(&self.db, &cmd, &resp)?;
                    resp
                }
                EntryPayload::Membership(m) => {
                    sm.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::None
                }
            };
            out.push(resp);
        }
        drop(sm);
        self.stats.applied(started.elapsed());
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<SnapshotFile>> {
        let (file, path) = self
            .snapshots
            .temp("receiving")
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, &e))?;
        Ok(Box::new(SnapshotFile::new(file, path)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, DeployNode>,
        snapshot: Box<SnapshotFile>,
    ) -> StorageResult<()> {
        let (file, path) = snapshot.into_std().await;
        let this = self.clone();
        let meta_owned = meta.clone();
        let (new, len) = blocking(move || {
            let meta = &meta_owned;
            let err = snap_err(Some(meta), ErrorVerb::Write);
            // A received file is ours to rename; a handle on someone else's file is copied.
            let (mut file, temp) = if this.snapshots.holds(&path) {
                (file, path)
            } else {
                let mut from = file;
                from.seek(SeekFrom::Start(0)).map_err(|e| err(&e))?;
                let (mut to, temp) = this.snapshots.temp("receiving").map_err(|e| err(&e))?;
                std::io::copy(&mut from, &mut to).map_err(|e| err(&e))?;
                (to, temp)
            };
            let len = file.seek(SeekFrom::End(0)).map_err(|e| err(&e))?;
            file.seek(SeekFrom::Start(0)).map_err(|e| err(&e))?;
            let new: StateMachineData<C::State> =
                codec::read_snapshot("received snapshot", &mut file, len)
                    .map_err(|e| snap_err(Some(meta), ErrorVerb::Read)(&e))?;
            // Persisted before it is switched to, so a crash never leaves a state no
            // snapshot backs.
            this.save(meta, &file, &temp)?;
            Ok((new, len))
        })
        .await?;
        tracing::info!(snapshot_id = %meta.snapshot_id, bytes = len, "installed snapshot");
        self.stats.snapshot(len, std::time::Duration::ZERO);
        *self.write() = new;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<C>>> {
        self.open_current()
    }
}

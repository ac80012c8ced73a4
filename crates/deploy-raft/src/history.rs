//! The on-disk history of what retention removed from the state.
//!
//! Applying a committed [`Collect`] removes finished builds and releases from the in-memory
//! state; the same apply writes them here, in the store's `history` column family, so
//! `build get` and `release get` still answer for them. After the policy's `history_ms` a row shrinks to a tombstone (when it
//! was collected and when it was removed), so the answer becomes "removed by retention on
//! DATE" instead of a bare "not found".
//!
//! Every replica that applies the entry writes the same rows (the collect carries its time
//! and policy). A node that caught up by installing a snapshot skipped those entries and
//! holds no history from before it; the history is a convenience for readers, never an input
//! to applying.
//!
//! Keys: `b` or `r` (build, release) + seq (8 bytes, big-endian) -> [`HistoryRow`]; `t` +
//! collected-at ms + kind + seq -> nothing, an index of the rows still holding a record,
//! oldest first, so expiring them is a range scan. On disk per collected record: its encoding
//! until it expires, then about 30 bytes for its tombstone (about 55 MB a year at 5,000
//! builds a day), never in memory.

// openraft's storage traits fix the error type; its size is not ours to choose.
#![allow(clippy::result_large_err)]

use deploy_state::builds::Build;
use deploy_state::releases::Release;
use deploy_state::retention::{Collect, Collected};
use deploy_state::{Response, StateMachine};
use openraft::{ErrorSubject, ErrorVerb};
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::store::{cf, io_err, StorageResult};

pub(crate) const CF_HISTORY: &str = "history";

/// Rows turned into tombstones by one collect, at most (the rest wait for the next).
const MAX_EXPIRED_PER_COLLECT: usize = 10_000;

const BUILD: u8 = b'b';
const RELEASE: u8 = b'r';

/// One collected record (a build or a release), or its tombstone once the history period
/// ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRow<T> {
    pub collected_at_ms: u64,
    /// When the row became a tombstone.
    pub removed_at_ms: Option<u64>,
    pub record: Option<T>,
}

fn row_key(kind: u8, seq: u64) -> [u8; 9] {
    let mut k = [kind; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn index_key(at_ms: u64, kind: u8, seq: u64) -> [u8; 18] {
    let mut k = [b't'; 18];
    k[1..9].copy_from_slice(&at_ms.to_be_bytes());
    k[9] = kind;
    k[10..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn parse_index_key(key: &[u8]) -> Option<(u64, u8, u64)> {
    if key.len() != 18 || key[0] != b't' {
        return None;
    }
    let at = u64::from_be_bytes(key[1..9].try_into().ok()?);
    let seq = u64::from_be_bytes(key[10..].try_into().ok()?);
    Some((at, key[9], seq))
}

fn write_err(e: &(impl std::error::Error + 'static)) -> openraft::StorageError<crate::NodeId> {
    io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e)
}

/// Writes what applying `cmd` (answered `resp`) collected, and expires old rows. Called with
/// every applied command; only collects (alone or in a batch) write anything.
pub(crate) fn record<S: StateMachine>(
    db: &DB,
    cmd: &S::Command,
    resp: &Response,
) -> StorageResult<()> {
    S::collects(cmd, resp)
        .into_iter()
        .try_for_each(|(c, removed)| record_collect(db, c, removed))
}

fn put_row<T: Serialize>(
    batch: &mut WriteBatch,
    history: &rocksdb::ColumnFamily,
    kind: u8,
    seq: u64,
    row: &HistoryRow<T>,
) -> StorageResult<()> {
    let bytes = codec::encode("history row", row).map_err(|e| write_err(&e))?;
    batch.put_cf(history, row_key(kind, seq), bytes);
    Ok(())
}

fn record_collect(db: &DB, c: &Collect, removed: &Collected) -> StorageResult<()> {
    let history = cf(db, CF_HISTORY)?;
    let mut batch = WriteBatch::default();
    fn row<T>(at_ms: u64, record: T) -> HistoryRow<T> {
        HistoryRow {
            collected_at_ms: at_ms,
            removed_at_ms: None,
            record: Some(record),
        }
    }
    for b in &removed.builds {
        put_row(&mut batch, history, BUILD, b.seq, &row(c.now_ms, b))?;
        batch.put_cf(history, index_key(c.now_ms, BUILD, b.seq), []);
    }
    for r in &removed.releases {
        put_row(&mut batch, history, RELEASE, r.seq, &row(c.now_ms, r))?;
        batch.put_cf(history, index_key(c.now_ms, RELEASE, r.seq), []);
    }
    let cutoff = c.now_ms.saturating_sub(c.history_ms);
    let mode = IteratorMode::From(b"t", Direction::Forward);
    for item in db.iterator_cf(history, mode).take(MAX_EXPIRED_PER_COLLECT) {
        let (key, _) = item.map_err(|e| write_err(&e))?;
        let Some((at_ms, kind, seq)) = parse_index_key(&key) else {
            break;
        };
        if at_ms >= cutoff {
            break;
        }
        // A tombstone holds no record, so its encoding is the same for either kind.
        let tombstone = HistoryRow::<()> {
            collected_at_ms: at_ms,
            removed_at_ms: Some(c.now_ms),
            record: None,
        };
        put_row(&mut batch, history, kind, seq, &tombstone)?;
        batch.delete_cf(history, key);
    }
    db.write(batch).map_err(|e| write_err(&e))
}

fn get<T: DeserializeOwned>(db: &DB, kind: u8, seq: u64) -> StorageResult<Option<HistoryRow<T>>> {
    let bytes = db
        .get_cf(cf(db, CF_HISTORY)?, row_key(kind, seq))
        .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, &e))?;
    bytes
        .map(|b| {
            codec::decode("history row", &b)
                .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, &e))
        })
        .transpose()
}

/// The history row of build `seq`, if retention collected it on this node.
pub(crate) fn build(db: &DB, seq: u64) -> StorageResult<Option<HistoryRow<Build>>> {
    get(db, BUILD, seq)
}

/// The history row of release `seq`, if retention collected it on this node.
pub(crate) fn release(db: &DB, seq: u64) -> StorageResult<Option<HistoryRow<Release>>> {
    get(db, RELEASE, seq)
}

/// History rows, newest first: each seq with its record, or `None` for a tombstone.
pub(crate) type Rows<'a, T> = Box<dyn Iterator<Item = StorageResult<(u64, Option<T>)>> + 'a>;

/// The collected rows of `kind` with a seq below `before`, newest first: each seq with its
/// record, or `None` for a tombstone.
fn rows_before<'a, T: DeserializeOwned + 'a>(
    db: &'a DB,
    kind: u8,
    before: u64,
) -> StorageResult<Rows<'a, T>> {
    let Some(last) = before.checked_sub(1) else {
        return Ok(Box::new(std::iter::empty()));
    };
    let start = row_key(kind, last);
    let read_err = |e: &dyn std::error::Error| {
        io_err(
            ErrorSubject::StateMachine,
            ErrorVerb::Read,
            &std::io::Error::other(e.to_string()),
        )
    };
    let rows = db
        .iterator_cf(
            cf(db, CF_HISTORY)?,
            IteratorMode::From(&start, Direction::Reverse),
        )
        .map(move |item| item.map_err(|e| read_err(&e)))
        .take_while(move |item| {
            item.as_ref()
                .map_or(true, |(k, _)| k.len() == 9 && k[0] == kind)
        })
        .map(move |item| {
            let (key, value) = item?;
            let seq = u64::from_be_bytes(key[1..].try_into().unwrap_or_default());
            let row: HistoryRow<T> =
                codec::decode("history row", &value).map_err(|e| read_err(&e))?;
            Ok((seq, row.record))
        });
    Ok(Box::new(rows))
}

/// Collected builds below `before`, newest first (`None`: a tombstone).
pub(crate) fn builds_before(db: &DB, before: u64) -> StorageResult<Rows<'_, Build>> {
    rows_before(db, BUILD, before)
}

/// Collected releases below `before`, newest first (`None`: a tombstone).
pub(crate) fn releases_before(db: &DB, before: u64) -> StorageResult<Rows<'_, Release>> {
    rows_before(db, RELEASE, before)
}

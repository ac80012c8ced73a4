//! Committed log prefixes, compared offline: once every process has stopped, each node's
//! RocksDB is opened and every entry both members of a group still hold, up to the index
//! both have committed, must be the same entry.

use std::collections::BTreeMap;
use std::path::Path;

use deploy_raft::{store, GlobalTypes, GroupTypes, RegionTypes};
use openraft::storage::{RaftLogReader, RaftLogStorage};

/// What one member's log holds.
pub struct MemberLog {
    pub node: String,
    pub committed: u64,
    pub first: u64,
    pub last: u64,
    /// Index -> the entry's JSON (its log id and payload).
    pub entries: BTreeMap<u64, Vec<u8>>,
}

/// Reads the log of `group` (`global`, `region/<r>`) from a stopped node's data directory.
pub async fn read(node: &str, data_dir: &Path, group: &str) -> anyhow::Result<MemberLog> {
    let dir = data_dir.join(group.replace('/', "-"));
    if group == "global" {
        read_as::<GlobalTypes>(node, &dir).await
    } else {
        read_as::<RegionTypes>(node, &dir).await
    }
}

/// Reads a log whose entries are of group kind `C`.
async fn read_as<C: GroupTypes>(node: &str, dir: &Path) -> anyhow::Result<MemberLog> {
    let (mut log, _sm) = store::open::<C>(dir)
        .map_err(|e| anyhow::anyhow!("{node}: cannot open {}: {e}", dir.display()))?;
    let state = log
        .get_log_state()
        .await
        .map_err(|e| anyhow::anyhow!("{node}: {e}"))?;
    let committed = log
        .read_committed()
        .await
        .map_err(|e| anyhow::anyhow!("{node}: {e}"))?
        .map(|c| c.index)
        .unwrap_or(0);
    let first = state.last_purged_log_id.map(|l| l.index + 1).unwrap_or(0);
    let last = state.last_log_id.map(|l| l.index).unwrap_or(0);
    let entries = log
        .try_get_log_entries(first..=last)
        .await
        .map_err(|e| anyhow::anyhow!("{node}: {e}"))?
        .into_iter()
        .map(|e| (e.log_id.index, serde_json::to_vec(&e).unwrap_or_default()))
        .collect();
    Ok(MemberLog {
        node: node.to_string(),
        committed,
        first,
        last,
        entries,
    })
}

/// How two or more members' logs compare.
#[derive(Debug, Clone, Default)]
pub struct Agreement {
    /// Entries compared across pairs of members.
    pub compared: u64,
    /// The highest index compared.
    pub upto: u64,
    pub disagreements: Vec<String>,
}

/// Compares every pair of members on the indexes both hold and both have committed.
pub fn compare(group: &str, logs: &[MemberLog]) -> Agreement {
    let mut a = Agreement::default();
    for (i, x) in logs.iter().enumerate() {
        for y in &logs[i + 1..] {
            let upto = x.committed.min(y.committed);
            for (index, ex) in x.entries.range(..=upto) {
                let Some(ey) = y.entries.get(index) else {
                    continue;
                };
                a.compared += 1;
                a.upto = a.upto.max(*index);
                if ex != ey {
                    a.disagreements.push(format!(
                        "{group}: {} and {} hold different committed entries at index {index}",
                        x.node, y.node
                    ));
                    break;
                }
            }
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(node: &str, committed: u64, entries: &[(u64, &str)]) -> MemberLog {
        MemberLog {
            node: node.into(),
            committed,
            first: entries.first().map(|e| e.0).unwrap_or(0),
            last: entries.last().map(|e| e.0).unwrap_or(0),
            entries: entries
                .iter()
                .map(|(i, e)| (*i, e.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn committed_prefixes_are_compared_and_uncommitted_tails_are_not() {
        let a = log("a", 3, &[(1, "x"), (2, "y"), (3, "z"), (4, "t1")]);
        let b = log("b", 4, &[(2, "y"), (3, "z"), (4, "t2")]);
        let r = compare("g", &[a, b]);
        assert!(r.disagreements.is_empty(), "{:?}", r.disagreements);
        assert_eq!((r.compared, r.upto), (2, 3));
        let c = log("c", 3, &[(1, "x"), (2, "Y"), (3, "z")]);
        let d = log("d", 3, &[(1, "x"), (2, "y"), (3, "z")]);
        assert_eq!(compare("g", &[c, d]).disagreements.len(), 1);
    }
}

//! `deployd inspect-log`: one group's Raft log, read from a stopped node's data directory and
//! written as JSON lines, so that tools outside the system (the chaos harness's
//! committed-prefix check) compare logs without linking the store.
//!
//! The first line is `{"group", "committed", "first", "last"}`; each next line is
//! `{"index", "entry"}` with the entry as the store decoded it, in index order.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use deploy_raft::{store, GlobalTypes, GroupTypes, RegionTypes};
use openraft::storage::{RaftLogReader, RaftLogStorage};

/// Writes group `group`'s log (`global`, `region/<r>`) of the node whose data directory is
/// `data_dir` to `out`. The node must not be running: RocksDB allows one opener.
pub async fn run(data_dir: &Path, group: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let name: deploy_types::GroupName = group
        .parse()
        .map_err(|e| anyhow::anyhow!("not a group name: {e}"))?;
    let dir = data_dir.join(name.dir_name());
    anyhow::ensure!(
        dir.is_dir(),
        "{} holds no data of group {group} (no directory {})",
        data_dir.display(),
        dir.display()
    );
    if name == deploy_types::GroupName::Global {
        write_log::<GlobalTypes>(&dir, group, out).await
    } else {
        write_log::<RegionTypes>(&dir, group, out).await
    }
}

async fn write_log<C: GroupTypes>(
    dir: &Path,
    group: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (mut log, _sm) =
        store::open::<C>(dir).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", dir.display()))?;
    let state = log.get_log_state().await?;
    let committed = log.read_committed().await?.map(|c| c.index).unwrap_or(0);
    let first = state.last_purged_log_id.map(|l| l.index + 1).unwrap_or(0);
    let last = state.last_log_id.map(|l| l.index).unwrap_or(0);
    let head = serde_json::json!({
        "group": group, "committed": committed, "first": first, "last": last,
    });
    writeln!(out, "{head}")?;
    // In pieces, so a long log is never held whole.
    let mut next = first;
    while next <= last {
        let end = next.saturating_add(1024).min(last.saturating_add(1));
        let entries = log.try_get_log_entries(next..end).await?;
        for e in &entries {
            let line = serde_json::json!({ "index": e.log_id.index, "entry": e });
            writeln!(out, "{line}").context("cannot write the log")?;
        }
        next = end;
    }
    out.flush()?;
    Ok(())
}

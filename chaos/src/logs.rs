//! Committed log prefixes, compared offline: once every process has stopped, each node's log
//! is read by `deployd inspect-log` (the harness links no store), and every entry both
//! members of a group still hold, up to the index both have committed, must be the same entry.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;

/// What one member's log holds.
pub struct MemberLog {
    pub node: String,
    pub committed: u64,
    pub first: u64,
    pub last: u64,
    /// Index -> the entry's JSON (its log id and payload).
    pub entries: BTreeMap<u64, Vec<u8>>,
}

/// Reads the log of `group` (`global`, `region/<r>`) from a stopped node's data directory,
/// through `deployd inspect-log`.
pub async fn read(
    deployd: &Path,
    node: &str,
    data_dir: &Path,
    group: &str,
) -> anyhow::Result<MemberLog> {
    let out = tokio::process::Command::new(deployd)
        .arg("inspect-log")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--group", group])
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("{node}: cannot run {} inspect-log", deployd.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{node}: deployd inspect-log {group} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    parse(node, &out.stdout)
}

/// A member's log from `deployd inspect-log`'s lines.
fn parse(node: &str, text: &[u8]) -> anyhow::Result<MemberLog> {
    let mut lines = text.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let head: serde_json::Value = serde_json::from_slice(lines.next().context("no header line")?)
        .with_context(|| format!("{node}: the log's header"))?;
    let number = |k: &str| {
        head[k]
            .as_u64()
            .with_context(|| format!("{node}: no {k} in the log's header"))
    };
    let mut log = MemberLog {
        node: node.to_string(),
        committed: number("committed")?,
        first: number("first")?,
        last: number("last")?,
        entries: BTreeMap::new(),
    };
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_slice(line).with_context(|| format!("{node}: a log line"))?;
        let index = v["index"]
            .as_u64()
            .with_context(|| format!("{node}: a log line without an index"))?;
        log.entries.insert(index, serde_json::to_vec(&v["entry"])?);
    }
    Ok(log)
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
    fn inspect_log_lines_are_read_back() -> anyhow::Result<()> {
        let text = br#"{"group":"global","committed":3,"first":2,"last":4}
{"index":2,"entry":{"log_id":2,"payload":"a"}}
{"index":3,"entry":{"log_id":3,"payload":"b"}}
"#;
        let log = parse("n", text)?;
        assert_eq!((log.committed, log.first, log.last), (3, 2, 4));
        assert_eq!(log.entries.len(), 2);
        assert_eq!(log.entries[&3], br#"{"log_id":3,"payload":"b"}"#.to_vec());
        assert!(parse("n", b"{\"committed\":1}\n").is_err());
        Ok(())
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

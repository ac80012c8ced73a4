//! A three-node global group wired through the in-process router, on real RocksDB stores.

use std::collections::BTreeSet;
use std::time::Duration;

use deploy_types::{GroupName, NodeName};
use test_harness::{wait_until, InProcCluster};

const G: GroupName = GroupName::Global;
const T: Duration = Duration::from_secs(20);

fn id(name: &str) -> u64 {
    NodeName::new(name).map(|n| n.raft_id()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_is_elected_and_writes_commit_and_read_back_everywhere() -> anyhow::Result<()> {
    let c = InProcCluster::start(3, 5000, 1000).await?;
    let leader = c.leader(&G, T).await?;
    let mut last = 0;
    for i in 0..20 {
        last = c.write(&G, &format!("k{i}"), &format!("v{i}")).await?;
    }
    for n in c.names() {
        c.wait_applied(&n, &G, last, T).await?;
        assert_eq!(c.read_local(&n, &G, "k7")?.as_deref(), Some("v7"), "on {n}");
        assert_eq!(
            c.read_local(&n, &G, "k19")?.as_deref(),
            Some("v19"),
            "on {n}"
        );
    }
    // A follower refuses a direct write and names the leader.
    let follower = c
        .names()
        .into_iter()
        .find(|n| *n != leader)
        .unwrap_or_default();
    let err = c
        .write_on(&follower, &G, "x", "y")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&leader), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_leader_is_replaced_without_losing_writes_and_catches_up_on_restart(
) -> anyhow::Result<()> {
    let mut c = InProcCluster::start(3, 5000, 1000).await?;
    let old = c.leader(&G, T).await?;
    for i in 0..10 {
        c.write(&G, &format!("before{i}"), "1").await?;
    }
    let old_term = c.group(&old, &G)?.metrics().current_term;
    c.crash(&old).await?;
    let crashed_at = std::time::Instant::now();

    let new = c.leader(&G, T).await?;
    // A figure for the record, not an assertion: timing belongs to benchmarks.
    eprintln!(
        "new leader {new} elected {} ms after {old} crashed",
        crashed_at.elapsed().as_millis()
    );
    assert_ne!(new, old);
    assert!(c.group(&new, &G)?.metrics().current_term > old_term);
    // Every write acknowledged before the crash is on the new leader.
    for i in 0..10 {
        assert_eq!(
            c.read_local(&new, &G, &format!("before{i}"))?.as_deref(),
            Some("1")
        );
    }
    let mut last = 0;
    for i in 0..10 {
        last = c.write(&G, &format!("after{i}"), "2").await?;
    }

    // The old leader restarts from its own RocksDB directory and catches up.
    c.restart(&old).await?;
    c.wait_applied(&old, &G, last, T).await?;
    assert_eq!(c.read_local(&old, &G, "before3")?.as_deref(), Some("1"));
    assert_eq!(c.read_local(&old, &G, "after9")?.as_deref(), Some("2"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_isolated_in_a_minority_cannot_commit() -> anyhow::Result<()> {
    let c = InProcCluster::start(3, 5000, 1000).await?;
    let old = c.leader(&G, T).await?;
    c.write(&G, "a", "1").await?;
    c.router(&G).partition(&BTreeSet::from([id(&old)]));

    // The isolated leader accepts the proposal but can never commit it.
    let stuck = c.write_on(&old, &G, "lost", "x");
    let outcome = tokio::time::timeout(Duration::from_secs(3), stuck).await;
    assert!(
        !matches!(outcome, Ok(Ok(_))),
        "a minority leader must not commit: {outcome:?}"
    );

    // The majority side elects a leader of its own and commits.
    let others: Vec<String> = c.names().into_iter().filter(|n| *n != old).collect();
    let new = wait_until(T, "a leader on the majority side", || async {
        others
            .iter()
            .find(|n| {
                c.group(n, &G)
                    .map(|g| g.metrics().state == openraft::ServerState::Leader)
                    .unwrap_or(false)
            })
            .cloned()
    })
    .await?;
    let idx = c.write_on(&new, &G, "b", "2").await?;

    // After healing, the old leader steps down, drops its uncommitted entry, and converges.
    c.router(&G).heal();
    c.wait_applied(&old, &G, idx, T).await?;
    let state = c.group(&old, &G)?;
    wait_until(T, "the old leader to step down", || async {
        (state.metrics().state != openraft::ServerState::Leader).then_some(())
    })
    .await?;
    for n in c.names() {
        c.wait_applied(&n, &G, idx, T).await?;
        assert_eq!(
            c.read_local(&n, &G, "lost")?,
            None,
            "uncommitted write visible on {n}"
        );
        assert_eq!(c.read_local(&n, &G, "b")?.as_deref(), Some("2"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_that_missed_a_purged_range_catches_up_by_snapshot() -> anyhow::Result<()> {
    // Snapshot every 20 entries and keep only 5 behind it, so the log is purged quickly.
    let mut c = InProcCluster::start(3, 20, 5).await?;
    let leader = c.leader(&G, T).await?;
    let lagging = c
        .names()
        .into_iter()
        .find(|n| *n != leader)
        .unwrap_or_default();
    c.write(&G, "early", "1").await?;
    c.crash(&lagging).await?;

    let mut last = 0;
    for i in 0..120 {
        last = c.write(&G, &format!("k{i}"), &i.to_string()).await?;
    }
    // The leader must have purged entries the lagging node never received.
    let lagging_had = last.saturating_sub(120);
    let leader_group = c.group(&leader, &G)?;
    wait_until(T, "the leader to purge its log", || async {
        let m = leader_group.metrics();
        m.purged.filter(|p| p.index > lagging_had + 1).map(|_| ())
    })
    .await
    .map_err(|e| {
        let m = leader_group.metrics();
        anyhow::anyhow!(
            "{e}: lagging node had {lagging_had}; leader snapshot {:?}, purged {:?}, last log {:?}",
            m.snapshot,
            m.purged,
            m.last_log_index
        )
    })?;

    c.restart(&lagging).await?;
    c.wait_applied(&lagging, &G, last, T).await?;
    let m = c.group(&lagging, &G)?.metrics();
    assert!(
        m.snapshot.is_some_and(|s| s.index > lagging_had + 1),
        "the lagging node should hold an installed snapshot past what it had: {:?}",
        m.snapshot
    );
    assert_eq!(c.read_local(&lagging, &G, "early")?.as_deref(), Some("1"));
    assert_eq!(c.read_local(&lagging, &G, "k119")?.as_deref(), Some("119"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_through_dropped_and_delayed_messages() -> anyhow::Result<()> {
    let c = InProcCluster::start(3, 5000, 1000).await?;
    c.leader(&G, T).await?;
    c.router(&G).drop_messages(100);
    c.router(&G).delay_messages(Duration::from_millis(5));
    let mut last = 0;
    for i in 0..15 {
        // A write may time out on a dropped round; retry until it commits.
        last = wait_until(T, "a write through a lossy network", || async {
            tokio::time::timeout(Duration::from_secs(3), c.write(&G, &format!("k{i}"), "v"))
                .await
                .ok()
                .and_then(Result::ok)
        })
        .await?;
    }
    c.router(&G).heal();
    for n in c.names() {
        c.wait_applied(&n, &G, last, T).await?;
        assert_eq!(c.read_local(&n, &G, "k14")?.as_deref(), Some("v"));
    }
    Ok(())
}

/// Writes `total` values from `writers` concurrent writers straight to the leader's Raft, one
/// log entry each (not through the group's batching, which would fold them into a few
/// entries): key `k{n % keys}` for the n-th write, each value padded to `pad` bytes. Returns
/// the highest committed index. A write that fails (a leader change) is retried.
async fn write_many(
    c: &InProcCluster,
    writers: usize,
    total: usize,
    keys: usize,
    pad: usize,
) -> anyhow::Result<u64> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let writer = || async {
        let mut last = 0u64;
        loop {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n >= total {
                return anyhow::Ok(last);
            }
            let cmd = deploy_state::GlobalCommand::SetMeta {
                key: format!("k{}", n % keys),
                value: Some(format!("{n:0>pad$}")),
            };
            let index = wait_until(T, "a write to commit", || async {
                let leader = c.leader(&G, T).await.ok()?;
                let raft = c.group(&leader, &G).ok()?.raft;
                raft.client_write(cmd.clone())
                    .await
                    .ok()
                    .map(|r| r.log_id.index)
            })
            .await?;
            last = last.max(index);
        }
    };
    let lasts = futures::future::try_join_all((0..writers).map(|_| writer())).await?;
    Ok(lasts.into_iter().max().unwrap_or(0))
}

/// Snapshots are built while 64 writers write (one every 300 entries): every write commits,
/// and a node restarted from its snapshot and log holds exactly the leader's state. (That no
/// write waits on a snapshot is measured by `cargo xtask bench writes`, not asserted here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_built_under_64_writers_lose_nothing_and_restore_the_same_state(
) -> anyhow::Result<()> {
    let mut c = InProcCluster::start(3, 300, 50).await?;
    let leader = c.leader(&G, T).await?;
    let total = 3_000;
    let last = write_many(&c, 64, total, total, 16).await?;
    for n in c.names() {
        c.wait_applied(&n, &G, last, T).await?;
        for k in [0, 1, total / 2, total - 1] {
            assert_eq!(
                c.read_local(&n, &G, &format!("k{k}"))?,
                Some(format!("{k:0>16}")),
                "k{k} on {n}"
            );
        }
        let keys = c.group(&n, &G)?.state.read(|d| d.state.meta.len());
        assert_eq!(keys, total, "every write applied on {n}");
    }
    let m = c.group(&leader, &G)?.metrics();
    assert!(
        m.snapshot.is_some_and(|s| s.index >= 2_000),
        "snapshots were built during the writes: {:?}",
        m.snapshot
    );
    let follower = c
        .names()
        .into_iter()
        .find(|n| *n != leader)
        .unwrap_or_default();
    c.crash(&follower).await?;
    c.restart(&follower).await?;
    c.wait_applied(&follower, &G, last, T).await?;
    let want = c.group(&leader, &G)?.state.read(|d| d.state.clone());
    let got = c.group(&follower, &G)?.state.read(|d| d.state.clone());
    assert!(
        got == want,
        "the restarted follower's state differs from the leader's"
    );
    Ok(())
}

/// A follower down for 200,000 entries catches up from a snapshot streamed in chunks (the
/// state is several MiB, the chunk 1 MiB), and ends with the leader's state exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_down_for_200k_entries_catches_up_from_a_streamed_snapshot() -> anyhow::Result<()>
{
    let mut c = InProcCluster::start(3, 20_000, 1_000).await?;
    let leader = c.leader(&G, T).await?;
    let lagging = c
        .names()
        .into_iter()
        .find(|n| *n != leader)
        .unwrap_or_default();
    c.crash(&lagging).await?;
    let last = write_many(&c, 64, 200_000, 10_000, 400).await?;
    let leader_group = c.group(&leader, &G)?;
    wait_until(
        T,
        "the leader to purge what the lagging node lacks",
        || async {
            leader_group
                .metrics()
                .purged
                .filter(|p| p.index > 100_000)
                .map(|_| ())
        },
    )
    .await?;
    c.restart(&lagging).await?;
    c.wait_applied(&lagging, &G, last, Duration::from_secs(120))
        .await?;
    let m = c.group(&lagging, &G)?.metrics();
    assert!(
        m.snapshot.is_some_and(|s| s.index > 100_000),
        "the lagging node caught up by an installed snapshot: {:?}",
        m.snapshot
    );
    let want = c.group(&leader, &G)?.state.read(|d| d.state.clone());
    let got = c.group(&lagging, &G)?.state.read(|d| d.state.clone());
    assert_eq!(got.meta.len(), 10_000);
    assert!(
        got == want,
        "the caught-up follower's state differs from the leader's"
    );
    Ok(())
}

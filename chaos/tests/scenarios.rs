//! Short runs of the chaos scenarios against real `deployd` processes on loopback.
//!
//! `cargo xtask test` runs two scenarios and the broken-build check; `cargo xtask chaos
//! --short` runs every one (`cargo test -p chaos --test scenarios -- --include-ignored`).
//! Runs go one at a time: each is a whole cluster of about twenty processes.

use std::time::Duration;

use chaos::fault;
use chaos::report::Report;
use chaos::run::{run, Options};
use chaos::scenario::{scenario_dir, Scenario};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SHORT: Duration = Duration::from_secs(20);
const SEED: u64 = 7;

async fn short_run(name: &str, binary: &str) -> anyhow::Result<(Scenario, Report)> {
    let scenario = Scenario::find(name, &scenario_dir())?;
    short_run_of(scenario, binary).await
}

async fn short_run_of(scenario: Scenario, binary: &str) -> anyhow::Result<(Scenario, Report)> {
    let _one = ONE_AT_A_TIME.lock().await;
    let name = scenario.name.clone();
    let bins = test_support::bin_dir()?;
    let deployd = bins.join(binary);
    anyhow::ensure!(
        deployd.is_file(),
        "{} is missing: cargo xtask test builds it (cargo build -p {binary})",
        deployd.display()
    );
    let opts = Options {
        scenario: scenario.clone(),
        seed: SEED,
        duration: SHORT,
        deployd,
        dir: None,
        keep: false,
        replay: format!("cargo test -p chaos --test scenarios (scenario {name}, seed {SEED})"),
    };
    let report = run(opts).await?;
    eprintln!("{}", report.render());
    Ok((scenario, report))
}

/// The run passed, injected its schedule (the one its seed gives, fault for fault) and
/// converged.
async fn passes(name: &str) -> anyhow::Result<()> {
    let (scenario, r) = short_run(name, "deployd").await?;
    assert!(r.passed(), "{name} found violations:\n{}", r.render());
    let plan = fault::plan(&scenario, SEED, SHORT.as_millis() as u64);
    assert_eq!(r.planned, plan, "the report's schedule is not the seed's");
    let injected: Vec<(usize, fault::FaultKind)> =
        r.faults.iter().map(|f| (f.index, f.kind)).collect();
    let planned: Vec<(usize, fault::FaultKind)> = plan.iter().map(|f| (f.index, f.kind)).collect();
    assert_eq!(
        injected, planned,
        "the faults injected are not the schedule's"
    );
    assert!(
        r.faults_injected >= 1,
        "{name}: no fault took effect:\n{}",
        r.render()
    );
    assert!(r.linearizable);
    assert!(r.converged_after_ms.is_some());
    assert_eq!(r.hosts_converged, r.hosts);
    assert!(
        r.ops_total.acknowledged > 20,
        "{name}: too little work was done"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kills_short_run_passes() -> anyhow::Result<()> {
    passes("leader-kills").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_short_run_passes() -> anyhow::Result<()> {
    passes("partitions").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a whole cluster run; cargo xtask chaos --short runs every scenario"]
async fn rolling_restarts_short_run_passes() -> anyhow::Result<()> {
    passes("rolling-restarts").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a whole cluster run; cargo xtask chaos --short runs every scenario"]
async fn worker_deaths_short_run_passes() -> anyhow::Result<()> {
    passes("worker-deaths").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a whole cluster run; cargo xtask chaos --short runs every scenario"]
async fn relay_failures_short_run_passes() -> anyhow::Result<()> {
    passes("relay-failures").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a whole cluster run; cargo xtask chaos --short runs every scenario"]
async fn agent_crashes_short_run_passes() -> anyhow::Result<()> {
    passes("agent-crashes").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a whole cluster run, as root (a tmpfs); cargo xtask chaos --short runs every scenario"]
async fn disk_full_short_run_passes() -> anyhow::Result<()> {
    passes("disk-full").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a whole cluster run, with libfaketime; cargo xtask chaos --short runs every scenario"]
async fn clock_skew_short_run_passes() -> anyhow::Result<()> {
    passes("clock-skew").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a whole cluster run; cargo xtask chaos --short runs every scenario"]
async fn everything_at_once_short_run_passes() -> anyhow::Result<()> {
    passes("everything-at-once").await
}

/// The harness can fail: a deployd that acknowledges build submissions before they commit is
/// reported broken, by the checks that look at acknowledged writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_acknowledges_before_committing_is_caught() -> anyhow::Result<()> {
    // Submissions often and often concurrent, as a busy CI system's are: the broken build
    // answers two of them from the same state.
    let mut s = Scenario::find("partitions", &scenario_dir())?;
    s.workload.build_every_ms = chaos::scenario::Range(300, 800);
    s.workload.same_commit_twice_pct = 50;
    let (_, r) = short_run_of(s, "deployd-ack-before-commit").await?;
    assert!(!r.passed(), "the broken build passed:\n{}", r.render());
    let caught: Vec<&str> = r
        .invariants
        .iter()
        .filter(|v| !v.passed)
        .map(|v| v.name.as_str())
        .collect();
    assert!(
        caught
            .iter()
            .any(|n| n.contains("acknowledged") || n.contains("linearizable")),
        "caught only by {caught:?}:\n{}",
        r.render()
    );
    assert!(
        r.violations.iter().any(|v| v.contains("build")),
        "no violation names a build:\n{}",
        r.render()
    );
    Ok(())
}

/// The fault lives only in its own binary: the `deployd` that `cargo xtask test` builds (with
/// `--all-features`) carries none of its code, while the broken binary does (so this check
/// can fail). The marker is the broken answer's own log line.
#[test]
fn no_build_of_deployd_carries_the_ack_before_commit_fault() -> anyhow::Result<()> {
    const MARKER: &[u8] = b"acknowledged before commit";
    let bins = test_support::bin_dir()?;
    let holds = |name: &str| -> anyhow::Result<bool> {
        let bytes = std::fs::read(bins.join(name))
            .map_err(|e| anyhow::anyhow!("{name} in {}: {e}", bins.display()))?;
        Ok(bytes.windows(MARKER.len()).any(|w| w == MARKER))
    };
    assert!(
        holds("deployd-ack-before-commit")?,
        "the marker is the broken binary's"
    );
    assert!(
        !holds("deployd")?,
        "deployd carries the ack-before-commit fault"
    );
    Ok(())
}

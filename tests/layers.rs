//! The crates' layers, as `cargo metadata` sees them: what drives the system from outside
//! (chaos, the benchmarks and their process harness) must not link the coordinator, Raft or
//! the replicated state, whose internals it would otherwise be tempted to reach into (chaos
//! reads stopped nodes' logs through `deployd inspect-log`).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use anyhow::Context;
use serde_json::Value;

/// Each workspace crate's normal and build dependencies (not dev), by name.
fn workspace_deps() -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .args(["--manifest-path", root])
        .output()
        .context("cargo metadata")?;
    anyhow::ensure!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout)?;
    let mut deps = BTreeMap::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default().to_string();
        let normal = p["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["kind"].as_str() != Some("dev"))
            .filter_map(|d| d["name"].as_str().map(str::to_string))
            .collect();
        deps.insert(name, normal);
    }
    Ok(deps)
}

/// Every crate `name` links, directly or through others.
fn links(deps: &BTreeMap<String, Vec<String>>, name: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![name.to_string()];
    while let Some(n) = todo.pop() {
        for d in deps.get(&n).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn chaos_and_the_benchmarks_link_no_coordinator_raft_or_state() -> anyhow::Result<()> {
    let deps = workspace_deps()?;
    let inside = [
        "deploy-coordinator",
        "deploy-raft",
        "deploy-state",
        "openraft",
    ];
    for outside in ["chaos", "deploy-bench", "process-harness", "test-support"] {
        assert!(deps.contains_key(outside), "no crate {outside}");
        let linked = links(&deps, outside);
        for crate_inside in inside {
            assert!(
                !linked.contains(crate_inside),
                "{outside} links {crate_inside}: {linked:?}"
            );
        }
    }
    // The check can see a link: the in-process test clusters do link the coordinator.
    assert!(links(&deps, "test-harness").contains("deploy-coordinator"));
    Ok(())
}

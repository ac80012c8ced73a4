//! The crates' layers, as `cargo metadata` sees them: what drives the system from outside
//! (chaos, the benchmarks and their process harness) must not link the coordinator, whose
//! internals it would otherwise be tempted to reach into. The benchmarks and the harness link
//! no Raft or state either; chaos links `deploy-raft`'s store only to read each stopped
//! node's log from its RocksDB for the committed-prefix check.

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
fn chaos_and_the_benchmarks_link_no_coordinator() -> anyhow::Result<()> {
    let deps = workspace_deps()?;
    let raft_and_state = ["deploy-raft", "deploy-state", "openraft"];
    for (outside, also_not) in [
        ("chaos", &[][..]),
        ("deploy-bench", &raft_and_state[..]),
        ("process-harness", &raft_and_state[..]),
        ("test-support", &raft_and_state[..]),
    ] {
        assert!(deps.contains_key(outside), "no crate {outside}");
        let linked = links(&deps, outside);
        for inside in also_not.iter().chain(["deploy-coordinator"].iter()) {
            assert!(
                !linked.contains(*inside),
                "{outside} links {inside}: {linked:?}"
            );
        }
    }
    // The check can see a link: the in-process test clusters do link the coordinator.
    assert!(links(&deps, "test-harness").contains("deploy-coordinator"));
    Ok(())
}

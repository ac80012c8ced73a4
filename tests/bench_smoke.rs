//! The benchmarks keep working: each runs at a tiny size (`deploy-bench`, a debug build) and
//! writes a JSON file with its figures, and `report` makes the Markdown from them. Nothing here
//! judges a figure's size: speed is measured by `cargo xtask bench`, never by tests.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn bench(out: &Path, args: &[&str]) -> anyhow::Result<()> {
    let bins = test_harness::process::bin_dir()?;
    let run = Command::new(bins.join("deploy-bench"))
        .arg("--out")
        .arg(out)
        .args(args)
        .env("DEPLOY_BIN_DIR", &bins)
        .output()?;
    anyhow::ensure!(
        run.status.success(),
        "deploy-bench {args:?}: {}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    Ok(())
}

fn figures(out: &Path, name: &str) -> anyhow::Result<Value> {
    let doc: Value = serde_json::from_slice(&std::fs::read(out.join(format!("{name}.json")))?)?;
    assert_eq!(doc["bench"], name);
    assert!(doc["machine"]["cores"].as_u64().unwrap_or(0) > 0, "{doc}");
    Ok(doc["figures"].clone())
}

#[test]
fn each_benchmark_runs_small_and_the_report_shows_its_figures() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path();

    bench(
        out,
        &[
            "fanout",
            "--size-mib",
            "2",
            "--hosts",
            "4",
            "--racks",
            "2",
            "--rate",
            "50000000",
            "--chunk-kib",
            "64",
            "--only",
            "exchange,naive",
        ],
    )?;
    let f = figures(out, "fanout")?;
    let run = &f["runs"]["exchange"];
    assert_eq!(run["hosts"], 4);
    // Each rack's relay reads the store once, and the hosts share the chunks.
    let chunks = run["chunks"].as_u64().unwrap_or(0);
    assert_eq!(run["store_chunk_reads"], chunks * 2, "{f}");
    assert!(
        run["chunks_from_peers"].as_f64().unwrap_or(0.0) > 0.0,
        "{f}"
    );
    assert!(run["last_host_secs"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(f["runs"]["naive"]["last_host_secs"].as_f64().unwrap_or(0.0) > 0.0);

    bench(out, &["scale", "--sizes", "80", "--hosts-per-rack", "20"])?;
    let f = figures(out, "scale")?;
    assert_eq!(f["largest_hosts_reached"], 80, "{f}");
    let run = &f["runs"][0];
    assert_eq!(run["goal_propagation"]["count"], 80, "{f}");
    assert_eq!(run["host_reported_healthy"]["count"], 80, "{f}");
    assert!(
        run["log_entries_during_release"].as_u64().unwrap_or(0) > 0,
        "{f}"
    );

    bench(out, &["failover", "--kills", "1", "--writers", "2"])?;
    let f = figures(out, "failover")?;
    for g in f["groups"].as_array().into_iter().flatten() {
        assert_eq!(g["time_to_new_leader"]["count"], 1, "{g}");
        assert_ne!(g["each"][0]["killed"], g["each"][0]["new_leader"], "{g}");
    }

    bench(out, &["e2e", "--size-mib", "1", "--min-healthy-ms", "200"])?;
    let f = figures(out, "e2e")?;
    assert_eq!(f["release_state"], "SUCCEEDED");
    assert!(
        f["total_secs"].as_f64().unwrap_or(0.0)
            >= f["parts"]["build_command_secs"].as_f64().unwrap_or(-1.0)
    );

    bench(
        out,
        &[
            "soak",
            "--builds",
            "600",
            "--window",
            "200",
            "--clients",
            "4",
            "--workers",
            "4",
            "--services",
            "5",
            "--keep",
            "10",
        ],
    )?;
    let f = figures(out, "soak")?;
    let windows = f["windows"].as_array().cloned().unwrap_or_default();
    assert_eq!(windows.len(), 3, "{f}");
    assert_eq!(windows[2]["builds"], 600, "{f}");
    // Every window saw writes, and a killed follower came back and was timed catching up
    // (which window it lands in depends on how fast the tiny windows pass the watcher).
    for w in &windows {
        assert!(w["writes_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{f}");
    }
    assert!(
        windows
            .iter()
            .any(|w| w["follower_catch_up_s"].as_f64().is_some()),
        "{f}"
    );

    let doc = out.join("benchmarks.md");
    bench(out, &["report", "--doc", doc.to_str().unwrap_or_default()])?;
    let md = std::fs::read_to_string(doc)?;
    for section in [
        "## 2. Fan-out",
        "## 3. Control-plane scale",
        "## 4. Failover",
        "## 5. End to end",
        "## 6. Soak",
        "## 7. A paper projection",
    ] {
        assert!(md.contains(section), "{section} missing:\n{md}");
    }
    // Writes needs etcd, which the suite does not install: the report says how to make it.
    assert!(
        md.contains("Not measured: run `cargo xtask bench writes`"),
        "{md}"
    );
    assert!(md.contains("| **total** |"), "{md}");
    Ok(())
}

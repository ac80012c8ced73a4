//! `cargo xtask chaos [--duration D] [--seed N] [--release] [SCENARIO...]`: every scenario (or
//! those named) run by the chaos harness against a cluster of real processes, one after
//! another, each report also written to `target/chaos/<scenario>.json`.
//! `cargo xtask chaos --short` runs the test suite's short run of every scenario instead.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::{cargo, root, run_checked, setup};

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root().join(p) })
        .unwrap_or_else(|| root().join("target"))
}

fn scenarios() -> anyhow::Result<Vec<String>> {
    let dir = root().join("chaos").join("scenarios");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_suffix(".toml")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut duration: Option<String> = None;
    let mut seed = "1".to_string();
    let mut release = false;
    let mut short = false;
    let mut named = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--duration" => duration = Some(it.next().context("--duration needs a value")?.clone()),
            "--seed" => seed = it.next().context("--seed needs a value")?.clone(),
            "--release" => release = true,
            "--short" => short = true,
            s if s.starts_with("--") => bail!("unknown option {s}"),
            s => named.push(s.to_string()),
        }
    }
    setup::ensure_system_packages()?;
    setup::ensure_faketime()?;
    if short {
        run_checked(cargo().args([
            "build",
            "--bins",
            "-p",
            "deployd",
            "-p",
            "deployctl",
            "-p",
            "deployd-ack-before-commit",
        ]))?;
        let bins = target_dir().join("debug");
        let mut cmd = cargo();
        cmd.args([
            "test",
            "-p",
            "chaos",
            "--test",
            "scenarios",
            "--",
            "--include-ignored",
        ])
        .env("DEPLOY_BIN_DIR", bins);
        return run_checked(&mut cmd);
    }
    let all = scenarios()?;
    for n in &named {
        if !all.contains(n) {
            bail!("no scenario {n:?}: one of {}", all.join(", "));
        }
    }
    let names = if named.is_empty() { all } else { named };
    let mut build = cargo();
    build.args(["build", "--bins", "-p", "deployd", "-p", "chaos"]);
    if release {
        build.arg("--release");
    }
    run_checked(&mut build)?;
    let bins = target_dir().join(if release { "release" } else { "debug" });
    let out = target_dir().join("chaos");
    std::fs::create_dir_all(&out)?;
    let mut failed = Vec::new();
    let started = Instant::now();
    for name in &names {
        eprintln!("xtask: chaos {name}");
        let mut cmd = std::process::Command::new(bins.join("chaos"));
        cmd.current_dir(root())
            .args(["run", name, "--seed", &seed, "--deployd"])
            .arg(bins.join("deployd"))
            .arg("--report")
            .arg(out.join(format!("{name}.json")));
        if let Some(d) = &duration {
            cmd.args(["--duration", d]);
        }
        let status = cmd.status().context("cannot run the chaos harness")?;
        if !status.success() {
            failed.push(format!("{name} ({status})"));
        }
    }
    eprintln!(
        "xtask: {} scenarios in {:.0} s; reports in {}",
        names.len(),
        started.elapsed().as_secs_f64(),
        out.display()
    );
    if !failed.is_empty() {
        bail!("chaos scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}

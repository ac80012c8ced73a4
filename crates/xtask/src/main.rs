//! `cargo xtask`: the project's own tasks, so a fresh machine needs only the Rust toolchain.
//!
//! - `cargo xtask test`: installs missing system packages, builds, runs the whole test suite.
//! - `cargo xtask demo`: installs, builds, starts the local dev cluster and shows it working.
//! - `cargo xtask fuzz`: runs every fuzz target for a bounded time.
//!
//! This crate uses only std, anyhow and serde_json: it must build before anything else does,
//! and it must build quickly.

mod bench;
mod chaos;
mod demo;
mod setup;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  demo [--keep-running]   the local cluster: a build rolled out to every host, a broken one rolled back
  test [ARGS...]          run the whole test suite (ARGS go to cargo test)
  bench [NAME [ARGS...]]  run the benchmarks (writes, fanout, scale, failover, e2e) on release
                          builds: target/bench/NAME.json and docs/benchmarks.md
  chaos [--duration D] [--seed N] [--release] [SCENARIO...]
                          run every chaos scenario (or those named) against a real cluster:
                          target/chaos/SCENARIO.json; --short runs each one's short test run
  fuzz [--seconds N] [--seed N] [TARGET...]
                          run every fuzz target (config, recipe, manifest, unpack, command)
                          for N seconds each (default 30) over crates/deploy-fuzz/corpus
  setup                   install the system packages the build needs";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("demo") => demo::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("chaos") => chaos::run(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some("setup") => setup::ensure_system_packages(),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(64);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of `crates/xtask`).
pub fn root() -> PathBuf {
    // `cargo run` says where the package is at run time; the compiled-in path may be another
    // clone's, when clones share a target directory.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

pub fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// Where cargo puts the binaries of the dev profile.
pub fn bin_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root().join(p) })
        .unwrap_or_else(|| root().join("target"));
    target.join("debug")
}

/// Replays each fuzz target's corpus, then fuzzes it for a bounded time; an input that
/// breaks a target is kept in the corpus (see `deploy-fuzz`).
fn fuzz(args: &[String]) -> anyhow::Result<()> {
    setup::ensure_system_packages()?;
    run_checked(
        cargo()
            .args(["run", "--quiet", "-p", "deploy-fuzz", "--", "run"])
            .args(args),
    )
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    setup::ensure_system_packages()?;
    setup::ensure_test_tools()?;
    // The process-level tests run the real binaries: build them first (the deliberately
    // broken deployd the chaos harness must catch is one of them). With every feature on:
    // no feature may turn a fault on in `deployd`, and a test checks the binary for one.
    run_checked(cargo().args(["build", "--bins", "--workspace", "--all-features"]))?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--no-fail-fast"])
        .args(extra);
    cmd.env("DEPLOY_BIN_DIR", bin_dir());
    run_checked(&mut cmd)
}

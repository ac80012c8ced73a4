//! `cargo xtask demo`: installs what is missing, builds, and runs `deployd demo`.
//!
//! The demo itself lives in `deployd demo`: the dev cluster (two regions of racks, relays
//! and hosts running real processes), a sample service built from git and released to every
//! host in waves with live progress, then a change that breaks its health check, halted on
//! the canary and rolled back automatically, and a summary. It exits 0 only if all of that
//! happened; `--keep-running` leaves the cluster up afterwards.

use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::{bin_dir, cargo, root, run_checked, setup};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut keep_running = false;
    for a in args {
        match a.as_str() {
            "--keep-running" => keep_running = true,
            other => bail!("unknown demo option {other:?} (known: --keep-running)"),
        }
    }
    setup::ensure_system_packages()?;
    eprintln!("xtask: building deployd and deployctl");
    run_checked(cargo().args(["build", "--bin", "deployd", "--bin", "deployctl"]))?;
    let bins = bin_dir();
    // The demo's directory in this checkout is the demo's own: start it fresh.
    let data = root().join(".deploy/demo");
    if data.exists() {
        std::fs::remove_dir_all(&data)
            .with_context(|| format!("cannot clear {}", data.display()))?;
    }
    eprintln!("xtask: running `deployd demo` (data in {})", data.display());
    let mut cmd = Command::new(bins.join("deployd"));
    cmd.arg("demo").arg("--data-dir").arg(&data);
    if keep_running {
        cmd.arg("--keep-running");
        println!("(deployctl is {}/deployctl)", bins.display());
    }
    // The demo narrates itself; the cluster's own logs stay quiet unless asked for.
    let status = cmd
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "error,openraft=off".into()),
        )
        .stdin(Stdio::null())
        .status()
        .context("cannot start deployd demo")?;
    if !status.success() {
        bail!("deployd demo ended with {status}");
    }
    Ok(())
}

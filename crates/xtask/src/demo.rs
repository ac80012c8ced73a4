//! `cargo xtask demo`: the local cluster, started and shown working.
//!
//! Builds the binaries, starts `deployd dev` on the embedded config with a fresh data
//! directory, waits until every group has a leader and all members agree, prints the
//! cluster status, then keeps the cluster running until Ctrl-C.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{bin_dir, cargo, root, run_checked, setup};

/// Stops the child cluster however the demo ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if let Some(a) = args.first() {
        bail!("unknown demo option {a:?}");
    }
    setup::ensure_system_packages()?;
    eprintln!("xtask: building deployd and deployctl");
    run_checked(cargo().args(["build", "--bin", "deployd", "--bin", "deployctl"]))?;
    let bins = bin_dir();
    let data = root().join(".deploy/demo");
    if data.exists() {
        std::fs::remove_dir_all(&data)
            .with_context(|| format!("cannot clear {}", data.display()))?;
    }
    eprintln!(
        "xtask: starting the dev cluster (data in {})",
        data.display()
    );
    let child = Command::new(bins.join("deployd"))
        .arg("dev")
        .arg("--data-dir")
        .arg(&data)
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start deployd dev")?;
    let mut guard = Guard(child);

    let started = Instant::now();
    let status = loop {
        if let Some(code) = guard.0.try_wait()? {
            bail!("deployd dev exited early ({code}); see its log above");
        }
        if let Some(s) = converged(&bins)? {
            break s;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the dev cluster did not elect leaders within 60 s");
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    println!();
    println!(
        "every group has a leader and all members agree ({:.1} s):",
        started.elapsed().as_secs_f64()
    );
    println!();
    print!("{status}");
    println!();
    println!("the cluster keeps running; in another terminal try:");
    println!("  {}/deployctl cluster status", bins.display());
    println!(
        "  {}/deployctl cluster meta set greeting hello",
        bins.display()
    );
    println!("  {}/deployctl cluster meta get greeting", bins.display());
    println!("stop it with Ctrl-C");
    let code = guard.0.wait()?;
    if !code.success() {
        bail!("deployd dev ended with {code}");
    }
    Ok(())
}

/// The status table once every group has a leader and its members' applied indexes agree.
fn converged(bins: &std::path::Path) -> anyhow::Result<Option<String>> {
    let ctl = bins.join("deployctl");
    let out = Command::new(&ctl)
        .args(["cluster", "status", "--output", "json"])
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", ctl.display()))?;
    if !out.status.success() {
        return Ok(None);
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("deployctl printed invalid JSON")?;
    let groups = v["groups"].as_array().cloned().unwrap_or_default();
    let ready = !groups.is_empty()
        && groups.iter().all(|g| {
            let members = g["members"].as_array().cloned().unwrap_or_default();
            let applied: Vec<u64> = members
                .iter()
                .filter_map(|m| m["last_applied"].as_u64())
                .collect();
            g["leader"].as_str().is_some_and(|l| !l.is_empty())
                && applied.len() == members.len()
                && applied.windows(2).all(|w| w[0] == w[1])
                && members.iter().all(|m| m["role"] != "UNREACHABLE")
        });
    if !ready {
        return Ok(None);
    }
    let table = Command::new(&ctl).args(["cluster", "status"]).output()?;
    Ok(Some(String::from_utf8_lossy(&table.stdout).into_owned()))
}

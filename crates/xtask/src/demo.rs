//! `cargo xtask demo`: the local cluster, started and shown working.
//!
//! Builds the binaries, starts `deployd dev` on the embedded config with a fresh data
//! directory, waits until every group has a leader and all members agree, prints the
//! cluster status, makes a sample git repository and builds its HEAD through the cluster
//! (queue, worker, artifact in every region's store), releases it in waves to every
//! (simulated) host of both regions with live progress, then keeps the cluster running until
//! Ctrl-C.

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
    let repo = data.join("sample");
    let commit = sample_repo(&repo)?;
    println!(
        "building the sample repository {} at {commit}:",
        repo.display()
    );
    let ctl = bins.join("deployctl");
    run_checked(
        Command::new(&ctl)
            .args([
                "build",
                "submit",
                "--service",
                "hello",
                "--commit",
                &commit,
                "--wait",
                "--repo",
            ])
            .arg(&repo),
    )?;
    println!();
    println!("its build log:");
    run_checked(Command::new(&ctl).args(["build", "logs", "b-1"]))?;
    println!();
    println!("releasing b-1 to every host of both regions (agents running it for real), in waves:");
    run_checked(Command::new(&ctl).args([
        "release",
        "create",
        "--service",
        "hello",
        "--build",
        "b-1",
        "--min-healthy-ms",
        "1000",
        "--wait",
    ]))?;
    for region in ["us-east", "eu-west"] {
        println!();
        run_checked(Command::new(&ctl).args(["region", "status", "--region", region]))?;
    }
    println!();
    println!("the cluster keeps running; in another terminal try:");
    for cmd in [
        "cluster status",
        "build list",
        "build get b-1 --output json",
        "release get r-1",
        "hosts list --region us-east",
        "cluster meta set greeting hello",
    ] {
        println!("  {}/deployctl {cmd}", bins.display());
    }
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

const SAMPLE_RECIPE: &str = "[build]
command = \"sh build.sh\"
outputs = [\"out\"]
timeout_secs = 60

[run]
command = \"./out/hello\"
health_command = \"test -x out/hello\"
";

const SAMPLE_BUILD: &str = "echo \"building hello $(cat VERSION)\"
mkdir -p out
printf '#!/bin/sh\\necho hello from version %s\\nexec sleep 1000000\\n' \"$(cat VERSION)\" > out/hello
chmod +x out/hello
echo done
";

/// Makes a git repository with a tiny service and its recipe; returns its HEAD.
fn sample_repo(dir: &std::path::Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("deploy.toml"), SAMPLE_RECIPE)?;
    std::fs::write(dir.join("build.sh"), SAMPLE_BUILD)?;
    std::fs::write(dir.join("VERSION"), "1\n")?;
    let git = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "demo")
            .env("GIT_AUTHOR_EMAIL", "demo@localhost")
            .env("GIT_COMMITTER_NAME", "demo")
            .env("GIT_COMMITTER_EMAIL", "demo@localhost")
            .output()
            .context("cannot run git")?;
        if !out.status.success() {
            bail!(
                "git {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    git(&["init", "-q"])?;
    git(&["add", "-A"])?;
    git(&["commit", "-q", "-m", "hello, version 1"])?;
    git(&["rev-parse", "HEAD"])
}

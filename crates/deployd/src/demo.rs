//! `deployd demo`: the dev cluster, a sample service built from git and released to every
//! host in waves, then a change that breaks its health check, halted on the canary and rolled
//! back automatically; a summary, and exit 0 only if all of that happened.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use deploy_client::Client;
use deploy_proto::v1 as pb;

use crate::dev::{DevOptions, Fleet};

pub struct DemoOptions {
    pub config: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub keep_running: bool,
    /// Shorter waits (for the test suite).
    pub short: bool,
}

/// What marks a data directory as the demo's own, safe to clear.
const MARKER: &str = ".deploy-demo";

const RECIPE: &str =
    "[build]\ncommand = \"sh build.sh\"\noutputs = [\"out\"]\ntimeout_secs = 60\n\n\
[run]\ncommand = \"./out/hello\"\nhealth_command = \"./out/hello --check\"\n";

/// The service: prints its version and sleeps; `--check` passes unless built from a commit
/// whose `HEALTH` file says `broken`.
const BUILD: &str = "echo \"building hello $(cat VERSION)\"\nmkdir -p out\n\
printf '#!/bin/sh\\nif [ \"$1\" = --check ]; then test \"%s\" != broken; exit $?; fi\\n\
echo hello from version %s\\nexec sleep 1000000\\n' \"$(cat HEALTH)\" \"$(cat VERSION)\" > out/hello\n\
chmod +x out/hello\necho built\n";

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "demo")
        .env("GIT_AUTHOR_EMAIL", "demo@localhost")
        .env("GIT_COMMITTER_NAME", "demo")
        .env("GIT_COMMITTER_EMAIL", "demo@localhost")
        .output()
        .context("cannot run git (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Commits `VERSION` and `HEALTH` (and the recipe on the first commit); returns the SHA.
fn commit(repo: &Path, version: &str, health: &str) -> anyhow::Result<String> {
    if !repo.join(".git").exists() {
        std::fs::create_dir_all(repo)?;
        git(repo, &["init", "-q"])?;
        std::fs::write(repo.join("deploy.toml"), RECIPE)?;
        std::fs::write(repo.join("build.sh"), BUILD)?;
    }
    std::fs::write(repo.join("VERSION"), format!("{version}\n"))?;
    std::fs::write(repo.join("HEALTH"), format!("{health}\n"))?;
    git(repo, &["add", "-A"])?;
    git(
        repo,
        &["commit", "-q", "-m", &format!("hello {version} ({health})")],
    )?;
    git(repo, &["rev-parse", "HEAD"])
}

/// Builds `sha`, showing its progress and the tail of its log; returns the build.
async fn build(client: &Client, repo: &Path, sha: &str) -> anyhow::Result<pb::Build> {
    let b = client
        .submit_build("hello", &repo.display().to_string(), sha)
        .await?;
    println!("build {} of hello at {}:", b.id, &sha[..12]);
    let mut last = pb::BuildState::Unspecified;
    let b = loop {
        let b = client.get_build(&b.id, false).await?;
        if b.state() != last {
            println!(
                "  {:<11} {}",
                b.state().name(),
                b.history.last().map(|h| h.note.as_str()).unwrap_or("")
            );
            last = b.state();
        }
        if b.state().is_final() {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut logs = client.build_logs(&b.id, false).await?;
    let mut text = Vec::new();
    while let Ok(Some(chunk)) = logs.message().await {
        text.extend_from_slice(&chunk.data);
    }
    for line in String::from_utf8_lossy(&text)
        .lines()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        println!("  | {line}");
    }
    ensure!(
        b.state() == pb::BuildState::Succeeded,
        "build {} ended {}: {}",
        b.id,
        b.state().name(),
        b.error
    );
    Ok(b)
}

/// Releases `build` to every region and follows it with a bar per region.
async fn release(client: &Client, build: &str, short: bool) -> anyhow::Result<pb::Release> {
    let strategy = pb::Strategy {
        canary: Some("first-rack".into()),
        waves: vec![50, 100],
        min_healthy_ms: Some(if short { 300 } else { 2000 }),
        max_unavailable_per_rack: Some(2),
        ..Default::default()
    };
    let r = client
        .create_release(pb::CreateReleaseRequest {
            service: "hello".into(),
            build_id: build.into(),
            regions: vec![],
            strategy: Some(strategy),
            actor: "demo".into(),
            request_id: String::new(),
        })
        .await?;
    println!(
        "release {} of {build} (canary: the first rack, then 50% and 100% of racks):",
        r.id
    );
    let bars = std::io::stdout().is_terminal();
    let multi = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template(
        "  {prefix:<8} [{bar:30}] {pos}/{len} hosts  {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    let mut shown: BTreeMap<String, (indicatif::ProgressBar, String)> = BTreeMap::new();
    loop {
        let r = client.get_release(&r.id, false).await?;
        for g in &r.regions {
            // A region not started yet gets its bar when it starts.
            if bars && g.hosts_total == 0 && g.state() == pb::ReleaseState::Pending {
                continue;
            }
            let line = format!("{} wave {}/{}", g.state().name(), g.wave, g.waves);
            let e = shown.entry(g.region.clone()).or_insert_with(|| {
                let bar = if bars {
                    multi.add(indicatif::ProgressBar::new(0).with_style(style.clone()))
                } else {
                    indicatif::ProgressBar::hidden()
                };
                bar.set_prefix(g.region.clone());
                (bar, String::new())
            });
            e.0.set_length(g.hosts_total);
            e.0.set_position(g.hosts_updated);
            e.0.set_message(line.clone());
            if !bars && e.1 != line {
                println!(
                    "  {:<8} {line}, {}/{} hosts updated",
                    g.region, g.hosts_updated, g.hosts_total
                );
            }
            e.1 = line;
        }
        if r.state().is_final() {
            // A bar stays where its region ended: full only for a region that succeeded.
            for (region, (bar, _)) in &shown {
                let ok = r
                    .regions
                    .iter()
                    .any(|g| &g.region == region && g.state() == pb::ReleaseState::Succeeded);
                if ok {
                    bar.finish();
                } else {
                    bar.abandon();
                }
            }
            println!(
                "  release {} {}{}",
                r.id,
                r.state().name(),
                if r.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", r.reason)
                }
            );
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every host of every region, with the build it runs and its state.
async fn fleet(client: &Client, regions: &[String]) -> anyhow::Result<Vec<pb::Host>> {
    let mut out = Vec::new();
    for region in regions {
        let reply = client
            .list_hosts(pb::ListHostsRequest {
                region: region.clone(),
                page_size: 1000,
                ..Default::default()
            })
            .await?;
        out.extend(reply.hosts);
    }
    Ok(out)
}

fn running(h: &pb::Host) -> Option<&pb::HostService> {
    h.services.iter().find(|s| s.service == "hello")
}

/// Milliseconds between the first transitions into `from` and into `to`.
fn between(b: &pb::Build, from: &str, to: &str) -> f64 {
    let at = |s: &str| {
        b.history
            .iter()
            .find(|t| t.state().name() == s)
            .map(|t| t.at_ms)
    };
    match (at(from), at(to)) {
        (Some(a), Some(z)) => z.saturating_sub(a) as f64 / 1000.0,
        _ => 0.0,
    }
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let data = &opts.data_dir;
    if data.exists() {
        let ours = data.join(MARKER).exists();
        let empty = std::fs::read_dir(data)?.next().is_none();
        if !ours && !empty {
            bail!(
                "{} is not empty and not a demo's: give another --data-dir",
                data.display()
            );
        }
        if ours {
            std::fs::remove_dir_all(data)
                .with_context(|| format!("cannot clear {}", data.display()))?;
        }
    }
    std::fs::create_dir_all(data)?;
    std::fs::write(data.join(MARKER), b"")?;
    let started = Instant::now();
    let dev = crate::dev::start(&DevOptions {
        config_path: opts.config.clone(),
        data_dir: data.clone(),
        fleet: Fleet::default(),
        ..Default::default()
    })
    .await?;
    let result = match dev.client() {
        Ok(client) => demo(&opts, client, &dev.config).await,
        Err(e) => Err(e),
    };
    match &result {
        Ok(()) if opts.keep_running => {
            dev.env(data);
            println!(
                "\nthe cluster keeps running; in another terminal, `source {}/env`, then try:",
                data.display()
            );
            for cmd in [
                "cluster status",
                "release list",
                "release get r-2",
                "hosts list --region <region>",
                "build logs b-1",
            ] {
                println!("  deployctl {cmd}");
            }
            println!("stop it with Ctrl-C");
            crate::cli::shutdown_signal().await;
        }
        Ok(()) => println!(
            "\ndemo finished in {:.1} s; stopping the cluster",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => println!("\ndemo failed: {e:#}"),
    }
    dev.stop().await;
    result
}

async fn demo(
    opts: &DemoOptions,
    client: Client,
    config: &deploy_types::ClusterConfig,
) -> anyhow::Result<()> {
    let regions: Vec<String> = config.regions().map(str::to_string).collect();
    let hosts_total: usize = config.racks().iter().map(|r| r.hosts.len()).sum();
    ensure!(
        hosts_total > 0,
        "the config has no hosts ([[racks]]): nothing to deploy to"
    );
    println!(
        "the dev cluster is up: {} regions, {} racks, {hosts_total} hosts with an agent each\n",
        regions.len(),
        config.racks().len()
    );
    let wait_hosts = Instant::now();
    loop {
        let n = fleet(&client, &regions).await.map(|h| h.len()).unwrap_or(0);
        if n >= hosts_total {
            break;
        }
        ensure!(
            wait_hosts.elapsed() < Duration::from_secs(60),
            "only {n} of {hosts_total} hosts registered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let repo = opts.data_dir.join("sample");
    let good = build(&client, &repo, &commit(&repo, "1", "ok")?).await?;
    println!();
    let first = release(&client, &good.id, opts.short).await?;
    ensure!(
        first.state() == pb::ReleaseState::Succeeded,
        "the first release ended {}",
        first.state
    );
    println!("\nnow a change that breaks the service's health check:");
    let bad = build(&client, &repo, &commit(&repo, "2", "broken")?).await?;
    println!();
    let second = release(&client, &bad.id, opts.short).await?;
    ensure!(
        second.state() == pb::ReleaseState::RolledBack,
        "the broken release ended {}, not ROLLED_BACK",
        second.state
    );
    // The rollback returns every moved host to the good build, running and healthy.
    let back = Instant::now();
    let hosts = loop {
        let hosts = fleet(&client, &regions).await?;
        let good_everywhere = hosts.len() >= hosts_total
            && hosts.iter().all(|h| {
                running(h).is_some_and(|s| {
                    s.running_build_id == good.id && s.state() == pb::ServiceState::Healthy
                })
            });
        if good_everywhere {
            break hosts;
        }
        ensure!(
            back.elapsed() < Duration::from_secs(60),
            "hosts did not all return to {}",
            good.id
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("\nsummary:");
    let mut by: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for h in &hosts {
        let s = running(h);
        let key = (
            h.region.clone(),
            s.map(|s| s.running_build_id.clone()).unwrap_or_default(),
            s.map(|s| s.state().name().to_string()).unwrap_or_default(),
        );
        *by.entry(key).or_default() += 1;
    }
    println!("  {:<10} {:<7} {:<9} HOSTS", "REGION", "BUILD", "STATE");
    for ((region, build, state), n) in by {
        println!("  {region:<10} {build:<7} {state:<9} {n}");
    }
    let secs = |r: &pb::Release| r.finished_at_ms.saturating_sub(r.created_at_ms) as f64 / 1000.0;
    println!(
        "  build {}: queued {:.1} s, build {:.1} s, replication {:.1} s",
        good.id,
        between(&good, "QUEUED", "RUNNING"),
        between(&good, "RUNNING", "REPLICATING"),
        between(&good, "REPLICATING", "SUCCEEDED")
    );
    println!(
        "  release {} (good):   rolled out to {} hosts in {:.1} s",
        first.id,
        first.hosts_updated,
        secs(&first)
    );
    println!(
        "  release {} (broken): halted on the canary and rolled back in {:.1} s: {}",
        second.id,
        secs(&second),
        second.reason
    );
    Ok(())
}

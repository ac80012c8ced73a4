//! Helpers of the release tests: simulated hosts, fast strategies, waiting on releases.

use std::sync::Arc;
use std::time::Duration;

use deploy_client::Client;
use deploy_hostsim::{FailRule, SimOptions};
use deploy_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::gitrepo::{GitRepo, RECIPE};
use crate::wait_until;

pub const T: Duration = Duration::from_secs(60);

/// Simulated hosts of one region, stopped on drop.
pub struct Sim {
    stop: CancellationToken,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Simulates `racks` x `per` hosts of `region` reporting through `endpoints` (the region's
/// nodes), failing health where `fails` says.
pub fn simulate(
    endpoints: &[String],
    region: &str,
    racks: u32,
    per: u32,
    fails: Option<FailRule>,
) -> anyhow::Result<Sim> {
    let client = Arc::new(Client::new(endpoints)?.with_timeout(Duration::from_secs(3)));
    let mut opts = SimOptions::new(region, racks, per);
    opts.step = Duration::from_millis(50);
    if let Some(f) = fails {
        opts.fails = f;
    }
    let stop = CancellationToken::new();
    tokio::spawn(deploy_hostsim::run(client, opts, stop.clone()));
    Ok(Sim { stop })
}

/// A strategy that moves quickly: a one-rack canary, then half the racks, then the rest;
/// hosts must stay healthy `min_healthy_ms`.
pub fn fast(min_healthy_ms: u64) -> pb::Strategy {
    pb::Strategy {
        canary: Some("first-rack".into()),
        waves: vec![50, 100],
        min_healthy_ms: Some(min_healthy_ms),
        progress_deadline_ms: Some(min_healthy_ms.max(30_000) * 2),
        ..Default::default()
    }
}

/// The region's status, read linearizably from its group; `None` while it cannot answer.
pub async fn status(client: &Client, region: &str) -> Option<pb::RegionStatusReply> {
    client
        .region_status(pb::RegionStatusRequest {
            region: region.into(),
            stale: false,
        })
        .await
        .ok()
}

/// Waits until region `region` has registered `hosts` hosts.
pub async fn wait_hosts(client: &Client, region: &str, hosts: u64) -> anyhow::Result<()> {
    wait_until(T, &format!("{hosts} hosts in {region}"), || async {
        let s = status(client, region).await?;
        (s.hosts >= hosts).then_some(())
    })
    .await
}

/// Waits until release `id` satisfies `done` (as the global group sees it).
pub async fn wait_release(
    client: &Client,
    id: &str,
    what: &str,
    done: impl Fn(&pb::Release) -> bool,
) -> anyhow::Result<pb::Release> {
    wait_until(T, &format!("release {id}: {what}"), || async {
        let r = client.get_release(id, false).await.ok()?;
        done(&r).then_some(r)
    })
    .await
}

pub fn is_final(r: &pb::Release) -> bool {
    r.state().is_final()
}

/// The region's view of release `id`.
pub async fn region_release(client: &Client, region: &str, id: &str) -> Option<pb::RegionRelease> {
    let s = status(client, region).await?;
    s.releases.into_iter().find(|r| r.id == id)
}

/// Every host of a region, with its goal and what it reports.
pub async fn hosts(client: &Client, region: &str) -> anyhow::Result<Vec<pb::Host>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_hosts(pb::ListHostsRequest {
                region: region.into(),
                page_token: token.clone(),
                ..Default::default()
            })
            .await?;
        out.extend(page.hosts);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// The goal build of `service` on `host` ("" for none).
pub fn goal(host: &pb::Host, service: &str) -> String {
    host.services
        .iter()
        .find(|s| s.service == service)
        .map(|s| s.goal_build_id.clone())
        .unwrap_or_default()
}

/// Waits until build `id` ends (SUCCEEDED, FAILED or CANCELLED) and returns it.
pub async fn wait_build(client: &Client, id: &str, within: Duration) -> anyhow::Result<pb::Build> {
    wait_until(within, &format!("build {id} to end"), || async {
        let b = client.get_build(id, false).await.ok()?;
        b.state().is_final().then_some(b)
    })
    .await
}

/// Builds commits of a fresh repository, one per `tags` entry, and waits until each build
/// SUCCEEDED; returns their ids.
pub async fn succeeded_builds(
    client: &Client,
    dir: &std::path::Path,
    service: &str,
    tags: &[&str],
) -> anyhow::Result<Vec<String>> {
    let repo = GitRepo::init(&dir.join(format!("repo-{service}")))?;
    let script = "mkdir -p out\ncp TAG out/tag\n";
    let mut ids = Vec::new();
    for (i, tag) in tags.iter().enumerate() {
        let files: Vec<(&str, &str)> = if i == 0 {
            vec![("deploy.toml", RECIPE), ("build.sh", script), ("TAG", tag)]
        } else {
            vec![("TAG", tag)]
        };
        let sha = repo.commit(tag, &files)?;
        ids.push(client.submit_build(service, &repo.url(), &sha).await?.id);
    }
    for id in &ids {
        let b = wait_build(client, id, T).await?;
        anyhow::ensure!(
            b.state().name() == "SUCCEEDED",
            "build {id} ended {}: {}",
            b.state().name(),
            b.error
        );
    }
    Ok(ids)
}

/// A service whose build writes `blob_bytes` random bytes and whose health command passes
/// unless the commit's `HEALTHY` file says `no`. Returns the build ids of `versions`.
pub async fn web_builds(
    client: &Client,
    dir: &std::path::Path,
    blob_bytes: u64,
    versions: &[(&str, bool)],
) -> anyhow::Result<Vec<String>> {
    let repo = crate::gitrepo::GitRepo::init(&dir.join("repo-web"))?;
    let recipe = "[build]\ncommand = \"sh build.sh\"\noutputs = [\"out\"]\ntimeout_secs = 120\n\n\
                  [run]\ncommand = \"./out/web\"\nhealth_command = \"grep -q yes out/healthy\"\n";
    let script = format!(
        "mkdir -p out\nhead -c {blob_bytes} /dev/urandom > out/blob\ncp HEALTHY out/healthy\n\
         printf '#!/bin/sh\\necho $DEPLOY_BUILD > answer\\nexec sleep 100000\\n' > out/web\nchmod +x out/web\n"
    );
    let mut ids = Vec::new();
    for (i, (tag, healthy)) in versions.iter().enumerate() {
        let h = if *healthy { "yes\n" } else { "no\n" };
        let mut files = vec![("HEALTHY", h), ("TAG", *tag)];
        if i == 0 {
            files.push(("deploy.toml", recipe));
            files.push(("build.sh", &script));
        }
        let sha = repo.commit(tag, &files)?;
        ids.push(client.submit_build("web", &repo.url(), &sha).await?.id);
    }
    for id in &ids {
        let b = wait_build(client, id, T).await?;
        anyhow::ensure!(b.state().name() == "SUCCEEDED", "{id}: {}", b.error);
    }
    Ok(ids)
}

pub async fn release(
    client: &Client,
    build: &str,
    region: &str,
    strategy: pb::Strategy,
) -> anyhow::Result<pb::Release> {
    let r = client
        .create_release(pb::CreateReleaseRequest {
            service: "web".into(),
            build_id: build.into(),
            regions: vec![region.into()],
            strategy: Some(strategy),
            actor: "tester".into(),
            request_id: String::new(),
        })
        .await?;
    wait_release(client, &r.id, "to end", is_final).await
}

/// Runs operator `action` on release `id` as "tester".
pub async fn act(client: &Client, id: &str, action: &str) -> anyhow::Result<pb::Release> {
    Ok(client
        .release_action(pb::ReleaseActionRequest {
            id: id.into(),
            action: action.into(),
            actor: "tester".into(),
            reason: String::new(),
            request_id: String::new(),
        })
        .await?)
}

/// A process's `/metrics` at `addr` (host:port), parsed; `None` while it does not answer.
pub async fn scrape(
    http: &reqwest::Client,
    addr: &str,
) -> Option<std::collections::BTreeMap<String, f64>> {
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    parse_metrics(&text).ok()
}

/// Every host at once, no canary.
pub fn all_at_once(hosts: u32) -> pb::Strategy {
    pb::Strategy {
        canary: Some("none".into()),
        waves: vec![100],
        max_unavailable_per_rack: Some(hosts),
        min_healthy_ms: Some(200),
        progress_deadline_ms: Some(60_000),
        ..Default::default()
    }
}

/// Parses Prometheus/OpenMetrics text: every sample line is `name{labels} value`, the text
/// ends with `# EOF`. Returns `name{labels}` -> value; `Err` names the first bad line.
pub fn parse_metrics(text: &str) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let mut out = std::collections::BTreeMap::new();
    anyhow::ensure!(text.trim_end().ends_with("# EOF"), "no # EOF at the end");
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| anyhow::anyhow!("no value: {line:?}"))?;
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        anyhow::ensure!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            anyhow::ensure!(series.ends_with('}'), "unclosed labels in {line:?}");
        }
        let v: f64 = value
            .parse()
            .map_err(|_| anyhow::anyhow!("bad value in {line:?}"))?;
        out.insert(series.to_string(), v);
    }
    Ok(out)
}

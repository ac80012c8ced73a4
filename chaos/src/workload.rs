//! The workload: builds submitted (new commits, re-submissions, the same commit through two
//! nodes at once), releases created, operator actions (pause, resume, promote, abort,
//! rollback), and readers, every call recorded in the [`History`]. Each actor draws its
//! choices from its own generator seeded from the run's seed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use deploy_client::Client;
use deploy_proto::v1 as pb;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio_util::sync::CancellationToken;

use crate::history::{BuildObs, History, OpKind, Outcome, ReleaseObs};
use crate::layout::SERVICE;
use crate::scenario::{self, Range};

/// One commit of the sample repository.
#[derive(Debug, Clone)]
pub struct Commit {
    pub sha: String,
    /// Whether its health check passes once deployed.
    pub healthy: bool,
}

const RECIPE: &str =
    "[build]\ncommand = \"sh build.sh\"\noutputs = [\"out\"]\ntimeout_secs = 120\n\n\
[run]\ncommand = \"exec sleep 1000000\"\nhealth_command = \"grep -q yes out/healthy\"\n";
/// A second of work, so that workers are killed mid-build; the output is the commit's data.
const BUILD_SH: &str = "set -e\nsleep 1\nmkdir -p out\ncp blob out/blob\ncp HEALTHY out/healthy\n";

/// A git repository of `n` commits, each with `bytes` bytes of data drawn from `seed`.
pub fn make_repo(
    dir: &Path,
    n: usize,
    bytes: u64,
    unhealthy_pct: u32,
    seed: u64,
) -> anyhow::Result<Vec<Commit>> {
    let repo = test_support::gitrepo::GitRepo::init(dir)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_c0de);
    let mut out = Vec::with_capacity(n);
    let mut blob = vec![0u8; bytes as usize];
    for i in 0..n {
        rng.fill(&mut blob[..]);
        std::fs::write(dir.join("blob"), &blob)?;
        // The first commit is healthy, so there is always a good build to release.
        let healthy = i == 0 || rng.random_range(0..100) >= unhealthy_pct;
        let h = if healthy { "yes\n" } else { "no\n" };
        let mut files = vec![("HEALTHY", h)];
        if i == 0 {
            files.push(("deploy.toml", RECIPE));
            files.push(("build.sh", BUILD_SH));
        }
        let sha = repo
            .commit(&format!("version {i}"), &files)
            .with_context(|| format!("commit {i}"))?;
        out.push(Commit { sha, healthy });
    }
    Ok(out)
}

/// What the workload has learnt of the cluster, to choose its next operations.
#[derive(Default)]
struct Known {
    /// Build id -> (commit, state).
    builds: BTreeMap<String, (String, String)>,
    /// Release id -> state.
    releases: BTreeMap<String, String>,
    /// Commits submitted so far, by index into the commit list.
    submitted: Vec<usize>,
    next_commit: usize,
}

pub struct Workload {
    pub history: Arc<History>,
    cfg: scenario::Workload,
    repo: String,
    commits: Vec<Commit>,
    regions: Vec<String>,
    /// Entry points: (node, client through its proxy). Global nodes first.
    clients: Vec<(String, Arc<Client>)>,
    global: usize,
    known: Mutex<Known>,
    seed: u64,
    tags: std::sync::atomic::AtomicU64,
}

fn draw(rng: &mut ChaCha8Rng, r: Range) -> Duration {
    Duration::from_millis(if r.0 >= r.1 {
        r.0
    } else {
        rng.random_range(r.0..=r.1)
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Workload {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        history: Arc<History>,
        cfg: scenario::Workload,
        repo: String,
        commits: Vec<Commit>,
        regions: Vec<String>,
        clients: Vec<(String, Arc<Client>)>,
        global: usize,
        seed: u64,
    ) -> Self {
        Self {
            history,
            cfg,
            repo,
            commits,
            regions,
            clients,
            global,
            known: Mutex::default(),
            seed,
            tags: Default::default(),
        }
    }

    pub fn commits(&self) -> &[Commit] {
        &self.commits
    }

    fn rng(&self, actor: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ actor)
    }

    /// A node to send to: mostly a global node, sometimes a region's (which forwards).
    fn entry(&self, rng: &mut ChaCha8Rng) -> (String, Arc<Client>) {
        let i = if self.clients.len() > self.global && rng.random_range(0..100) < 20 {
            rng.random_range(self.global..self.clients.len())
        } else {
            rng.random_range(0..self.global.max(1))
        };
        self.clients[i.min(self.clients.len() - 1)].clone()
    }

    fn tag(&self, what: &str) -> String {
        let n = self.tags.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("chaos-{what}-{n}")
    }

    fn learn_build(&self, b: &BuildObs) {
        lock(&self.known)
            .builds
            .insert(b.id.clone(), (b.commit.clone(), b.state.clone()));
    }

    fn learn_release(&self, r: &ReleaseObs) {
        lock(&self.known)
            .releases
            .insert(r.id.clone(), r.state.clone());
    }

    /// Runs one call through `via` and records it: `seen` makes the outcome of an answer
    /// (and teaches the workload what it shows).
    async fn call<T>(
        &self,
        kind: OpKind,
        via: &str,
        call: impl std::future::Future<Output = Result<T, deploy_client::ClientError>>,
        seen: impl FnOnce(&T) -> Outcome,
    ) {
        let started = Instant::now();
        let outcome = match call.await {
            Ok(v) => seen(&v),
            Err(e) => Outcome::from_error(&e),
        };
        self.history.record(kind, via, started, outcome);
    }

    fn saw_build(&self, b: &pb::Build) -> Outcome {
        let obs = BuildObs::from(b);
        self.learn_build(&obs);
        Outcome::Build(obs)
    }

    fn saw_release(&self, r: &pb::Release) -> Outcome {
        let obs = ReleaseObs::from(r);
        self.learn_release(&obs);
        Outcome::Release(obs)
    }

    async fn submit(&self, via: &(String, Arc<Client>), commit: &str) {
        let kind = OpKind::SubmitBuild {
            commit: commit.to_string(),
        };
        let call = via.1.submit_build(SERVICE, &self.repo, commit);
        self.call(kind, &via.0, call, |b| self.saw_build(b)).await;
    }

    async fn get_build(&self, via: &(String, Arc<Client>), id: &str) {
        let kind = OpKind::GetBuild { id: id.to_string() };
        let call = via.1.get_build(id, false);
        self.call(kind, &via.0, call, |b| self.saw_build(b)).await;
    }

    async fn get_release(&self, via: &(String, Arc<Client>), id: &str) {
        let kind = OpKind::GetRelease { id: id.to_string() };
        let call = via.1.get_release(id, false);
        self.call(kind, &via.0, call, |r| self.saw_release(r)).await;
    }

    /// Lists the newest builds or releases: each entry is a read of its object, and the
    /// workload learns of objects whose creating call's answer was lost.
    async fn list(&self, via: &(String, Arc<Client>), releases: bool) {
        if releases {
            let req = pb::ListReleasesRequest {
                page_size: 50,
                ..Default::default()
            };
            let call = via.1.list_releases(req);
            self.call(OpKind::ListReleases, &via.0, call, |r| {
                let obs: Vec<ReleaseObs> = r.releases.iter().map(ReleaseObs::from).collect();
                obs.iter().for_each(|x| self.learn_release(x));
                Outcome::Releases { releases: obs }
            })
            .await;
        } else {
            let req = pb::ListBuildsRequest {
                page_size: 50,
                ..Default::default()
            };
            let call = via.1.list_builds(req);
            self.call(OpKind::ListBuilds, &via.0, call, |r| {
                let obs: Vec<BuildObs> = r.builds.iter().map(BuildObs::from).collect();
                obs.iter().for_each(|x| self.learn_build(x));
                Outcome::Builds { builds: obs }
            })
            .await;
        }
    }

    /// Runs `action` on release `id` through `via`, tagged as its own actor.
    pub async fn act(&self, via: &(String, Arc<Client>), id: &str, action: &str, tag: String) {
        let req = pb::ReleaseActionRequest {
            id: id.to_string(),
            action: action.to_string(),
            actor: tag.clone(),
            request_id: String::new(),
            reason: String::new(),
        };
        let kind = OpKind::ReleaseAction {
            release: id.to_string(),
            action: action.to_string(),
            tag,
        };
        let call = via.1.release_action(req);
        self.call(kind, &via.0, call, |r| self.saw_release(r)).await;
    }

    /// Submits builds until `stop`.
    pub async fn builder(self: Arc<Self>, stop: CancellationToken) {
        let mut rng = self.rng(1);
        loop {
            let pause = draw(&mut rng, self.cfg.build_every_ms);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return,
            }
            let (index, again) = {
                let mut k = lock(&self.known);
                let resubmit = !k.submitted.is_empty()
                    && (rng.random_range(0..100) < 20 || k.next_commit >= self.commits.len());
                if resubmit {
                    let i = k.submitted[rng.random_range(0..k.submitted.len())];
                    (i, true)
                } else {
                    let i = k.next_commit;
                    k.next_commit += 1;
                    k.submitted.push(i);
                    (i, false)
                }
            };
            let Some(commit) = self.commits.get(index).map(|c| c.sha.clone()) else {
                continue;
            };
            // Now and then the same new commit through two nodes at once: one build.
            if !again && rng.random_range(0..100) < self.cfg.same_commit_twice_pct {
                let a = self.entry(&mut rng);
                let b = self.entry(&mut rng);
                let (me, c) = (self.clone(), commit.clone());
                let other = tokio::spawn(async move { me.submit(&b, &c).await });
                self.submit(&a, &commit).await;
                let _ = other.await;
            } else {
                let via = self.entry(&mut rng);
                self.submit(&via, &commit).await;
            }
        }
    }

    /// Creates releases of builds known to have succeeded, until `stop`.
    pub async fn releaser(self: Arc<Self>, stop: CancellationToken) {
        let mut rng = self.rng(2);
        loop {
            let pause = draw(&mut rng, self.cfg.release_every_ms);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return,
            }
            let candidates: Vec<String> = lock(&self.known)
                .builds
                .iter()
                .filter(|(_, (_, state))| state == "SUCCEEDED")
                .map(|(id, _)| id.clone())
                .collect();
            if candidates.is_empty() {
                continue;
            }
            // Mostly the newest, sometimes an older one (a roll forward to it).
            let newest = candidates
                .iter()
                .max_by_key(|id| id[2..].parse::<u64>().unwrap_or(0))
                .cloned()
                .unwrap_or_default();
            let build = if rng.random_range(0..100) < 70 {
                newest
            } else {
                candidates[rng.random_range(0..candidates.len())].clone()
            };
            let at_once = rng.random_range(1..=self.regions.len().max(1)) as u32;
            let strategy = pb::Strategy {
                canary: Some("first-rack".into()),
                waves: vec![100],
                max_unavailable_per_rack: Some(1),
                failure_threshold_pct: Some(0),
                min_healthy_ms: Some(1_000),
                progress_deadline_ms: Some(60_000),
                regions_at_once: Some(at_once),
                auto_rollback: Some(true),
                halt_all_on_failure: Some(true),
            };
            let tag = self.tag("create");
            let via = self.entry(&mut rng);
            let req = pb::CreateReleaseRequest {
                service: SERVICE.into(),
                build_id: build.clone(),
                regions: self.regions.clone(),
                strategy: Some(strategy),
                actor: tag.clone(),
                request_id: String::new(),
            };
            let call = via.1.create_release(req);
            let kind = OpKind::CreateRelease { build, tag };
            self.call(kind, &via.0, call, |r| self.saw_release(r)).await;
        }
    }

    /// Pauses, resumes, promotes, aborts and rolls back releases, until `stop`.
    pub async fn operator(self: Arc<Self>, stop: CancellationToken) {
        let mut rng = self.rng(3);
        loop {
            let pause = draw(&mut rng, self.cfg.action_every_ms);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return,
            }
            let live: Vec<(String, String)> = lock(&self.known)
                .releases
                .iter()
                .filter(|(_, s)| matches!(s.as_str(), "ROLLING_OUT" | "PAUSED" | "PENDING"))
                .map(|(id, s)| (id.clone(), s.clone()))
                .collect();
            if live.is_empty() {
                continue;
            }
            let (id, state) = live[rng.random_range(0..live.len())].clone();
            let roll = rng.random_range(0..100);
            let action = if state == "PAUSED" {
                match roll {
                    0..70 => "resume",
                    70..80 => "promote",
                    80..90 => "rollback",
                    _ => "abort",
                }
            } else {
                match roll {
                    0..40 => "pause",
                    40..65 => "promote",
                    65..80 => "rollback",
                    80..90 => "abort",
                    _ => "resume",
                }
            };
            let via = self.entry(&mut rng);
            let tag = self.tag("act");
            self.act(&via, &id, action, tag).await;
        }
    }

    /// Reads builds and releases, linearizably, until `stop`.
    pub async fn reader(self: Arc<Self>, n: u64, stop: CancellationToken) {
        let mut rng = self.rng(100 + n);
        loop {
            let pause = draw(&mut rng, self.cfg.read_every_ms);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return,
            }
            let (builds, releases): (Vec<String>, Vec<String>) = {
                let k = lock(&self.known);
                (
                    k.builds.keys().cloned().collect(),
                    k.releases.keys().cloned().collect(),
                )
            };
            let via = self.entry(&mut rng);
            if rng.random_range(0..100) < 10 {
                let of_releases = rng.random_range(0..2) == 0;
                self.list(&via, of_releases).await;
            } else if !releases.is_empty() && (builds.is_empty() || rng.random_range(0..2) == 0) {
                let id = releases[rng.random_range(0..releases.len())].clone();
                self.get_release(&via, &id).await;
            } else if !builds.is_empty() {
                let id = builds[rng.random_range(0..builds.len())].clone();
                self.get_build(&via, &id).await;
            }
        }
    }

    /// Every actor, until `stop`; returns once each has ended its last call.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tasks = vec![
            tokio::spawn(self.clone().builder(stop.clone())),
            tokio::spawn(self.clone().releaser(stop.clone())),
            tokio::spawn(self.clone().operator(stop.clone())),
        ];
        for n in 0..self.cfg.readers as u64 {
            tasks.push(tokio::spawn(self.clone().reader(n, stop.clone())));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// The operator's last word once the faults heal: every paused release resumed, so
    /// that each can end. Returns how many it resumed.
    pub async fn resume_paused(&self, releases: &[pb::Release]) -> usize {
        let mut n = 0;
        for r in releases.iter().filter(|r| r.state().name() == "PAUSED") {
            let via = self.clients[0].clone();
            let tag = self.tag("finish");
            self.act(&via, &r.id, "resume", tag).await;
            n += 1;
        }
        n
    }
}

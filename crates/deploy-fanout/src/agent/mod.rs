//! The host agent: follows its goal, installs releases safely, runs and health-checks them.
//!
//! Layout under the root:
//! - `chunks/<hex>`: verified chunks (written to a temp name, fsynced, then renamed; hashed
//!   again before a later install uses them);
//! - `services/<s>/releases/<build>/`: unpacked releases; `.partial-<build>` while unpacking;
//! - `services/<s>/current`: a symlink to the running release, replaced by rename;
//! - `services/<s>/pid`: the service's process group, `<pid> <start time> <build>`;
//! - `services/<s>/logs/<build>.log`: its output;
//! - `peer.addr`: where it serves its verified chunks to its rack's peers (see `peers`).
//!
//! A kill at any point leaves `current` on a complete release: a release directory appears
//! only by renaming a fully unpacked and verified one, and `current` changes by renaming a
//! new symlink over it. On start the agent removes partial directories, adopts the service
//! process if it still runs, and starts it from `current` if not.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deploy_artifact::recipe::{parse_run_toml, RunSection};
use deploy_artifact::{Manifest, TrustedKeys};
use deploy_proto::v1 as pb;
use deploy_types::Digest;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bucket::{Bucket, Nic};
use crate::cache::{digest_off_thread, write_durably};
use crate::fetch;
use crate::relay::{AgentReport, GoalReply, HostGoal, ServiceState};
use crate::service;
use crate::unpack::unpack;

mod peers;
pub use peers::PEER_ADDR_FILE;

/// Releases kept per service (the running one included).
pub const KEEP_RELEASES: usize = 3;
/// How long a started service may fail its health check before it counts as unhealthy.
const START_GRACE: Duration = Duration::from_secs(3);
const HEALTH_EVERY: Duration = Duration::from_millis(500);
const POLL_WAIT_MS: u64 = 10_000;
/// With no relay of its rack answering, how often the agent asks the region itself.
const DIRECT_EVERY: Duration = Duration::from_secs(2);
/// How long a failed install of a goal waits before it is tried again.
const RETRY_FAILED: Duration = Duration::from_secs(10);
/// How long fetching keeps retrying when every source is unreachable.
const FETCH_PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub id: String,
    pub region: String,
    pub rack: String,
    pub root: PathBuf,
    /// Relays to ask, in order: its rack's first, then the region's others.
    pub relays: Vec<String>,
    /// How many of `relays` serve this host's rack: only those know its goals and take its
    /// reports (the others serve data).
    pub rack_relays: usize,
    /// The region's nodes, whose HTTP serves the store: the last fallback for data.
    pub stores: Vec<String>,
    pub trusted: TrustedKeys,
    /// Verify and record, but start no process (for scale tests).
    pub sim: bool,
    pub down_limit: Option<u64>,
    /// The host's network card: every download draws from its ingress, under `down_limit`.
    pub nic: Nic,
    pub max_chunk_bytes: usize,
    /// Test hook: pause (so a test can kill the agent) at `unpack`, `switch` or `health`.
    pub failpoint: Option<String>,
    /// Plain TCP, or mutual TLS with the host's certificate.
    pub transport: deploy_tls::Transport,
    /// Where the host serves its chunks to its rack's peers (`host:port`; port 0 picks one);
    /// `None`: it serves nobody (it still takes chunks from peers).
    pub peer_listen: Option<String>,
    /// The address peers reach that server at, when it differs from what it bound.
    pub peer_advertise: Option<String>,
    /// What the host may upload to its peers, bytes per second, within its NIC's egress.
    pub peer_upload: Option<u64>,
    /// Who may fetch chunks from it on a secure cluster: its rack's hosts and relays.
    pub peer_allowed: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct Svc {
    build_id: String,
    state: pb::ServiceState,
    detail: String,
    pid: Option<service::Proc>,
    started: Option<Instant>,
    run: Option<RunSection>,
    dir: PathBuf,
    /// When its last install failed.
    failed_at: Option<Instant>,
}

pub struct Agent {
    opts: AgentOptions,
    http: reqwest::Client,
    /// The region's nodes, asked directly when no relay answers.
    direct: Option<deploy_client::Client>,
    down: Bucket,
    services: Mutex<BTreeMap<String, Svc>>,
    changed: Notify,
    /// The intra-rack exchange: its chunk server and counters.
    pub peers: peers::PeerState,
    /// Installs started and failed, and whether a goal was ever heard (for `/metrics`).
    pub installs: std::sync::atomic::AtomicU64,
    pub install_failures: std::sync::atomic::AtomicU64,
    pub heard: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agent {
    pub fn new(opts: AgentOptions) -> Arc<Self> {
        let direct = match &opts.transport {
            deploy_tls::Transport::Plain => deploy_client::Client::new(&opts.stores),
            deploy_tls::Transport::Tls(m) => {
                deploy_client::Client::secure(&opts.stores, m.tonic_client())
            }
        }
        .ok()
        .map(|c| c.with_timeout(Duration::from_secs(5)));
        Arc::new(Self {
            direct,
            http: fetch::client(&opts.transport),
            down: opts.nic.receiving(opts.down_limit),
            services: Mutex::default(),
            changed: Notify::new(),
            peers: peers::PeerState::new(&opts),
            installs: Default::default(),
            install_failures: Default::default(),
            heard: Default::default(),
            opts,
        })
    }

    fn svc_dir(&self, service: &str) -> PathBuf {
        self.opts.root.join("services").join(service)
    }

    fn set(&self, service: &str, f: impl FnOnce(&mut Svc)) {
        f(lock(&self.services).entry(service.to_string()).or_default());
        self.changed.notify_one();
    }

    /// What the agent reports for itself.
    pub fn report(&self) -> AgentReport {
        AgentReport {
            host: self.opts.id.clone(),
            services: lock(&self.services)
                .iter()
                .map(|(s, v)| ServiceState {
                    service: s.clone(),
                    build_id: v.build_id.clone(),
                    state: v.state,
                    detail: v.detail.clone(),
                })
                .collect(),
            peer: self.peer_info(),
        }
    }

    /// The service processes this agent runs.
    pub fn pids(&self) -> Vec<service::Proc> {
        lock(&self.services)
            .values()
            .filter_map(|v| v.pid)
            .collect()
    }

    /// Stops every service process this agent runs (for `deployd dev` shutting down; a real
    /// agent leaves them running when it stops).
    pub async fn stop_services(&self) {
        let pids: Vec<service::Proc> = lock(&self.services)
            .values()
            .filter_map(|v| v.pid)
            .collect();
        for pid in pids {
            service::stop(pid, Duration::from_secs(3)).await;
        }
    }

    /// Runs until `stop`: restores what the root holds, then follows the goal.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        if let Err(e) = self.restore().await {
            warn!(host = %self.opts.id, error = %e, "cannot restore the services on disk");
        }
        let me = self.clone();
        let serving = stop.clone();
        tokio::spawn(async move { me.serve_peers(serving).await });
        tokio::spawn(self.clone().reporter(stop.clone()));
        if !self.opts.sim {
            tokio::spawn(self.clone().health(stop.clone()));
        }
        let mut version = 0;
        let mut relay = 0usize;
        let rack_relays = self
            .opts
            .rack_relays
            .clamp(1, self.opts.relays.len().max(1));
        while !stop.is_cancelled() {
            let polled = tokio::select! {
                r = self.poll(relay % rack_relays, version) => r,
                _ = stop.cancelled() => return,
            };
            let (reply, direct) = match polled {
                Ok(r) => (r, false),
                Err(e) => {
                    relay += 1;
                    if !relay.is_multiple_of(rack_relays) {
                        continue;
                    }
                    // No relay of the rack answers: report to the region's nodes directly,
                    // which answer with this host's goals (no rack-level pacing then).
                    warn!(host = %self.opts.id, error = %e, "no relay of the rack answers; asking the region directly");
                    match self.ask_region().await {
                        Ok(r) => (r, true),
                        Err(e) => {
                            warn!(host = %self.opts.id, error = %e, "the region does not answer either");
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                                _ = stop.cancelled() => return,
                            }
                            continue;
                        }
                    }
                }
            };
            version = reply.version;
            self.heard.store(true, std::sync::atomic::Ordering::Relaxed);
            if reply.known {
                self.retire_unwanted(&reply.services).await;
            }
            for goal in reply.goals {
                let skip = lock(&self.services).get(&goal.service).is_some_and(|s| {
                    s.build_id == goal.build_id
                        && (s.state != pb::ServiceState::Failed
                            || s.failed_at.is_some_and(|t| t.elapsed() < RETRY_FAILED))
                });
                if skip {
                    continue;
                }
                self.installs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let install = self.clone().install(goal.clone());
                let done = tokio::select! {
                    r = install => r,
                    _ = stop.cancelled() => return,
                };
                if let Err(e) = done {
                    self.install_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    warn!(host = %self.opts.id, service = %goal.service, build = %goal.build_id, error = %e, "install failed");
                    self.set(&goal.service, |s| {
                        s.build_id = goal.build_id.clone();
                        s.state = pb::ServiceState::Failed;
                        s.detail = e;
                        s.failed_at = Some(Instant::now());
                    });
                }
            }
            if direct {
                // The region answered at once; ask again in a while, not in a loop.
                tokio::select! {
                    _ = tokio::time::sleep(DIRECT_EVERY) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }

    /// Stops every service the region no longer wants on this host (the rollback of its
    /// first release here): its process ends and `current` goes, so a restart starts nothing;
    /// its releases stay on disk for a fast return.
    async fn retire_unwanted(&self, wanted: &[String]) {
        let unwanted: Vec<(String, Option<service::Proc>)> = lock(&self.services)
            .iter()
            .filter(|(s, _)| !wanted.contains(s))
            .map(|(s, v)| (s.clone(), v.pid))
            .collect();
        for (service, pid) in unwanted {
            if let Some(pid) = pid {
                service::stop(pid, Duration::from_secs(3)).await;
            }
            let sdir = self.svc_dir(&service);
            let _ = std::fs::remove_file(sdir.join("current"));
            let _ = std::fs::remove_file(sdir.join("pid"));
            lock(&self.services).remove(&service);
            self.changed.notify_one();
            info!(host = %self.opts.id, %service, "stopped the service: its region wants nothing of it here");
        }
    }

    /// Reports this host to the region's leader and takes its goals from the answer.
    async fn ask_region(&self) -> Result<GoalReply, String> {
        let client = self.direct.as_ref().ok_or("no region nodes configured")?;
        let req = deploy_proto::v1::ReportRackRequest {
            relay: String::new(),
            region: self.opts.region.clone(),
            rack: self.opts.rack.clone(),
            hosts: vec![self.report().to_proto()],
        };
        let reply = client.report_rack(req).await.map_err(|e| e.to_string())?;
        let mine: Vec<deploy_proto::v1::HostGoals> = reply
            .hosts
            .into_iter()
            .filter(|h| h.host == self.opts.id)
            .collect();
        let known = mine.iter().any(|h| h.registered);
        let goals: Vec<HostGoal> = mine
            .into_iter()
            .flat_map(|h| HostGoal::all_from_proto(h.goals))
            .map(|g| g.goal)
            .collect();
        Ok(GoalReply {
            version: 0,
            services: goals.iter().map(|g| g.service.clone()).collect(),
            goals,
            report_every_ms: 1000,
            known,
        })
    }

    async fn poll(&self, relay: usize, version: u64) -> Result<GoalReply, String> {
        let addr = self
            .opts
            .relays
            .get(relay % self.opts.relays.len().max(1))
            .ok_or("no relay configured")?;
        let url = format!(
            "{}/v1/goal?host={}&version={version}&wait_ms={POLL_WAIT_MS}",
            fetch::base(addr),
            self.opts.id
        );
        let body = fetch::get_bounded(&self.http, &url, 1024 * 1024, None).await?;
        serde_json::from_slice(&body).map_err(|e| format!("bad goal reply: {e}"))
    }

    async fn reporter(self: Arc<Self>, stop: CancellationToken) {
        let mut relay = 0usize;
        while !stop.is_cancelled() {
            let body = serde_json::to_vec(&self.report()).unwrap_or_default();
            let n = self
                .opts
                .rack_relays
                .clamp(1, self.opts.relays.len().max(1));
            for _ in 0..n {
                let Some(addr) = self.opts.relays.get(relay % n) else {
                    break;
                };
                let sent = self
                    .http
                    .post(format!("{}/v1/report", fetch::base(addr)))
                    .timeout(Duration::from_secs(3))
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => break,
                    _ => relay += 1,
                }
            }
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Where data comes from: the relays, then the store through the region's nodes.
    fn sources(&self) -> Vec<String> {
        self.opts
            .relays
            .iter()
            .chain(self.opts.stores.iter())
            .map(|a| fetch::base(a))
            .collect()
    }

    async fn failpoint(&self, step: &str) {
        if self.opts.failpoint.as_deref() == Some(step) {
            let marker = self.opts.root.join(format!("failpoint-{step}"));
            let _ = std::fs::write(&marker, b"");
            warn!(host = %self.opts.id, step, "failpoint: pausing");
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }

    async fn fetch_manifest(&self, digest: &Digest) -> Result<Manifest, String> {
        let started = Instant::now();
        loop {
            match fetch::manifest(&self.http, &self.sources(), digest, &self.opts.trusted).await {
                Ok(m) => return Ok(m),
                Err(e) if started.elapsed() < FETCH_PATIENCE => {
                    warn!(host = %self.opts.id, error = %e, "manifest not fetched yet");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Every chunk of `m` in `chunks/`, verified: one left by an earlier run is hashed
    /// again, and fetched anew if it no longer matches (a crash or a bad disk).
    async fn fetch_chunks(self: &Arc<Self>, m: &Manifest) -> Result<Vec<PathBuf>, String> {
        let dir = self.opts.root.join("chunks");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| e.to_string())?;
        let paths: Vec<PathBuf> = m.chunks.iter().map(|c| dir.join(c.digest.hex())).collect();
        let mut have = Vec::with_capacity(paths.len());
        for (c, path) in m.chunks.iter().zip(&paths) {
            have.push(holds(path, &c.digest).await);
        }
        // The rack's exchange first (when its relay plans one); then, for whatever it left,
        // the relays and the store in order.
        if self.opts.rack_relays > 0 && have.iter().any(|h| !h) {
            self.exchange(m, &paths, &mut have).await;
        }
        for ((c, path), held) in m.chunks.iter().zip(&paths).zip(have) {
            if !held {
                let started = Instant::now();
                let data = loop {
                    match fetch::chunk(
                        &self.http,
                        &self.sources(),
                        &c.digest,
                        self.opts.max_chunk_bytes,
                        &self.down,
                    )
                    .await
                    {
                        Ok(d) => break d,
                        Err(e) if started.elapsed() < FETCH_PATIENCE => {
                            warn!(host = %self.opts.id, error = %e, "chunk not fetched yet");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                };
                self.keep_chunk(path, data).await?;
            }
        }
        Ok(paths)
    }

    /// Installs and starts `goal`; every step is reported.
    async fn install(self: Arc<Self>, goal: HostGoal) -> Result<(), String> {
        let s = goal.service.clone();
        info!(host = %self.opts.id, service = %s, build = %goal.build_id, "installing");
        self.set(&s, |v| {
            v.build_id = goal.build_id.clone();
            v.state = pb::ServiceState::Downloading;
            v.detail.clear();
        });
        let m = self.fetch_manifest(&goal.artifact_digest).await?;
        if m.service != s {
            return Err(format!(
                "the manifest is of service {:?}, not {s:?}",
                m.service
            ));
        }
        let chunks = self.fetch_chunks(&m).await?;
        if self.opts.sim {
            let rec = self.opts.root.join("sim");
            let _ = std::fs::create_dir_all(&rec);
            let _ = std::fs::write(
                rec.join(&s),
                format!("{} {}\n", goal.build_id, m.artifact_digest),
            );
            self.set(&s, |v| v.state = pb::ServiceState::Healthy);
            return Ok(());
        }
        self.set(&s, |v| v.state = pb::ServiceState::Installing);
        let releases = self.svc_dir(&s).join("releases");
        let dir = releases.join(&goal.build_id);
        if !dir.exists() {
            std::fs::create_dir_all(&releases).map_err(|e| e.to_string())?;
            let partial = releases.join(format!(".partial-{}", goal.build_id));
            let _ = std::fs::remove_dir_all(&partial);
            let (digest, size) = (m.artifact_digest, m.size);
            let target = partial.clone();
            tokio::task::spawn_blocking(move || {
                let readers: Vec<std::fs::File> = chunks
                    .iter()
                    .map(std::fs::File::open)
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?;
                let stream = readers
                    .into_iter()
                    .fold(Box::new(std::io::empty()) as Box<dyn Read>, |acc, f| {
                        Box::new(acc.chain(f))
                    });
                unpack(stream, &target, &digest, size).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())??;
            self.failpoint("unpack").await;
            std::fs::rename(&partial, &dir).map_err(|e| e.to_string())?;
        }
        let run = std::fs::read_to_string(dir.join(".deploy/run.toml"))
            .map_err(|e| format!("the release has no .deploy/run.toml: {e}"))
            .and_then(|t| parse_run_toml(&t).map_err(|e| e.to_string()))?;
        self.switch(&s, &goal.build_id).await?;
        self.start(&s, &goal.build_id, &dir, run).await?;
        self.prune(&s, &goal.build_id);
        Ok(())
    }

    /// Points `current` at the release: a new symlink renamed over the old one.
    async fn switch(&self, service: &str, build: &str) -> Result<(), String> {
        let sdir = self.svc_dir(service);
        let next = sdir.join("current.next");
        let _ = std::fs::remove_file(&next);
        std::os::unix::fs::symlink(Path::new("releases").join(build), &next)
            .map_err(|e| e.to_string())?;
        self.failpoint("switch").await;
        std::fs::rename(&next, sdir.join("current")).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Stops the running process (if any) and starts the release's.
    async fn start(
        &self,
        service: &str,
        build: &str,
        dir: &Path,
        run: RunSection,
    ) -> Result<(), String> {
        let old = lock(&self.services).get(service).and_then(|v| v.pid);
        if let Some(pid) = old {
            service::stop(pid, Duration::from_secs(3)).await;
        }
        let sdir = self.svc_dir(service);
        let log = sdir.join("logs").join(format!("{build}.log"));
        let proc = service::start(
            &run,
            dir,
            &log,
            &[
                ("DEPLOY_SERVICE", service),
                ("DEPLOY_BUILD", build),
                ("DEPLOY_HOST", &self.opts.id),
            ],
        )
        .map_err(|e| format!("cannot start {:?}: {e}", run.command))?;
        service::PidFile {
            proc,
            build: build.to_string(),
        }
        .write(&sdir.join("pid"))
        .map_err(|e| e.to_string())?;
        info!(host = %self.opts.id, %service, %build, pid = proc.pid, "started");
        self.set(service, |v| {
            v.build_id = build.to_string();
            v.state = pb::ServiceState::Starting;
            v.detail.clear();
            v.pid = Some(proc);
            v.started = Some(Instant::now());
            v.run = Some(run);
            v.dir = dir.to_path_buf();
        });
        self.failpoint("health").await;
        Ok(())
    }

    /// Keeps the newest releases (and the running one), removes the rest.
    fn prune(&self, service: &str, running: &str) {
        let releases = self.svc_dir(service).join("releases");
        let Ok(entries) = std::fs::read_dir(&releases) else {
            return;
        };
        let mut dirs: Vec<(std::time::SystemTime, PathBuf, String)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let when = e.metadata().and_then(|m| m.modified()).ok()?;
                (!name.starts_with('.')).then(|| (when, e.path(), name))
            })
            .collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
        for (_, path, name) in dirs.into_iter().skip(KEEP_RELEASES) {
            if name != running {
                let _ = std::fs::remove_dir_all(path);
            }
        }
    }

    /// Picks up what the root holds after a restart: removes partial unpacks, adopts a
    /// running service or starts it again from `current`.
    async fn restore(&self) -> Result<(), String> {
        let services = self.opts.root.join("services");
        let Ok(entries) = std::fs::read_dir(&services) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let service = e.file_name().to_string_lossy().into_owned();
            let sdir = e.path();
            if let Ok(rel) = std::fs::read_dir(sdir.join("releases")) {
                for r in rel.flatten() {
                    if r.file_name().to_string_lossy().starts_with(".partial-") {
                        let _ = std::fs::remove_dir_all(r.path());
                    }
                }
            }
            let _ = std::fs::remove_file(sdir.join("current.next"));
            let Ok(target) = std::fs::read_link(sdir.join("current")) else {
                continue;
            };
            let Some(build) = target.file_name().map(|b| b.to_string_lossy().into_owned()) else {
                continue;
            };
            let dir = sdir.join("releases").join(&build);
            if self.opts.sim {
                self.set(&service, |v| {
                    v.build_id = build.clone();
                    v.state = pb::ServiceState::Healthy;
                });
                continue;
            }
            let run = std::fs::read_to_string(dir.join(".deploy/run.toml"))
                .map_err(|e| e.to_string())
                .and_then(|t| parse_run_toml(&t).map_err(|e| e.to_string()));
            let run = match run {
                Ok(r) => r,
                Err(e) => {
                    warn!(%service, %build, error = %e, "current release unreadable");
                    continue;
                }
            };
            // Only the very process the file names: the same pid, started at the same time.
            // A pid whose process ended may have been given to another since.
            let adopted = service::PidFile::read(&sdir.join("pid"))
                .filter(|f| f.build == build && f.proc.alive())
                .map(|f| f.proc);
            match adopted {
                Some(pid) => {
                    info!(%service, %build, pid = pid.pid, "adopted the running service");
                    self.set(&service, |v| {
                        v.build_id = build.clone();
                        v.state = pb::ServiceState::Starting;
                        v.pid = Some(pid);
                        v.started = Some(Instant::now());
                        v.run = Some(run);
                        v.dir = dir.clone();
                    });
                }
                None => {
                    info!(%service, %build, "starting the current release again");
                    self.start(&service, &build, &dir, run).await?;
                }
            }
        }
        Ok(())
    }

    /// Checks every running service's process and health.
    async fn health(self: Arc<Self>, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let running: Vec<(String, Svc)> = lock(&self.services)
                .iter()
                .filter(|(_, v)| v.pid.is_some() && v.run.is_some())
                .map(|(s, v)| (s.clone(), v.clone()))
                .collect();
            for (s, v) in running {
                self.check_service(&s, v).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(HEALTH_EVERY) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Checks the process and health of `service` as `v` (a snapshot) saw it.
    async fn check_service(&self, s: &str, v: Svc) {
        let (Some(pid), Some(run)) = (v.pid, v.run.as_ref()) else {
            return;
        };
        if matches!(
            v.state,
            pb::ServiceState::Downloading | pb::ServiceState::Installing | pb::ServiceState::Failed
        ) {
            return;
        }
        // The verdict is on this snapshot's process; by the time it is in, an install may
        // have begun (and be stopping that very process to start the next one), which owns
        // the state until it starts its process: judge nothing then.
        let still = |x: &Svc| {
            x.pid == Some(pid)
                && !matches!(
                    x.state,
                    pb::ServiceState::Downloading
                        | pb::ServiceState::Installing
                        | pb::ServiceState::Failed
                )
        };
        let ended =
            service::reap(pid.pid).or_else(|| (!pid.alive()).then(|| "is gone".to_string()));
        if let Some(how) = ended {
            self.set(s, |x| {
                if still(x) {
                    x.state = pb::ServiceState::Failed;
                    x.detail = format!("the service process {how}");
                    x.pid = None;
                }
            });
            return;
        }
        let verdict = service::check(run, &v.dir, &self.http).await;
        self.set(s, |x| {
            if !still(x) {
                return;
            }
            match &verdict {
                Ok(()) => {
                    x.state = pb::ServiceState::Healthy;
                    x.detail.clear();
                }
                Err(why) => {
                    let young = x.started.is_some_and(|t| t.elapsed() < START_GRACE);
                    if !(x.state == pb::ServiceState::Starting && young) {
                        x.state = pb::ServiceState::Unhealthy;
                    }
                    x.detail = why.clone();
                }
            }
        });
    }
}

/// Whether `path` holds the bytes of `digest` (a missing or unreadable file does not).
async fn holds(path: &Path, digest: &Digest) -> bool {
    match tokio::fs::read(path).await {
        Ok(data) => digest_off_thread(data).await.is_ok_and(|d| d == *digest),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(root: &Path) -> Arc<Agent> {
        Agent::new(AgentOptions {
            id: "h1".into(),
            region: "east".into(),
            rack: "rack-1".into(),
            root: root.to_path_buf(),
            relays: Vec::new(),
            rack_relays: 0,
            stores: Vec::new(),
            trusted: TrustedKeys::parse::<&str>(&[]).expect("no keys"),
            sim: false,
            down_limit: None,
            nic: Nic::unlimited(),
            max_chunk_bytes: 1 << 20,
            failpoint: None,
            transport: deploy_tls::Transport::Plain,
            peer_listen: None,
            peer_advertise: None,
            peer_upload: None,
            peer_allowed: Vec::new(),
        })
    }

    /// A process that has exited, so it is no longer alive.
    fn dead_pid() -> service::Proc {
        let mut c = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = service::Proc::of(c.id()).expect("a child not yet reaped exists");
        c.wait().expect("wait");
        pid
    }

    #[tokio::test]
    async fn a_check_on_a_process_an_install_is_replacing_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = agent(dir.path());
        let pid = dead_pid();
        let run = parse_run_toml("[run]\ncommand = \"true\"\n").expect("run section");
        let snapshot = Svc {
            build_id: "b-1".into(),
            state: pb::ServiceState::Healthy,
            pid: Some(pid),
            run: Some(run),
            dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        // The install of b-2 began after the snapshot: it stops b-1's process itself.
        a.set("web", |x| {
            *x = Svc {
                build_id: "b-2".into(),
                state: pb::ServiceState::Installing,
                ..snapshot.clone()
            }
        });
        a.check_service("web", snapshot.clone()).await;
        let now = lock(&a.services)["web"].clone();
        assert_eq!(
            now.state,
            pb::ServiceState::Installing,
            "b-2 was not failed for b-1's process"
        );
        // With no install in the way, a gone process is a failure.
        a.set("web", |x| *x = snapshot.clone());
        a.check_service("web", snapshot).await;
        let now = lock(&a.services)["web"].clone();
        assert_eq!(now.state, pb::ServiceState::Failed);
        assert!(now.detail.contains("gone"), "{}", now.detail);
    }

    /// An unrelated process that leads its own process group, as a service would: what a
    /// reused pid may name after the service ended.
    fn stranger() -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .expect("spawn sleep")
    }

    #[tokio::test]
    async fn a_restarted_agent_adopts_and_signals_only_the_process_it_started() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sdir = dir.path().join("services/web");
        let release = sdir.join("releases/b-1");
        std::fs::create_dir_all(release.join(".deploy")).expect("release dir");
        std::fs::write(
            release.join(".deploy/run.toml"),
            "[run]\ncommand = \"exec sleep 60\"\n",
        )
        .expect("run.toml");
        std::os::unix::fs::symlink("releases/b-1", sdir.join("current")).expect("current");
        let mut other = stranger();
        let theirs = service::Proc::of(other.id()).expect("the stranger runs");
        // Pid files naming the stranger: the old format (no start time), and one whose start
        // time is not the stranger's (its pid was reused after the service ended).
        for text in [
            format!("{} b-1\n", theirs.pid),
            format!("{} {} b-1\n", theirs.pid, theirs.started + 1),
        ] {
            std::fs::write(sdir.join("pid"), &text).expect("pid file");
            let a = agent(dir.path());
            a.restore().await.expect("restore");
            let ours = lock(&a.services)["web"].pid.expect("a service process");
            assert_ne!(ours.pid, theirs.pid, "adopted a stranger from {text:?}");
            let file = service::PidFile::read(&sdir.join("pid")).expect("a new pid file");
            assert_eq!(file.proc, ours);
            assert_eq!(file.build, "b-1");
            a.stop_services().await;
            assert!(!ours.alive(), "the agent stops the process it started");
            assert!(theirs.alive(), "the stranger was signalled");
        }
        // Its own process, recorded with its start time, is adopted after a restart.
        let a = agent(dir.path());
        let mut again = service::PidFile::read(&sdir.join("pid")).expect("pid file");
        again.proc = theirs;
        again.write(&sdir.join("pid")).expect("pid file");
        a.restore().await.expect("restore");
        assert_eq!(lock(&a.services)["web"].pid, Some(theirs));
        // A stale record of it (same pid, another start) is never signalled.
        service::kill_now(service::Proc {
            started: theirs.started + 1,
            ..theirs
        });
        assert!(theirs.alive());
        service::kill_now(theirs);
        let _ = other.wait();
        assert!(!theirs.alive());
    }
}

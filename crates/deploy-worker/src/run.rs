//! The worker loop: register, acquire, build under a lease, report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_artifact::pack::{pack, PackInfo};
use deploy_artifact::{KeyPair, Recipe, Store};
use deploy_proto::v1::worker_service_client::WorkerServiceClient;
use deploy_proto::v1::{
    AcquireBuildReply, AcquireBuildRequest, CompleteBuildRequest, RegisterWorkerRequest,
    RenewLeaseRequest,
};
use deploy_types::BuildSettings;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, instrument, warn};

use crate::exec::{self, ExecOutcome};
use crate::git::{self, GitError, MirrorCache};
use crate::logs;

/// How a worker is set up.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub id: String,
    pub region: String,
    /// Coordinator addresses (`host:port`); any of them forwards to the leader.
    pub endpoints: Vec<String>,
    /// Mirrors and scratch directories live here.
    pub work_dir: PathBuf,
    pub settings: BuildSettings,
    /// Plain TCP, or mutual TLS with the worker's certificate.
    pub transport: deploy_tls::Transport,
}

pub struct Worker {
    opts: WorkerOptions,
    client: WorkerServiceClient<Channel>,
    store: Store,
    key: KeyPair,
    mirrors: MirrorCache,
    stats: Arc<WorkerStats>,
}

/// What a worker has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub attempts: std::sync::atomic::AtomicU64,
    pub built: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    /// 1 while an attempt runs.
    pub busy: std::sync::atomic::AtomicU64,
    /// Whether the worker has registered with the cluster.
    pub registered: std::sync::atomic::AtomicBool,
}

/// How an attempt ended, from the worker's side.
enum Attempt {
    Built {
        digest: deploy_artifact::Digest,
        size: u64,
    },
    Failed {
        error: String,
        retry: bool,
    },
    /// Cancelled or lease lost: report nothing; the leader already decided.
    Stopped(String),
}

const POLL_WAIT_MS: u64 = 10_000;
const RENEW_EVERY: Duration = Duration::from_millis(500);

impl Worker {
    /// The fence for a build in `scratch`, where the kernel can hold builds to one.
    fn fence(&self, scratch: &std::path::Path) -> Option<crate::sandbox::Fence> {
        let settings = &self.opts.settings;
        crate::sandbox::available().then(|| crate::sandbox::Fence {
            writable: std::iter::once(scratch.to_path_buf())
                .chain(settings.sandbox_write_paths.iter().map(PathBuf::from))
                .collect(),
            readable: self
                .opts
                .settings
                .sandbox_read_paths
                .iter()
                .map(PathBuf::from)
                .collect(),
        })
    }

    /// Its counters, shared (they keep counting after `run` takes the worker).
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// A worker writing to `store` and signing manifests with `key`.
    pub fn new(
        opts: WorkerOptions,
        store: Store,
        key: KeyPair,
    ) -> Result<Self, tonic::transport::Error> {
        crate::sandbox::protect_worker();
        let endpoints = opts
            .endpoints
            .iter()
            .map(|a| {
                let e = Endpoint::from_shared(opts.transport.url(a))?
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(Duration::from_secs(40))
                    .tcp_nodelay(true);
                match &opts.transport {
                    deploy_tls::Transport::Plain => Ok(e),
                    deploy_tls::Transport::Tls(m) => e.tls_config(m.tonic_client()),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Requests spread over every node; a dead one drops out of the balance.
        let channel = Channel::balance_list(endpoints.into_iter());
        Ok(Self {
            mirrors: MirrorCache::new(opts.work_dir.join("git")),
            client: WorkerServiceClient::new(channel),
            store,
            key,
            opts,
            stats: Arc::default(),
        })
    }

    /// Runs until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let this = Arc::new(self);
        let mut pause = Duration::from_millis(200);
        loop {
            let req = RegisterWorkerRequest {
                worker: this.opts.id.clone(),
                region: this.opts.region.clone(),
            };
            let mut client = this.client.clone();
            let registered = tokio::select! {
                r = client.register_worker(req) => r,
                _ = stop.cancelled() => return,
            };
            match registered {
                Ok(_) => break,
                Err(e) => {
                    warn!(worker = %this.opts.id, error = %e.message(), "cannot register yet");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.cancelled() => return,
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
        info!(worker = %this.opts.id, region = %this.opts.region, "worker registered");
        this.stats
            .registered
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut pause = Duration::from_millis(200);
        loop {
            let req = AcquireBuildRequest {
                worker: this.opts.id.clone(),
                wait_ms: POLL_WAIT_MS,
            };
            let mut client = this.client.clone();
            let got = tokio::select! {
                r = client.acquire_build(req) => r,
                _ = stop.cancelled() => return,
            };
            match got {
                Ok(r) => {
                    pause = Duration::from_millis(200);
                    let a = r.into_inner();
                    if a.assigned {
                        this.clone().attempt(a, &stop).await;
                    }
                }
                Err(e) => {
                    warn!(worker = %this.opts.id, error = %e.message(), "cannot poll for work");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.cancelled() => return,
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Keeps the lease while the attempt runs; cancels `token` when the leader says stop or
    /// when no renewal succeeded for a whole lease period.
    async fn keep_lease(
        self: Arc<Self>,
        a: AcquireBuildReply,
        token: CancellationToken,
        why: Arc<std::sync::Mutex<String>>,
    ) {
        let lease = Duration::from_millis(a.lease_ms.max(300));
        let mut last_ok = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RENEW_EVERY) => {}
                _ = token.cancelled() => return,
            }
            let req = RenewLeaseRequest {
                id: a.id.clone(),
                worker: self.opts.id.clone(),
                attempt: a.attempt,
            };
            match self.client.clone().renew_lease(req).await {
                Ok(r) if r.get_ref().ok => last_ok = Instant::now(),
                Ok(r) => {
                    *why.lock().unwrap_or_else(|p| p.into_inner()) = r.into_inner().reason;
                    token.cancel();
                    return;
                }
                Err(e) => warn!(build = %a.id, error = %e.message(), "lease renewal failed"),
            }
            if last_ok.elapsed() > lease {
                *why.lock().unwrap_or_else(|p| p.into_inner()) =
                    "no renewal succeeded for a whole lease period".into();
                token.cancel();
                return;
            }
        }
    }

    #[instrument(skip_all, fields(build = %a.id, attempt = a.attempt))]
    async fn attempt(self: Arc<Self>, a: AcquireBuildReply, stop: &CancellationToken) {
        info!(service = %a.service, commit = %a.commit, "building");
        let token = stop.child_token();
        let why = Arc::new(std::sync::Mutex::new(String::from(
            "the worker is stopping",
        )));
        let keeper = tokio::spawn(
            self.clone()
                .keep_lease(a.clone(), token.clone(), why.clone()),
        );
        let scratch = self
            .opts
            .work_dir
            .join("scratch")
            .join(format!("{}-{}", a.id, a.attempt));
        let (log, log_task) = logs::start(
            self.store.clone(),
            a.id.clone(),
            a.attempt,
            self.opts.settings.log_cap_bytes,
        );
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.attempts.fetch_add(1, Relaxed);
        self.stats.busy.store(1, Relaxed);
        let result = self.build(&a, &scratch, &token, &log).await;
        self.stats.busy.store(0, Relaxed);
        match &result {
            Attempt::Built { .. } => self.stats.built.fetch_add(1, Relaxed),
            _ => self.stats.failed.fetch_add(1, Relaxed),
        };
        drop(log);
        let _ = log_task.await;
        token.cancel();
        let _ = keeper.await;
        let _ = tokio::fs::remove_dir_all(&scratch).await;
        let (artifact_digest, artifact_size, error, retry) = match result {
            Attempt::Built { digest, size } => (digest.to_string(), size, String::new(), false),
            Attempt::Failed { error, retry } => (String::new(), 0, error, retry),
            Attempt::Stopped(what) => {
                let reason = why.lock().unwrap_or_else(|p| p.into_inner()).clone();
                info!(%what, %reason, "attempt stopped; nothing to report");
                return;
            }
        };
        let req = CompleteBuildRequest {
            id: a.id.clone(),
            worker: self.opts.id.clone(),
            attempt: a.attempt,
            artifact_digest,
            artifact_size,
            error,
            retry,
        };
        // Report until the leader answers; a refusal (stale lease) is final.
        let deadline = Instant::now() + Duration::from_millis(a.lease_ms.max(300));
        loop {
            match self.client.clone().complete_build(req.clone()).await {
                Ok(r) => {
                    info!(state = %r.get_ref().state, "reported");
                    return;
                }
                Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(s) => {
                    warn!(error = %s.message(), "the leader refused the result");
                    return;
                }
            }
        }
    }

    async fn build(
        &self,
        a: &AcquireBuildReply,
        scratch: &std::path::Path,
        token: &CancellationToken,
        log: &logs::LogTx,
    ) -> Attempt {
        let src = scratch.join("src");
        let home = scratch.join("home");
        if let Err(e) = std::fs::create_dir_all(&home) {
            return Attempt::Failed {
                error: format!("cannot make the scratch directory: {e}"),
                retry: true,
            };
        }
        // The nodes refuse a submission the policy does not allow; a worker checks again
        // before git sees the location (a build queued before the policy changed).
        if let Err(why) = self.opts.settings.allowed_repos.check(&a.repo) {
            log.note(&why).await;
            return Attempt::Failed {
                error: why,
                retry: false,
            };
        }
        log.note(&format!("fetching {} at {}", a.repo, a.commit))
            .await;
        let fetched = tokio::select! {
            r = self.mirrors.ensure(&a.repo, &a.commit) => r,
            _ = token.cancelled() => return Attempt::Stopped("fetch".into()),
        };
        let mirror = match fetched {
            Ok(m) => m,
            Err(e @ GitError::CommitNotFound { .. }) => {
                log.note(&e.to_string()).await;
                return Attempt::Failed {
                    error: e.to_string(),
                    retry: false,
                };
            }
            Err(e) => {
                log.note(&e.to_string()).await;
                return Attempt::Failed {
                    error: e.to_string(),
                    retry: true,
                };
            }
        };
        if let Err(e) = git::export(&mirror, &a.commit, &src).await {
            return Attempt::Failed {
                error: e.to_string(),
                retry: true,
            };
        }
        let recipe = match Recipe::load(&src) {
            Ok(r) => r,
            Err(e) => {
                log.note(&e.to_string()).await;
                return Attempt::Failed {
                    error: e.to_string(),
                    retry: false,
                };
            }
        };
        let timeout = Duration::from_secs(
            recipe
                .build
                .timeout_secs
                .unwrap_or(self.opts.settings.default_timeout_secs),
        );
        log.note(&format!(
            "running `{}` (timeout {}s)",
            recipe.build.command,
            timeout.as_secs()
        ))
        .await;
        let started = Instant::now();
        let fence = self.fence(scratch);
        if fence.is_none() {
            log.note("this kernel has no Landlock: the build runs unfenced")
                .await;
        }
        let outcome = exec::run(
            &recipe.build.command,
            &src,
            &home,
            &recipe.build.env,
            fence.as_ref(),
            timeout,
            token,
            log,
        )
        .await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                return Attempt::Failed {
                    error: format!("cannot start the build command: {e}"),
                    retry: true,
                }
            }
        };
        let took = started.elapsed().as_secs_f64();
        match outcome {
            ExecOutcome::Exited(0) => {
                log.note(&format!("build command succeeded in {took:.1}s"))
                    .await
            }
            ExecOutcome::Cancelled => return Attempt::Stopped("build command".into()),
            other => {
                let error = match other {
                    ExecOutcome::Exited(c) => format!("build command exited with code {c}"),
                    ExecOutcome::TimedOut => {
                        format!("build command timed out after {}s", timeout.as_secs())
                    }
                    _ => "build command was killed by a signal".to_string(),
                };
                log.note(&error).await;
                return Attempt::Failed {
                    error,
                    retry: false,
                };
            }
        }
        log.note("packaging outputs").await;
        let info = PackInfo {
            service: &a.service,
            build_id: &a.id,
            commit: &a.commit,
            chunk_size: self.opts.settings.chunk_bytes,
            key: &self.key,
        };
        let packed = tokio::select! {
            r = pack(&src, &recipe, info, &self.store) => r,
            _ = token.cancelled() => return Attempt::Stopped("packaging".into()),
        };
        match packed {
            Ok(m) => {
                log.note(&format!(
                    "artifact {} ({} bytes, {} chunks)",
                    m.artifact_digest,
                    m.size,
                    m.chunks.len()
                ))
                .await;
                Attempt::Built {
                    digest: m.artifact_digest,
                    size: m.size,
                }
            }
            Err(e @ deploy_artifact::pack::PackError::Store(_)) => Attempt::Failed {
                error: e.to_string(),
                retry: true,
            },
            Err(e) => {
                log.note(&e.to_string()).await;
                Attempt::Failed {
                    error: e.to_string(),
                    retry: false,
                }
            }
        }
    }
}

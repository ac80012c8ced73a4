//! Soak: a million builds through a 3-node global group with retention on, each submitted,
//! leased and completed over the real gRPC API, as clients and workers do (the workers are
//! played here: they build nothing and report an artifact at once). The figures come per
//! window of builds, so a cost that grows with history shows as a trend down the table.
//!
//! At the start of every window one follower is killed (`kill -9`); halfway through it is
//! started again and timed until it has applied what the leader had committed when it came
//! back: by then it is far enough behind to need the leader's snapshot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use deploy_client::{Client, ClusterStatusView};
use deploy_proto::v1 as pb;
use deploy_proto::v1::worker_service_client::WorkerServiceClient;
use process_harness::{wait_until, ProcessCluster, Spec};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use crate::stats::{latency, round, scrape};

#[derive(clap::Args)]
pub struct Args {
    /// Builds in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub builds: u64,
    /// Builds per row of the table.
    #[arg(long, default_value_t = 50_000)]
    pub window: u64,
    /// Concurrent submitting clients.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Workers (each holds one lease at a time).
    #[arg(long, default_value_t = 48)]
    pub workers: usize,
    /// Services the builds are spread over.
    #[arg(long, default_value_t = 100)]
    pub services: u64,
    /// Finished builds kept per service by retention.
    #[arg(long, default_value_t = 100)]
    pub keep: u32,
}

const REPO: &str = "https://example.com/soak.git";
const REGION: &str = "soak";

/// What the load measured in one window.
#[derive(Default)]
struct Window {
    started: Option<Instant>,
    ended: Option<Instant>,
    samples: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
    leader_rss_kib: u64,
    apply_max_us: u64,
    snapshot_lock_max_us: u64,
    snapshot_bytes: u64,
    state_builds: u64,
    disk_bytes: u64,
    catch_up_s: Option<f64>,
}

/// The load's shared counters and windows.
struct Load {
    window: u64,
    completed: AtomicU64,
    submitted: AtomicU64,
    windows: Mutex<Vec<Window>>,
    /// Builds submitted and not yet completed, at most (so the queue stays short).
    room: Semaphore,
    total: u64,
}

impl Load {
    fn index(&self) -> usize {
        (self.completed.load(Ordering::Relaxed) / self.window) as usize
    }

    fn with<T>(&self, f: impl FnOnce(&mut Window) -> T) -> T {
        let i = self.index();
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let last = w.len().saturating_sub(1);
        f(&mut w[i.min(last)])
    }

    fn ok(&self, took: Duration) {
        self.with(|w| w.samples.push(took));
    }

    fn error(&self, e: &dyn std::fmt::Display) {
        let text = e.to_string();
        self.with(|w| {
            w.errors += 1;
            w.first_error.get_or_insert(text);
        });
    }

    /// Counts a completed build; the one that completes a window ends it and starts the
    /// next, at that instant (not at the watcher's next look, which may be windows later
    /// when windows are small).
    fn complete_one(&self) {
        let done = self.completed.fetch_add(1, Ordering::Relaxed) + 1;
        if !done.is_multiple_of(self.window) {
            return;
        }
        let now = Instant::now();
        let i = (done / self.window - 1) as usize;
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(this) = w.get_mut(i) {
            this.ended = Some(now);
        }
        if let Some(next) = w.get_mut(i + 1) {
            next.started = Some(now);
        }
    }

    fn done(&self) -> bool {
        self.completed.load(Ordering::Relaxed) >= self.total
    }
}

pub async fn run(args: Args) -> anyhow::Result<Value> {
    anyhow::ensure!(
        args.builds > 0 && args.window > 0,
        "--builds and --window must be above 0"
    );
    let mut spec = Spec::new(3)
        .default_timing()
        .region(REGION, 1)
        .state_retention(args.keep, 5)
        .lease_ms(60_000)
        .allowed_repos(&["https://example.com/**"]);
    for w in 0..args.workers {
        spec = spec.external_worker(&format!("soak-w{w}"), REGION);
    }
    let mut cluster = ProcessCluster::start_spec(spec)?;
    let any = cluster.client()?;
    let leader = global_leader(&any).await?;
    let client = Arc::new(cluster.client_of(&leader)?);
    let channel = Channel::from_shared(format!("http://{}", cluster.addr(&leader)?))?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("connect to the leader")?;
    let windows = args.builds.div_ceil(args.window) as usize;
    let load = Arc::new(Load {
        window: args.window,
        completed: AtomicU64::new(0),
        submitted: AtomicU64::new(0),
        windows: Mutex::new((0..windows).map(|_| Window::default()).collect()),
        room: Semaphore::new(args.workers * 2),
        total: args.builds,
    });
    let started = Instant::now();
    load.with(|w| w.started = Some(started));
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        tasks.push(tokio::spawn(submitter(
            load.clone(),
            client.clone(),
            args.services,
        )));
    }
    for w in 0..args.workers {
        let worker = WorkerServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(worker_loop(
            load.clone(),
            worker,
            format!("soak-w{w}"),
        )));
    }
    let watched = watch(&mut cluster, &any, &load).await;
    load.room.close();
    for t in tasks {
        t.abort();
    }
    watched?;
    let total_secs = started.elapsed().as_secs_f64();
    let rows = rows(&load);
    println!("soak: {} builds in {total_secs:.0} s", args.builds);
    Ok(json!({
        "what": "builds submitted, leased and completed over gRPC through a 3-node global group with retention on; a follower killed and restarted in each window",
        "builds": args.builds,
        "window": args.window,
        "clients": args.clients,
        "workers": args.workers,
        "services": args.services,
        "keep_per_service": args.keep,
        "writes_per_build": 3,
        "secs": round(total_secs),
        "windows": rows,
        "goals": goals(&rows),
    }))
}

async fn global_leader(any: &Client) -> anyhow::Result<String> {
    wait_until(Duration::from_secs(60), "a global leader", || async {
        ClusterStatusView(any.cluster_status().await.ok()?).leader("global")
    })
    .await
}

/// Submits builds until every one is submitted, each after a place frees up.
async fn submitter(load: Arc<Load>, client: Arc<Client>, services: u64) {
    loop {
        let Ok(permit) = load.room.acquire().await else {
            return;
        };
        let n = load.submitted.fetch_add(1, Ordering::Relaxed);
        if n >= load.total {
            return;
        }
        permit.forget();
        let service = format!("svc-{}", n % services);
        loop {
            let t0 = Instant::now();
            match client
                .submit_build(&service, REPO, &crate::stats::random_sha())
                .await
            {
                Ok(_) => {
                    load.ok(t0.elapsed());
                    break;
                }
                Err(e) => {
                    load.error(&e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// One worker: takes a build, reports it built, again.
async fn worker_loop(load: Arc<Load>, mut client: WorkerServiceClient<Channel>, id: String) {
    loop {
        let r = client
            .register_worker(pb::RegisterWorkerRequest {
                worker: id.clone(),
                region: REGION.into(),
            })
            .await;
        match r {
            Ok(_) => break,
            Err(e) => {
                load.error(&e.message());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    while !load.done() {
        let t0 = Instant::now();
        let a = match client
            .acquire_build(pb::AcquireBuildRequest {
                worker: id.clone(),
                wait_ms: 1000,
            })
            .await
        {
            Ok(a) => a.into_inner(),
            Err(e) => {
                load.error(&e.message());
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !a.assigned {
            continue;
        }
        load.ok(t0.elapsed());
        let req = pb::CompleteBuildRequest {
            id: a.id,
            worker: id.clone(),
            attempt: a.attempt,
            artifact_digest: format!("sha256:{}", "ab".repeat(32)),
            artifact_size: 10 << 30,
            ..Default::default()
        };
        loop {
            let t0 = Instant::now();
            match client.complete_build(req.clone()).await {
                Ok(_) => {
                    load.ok(t0.elapsed());
                    break;
                }
                Err(e) => {
                    load.error(&e.message());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        load.complete_one();
        load.room.add_permits(1);
    }
}

fn global(m: &BTreeMap<String, f64>, name: &str) -> u64 {
    m.get(&format!("{name}{{group=\"global\"}}"))
        .copied()
        .unwrap_or(0.0) as u64
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// A follower's restart in progress: killed, then started and timed.
enum Restart {
    Idle,
    Down {
        node: String,
        window: usize,
    },
    CatchingUp {
        node: String,
        window: usize,
        since: Instant,
        target: u64,
    },
}

/// Watches the run once a second: the leader's gauges into the current window, and one
/// follower's kill and restart per window. Returns when every build is completed.
async fn watch(cluster: &mut ProcessCluster, any: &Client, load: &Load) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let mut restart = Restart::Idle;
    let mut last_progress = (0, Instant::now());
    let mut last_index = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = Instant::now();
        let completed = load.completed.load(Ordering::Relaxed);
        let index = load.index();
        if completed != last_progress.0 {
            last_progress = (completed, now);
        } else if now - last_progress.1 > Duration::from_secs(120) {
            let first = load.with(|w| w.first_error.clone());
            anyhow::bail!("no build completed for 120 s at {completed}; first error: {first:?}");
        }
        if load.done() {
            {
                let mut w = load.windows.lock().unwrap_or_else(|p| p.into_inner());
                for w in w.iter_mut().filter(|w| w.ended.is_none()) {
                    w.ended = Some(now);
                }
            }
            return finish(cluster, load, restart).await;
        }
        // A killed follower may be the node asked: then ask again next time.
        let Some(leader) = any
            .cluster_status()
            .await
            .ok()
            .and_then(|s| ClusterStatusView(s).leader("global"))
        else {
            continue;
        };
        if let Ok(m) = scrape(&http, cluster.addr(&leader)?).await {
            let rss = cluster.pid(&leader).map(rss_kib).unwrap_or(0);
            let disk = dir_bytes(&cluster.dir().join(&leader));
            load.with(|w| {
                w.leader_rss_kib = w.leader_rss_kib.max(rss);
                w.apply_max_us = w.apply_max_us.max(global(&m, "deploy_raft_apply_max_us"));
                w.snapshot_lock_max_us = global(&m, "deploy_snapshot_lock_max_us");
                w.snapshot_bytes = global(&m, "deploy_snapshot_bytes");
                w.state_builds = m
                    .iter()
                    .filter(|(k, _)| k.starts_with("deploy_builds{"))
                    .map(|(_, v)| *v as u64)
                    .sum();
                w.disk_bytes = disk;
            });
        }
        let window_start = index as u64 * load.window;
        restart = match restart {
            Restart::Idle if index != last_index && index > 0 || last_index == usize::MAX => {
                let follower = ["g1", "g2", "g3"]
                    .into_iter()
                    .find(|n| *n != leader)
                    .unwrap_or("g1")
                    .to_string();
                cluster.kill9(&follower)?;
                Restart::Down {
                    node: follower,
                    window: index,
                }
            }
            Restart::Down { node, window }
                if completed >= window_start + load.window / 2 || window != index =>
            {
                let target = scrape(&http, cluster.addr(&leader)?)
                    .await
                    .map(|m| global(&m, "deploy_raft_commit_index"))
                    .unwrap_or(0);
                cluster.start_node(&node)?;
                Restart::CatchingUp {
                    node,
                    window,
                    since: Instant::now(),
                    target,
                }
            }
            Restart::CatchingUp {
                node,
                window,
                since,
                target,
            } => {
                let applied = scrape(&http, cluster.addr(&node)?)
                    .await
                    .map(|m| global(&m, "deploy_raft_last_applied"))
                    .unwrap_or(0);
                if applied >= target {
                    let secs = since.elapsed().as_secs_f64();
                    let mut w = load.windows.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(w) = w.get_mut(window) {
                        w.catch_up_s = Some(round(secs));
                    }
                    println!("soak: window {window}: {node} caught up in {secs:.1} s");
                    Restart::Idle
                } else {
                    Restart::CatchingUp {
                        node,
                        window,
                        since,
                        target,
                    }
                }
            }
            other => other,
        };
        if index != last_index {
            println!("soak: {completed} builds completed, window {index}");
            last_index = index;
        }
    }
}

/// Brings a follower killed or restarting at the end of the run back and times its catch-up.
async fn finish(cluster: &mut ProcessCluster, load: &Load, restart: Restart) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let (node, window, since, target) = match restart {
        Restart::Idle => return Ok(()),
        Restart::Down { node, window } => {
            let leader = global_leader(&cluster.client()?).await?;
            let target = global(
                &scrape(&http, cluster.addr(&leader)?).await?,
                "deploy_raft_commit_index",
            );
            cluster.start_node(&node)?;
            (node, window, Instant::now(), target)
        }
        Restart::CatchingUp {
            node,
            window,
            since,
            target,
        } => (node, window, since, target),
    };
    let addr = cluster.addr(&node)?.to_string();
    wait_until(
        Duration::from_secs(300),
        "the restarted follower to catch up",
        || async {
            let m = scrape(&http, &addr).await.ok()?;
            (global(&m, "deploy_raft_last_applied") >= target).then_some(())
        },
    )
    .await?;
    let secs = round(since.elapsed().as_secs_f64());
    let mut w = load.windows.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(w) = w.get_mut(window) {
        w.catch_up_s = Some(secs);
    }
    println!("soak: window {window}: {node} caught up in {secs:.1} s");
    Ok(())
}

/// The table: one row per window.
fn rows(load: &Load) -> Vec<Value> {
    let w = load.windows.lock().unwrap_or_else(|p| p.into_inner());
    w.iter()
        .enumerate()
        .map(|(i, w)| {
            let l = latency(&w.samples);
            let secs = match (w.started, w.ended) {
                (Some(a), Some(b)) => (b - a).as_secs_f64(),
                _ => 0.0,
            };
            json!({
                "builds": (i as u64 + 1) * load.window,
                "secs": round(secs),
                "writes_per_sec": if secs > 0.0 { round(w.samples.len() as f64 / secs) } else { 0.0 },
                "p50_ms": l.p50_ms,
                "p99_ms": l.p99_ms,
                "max_ms": l.max_ms,
                "errors": w.errors,
                "first_error": w.first_error,
                "leader_rss_mib": round(w.leader_rss_kib as f64 / 1024.0),
                "state_builds": w.state_builds,
                "snapshot_mib": round(w.snapshot_bytes as f64 / (1 << 20) as f64),
                "leader_disk_mib": round(w.disk_bytes as f64 / (1 << 20) as f64),
                "apply_stall_max_ms": round(w.apply_max_us as f64 / 1000.0),
                "snapshot_lock_max_us": w.snapshot_lock_max_us,
                "follower_catch_up_s": w.catch_up_s,
            })
        })
        .collect()
}

/// The goals, against the first and the last window.
fn goals(rows: &[Value]) -> Value {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return json!({});
    };
    let r = |k: &str| {
        let a = first[k].as_f64().unwrap_or(0.0);
        let b = last[k].as_f64().unwrap_or(0.0);
        if a > 0.0 {
            round(b / a)
        } else {
            0.0
        }
    };
    let worst_max_over_p99 = rows
        .iter()
        .map(|w| {
            let p99 = w["p99_ms"].as_f64().unwrap_or(0.0);
            if p99 > 0.0 {
                w["max_ms"].as_f64().unwrap_or(0.0) / p99
            } else {
                0.0
            }
        })
        .fold(0.0, f64::max);
    json!({
        "p99_last_over_first": r("p99_ms"),
        "rss_last_over_first": r("leader_rss_mib"),
        "snapshot_last_over_first": r("snapshot_mib"),
        "worst_max_over_p99": round(worst_max_over_p99),
        "errors": rows.iter().map(|w| w["errors"].as_u64().unwrap_or(0)).sum::<u64>(),
    })
}

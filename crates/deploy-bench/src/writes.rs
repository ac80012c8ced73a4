//! Replicated writes: build submissions to our 3-node global group against 256-byte puts to a
//! 3-node etcd cluster, both on loopback with their data on the same disk, at the same client
//! concurrency, each client talking to its group's leader over one HTTP/2 channel.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use deploy_client::{Client, ClusterStatusView};
use process_harness::{ProcessCluster, Spec};
use serde_json::{json, Value};

use crate::etcd::{pb as etcd, EtcdCluster};
use crate::stats::{latency, ratio, round};

#[derive(clap::Args)]
pub struct Args {
    /// Client concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub levels: Vec<usize>,
    /// Seconds measured per level (after a one-second warm-up).
    #[arg(long, default_value_t = 8)]
    pub secs: u64,
    /// Our nodes snapshot every this many log entries (default: the shipped default).
    #[arg(long)]
    pub snapshot_every: Option<u64>,
}

/// What one level measured.
struct Level {
    writes: u64,
    errors: u64,
    /// What the first failed write said, so a run of errors is never silent.
    first_error: Option<String>,
    secs: f64,
    samples: Vec<Duration>,
}

impl Level {
    /// One line of progress for `system` at concurrency `c`.
    fn show(&self, system: &str, c: usize) {
        let l = latency(&self.samples);
        println!(
            "{system:<7} c={c:<4} {:>8.0} writes/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
            self.writes as f64 / self.secs,
            l.p50_ms,
            l.p99_ms,
            self.errors
        );
        if let Some(e) = &self.first_error {
            println!("        first error: {e}");
        }
    }

    fn json(&self) -> Value {
        let l = latency(&self.samples);
        json!({
            "writes": self.writes,
            "errors": self.errors,
            "writes_per_sec": round(self.writes as f64 / self.secs),
            "p50_ms": l.p50_ms,
            "p99_ms": l.p99_ms,
            "max_ms": l.max_ms,
        })
    }
}

/// Runs `op` from `concurrency` tasks for a warm-up second, then for `secs`, and measures
/// the writes acknowledged in that window.
async fn load<F, Fut>(concurrency: usize, secs: u64, op: F) -> Level
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let seq = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_secs(1);
    let end = start + Duration::from_secs(secs);
    let errors = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, seq, errors, samples) = (op.clone(), seq.clone(), errors.clone(), samples.clone());
        let first_error = first_error.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let result = op(seq.fetch_add(1, Ordering::Relaxed)).await;
                if let Err(e) = &result {
                    let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                    first.get_or_insert_with(|| format!("{e:#}"));
                }
                let ok = result.is_ok();
                let t1 = Instant::now();
                if t0 >= start && t1 <= end {
                    if ok {
                        mine.push(t1 - t0);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(mine);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    Level {
        writes: samples.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        first_error: first_error.lock().map(|mut f| f.take()).unwrap_or(None),
        secs: secs as f64,
        samples,
    }
}

async fn ours(args: &Args) -> anyhow::Result<Vec<Level>> {
    let spec = match args.snapshot_every {
        Some(n) => Spec::new(3).snapshots(n, 1000),
        None => Spec::new(3).default_timing(),
    }
    // No worker takes these builds: the queue must hold every write of the run.
    .max_queued(10_000_000)
    .allowed_repos(&[BENCH_REPO_PATTERN]);
    let cluster = ProcessCluster::start_spec(spec)?;
    let any = cluster.client()?;
    let leader =
        process_harness::wait_until(Duration::from_secs(30), "a global leader", || async {
            ClusterStatusView(any.cluster_status().await.ok()?).leader("global")
        })
        .await?;
    let client = Arc::new(cluster.client_of(&leader)?);
    let mut out = Vec::new();
    for &c in &args.levels {
        let client = client.clone();
        let level = load(c, args.secs, move |_| submit(client.clone())).await;
        level.show("deploy", c);
        out.push(level);
    }
    drop(cluster);
    Ok(out)
}

/// What the benchmark's builds name, and the policy that lets the group take them.
const BENCH_REPO: &str = "https://example.com/bench.git";
const BENCH_REPO_PATTERN: &str = "https://example.com/**";

async fn submit(client: Arc<Client>) -> anyhow::Result<()> {
    let b = client
        .submit_build("bench", BENCH_REPO, &crate::stats::random_sha())
        .await?;
    anyhow::ensure!(b.created, "the build was not new");
    Ok(())
}

async fn etcd(args: &Args) -> anyhow::Result<Vec<Level>> {
    let cluster = EtcdCluster::start().await?;
    let channel = cluster.leader_channel().await?;
    let value = Arc::new(vec![b'x'; 256]);
    let mut out = Vec::new();
    for &c in &args.levels {
        let (channel, value) = (channel.clone(), value.clone());
        let level = load(c, args.secs, move |i| {
            let mut kv = etcd::kv_client::KvClient::new(channel.clone());
            let value = value.clone();
            async move {
                kv.put(etcd::PutRequest {
                    key: format!("bench/{i}").into_bytes(),
                    value: value.to_vec(),
                    ..Default::default()
                })
                .await
                .context("put")?;
                Ok(())
            }
        })
        .await;
        level.show("etcd", c);
        out.push(level);
    }
    Ok(out)
}

pub async fn run(args: Args) -> anyhow::Result<Value> {
    let etcd = etcd(&args).await.context("etcd")?;
    let ours = ours(&args).await.context("deploy")?;
    let levels: Vec<Value> = args
        .levels
        .iter()
        .zip(ours.iter().zip(etcd.iter()))
        .map(|(c, (o, e))| {
            json!({
                "concurrency": c,
                "deploy": o.json(),
                "etcd": e.json(),
                "throughput_ratio": ratio(o.writes as f64, e.writes as f64),
                "p50_ratio": ratio(latency(&o.samples).p50_ms, latency(&e.samples).p50_ms),
                "p99_ratio": ratio(latency(&o.samples).p99_ms, latency(&e.samples).p99_ms),
            })
        })
        .collect();
    Ok(json!({
        "what": "durable writes to a 3-node group on loopback: SubmitBuild to our global group vs 256-byte Put to etcd",
        "etcd_version": etcd_version(),
        "secs_per_level": args.secs,
        "levels": levels,
    }))
}

fn etcd_version() -> String {
    std::process::Command::new(std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into()))
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

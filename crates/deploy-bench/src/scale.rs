//! Control-plane scale: one region group of three `deployd node` processes and simulated racks
//! of hosts in this process. Each simulated rack does what a relay does on the control path:
//! one `WatchRack` stream to the region for its hosts' goals, and rack reports when a host
//! changes (at least every heartbeat). Hosts move through DOWNLOADING, INSTALLING, STARTING to
//! HEALTHY without moving bytes; the data path is the fan-out benchmark's.
//!
//! Measured from the release decision: when each host learnt its goal (goal propagation), when
//! the region acknowledged the last host healthy on the new build, the regional leader's CPU
//! and memory, and how many log entries the region committed per host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use deploy_client::{Client, ClusterStatusView};
use deploy_hostsim::{SimEvent, SimOptions};
use deploy_proto::v1 as pb;
use deploy_proto::v1::raft_service_client::RaftServiceClient;
use process_harness::releases::{all_at_once, is_final, status, succeeded_builds};
use process_harness::{wait_until, ProcessCluster, Spec};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::stats::{cpu_seconds, latency, memory_mib, round};

#[derive(clap::Args)]
pub struct Args {
    /// Region sizes to try, in hosts, smallest first; the run stops at the first that fails.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    pub sizes: Vec<u32>,
    #[arg(long, default_value_t = 40)]
    pub hosts_per_rack: u32,
    /// Longest a size may take to register or to roll out, in seconds.
    #[arg(long, default_value_t = 300)]
    pub limit_secs: u64,
}

pub async fn run(args: Args) -> anyhow::Result<Value> {
    let mut runs = Vec::new();
    let mut largest = 0;
    for &size in &args.sizes {
        let racks = size.div_ceil(args.hosts_per_rack);
        println!(
            "scale: {} hosts in {racks} racks",
            racks * args.hosts_per_rack
        );
        match one(&args, racks).await {
            Ok(v) => {
                largest = racks * args.hosts_per_rack;
                runs.push(v);
            }
            Err(e) => {
                println!("scale: {size} hosts failed: {e:#}");
                runs.push(json!({ "hosts": size, "error": format!("{e:#}") }));
                break;
            }
        }
    }
    Ok(json!({
        "what": "one region's control plane: a release to simulated racks of hosts",
        "largest_hosts_reached": largest,
        "runs": runs,
    }))
}

#[derive(Default)]
struct Seen {
    goal: HashMap<String, Instant>,
    healthy: HashMap<String, Instant>,
}

async fn one(args: &Args, racks: u32) -> anyhow::Result<Value> {
    let hosts = racks * args.hosts_per_rack;
    let limit = Duration::from_secs(args.limit_secs);
    let spec = Spec::new(1)
        .default_timing()
        .region("east", 3)
        .worker("wk", "east");
    let cluster = ProcessCluster::start_spec(spec)?;
    let any = cluster.client()?;
    let ids = succeeded_builds(&any, cluster.dir(), "web", &["v1"]).await?;
    let leader = wait_until(Duration::from_secs(30), "a regional leader", || async {
        ClusterStatusView(any.cluster_status().await.ok()?).leader("region/east")
    })
    .await?;
    let pid = cluster.pid(&leader).context("the leader's pid")?;
    // Simulated racks talk to the leader directly, over one connection per 100 racks.
    let leader_addr = cluster.addr(&leader)?.to_string();
    let clients: Vec<Arc<Client>> = (0..racks.div_ceil(100))
        .map(|_| Client::new([leader_addr.as_str()]).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let build = ids[0].clone();
    let observer = {
        let (seen, build) = (seen.clone(), build.clone());
        Arc::new(move |e: SimEvent| {
            let now = Instant::now();
            let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
            match e {
                SimEvent::Goal { host, build_id } if build_id == build => {
                    s.goal.entry(host).or_insert(now);
                }
                SimEvent::ReportedHealthy { host, build_id } if build_id == build => {
                    s.healthy.entry(host).or_insert(now);
                }
                _ => {}
            }
        })
    };
    let mut opts = SimOptions::new("east", racks, args.hosts_per_rack);
    opts.watch = true;
    opts.heartbeat = Some(Duration::from_secs(5));
    opts.observer = Some(observer);
    let stop = CancellationToken::new();
    let sim = {
        let (clients, stop) = (clients.clone(), stop.clone());
        tokio::spawn(async move { deploy_hostsim::run_over(&clients, opts, stop).await })
    };
    let leader_client = Client::new([leader_addr.as_str()])?;
    let registering = Instant::now();
    let result = async {
        wait_until(limit, &format!("{hosts} hosts to register"), || async {
            let s = status(&leader_client, "east").await?;
            (s.hosts >= u64::from(hosts)).then_some(())
        })
        .await?;
        let registered_secs = registering.elapsed().as_secs_f64();
        println!("scale: {hosts} hosts registered in {registered_secs:.1} s");
        // The leader's own applied index (its NodeStatus: no fan-out to the other members,
        // which a busy leader may not answer in time).
        let node_status = RaftServiceClient::new(
            tonic::transport::Channel::from_shared(format!("http://{leader_addr}"))?.connect_lazy(),
        );
        let applied = || {
            let mut c = node_status.clone();
            async move {
                c.node_status(pb::NodeStatusRequest {
                    group: "region/east".into(),
                })
                .await
                .map(|r| r.into_inner().last_applied)
            }
        };
        let log_before = applied().await?;
        let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
        let decided = Instant::now();
        let r = any
            .create_release(pb::CreateReleaseRequest {
                service: "web".into(),
                build_id: build.clone(),
                regions: vec!["east".into()],
                strategy: Some(pb::Strategy {
                    min_healthy_ms: Some(0),
                    ..all_at_once(args.hosts_per_rack)
                }),
                actor: "bench".into(),
                request_id: String::new(),
            })
            .await?;
        let acked = decided.elapsed();
        wait_until(limit, "every host to report the new build healthy", || {
            let n = seen.lock().unwrap_or_else(|p| p.into_inner()).healthy.len();
            async move { (n >= hosts as usize).then_some(()) }
        })
        .await?;
        let all_reported = decided.elapsed();
        let done = wait_until(limit, "the release to end", || async {
            let r = any.get_release(&r.id, false).await.ok()?;
            is_final(&r).then_some(r)
        })
        .await?;
        anyhow::ensure!(done.state().name() == "SUCCEEDED", "the release ended {}", done.state().name());
        let finished = decided.elapsed();
        let cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
        let log_after = applied().await?;
        let (rss, peak) = memory_mib(pid).unwrap_or_default();
        let s = seen.lock().unwrap_or_else(|p| p.into_inner());
        let goal: Vec<Duration> = s.goal.values().map(|t| t.duration_since(decided)).collect();
        let healthy: Vec<Duration> = s.healthy.values().map(|t| t.duration_since(decided)).collect();
        let g = latency(&goal);
        println!(
            "scale: {hosts} hosts: goals p50 {:.0} ms p99 {:.0} ms; all reported after {:.1} s; SUCCEEDED after {:.1} s; leader cpu {cpu:.1} s, rss {rss} MiB",
            g.p50_ms,
            g.p99_ms,
            all_reported.as_secs_f64(),
            finished.as_secs_f64()
        );
        Ok::<_, anyhow::Error>(json!({
            "hosts": hosts,
            "racks": racks,
            "register_secs": round(registered_secs),
            "decision_ack_ms": round(acked.as_secs_f64() * 1000.0),
            "goal_propagation": g,
            "host_reported_healthy": latency(&healthy),
            "all_hosts_reported_secs": round(all_reported.as_secs_f64()),
            "release_succeeded_secs": round(finished.as_secs_f64()),
            "leader_cpu_secs_during_release": round(cpu),
            "leader_cpu_cores_during_release": round(cpu / finished.as_secs_f64().max(1e-9)),
            "leader_rss_mib": rss,
            "leader_peak_rss_mib": peak,
            "log_entries_during_release": log_after.saturating_sub(log_before),
            "log_entries_per_host": log_after.saturating_sub(log_before) as f64 / f64::from(hosts),
            "sim": { "heartbeat_secs": 5, "step_ms": 100, "connections": clients.len() },
        }))
    }
    .await;
    stop.cancel();
    let _ = sim.await;
    drop(cluster);
    result
}

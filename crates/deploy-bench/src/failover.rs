//! Failover: `kill -9` of a group's leader under a steady write load, again and again; for each
//! kill, the time until another member is leader and the time no write was acknowledged. Then
//! rolling SIGTERM restarts of every member (a leader hands over first), and elections counted
//! over a quiet and a loaded stretch with no fault at all.
//!
//! Writers call `SetMeta` on the group directly over gRPC (no client-side retry pauses that
//! would blur the figure): on any error they move to the next member and try again at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use deploy_client::{Client, ClusterStatusView};
use deploy_proto::v1 as pb;
use deploy_proto::v1::cluster_service_client::ClusterServiceClient;
use deploy_proto::v1::raft_service_client::RaftServiceClient;
use process_harness::{wait_every, wait_until, ProcessCluster, Spec};
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::stats::{latency, round, Latency};

#[derive(clap::Args)]
pub struct Args {
    /// Kills per group.
    #[arg(long, default_value_t = 50)]
    pub kills: usize,
    /// Concurrent writers per group.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Rounds of a rolling SIGTERM restart of every member, per group.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds of each no-fault watch for elections (a quiet one, then a loaded one).
    #[arg(long, default_value_t = 60)]
    pub calm_secs: u64,
}

pub async fn run(args: Args) -> anyhow::Result<Value> {
    let spec = Spec::new(3).default_timing().region("east", 3);
    let mut cluster = ProcessCluster::start_spec(spec)?;
    let mut groups = Vec::new();
    for group in ["global", "region/east"] {
        let load = Load::start(&cluster, group, args.writers)?;
        let killed = kills(&mut cluster, group, &load, args.kills)
            .await
            .with_context(|| format!("{group}: kills"))?;
        let rolled = rolling(&mut cluster, group, &load, args.rounds)
            .await
            .with_context(|| format!("{group}: rolling restart"))?;
        let writes = load.stop().await;
        groups.push(json!({
            "group": group,
            "kills": args.kills,
            "writers": args.writers,
            "writes_acknowledged": writes,
            "time_to_new_leader": killed.0,
            "writes_unavailable": killed.1,
            "each": killed.2,
            "rolling": rolled,
        }));
    }
    let quiet = elections(&cluster, args.calm_secs, false).await?;
    let loaded = elections(&cluster, args.calm_secs, true).await?;
    Ok(json!({
        "what": "kill -9 of a group's leader under a write load, restarted after each kill; rolling SIGTERM restarts; elections with no fault",
        "raft_timing": { "heartbeat_ms": 60, "election_timeout_ms": [200, 360] },
        "groups": groups,
        "no_fault_elections": {
            "secs": args.calm_secs,
            "quiet": quiet,
            "loaded_two_busy_loops_nice_10": loaded,
        },
    }))
}

/// Writers calling `SetMeta` on one group without pause, and what they got acknowledged.
struct Load {
    group: String,
    names: Vec<String>,
    channels: Vec<Channel>,
    /// (issued, acknowledged) of every write that succeeded.
    acked: Arc<Mutex<Vec<(Instant, Instant)>>>,
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(cluster: &ProcessCluster, group: &str, writers: usize) -> anyhow::Result<Self> {
        let names = members(group);
        let channels: Vec<Channel> = names
            .iter()
            .map(|n| {
                Ok(
                    Channel::from_shared(format!("http://{}", cluster.addr(n)?))?
                        .connect_timeout(Duration::from_millis(500))
                        .connect_lazy(),
                )
            })
            .collect::<anyhow::Result<_>>()?;
        let acked: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let seq = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for w in 0..writers {
            let (channels, acked, stop, seq) =
                (channels.clone(), acked.clone(), stop.clone(), seq.clone());
            let group = group.to_string();
            handles.push(tokio::spawn(async move {
                let mut at = w % channels.len();
                while !stop.load(Ordering::Relaxed) {
                    let mut c = ClusterServiceClient::new(channels[at].clone());
                    let req = pb::SetMetaRequest {
                        group: group.clone(),
                        key: format!("bench-{}", seq.fetch_add(1, Ordering::Relaxed) % 1000),
                        value: Some("x".repeat(64)),
                        request_id: String::new(),
                    };
                    let issued = Instant::now();
                    match tokio::time::timeout(Duration::from_secs(1), c.set_meta(req)).await {
                        Ok(Ok(_)) => acked
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((issued, Instant::now())),
                        _ => {
                            at = (at + 1) % channels.len();
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            }));
        }
        Ok(Self {
            group: group.to_string(),
            names,
            channels,
            acked,
            stop,
            writers: handles,
        })
    }

    /// Whether a write was acknowledged in the last 200 ms.
    fn flowing(&self) -> bool {
        self.acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .is_some_and(|(_, t)| t.elapsed() < Duration::from_millis(200))
    }

    /// Waits until a write issued after `t` is acknowledged; when it was.
    async fn resumed_after(&self, t: Instant) -> anyhow::Result<Instant> {
        wait_every(
            Duration::from_millis(5),
            Duration::from_secs(30),
            "a write after the fault",
            || {
                let first = self
                    .acked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .find(|(issued, _)| *issued > t)
                    .map(|(_, acked)| *acked);
                async move { first }
            },
        )
        .await
    }

    /// The longest time without an acknowledgement from `from` to `to`.
    fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut acks: Vec<Instant> = self
            .acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, a)| *a)
            .filter(|a| *a >= from && *a <= to)
            .collect();
        acks.sort();
        let mut prev = from;
        let mut longest = Duration::ZERO;
        for a in acks.into_iter().chain([to]) {
            longest = longest.max(a.duration_since(prev));
            prev = a;
        }
        longest
    }

    /// A leader all members agree on, with writes flowing.
    async fn stable_leader(&self, cluster: &ProcessCluster) -> anyhow::Result<String> {
        let all = Client::new(self.names.iter().filter_map(|n| cluster.addr(n).ok()))?;
        wait_until(
            Duration::from_secs(30),
            "a stable leader and writes",
            || async {
                let s = ClusterStatusView(all.cluster_status().await.ok()?);
                let leader = s.leader(&self.group)?;
                let ok = s
                    .members(&self.group)
                    .iter()
                    .all(|m| m.role().name() == "LEADER" || m.role().name() == "FOLLOWER");
                (ok && self.flowing()).then_some(leader)
            },
        )
        .await
    }

    /// Waits until `name`, restarted, follows and has caught up.
    async fn rejoined(&self, cluster: &ProcessCluster, name: &str) -> anyhow::Result<()> {
        let back = cluster.client_of(name)?;
        wait_until(
            Duration::from_secs(60),
            "the restarted node to rejoin",
            || async {
                let s = ClusterStatusView(back.cluster_status().await.ok()?);
                let m = s.members(&self.group);
                let top = m.iter().map(|m| m.last_applied).max()?;
                let me = m.iter().find(|m| m.id == name)?;
                (me.role().name() == "FOLLOWER" && me.last_applied + 100 >= top).then_some(())
            },
        )
        .await
    }

    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.writers {
            let _ = w.await;
        }
        let n = self.acked.lock().unwrap_or_else(|p| p.into_inner()).len();
        n
    }
}

/// Rolling restarts: each member in turn stopped with SIGTERM (a leader hands over first),
/// restarted and caught up. Per stop, the longest time no write was acknowledged, from the
/// signal until a write issued after the process exited is acknowledged.
async fn rolling(
    cluster: &mut ProcessCluster,
    group: &str,
    load: &Load,
    rounds: usize,
) -> anyhow::Result<Value> {
    let mut gaps = Vec::new();
    let mut leader_gaps = Vec::new();
    let mut each = Vec::new();
    for round in 0..rounds {
        for name in members(group) {
            let leader = load.stable_leader(cluster).await?;
            let signalled = Instant::now();
            tokio::task::block_in_place(|| cluster.terminate(&name, Duration::from_secs(15)))?;
            let exited = Instant::now();
            let resumed = load.resumed_after(exited).await?;
            let gap = load.longest_gap(signalled, resumed);
            let was_leader = name == leader;
            println!(
                "{group} rolling round {}: SIGTERM {name}{}: exited after {:.0} ms, writes stalled at most {:.0} ms",
                round + 1,
                if was_leader { " (leader)" } else { "" },
                exited.duration_since(signalled).as_secs_f64() * 1000.0,
                gap.as_secs_f64() * 1000.0
            );
            gaps.push(gap);
            if was_leader {
                leader_gaps.push(gap);
            }
            each.push(json!({
                "stopped": name,
                "was_leader": was_leader,
                "exit_ms": round_ms(exited.duration_since(signalled)),
                "unavailable_ms": round_ms(gap),
            }));
            cluster.start_node(&name)?;
            load.rejoined(cluster, &name).await?;
        }
    }
    Ok(json!({
        "rounds": rounds,
        "writes_unavailable": latency(&gaps),
        "writes_unavailable_leader_stops": latency(&leader_gaps),
        "each": each,
    }))
}

fn round_ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1000.0)
}

/// The highest term any member of each group reports.
async fn terms(cluster: &ProcessCluster) -> BTreeMap<&'static str, u64> {
    let running = cluster.names();
    let mut out = BTreeMap::new();
    for group in ["global", "region/east"] {
        let mut top = 0u64;
        for name in members(group) {
            if !running.contains(&name) {
                continue;
            }
            let Ok(addr) = cluster.addr(&name) else {
                continue;
            };
            let Ok(ch) = Channel::from_shared(format!("http://{addr}")) else {
                continue;
            };
            let Ok(ch) = ch.connect().await else { continue };
            let req = pb::NodeStatusRequest {
                group: group.to_string(),
            };
            if let Ok(r) = RaftServiceClient::new(ch).node_status(req).await {
                top = top.max(r.into_inner().term);
            }
        }
        out.insert(group, top);
    }
    out
}

/// Elections (terms begun) in every group over `secs` with no fault injected, optionally
/// with two busy loops at nice 10 beside the cluster.
async fn elections(cluster: &ProcessCluster, secs: u64, busy: bool) -> anyhow::Result<Value> {
    let mut loops = Vec::new();
    if busy {
        for _ in 0..2 {
            loops.push(
                std::process::Command::new("nice")
                    .args(["-n", "10", "sh", "-c", "while :; do :; done"])
                    .spawn()
                    .context("start a busy loop")?,
            );
        }
    }
    let before = terms(cluster).await;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let after = terms(cluster).await;
    for mut l in loops {
        let _ = l.kill();
        let _ = l.wait();
    }
    let per_group: BTreeMap<&str, u64> = after
        .iter()
        .map(|(g, t)| (*g, t.saturating_sub(before.get(g).copied().unwrap_or(*t))))
        .collect();
    let total: u64 = per_group.values().sum();
    println!(
        "{} s with no fault{}: {total} elections ({per_group:?})",
        secs,
        if busy { ", two busy loops beside" } else { "" }
    );
    Ok(json!({ "elections": total, "per_group": per_group }))
}

/// The nodes of `group` ("global" or "region/<name>"), as the spec names them.
fn members(group: &str) -> Vec<String> {
    match group.strip_prefix("region/") {
        None => (1..=3).map(|i| format!("g{i}")).collect(),
        Some(r) => (1..=3).map(|i| format!("{r}-{i}")).collect(),
    }
}

/// `kill -9` of the leader, `n` times; (time to a new leader, writes unavailable, each).
async fn kills(
    cluster: &mut ProcessCluster,
    group: &str,
    load: &Load,
    n: usize,
) -> anyhow::Result<(Latency, Latency, Vec<Value>)> {
    let mut to_leader = Vec::new();
    let mut unavailable = Vec::new();
    let mut kills = Vec::new();
    for k in 0..n {
        let leader = load.stable_leader(cluster).await?;
        cluster.kill9(&leader)?;
        // The process is gone (killed and reaped): from here on, a write issued can only be
        // acknowledged once another member leads.
        let killed_at = Instant::now();
        // Each survivor's own view (NodeStatus, no fan-out to the dead member): the first to
        // say it leads.
        let survivors: Vec<(String, Channel)> = load
            .names
            .iter()
            .zip(&load.channels)
            .filter(|(n, _)| **n != leader)
            .map(|(n, ch)| (n.clone(), ch.clone()))
            .collect();
        let new_leader = wait_every(
            Duration::from_millis(5),
            Duration::from_secs(30),
            "a new leader",
            || {
                let survivors = survivors.clone();
                let group = group.to_string();
                async move {
                    for (name, ch) in survivors {
                        let mut c = RaftServiceClient::new(ch);
                        let req = pb::NodeStatusRequest {
                            group: group.clone(),
                        };
                        if let Ok(Ok(r)) =
                            tokio::time::timeout(Duration::from_millis(200), c.node_status(req))
                                .await
                        {
                            if r.into_inner().role().name() == "LEADER" {
                                return Some(name);
                            }
                        }
                    }
                    None
                }
            },
        )
        .await?;
        let elected = killed_at.elapsed();
        let resumed = load.resumed_after(killed_at).await?;
        let gap = resumed.duration_since(killed_at);
        println!(
            "{group} kill {}: {leader} -> {new_leader}: leader after {:.0} ms, writes back after {:.0} ms",
            k + 1,
            elected.as_secs_f64() * 1000.0,
            gap.as_secs_f64() * 1000.0
        );
        to_leader.push(elected);
        unavailable.push(gap);
        kills.push(json!({
            "killed": leader,
            "new_leader": new_leader,
            "leader_ms": round_ms(elected),
            "unavailable_ms": round_ms(gap),
        }));
        cluster.start_node(&leader)?;
        load.rejoined(cluster, &leader).await?;
    }
    Ok((latency(&to_leader), latency(&unavailable), kills))
}

//! Failover: `kill -9` of a group's leader under a steady write load, again and again; for each
//! kill, the time until another member is leader and the time no write was acknowledged.
//!
//! Writers call `SetMeta` on the group directly over gRPC (no client-side retry pauses that
//! would blur the figure): on any error they move to the next member and try again at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use deploy_client::{Client, ClusterStatusView};
use deploy_proto::v1 as pb;
use deploy_proto::v1::cluster_service_client::ClusterServiceClient;
use deploy_proto::v1::raft_service_client::RaftServiceClient;
use serde_json::{json, Value};
use test_harness::{wait_every, wait_until, ProcessCluster, Spec};
use tonic::transport::Channel;

use crate::stats::{latency, round};

#[derive(clap::Args)]
pub struct Args {
    /// Kills per group.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Concurrent writers per group.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
}

pub async fn run(args: Args) -> anyhow::Result<Value> {
    let spec = Spec::new(3).default_timing().region("east", 3);
    let mut cluster = ProcessCluster::start_spec(spec)?;
    let mut groups = Vec::new();
    for group in ["global", "region/east"] {
        groups.push(
            kills(&mut cluster, group, &args)
                .await
                .with_context(|| group.to_string())?,
        );
    }
    Ok(json!({
        "what": "kill -9 of a group's leader under a write load, restarted after each kill",
        "raft_timing": { "heartbeat_ms": 60, "election_timeout_ms": [200, 360] },
        "groups": groups,
    }))
}

/// The nodes of `group` ("global" or "region/<name>"), as the spec names them.
fn members(group: &str) -> Vec<String> {
    match group.strip_prefix("region/") {
        None => (1..=3).map(|i| format!("g{i}")).collect(),
        Some(r) => (1..=3).map(|i| format!("{r}-{i}")).collect(),
    }
}

async fn kills(cluster: &mut ProcessCluster, group: &str, args: &Args) -> anyhow::Result<Value> {
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
    // (issued, acknowledged) of every write that succeeded.
    let acked: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let seq = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..args.writers {
        let (channels, acked, stop, seq) =
            (channels.clone(), acked.clone(), stop.clone(), seq.clone());
        let group = group.to_string();
        writers.push(tokio::spawn(async move {
            let mut at = w % channels.len();
            while !stop.load(Ordering::Relaxed) {
                let mut c = ClusterServiceClient::new(channels[at].clone());
                let req = pb::SetMetaRequest {
                    group: group.clone(),
                    key: format!("bench-{}", seq.fetch_add(1, Ordering::Relaxed) % 1000),
                    value: Some("x".repeat(64)),
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
    let mut to_leader = Vec::new();
    let mut unavailable = Vec::new();
    let mut kills = Vec::new();
    for k in 0..args.kills {
        let all = Client::new(names.iter().filter_map(|n| cluster.addr(n).ok()))?;
        let leader = wait_until(
            Duration::from_secs(30),
            "a stable leader and writes",
            || async {
                let s = ClusterStatusView(all.cluster_status().await.ok()?);
                let leader = s.leader(group)?;
                let ok = s
                    .members(group)
                    .iter()
                    .all(|m| m.role == "LEADER" || m.role == "FOLLOWER");
                let recent = acked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .last()
                    .is_some_and(|(_, t)| t.elapsed() < Duration::from_millis(200));
                (ok && recent).then_some(leader)
            },
        )
        .await?;
        cluster.kill9(&leader)?;
        // The process is gone (killed and reaped): from here on, a write issued can only be
        // acknowledged once another member leads.
        let killed_at = Instant::now();
        // Each survivor's own view (NodeStatus, no fan-out to the dead member): the first to
        // say it leads.
        let survivors: Vec<(String, Channel)> = names
            .iter()
            .zip(&channels)
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
                            if r.into_inner().role == "LEADER" {
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
        let resumed = wait_every(
            Duration::from_millis(5),
            Duration::from_secs(30),
            "a write after the kill",
            || {
                let first = acked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .find(|(issued, _)| *issued > killed_at)
                    .map(|(_, acked)| *acked);
                async move { first }
            },
        )
        .await?;
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
            "leader_ms": round(elected.as_secs_f64() * 1000.0),
            "unavailable_ms": round(gap.as_secs_f64() * 1000.0),
        }));
        cluster.start_node(&leader)?;
        let back = cluster.client_of(&leader)?;
        wait_until(
            Duration::from_secs(60),
            "the killed leader to rejoin",
            || async {
                let s = ClusterStatusView(back.cluster_status().await.ok()?);
                let m = s.members(group);
                let top = m.iter().map(|m| m.last_applied).max()?;
                let me = m.iter().find(|m| m.id == leader)?;
                (me.role == "FOLLOWER" && me.last_applied + 100 >= top).then_some(())
            },
        )
        .await?;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let writes = acked.lock().unwrap_or_else(|p| p.into_inner()).len();
    Ok(json!({
        "group": group,
        "kills": args.kills,
        "writers": args.writers,
        "writes_acknowledged": writes,
        "time_to_new_leader": latency(&to_leader),
        "writes_unavailable": latency(&unavailable),
        "each": kills,
    }))
}

//! Fan-out against the physical limit: an artifact of `S` bytes to `N` hosts in `R` racks
//! with every relay's and host's NIC limited to `B` bytes/s in each direction, summed over its
//! connections. The lower bound is `S/B`: no host can receive faster than its own NIC. Every
//! relay reads from the region's store (not limited; what it serves is counted).
//!
//! Runs: (1) the intra-rack exchange; (2) the same with one host's NIC at `B/4`; (3) one
//! rack of 40 hosts; (4) relays only, no exchange (a relay's NIC then carries one copy per
//! host of its rack); (5) a naive origin: one server from which every host downloads the
//! whole artifact (`N·S/B` at best).
//!
//! Every part is a real `deployd` process (nodes, worker, relays, agents in sim mode), so the
//! benchmark measures the binaries as they ship and reads their counters from `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use deploy_fanout::bucket::Bucket;
use deploy_proto::v1 as pb;
use futures::StreamExt;
use process_harness::releases::{all_at_once, is_final, wait_release, web_builds};
use process_harness::{wait_every, ProcessCluster, Spec};
use serde_json::{json, Value};
use sha2::Digest;

use crate::stats::{cpu_seconds, latency, ratio, round, scrape};

#[derive(clap::Args)]
pub struct Args {
    /// Artifact payload in MiB.
    #[arg(long, default_value_t = 64)]
    pub size_mib: u64,
    /// Chunk size in KiB: small enough that each host of a rack owns many chunks, as a
    /// 10 GiB artifact's 4 MiB chunks are to a rack of 40.
    #[arg(long, default_value_t = 128)]
    pub chunk_kib: u64,
    /// Every relay's and host's NIC, bytes per second in each direction. Low enough that the
    /// machine's cores keep up with every host hashing at this rate.
    #[arg(long, default_value_t = 2_000_000)]
    pub rate: u64,
    #[arg(long, default_value_t = 64)]
    pub hosts: usize,
    #[arg(long, default_value_t = 8)]
    pub racks: usize,
    /// Hosts of the one-rack run.
    #[arg(long, default_value_t = 40)]
    pub rack_hosts: usize,
    /// The naive origin's link, bytes per second (its ratio to `S/B` does not depend on it;
    /// at the tree's rate it would take `hosts x S/B`).
    #[arg(long, default_value_t = 20_000_000)]
    pub naive_rate: u64,
    /// Only these runs (exchange, slow-host, one-rack, relay-only, naive).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

/// One fan-out run's shape.
struct Shape {
    name: &'static str,
    hosts: usize,
    racks: usize,
    exchange: bool,
    /// A host whose NIC is at a quarter of the others'.
    slow: bool,
}

pub async fn run(args: Args) -> anyhow::Result<Value> {
    anyhow::ensure!(
        args.racks > 0 && args.hosts.is_multiple_of(args.racks),
        "--hosts must be a multiple of --racks"
    );
    let shapes = [
        Shape {
            name: "exchange",
            hosts: args.hosts,
            racks: args.racks,
            exchange: true,
            slow: false,
        },
        Shape {
            name: "slow-host",
            hosts: args.hosts,
            racks: args.racks,
            exchange: true,
            slow: true,
        },
        Shape {
            name: "one-rack",
            hosts: args.rack_hosts,
            racks: 1,
            exchange: true,
            slow: false,
        },
        Shape {
            name: "relay-only",
            hosts: args.hosts,
            racks: args.racks,
            exchange: false,
            slow: false,
        },
    ];
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let mut runs = serde_json::Map::new();
    let mut size = args.size_mib << 20;
    for shape in shapes.iter().filter(|s| wanted(s.name)) {
        let r = run_tree(&args, shape)
            .await
            .with_context(|| format!("run {}", shape.name))?;
        size = r["artifact_bytes"].as_u64().unwrap_or(size);
        runs.insert(shape.name.to_string(), r);
    }
    if wanted("naive") {
        let r = naive_origin(size, args.naive_rate, args.hosts)
            .await
            .context("the naive origin")?;
        runs.insert("naive".to_string(), r);
    }
    let ratio_of = |name: &str, key: &str| runs.get(name).and_then(|r| r[key].as_f64());
    let goals = json!({
        "exchange_last_host_ratio": {"goal": 1.15, "measured": ratio_of("exchange", "ratio_to_lower_bound")},
        "one_rack_last_host_ratio": {"goal": 1.15, "measured": ratio_of("one-rack", "ratio_to_lower_bound")},
        "slow_host_others_ratio": {"goal": 1.3, "measured": ratio_of("slow-host", "others_ratio_to_lower_bound")},
        "relay_egress_copies": {"goal": 1.2, "measured": ratio_of("exchange", "max_relay_egress_copies")},
        "relay_only_over_exchange": {
            "about": args.hosts / args.racks,
            "measured": ratio(
                ratio_of("relay-only", "last_host_secs").unwrap_or(f64::NAN),
                ratio_of("exchange", "last_host_secs").unwrap_or(f64::NAN),
            ),
        },
    });
    Ok(json!({
        "what": "an artifact to every host with every relay's and host's NIC limited to the same rate both ways",
        "rate_bytes_per_sec": args.rate,
        "naive_rate_bytes_per_sec": args.naive_rate,
        "runs": runs,
        "goals": goals,
    }))
}

async fn run_tree(args: &Args, shape: &Shape) -> anyhow::Result<Value> {
    let rate = args.rate;
    let per_rack = shape.hosts / shape.racks;
    let chunk_bytes = args.chunk_kib * 1024;
    let mut spec = Spec::new(1)
        .default_timing()
        .region("east", 1)
        .worker("wk", "east")
        .chunk_bytes(chunk_bytes)
        .nic_limit(rate)
        .sim_agents();
    if !shape.exchange {
        spec = spec.without_peer_exchange();
    }
    for _ in 0..shape.racks {
        spec = spec.rack("east", per_rack);
    }
    let racks = spec.racks_of();
    let hosts: Vec<String> = racks.iter().flat_map(|r| r.hosts.clone()).collect();
    // The slow host: in the middle of the last rack, its NIC at a quarter of the others'.
    let slow = shape
        .slow
        .then(|| {
            racks
                .last()
                .and_then(|r| r.hosts.get(r.hosts.len() / 2))
                .cloned()
        })
        .flatten();
    if let Some(h) = &slow {
        spec = spec.host_nic(h, rate / 4);
    }
    let mut c = ProcessCluster::start_spec(spec)?;
    let client = c.client()?;
    c.start_agents()?;
    let http = reqwest::Client::new();
    println!("{}: building a {} MiB artifact", shape.name, args.size_mib);
    let ids = web_builds(&client, c.dir(), args.size_mib << 20, &[("v1", true)]).await?;
    let digest =
        deploy_types::Digest::parse(&client.get_build(&ids[0], false).await?.artifact_digest)?;
    let manifest = c.store("east")?.get_manifest(&digest).await?;
    let (size, chunks) = (manifest.size, manifest.chunks.len() as u64);
    let bound = size as f64 / rate as f64;
    let store_reads = |m: &BTreeMap<String, f64>| m.get("deploy_store_chunk_reads").copied();
    let reads_before = store_reads(&scrape(&http, c.addr("east-1")?).await?).unwrap_or(0.0);
    println!(
        "{}: releasing {size} B ({chunks} chunks) to {} hosts in {} racks, every NIC at {rate} B/s{}: S/B = {bound:.2} s",
        shape.name,
        hosts.len(),
        shape.racks,
        if shape.exchange { "" } else { ", no peer exchange" },
    );
    // Every process's CPU time over the transfer tells whether the machine, not the links,
    // was the limit.
    let cpu_of = |pids: Vec<u32>| pids.into_iter().filter_map(cpu_seconds).sum::<f64>();
    let cpu_before = cpu_of(c.pids());
    let start = Instant::now();
    let r = client
        .create_release(pb::CreateReleaseRequest {
            service: "web".into(),
            build_id: ids[0].clone(),
            regions: vec!["east".into()],
            strategy: Some(pb::Strategy {
                min_healthy_ms: Some(0),
                // Relays alone take `hosts per rack x S/B`.
                progress_deadline_ms: Some(1_800_000),
                ..all_at_once(per_rack as u32)
            }),
            actor: "bench".into(),
            request_id: String::new(),
        })
        .await?;
    let decided = start.elapsed();
    let mut done_at: BTreeMap<String, Duration> = BTreeMap::new();
    wait_every(
        Duration::from_millis(10),
        Duration::from_secs(1800),
        "every host to hold the artifact",
        || {
            for h in &hosts {
                if !done_at.contains_key(h) && c.host_root(h).join("sim/web").exists() {
                    done_at.insert(h.clone(), start.elapsed());
                }
            }
            let all = done_at.len() == hosts.len();
            async move { all.then_some(()) }
        },
    )
    .await?;
    let last = done_at.values().max().copied().unwrap_or_default();
    let others_last = done_at
        .iter()
        .filter(|(h, _)| Some(*h) != slow.as_ref())
        .map(|(_, t)| *t)
        .max()
        .unwrap_or_default();
    let cpu = cpu_of(c.pids()) - cpu_before;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let done = wait_release(&client, &r.id, "to end", is_final).await?;
    anyhow::ensure!(
        done.state().name() == "SUCCEEDED",
        "the release ended {}",
        done.state
    );
    let reads = (store_reads(&scrape(&http, c.addr("east-1")?).await?).unwrap_or(0.0)
        - reads_before) as u64;
    let mut per_relay = BTreeMap::new();
    let mut max_egress = 0u64;
    let (mut bad_peers, mut peer_failures) = (0.0, 0.0);
    for r in &racks {
        let m = scrape(&http, c.addr(&r.relay)?).await?;
        let count = |name: &str| m.get(name).copied().unwrap_or(0.0) as u64;
        let sent = count("deploy_relay_served_bytes_total");
        max_egress = max_egress.max(sent);
        bad_peers += count("deploy_relay_bad_peers_total") as f64;
        peer_failures += count("deploy_relay_peer_failures_total") as f64;
        per_relay.insert(
            r.relay.clone(),
            json!({
                "upstream_fetches": count("deploy_relay_upstream_fetches_total"),
                "chunk_requests": count("deploy_relay_chunk_requests_total"),
                "bytes_sent": sent,
                "egress_copies": ratio(sent as f64, size as f64),
            }),
        );
    }
    let (mut from_peers, mut max_upload) = (0.0, 0.0f64);
    for h in &hosts {
        if let Ok(m) = scrape(&http, c.addr(h)?).await {
            from_peers += m
                .get("deploy_agent_chunks_from_peers_total")
                .copied()
                .unwrap_or(0.0);
            let up = m
                .get("deploy_agent_peer_served_bytes_total")
                .copied()
                .unwrap_or(0.0);
            max_upload = max_upload.max(up);
        }
    }
    let times: Vec<Duration> = done_at.values().copied().collect();
    let l = latency(&times);
    println!(
        "{}: last host after {:.2} s = {:.2} x S/B{}; most one relay sent {:.2} x S; store chunk reads {reads} ({:.2} x S)",
        shape.name,
        last.as_secs_f64(),
        last.as_secs_f64() / bound,
        match &slow {
            Some(h) => format!(" (all but the slow {h}: {:.2} x S/B)", others_last.as_secs_f64() / bound),
            None => String::new(),
        },
        max_egress as f64 / size as f64,
        reads as f64 / chunks.max(1) as f64,
    );
    Ok(json!({
        "artifact_bytes": size,
        "chunks": chunks,
        "chunk_bytes": chunk_bytes,
        "hosts": hosts.len(),
        "racks": shape.racks,
        "peer_exchange": shape.exchange,
        "slow_host": slow,
        "rate_bytes_per_sec": rate,
        "nic": "every relay's and host's NIC limited to rate in each direction (the slow host's to a quarter)",
        "cpu_busy_fraction": round(cpu / (last.as_secs_f64().max(1e-9) * cores)),
        "lower_bound_secs": round(bound),
        "decision_secs": round(decided.as_secs_f64()),
        "last_host_secs": round(last.as_secs_f64()),
        "ratio_to_lower_bound": ratio(last.as_secs_f64(), bound),
        "others_ratio_to_lower_bound": ratio(others_last.as_secs_f64(), bound),
        "host_done_p50_secs": round(l.p50_ms / 1000.0),
        "store_chunk_reads": reads,
        "store_bytes_read": reads * size.div_ceil(chunks.max(1)),
        "store_copies_read": ratio(reads as f64, chunks as f64),
        "relays": per_relay,
        "max_relay_egress_copies": ratio(max_egress as f64, size as f64),
        "chunks_from_peers": from_peers,
        "max_host_upload_copies": ratio(max_upload, size as f64),
        "bad_peers": bad_peers,
        "peer_failures": peer_failures,
    }))
}

/// Every host downloads the whole artifact from one origin whose link passes `rate` bytes/s.
async fn naive_origin(size: u64, rate: u64, hosts: usize) -> anyhow::Result<Value> {
    let mut data = vec![0u8; size as usize];
    getrandom::fill(&mut data).map_err(|e| anyhow::anyhow!("random bytes: {e}"))?;
    let data = Bytes::from(data);
    let expected = hex::encode(sha2::Sha256::digest(&data));
    let link = Arc::new(Bucket::new(Some(rate)));
    let app = axum::Router::new().route(
        "/artifact",
        axum::routing::get(move || {
            let (data, link) = (data.clone(), link.clone());
            async move {
                let pieces = futures::stream::iter(0..data.len().div_ceil(PIECE)).then(move |i| {
                    let (data, link) = (data.clone(), link.clone());
                    async move {
                        let piece = data.slice(i * PIECE..((i + 1) * PIECE).min(data.len()));
                        link.take(piece.len()).await;
                        Ok::<_, std::io::Error>(piece)
                    }
                });
                axum::body::Body::from_stream(pieces)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!(
        "naive origin: {hosts} hosts download {size} B from one origin at {rate} B/s (about {:.0} s)",
        hosts as f64 * size as f64 / rate as f64
    );
    let http = reqwest::Client::new();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..hosts {
        let (http, expected) = (http.clone(), expected.clone());
        tasks.push(tokio::spawn(async move {
            let mut body = http
                .get(format!("http://{addr}/artifact"))
                .send()
                .await?
                .bytes_stream();
            let mut h = sha2::Sha256::new();
            while let Some(piece) = body.next().await {
                h.update(&piece?);
            }
            anyhow::ensure!(hex::encode(h.finalize()) == expected, "digest mismatch");
            Ok::<_, anyhow::Error>(start.elapsed())
        }));
    }
    let mut times = Vec::new();
    for t in tasks {
        times.push(t.await??);
    }
    server.abort();
    let last = times.iter().max().copied().unwrap_or_default();
    let bound = size as f64 / rate as f64;
    println!("naive origin: last host after {:.1} s", last.as_secs_f64());
    Ok(json!({
        "hosts": hosts,
        "last_host_secs": round(last.as_secs_f64()),
        "ratio_to_lower_bound": ratio(last.as_secs_f64(), bound),
        "ideal_secs": round(hosts as f64 * bound),
    }))
}

const PIECE: usize = 64 * 1024;

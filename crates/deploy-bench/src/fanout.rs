//! Fan-out against the physical limit: an artifact of `S` bytes to `N` hosts in `R` racks
//! with every relay's and host's NIC limited to `B` bytes/s in each direction, summed over its
//! connections. The lower bound is `S/B`: no host can receive faster than its own NIC. Rack
//! 1's relay is the region's top relay and the other racks' relays fetch from it, so the store
//! is read once.
//!
//! The baseline is a naive origin: one server, its link limited to the same `B`, from which
//! every host downloads the whole artifact (`N·S/B` at best).
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
    /// Every relay's and host's NIC, bytes per second in each direction.
    #[arg(long, default_value_t = 20_000_000)]
    pub rate: u64,
    #[arg(long, default_value_t = 64)]
    pub hosts: usize,
    #[arg(long, default_value_t = 8)]
    pub racks: usize,
    /// Skip the naive origin (it takes `hosts` times longer).
    #[arg(long)]
    pub no_baseline: bool,
    /// A second tree run at this lower rate (0: none). With every host in one process on
    /// a small machine, `hosts x rate` bytes per second of hashing and copying can be more
    /// than its cores do; at a rate where they keep up, the ratio shows the tree itself.
    #[arg(long, default_value_t = 4_000_000)]
    pub low_rate: u64,
}

pub async fn run(args: Args) -> anyhow::Result<Value> {
    anyhow::ensure!(
        args.racks > 0 && args.hosts.is_multiple_of(args.racks),
        "--hosts must be a multiple of --racks"
    );
    let tree = run_tree(&args, args.rate).await.context("the relay tree")?;
    let baseline = if args.no_baseline {
        Value::Null
    } else {
        let size = tree["artifact_bytes"]
            .as_u64()
            .unwrap_or(args.size_mib << 20);
        naive_origin(size, args.rate, args.hosts)
            .await
            .context("the naive origin")?
    };
    let low = if args.low_rate > 0 {
        run_tree(&args, args.low_rate)
            .await
            .context("the relay tree at the low rate")?
    } else {
        Value::Null
    };
    let tree_secs = tree["last_host_secs"].as_f64().unwrap_or(0.0);
    let base_secs = baseline["last_host_secs"].as_f64().unwrap_or(0.0);
    Ok(json!({
        "what": "an artifact to every host with every link limited to the same rate",
        "tree": tree,
        "tree_low_rate": low,
        "naive_origin": baseline,
        "speedup_over_naive": ratio(base_secs, tree_secs),
    }))
}

async fn run_tree(args: &Args, rate: u64) -> anyhow::Result<Value> {
    let per_rack = args.hosts / args.racks;
    let mut spec = Spec::new(1)
        .default_timing()
        .region("east", 1)
        .worker("wk", "east")
        .chunk_bytes(4 * 1024 * 1024)
        .nic_limit(rate)
        .sim_agents();
    for _ in 0..args.racks {
        spec = spec.rack("east", per_rack);
    }
    let racks = spec.racks_of();
    let top = racks[0].relay.clone();
    for r in &racks[1..] {
        spec = spec.relay_parent(&r.relay, &top);
    }
    let hosts: Vec<String> = racks.iter().flat_map(|r| r.hosts.clone()).collect();
    let mut c = ProcessCluster::start_spec(spec)?;
    let client = c.client()?;
    c.start_agents()?;
    let http = reqwest::Client::new();
    println!("building a {} MiB artifact", args.size_mib);
    let ids = web_builds(&client, c.dir(), args.size_mib << 20, &[("v1", true)]).await?;
    let digest =
        deploy_types::Digest::parse(&client.get_build(&ids[0], false).await?.artifact_digest)?;
    let manifest = c.store("east")?.get_manifest(&digest).await?;
    let (size, chunks) = (manifest.size, manifest.chunks.len() as u64);
    let bound = size as f64 / rate as f64;
    let store_reads = |m: &BTreeMap<String, f64>| m.get("deploy_store_chunk_reads").copied();
    let reads_before = store_reads(&scrape(&http, c.addr("east-1")?).await?).unwrap_or(0.0);
    println!(
        "releasing {size} B ({chunks} chunks) to {} hosts in {} racks, every NIC at {} B/s: S/B = {bound:.2} s",
        hosts.len(),
        args.racks,
        rate
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
    for r in &racks {
        let m = scrape(&http, c.addr(&r.relay)?).await?;
        let count = |name: &str| m.get(name).copied().unwrap_or(0.0) as u64;
        let sent = count("deploy_relay_served_bytes_total");
        max_egress = max_egress.max(sent);
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
    let times: Vec<Duration> = done_at.values().copied().collect();
    let l = latency(&times);
    println!(
        "tree: last host after {:.2} s = {:.2} x S/B; store chunk reads {reads} of {chunks}",
        last.as_secs_f64(),
        last.as_secs_f64() / bound
    );
    Ok(json!({
        "artifact_bytes": size,
        "chunks": chunks,
        "chunk_bytes": 4 * 1024 * 1024,
        "hosts": hosts.len(),
        "racks": args.racks,
        "rate_bytes_per_sec": rate,
        "nic": "every relay's and host's NIC limited to rate in each direction",
        "cpu_busy_fraction": round(cpu / (last.as_secs_f64().max(1e-9) * cores)),
        "lower_bound_secs": round(bound),
        "decision_secs": round(decided.as_secs_f64()),
        "last_host_secs": round(last.as_secs_f64()),
        "ratio_to_lower_bound": ratio(last.as_secs_f64(), bound),
        "host_done_p50_secs": round(l.p50_ms / 1000.0),
        "store_chunk_reads": reads,
        "store_bytes_read": reads * size.div_ceil(chunks.max(1)),
        "store_copies_read": ratio(reads as f64, chunks as f64),
        "relays": per_relay,
        "max_relay_egress_copies": ratio(max_egress as f64, size as f64),
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

//! The fan-out tree over loopback: relays and host agents of a `GrpcCluster`, real service
//! processes, real artifacts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use deploy_client::Client;
use deploy_fanout::config::Limits;
use deploy_proto::v1 as pb;
use test_harness::releases::{
    act, all_at_once, goal, hosts, is_final, release, wait_release, web_builds as builds, T,
};
use test_harness::{wait_until, GrpcCluster, Spec};

async fn manifest_chunks(
    c: &GrpcCluster,
    region: &str,
    build: &Client,
    id: &str,
) -> anyhow::Result<usize> {
    let digest = deploy_types::Digest::parse(&build.get_build(id, false).await?.artifact_digest)?;
    Ok(c.store(region)?.get_manifest(&digest).await?.chunks.len())
}

/// The build `current` points at on a host, and whether its process wrote its answer.
fn current(c: &GrpcCluster, host: &str) -> Option<(String, String)> {
    let link = std::fs::read_link(c.host_root(host).join("services/web/current")).ok()?;
    let build = link.file_name()?.to_string_lossy().into_owned();
    let dir = c.host_root(host).join("services/web").join(&link);
    let answer = std::fs::read_to_string(dir.join("answer")).unwrap_or_default();
    Some((build, answer.trim().to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_hosts_through_one_relay_read_each_chunk_from_the_store_once() -> anyhow::Result<()>
{
    // Relays only: every host asks the relay for every chunk (its single flight is the
    // point here; tests/exchange.rs covers hosts sharing chunks).
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .chunk_bytes(64 * 1024)
        .rack("east", 16)
        .without_peer_exchange();
    let mut c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    c.start_fleet(&Limits::default(), true).await?;
    let ids = builds(&client, &c.dir(), 1024 * 1024, &[("v1", true)]).await?;
    let chunks = manifest_chunks(&c, "east", &client, &ids[0]).await?;
    assert!(chunks >= 16, "{chunks} chunks");
    let before = c.node("east-1")?.node.chunk_reads.load(Ordering::Relaxed);
    let done = release(&client, &ids[0], "east", all_at_once(16)).await?;
    assert_eq!(done.state().name(), "SUCCEEDED", "{done:#?}");
    assert_eq!(done.hosts_updated, 16);
    let reads = c.node("east-1")?.node.chunk_reads.load(Ordering::Relaxed) - before;
    assert_eq!(reads as usize, chunks, "each chunk left the store once");
    let relay = c.relay("east-rack-1-relay").expect("relay");
    assert_eq!(
        relay.stats().upstream_fetches.load(Ordering::Relaxed) as usize,
        chunks
    );
    assert_eq!(
        relay.stats().chunk_requests.load(Ordering::Relaxed) as usize,
        16 * chunks
    );
    // Every host verified and recorded the build (sim mode: no process).
    for h in 1..=16 {
        let rec = std::fs::read_to_string(c.host_root(&format!("east-1-h{h}")).join("sim/web"))?;
        assert!(rec.starts_with(&ids[0]), "{rec}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_on_the_canary_rolls_every_host_back() -> anyhow::Result<()> {
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .rack("east", 2)
        .rack("east", 2);
    let mut c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    c.start_fleet(&Limits::default(), false).await?;
    let ids = builds(&client, &c.dir(), 1024, &[("good", true), ("bad", false)]).await?;
    let strategy = pb::Strategy {
        canary: Some("first-rack".into()),
        waves: vec![100],
        max_unavailable_per_rack: Some(2),
        min_healthy_ms: Some(300),
        progress_deadline_ms: Some(60_000),
        ..Default::default()
    };
    let first = release(&client, &ids[0], "east", strategy.clone()).await?;
    assert_eq!(first.state().name(), "SUCCEEDED", "{first:#?}");
    let all = ["east-1-h1", "east-1-h2", "east-2-h1", "east-2-h2"];
    for h in all {
        assert_eq!(
            current(&c, h),
            Some((ids[0].clone(), ids[0].clone())),
            "{h}"
        );
    }
    let second = release(&client, &ids[1], "east", strategy).await?;
    assert_eq!(second.state().name(), "ROLLED_BACK", "{second:#?}");
    assert_eq!(second.regions[0].wave, 1, "halted in the canary");
    assert!(
        second.reason.contains("health command failed"),
        "{}",
        second.reason
    );
    // Every host runs the good build again: current, process, health.
    wait_until(T, "every host back on the good build", || async {
        let hs = hosts(&client, "east").await.ok()?;
        let healthy = hs.iter().all(|h| {
            goal(h, "web") == ids[0]
                && h.services
                    .iter()
                    .any(|s| s.running_build_id == ids[0] && s.state().name() == "HEALTHY")
        });
        let on_disk = all
            .iter()
            .all(|h| current(&c, h).is_some_and(|(b, a)| b == ids[0] && a == ids[0]));
        (healthy && on_disk).then_some(())
    })
    .await?;
    // The second rack never got the bad build.
    assert!(!c
        .host_root("east-2-h1")
        .join("services/web/releases")
        .join(&ids[1])
        .exists());
    Ok(())
}

/// One region, one rack of two hosts with real agents, builds of `versions`, and the first of
/// them released to both hosts.
async fn one_rack_running(
    versions: &[(&str, bool)],
) -> anyhow::Result<(GrpcCluster, Client, Vec<String>, pb::Release)> {
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .rack("east", 2);
    let mut c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    c.start_fleet(&Limits::default(), false).await?;
    let ids = builds(&client, &c.dir(), 1024, versions).await?;
    let first = release(&client, &ids[0], "east", all_at_once(2)).await?;
    assert_eq!(first.state().name(), "SUCCEEDED", "{first:#?}");
    Ok((c, client, ids, first))
}

/// A service's first release rolled back leaves its hosts running nothing: the rollback
/// returns them to what they had, which was no service at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_back_a_first_release_stops_the_service_it_started() -> anyhow::Result<()> {
    let (c, client, ids, first) = one_rack_running(&[("v1", true)]).await?;
    let pids: Vec<deploy_fanout::service::Proc> = ["east-1-h1", "east-1-h2"]
        .iter()
        .flat_map(|h| c.agent(h).map(|a| a.pids()).unwrap_or_default())
        .collect();
    assert_eq!(pids.len(), 2, "each host runs the service");
    let rolled = act(&client, &first.id, "rollback").await?;
    assert_eq!(rolled.state().name(), "ROLLED_BACK");
    wait_until(T, "both hosts to stop the service", || async {
        let hs = hosts(&client, "east").await.ok()?;
        let stopped = hs.iter().all(|h| {
            goal(h, "web").is_empty()
                && h.reported
                && h.services.iter().all(|s| s.running_build_id.is_empty())
        });
        let gone = ["east-1-h1", "east-1-h2"]
            .iter()
            .all(|h| current(&c, h).is_none());
        (stopped && gone).then_some(())
    })
    .await?;
    for pid in pids {
        wait_until(T, "the service process to end", || async {
            (!pid.alive()).then_some(())
        })
        .await?;
    }
    // Its release stays on disk, for a fast return.
    assert!(c
        .host_root("east-1-h1")
        .join("services/web/releases")
        .join(&ids[0])
        .is_dir());
    Ok(())
}

/// An aborted wave stops where it is: a host the rack's relay held back (its neighbour was
/// unhealthy on the new build) keeps the build it runs, and its goal says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_wave_leaves_the_held_back_hosts_on_their_build() -> anyhow::Result<()> {
    let (c, client, ids, _) = one_rack_running(&[("good", true), ("bad", false)]).await?;
    // One host at a time, no automatic rollback, a long deadline: the bad build stays on
    // the first host it reaches, and the relay holds the other back.
    let strategy = pb::Strategy {
        canary: Some("none".into()),
        waves: vec![100],
        max_unavailable_per_rack: Some(1),
        failure_threshold_pct: Some(100),
        min_healthy_ms: Some(200),
        progress_deadline_ms: Some(600_000),
        auto_rollback: Some(false),
        ..Default::default()
    };
    let r = client
        .create_release(pb::CreateReleaseRequest {
            service: "web".into(),
            build_id: ids[1].clone(),
            regions: vec!["east".into()],
            strategy: Some(strategy),
            actor: "tester".into(),
            request_id: String::new(),
        })
        .await?;
    let tried = wait_until(T, "one host to be unhealthy on the bad build", || async {
        let hs = hosts(&client, "east").await.ok()?;
        hs.iter()
            .find(|h| {
                h.services
                    .iter()
                    .any(|s| s.running_build_id == ids[1] && s.state().name() == "UNHEALTHY")
            })
            .map(|h| h.host.clone())
    })
    .await?;
    let other = if tried == "east-1-h1" {
        "east-1-h2"
    } else {
        "east-1-h1"
    };
    act(&client, &r.id, "abort").await?;
    wait_until(
        T,
        "the held-back host's goal to return to the good build",
        || async {
            let hs = hosts(&client, "east").await.ok()?;
            let g = |name: &str| hs.iter().find(|h| h.host == name).map(|h| goal(h, "web"));
            (g(&tried)? == ids[1] && g(other)? == ids[0]).then_some(())
        },
    )
    .await?;
    let done = wait_release(&client, &r.id, "to end", is_final).await?;
    assert_eq!(done.state().name(), "ABORTED");
    assert_eq!(current(&c, other).map(|x| x.0), Some(ids[0].clone()));
    assert!(!c
        .host_root(other)
        .join("services/web/releases")
        .join(&ids[1])
        .exists());
    Ok(())
}

/// With its rack's relay gone, an agent reports to the region itself, every few seconds: it
/// does not turn to the other racks' relays (which do not know its goals) in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_its_relay_asks_the_region_at_a_steady_pace() -> anyhow::Result<()> {
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .rack("east", 1)
        .rack("east", 1);
    let mut c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    // The other rack's relay runs; this host's does not. It reports to the region every
    // 500 ms: the clock this test measures the host's pace against.
    let relay = c
        .start_relay("east-rack-2-relay", &Limits::default())
        .await?;
    c.start_agent("east-1-h1", &Limits::default(), |_| {})?;
    let http = reqwest::Client::new();
    let node = c.region_addrs("east")[0].clone();
    // (reports the region took from anyone, reports it took from the relay)
    let reports = || {
        let (http, node) = (http.clone(), node.clone());
        let relay = relay
            .stats()
            .rack_reports
            .load(std::sync::atomic::Ordering::Relaxed);
        async move {
            let m = test_harness::releases::scrape(&http, &node).await?;
            let all = m
                .get("deploy_request_seconds_count{route=\"/deploy.v1.RegionService/ReportRack\"}")
                .copied()?;
            Some((all, relay as f64))
        }
    };
    wait_until(T, "the host to report itself to the region", || async {
        let hs = hosts(&client, "east").await.ok()?;
        hs.iter()
            .any(|h| h.host == "east-1-h1" && h.reported)
            .then_some(())
    })
    .await?;
    let (all0, relay0) = reports().await.unwrap_or((0.0, 0.0));
    // Twelve of the relay's reports: about six seconds, in which the host, asking every two
    // seconds, reports about three times. A loop would report thousands of times.
    let (all1, relay1) = wait_until(T, "twelve more reports from the other relay", || async {
        reports().await.filter(|(_, r)| *r >= relay0 + 12.0)
    })
    .await?;
    let direct = (all1 - all0) - (relay1 - relay0);
    assert!(
        direct <= 12.0,
        "{direct} reports from the host while the relay sent {}",
        relay1 - relay0
    );
    Ok(())
}

async fn corrupting_relay(store_node: String, served: Arc<AtomicU64>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let http = reqwest::Client::new();
    let app = axum::Router::new()
        .route(
            "/v1/manifests/{d}",
            axum::routing::get({
                let (http, store) = (http.clone(), store_node.clone());
                move |Path(d): Path<String>| async move {
                    let body = http
                        .get(format!("http://{store}/v1/manifests/{d}"))
                        .send()
                        .await;
                    match body {
                        Ok(r) => r.bytes().await.unwrap_or_default().into_response(),
                        Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
                    }
                }
            }),
        )
        .route(
            "/v1/chunks/{d}",
            axum::routing::get(
                move |State((http, store, served)): State<(
                    reqwest::Client,
                    String,
                    Arc<AtomicU64>,
                )>,
                      Path(d): Path<String>| async move {
                    served.fetch_add(1, Ordering::Relaxed);
                    let r = http
                        .get(format!("http://{store}/v1/chunks/{d}"))
                        .send()
                        .await;
                    let mut bytes = match r {
                        Ok(r) => r.bytes().await.unwrap_or_default().to_vec(),
                        Err(_) => return axum::http::StatusCode::BAD_GATEWAY.into_response(),
                    };
                    if let Some(b) = bytes.first_mut() {
                        *b ^= 0xff;
                    }
                    bytes.into_response()
                },
            ),
        )
        .with_state((http, store_node, served));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_serving_corrupt_chunks_is_detected_and_never_installed() -> anyhow::Result<()> {
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .chunk_bytes(64 * 1024)
        .rack("east", 1);
    let mut c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    c.start_relay("east-rack-1-relay", &Limits::default())
        .await?;
    let served = Arc::new(AtomicU64::new(0));
    let bad = corrupting_relay(c.region_addrs("east")[0].clone(), served.clone()).await?;
    // The corrupt relay comes first among the data sources.
    c.start_agent("east-1-h1", &Limits::default(), |o| {
        o.relays.insert(0, bad.clone());
        // It stands as one of the rack's relays, so goal polls try it too.
        o.rack_relays += 1;
    })?;
    let ids = builds(&client, &c.dir(), 300 * 1024, &[("v1", true)]).await?;
    // The corrupt relay is asked first for data; it serves no goals (404), so those come
    // from the real one.
    let done = release(&client, &ids[0], "east", all_at_once(1)).await?;
    assert_eq!(done.state().name(), "SUCCEEDED", "{done:#?}");
    assert!(
        served.load(Ordering::Relaxed) > 0,
        "the corrupt relay was asked"
    );
    // What is installed is byte for byte the stored artifact.
    let digest =
        deploy_types::Digest::parse(&client.get_build(&ids[0], false).await?.artifact_digest)?;
    let m = c.store("east")?.get_manifest(&digest).await?;
    for ch in &m.chunks {
        let on_host = std::fs::read(
            c.host_root("east-1-h1")
                .join("chunks")
                .join(ch.digest.hex()),
        )?;
        assert_eq!(deploy_artifact::digest_of(&on_host), ch.digest);
    }
    assert_eq!(current(&c, "east-1-h1").map(|x| x.0), Some(ids[0].clone()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_transfer_leaves_its_hosts_to_the_fallback() -> anyhow::Result<()> {
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .chunk_bytes(256 * 1024)
        .rack("east", 2)
        .rack("east", 2);
    let mut c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    // Slow links, so the transfer is still going when the relay dies.
    let slow = Limits {
        up: Some(4 * 1024 * 1024),
        down: Some(1024 * 1024),
        ..Limits::default()
    };
    c.start_fleet(&slow, true).await?;
    let ids = builds(&client, &c.dir(), 3 * 1024 * 1024, &[("v1", true)]).await?;
    let r = client
        .create_release(pb::CreateReleaseRequest {
            service: "web".into(),
            build_id: ids[0].clone(),
            regions: vec!["east".into()],
            strategy: Some(all_at_once(2)),
            actor: "tester".into(),
            request_id: String::new(),
        })
        .await?;
    wait_until(T, "the first relay to be serving", || async {
        let served = c
            .relay("east-rack-1-relay")?
            .stats()
            .bytes_served
            .load(Ordering::Relaxed);
        (served > 0).then_some(())
    })
    .await?;
    c.kill_relay("east-rack-1-relay").await?;
    let done = wait_release(&client, &r.id, "to end", is_final).await?;
    assert_eq!(done.state().name(), "SUCCEEDED", "{done:#?}");
    for h in ["east-1-h1", "east-1-h2"] {
        let rec = std::fs::read_to_string(c.host_root(h).join("sim/web"))?;
        assert!(rec.starts_with(&ids[0]), "{h}: {rec}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// With every link limited, the artifact still reaches every host, and the store serves each
/// chunk once per rack (its relay's fetch), not once per host: the relays pipeline it to
/// their hosts. (How fast, against `S/B`, is the fan-out benchmark's to measure, not a test's.)
async fn with_every_link_limited_the_artifact_reaches_all_hosts_reading_the_store_once(
) -> anyhow::Result<()> {
    const RATE: u64 = 20_000_000;
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .chunk_bytes(4 * 1024 * 1024)
        .rack("east", 2)
        .rack("east", 2);
    let mut c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    let limits = Limits {
        up: Some(RATE),
        down: Some(RATE),
        ..Limits::default()
    };
    c.start_fleet(&limits, true).await?;
    let ids = builds(&client, &c.dir(), 64 * 1024 * 1024, &[("v1", true)]).await?;
    let digest =
        deploy_types::Digest::parse(&client.get_build(&ids[0], false).await?.artifact_digest)?;
    let chunks = c.store("east")?.get_manifest(&digest).await?.chunks.len() as u64;
    let store_reads = || {
        c.node("east-1").map(|n| {
            n.node
                .chunk_reads
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    };
    let reads_before = store_reads()?;
    let r = client
        .create_release(pb::CreateReleaseRequest {
            service: "web".into(),
            build_id: ids[0].clone(),
            regions: vec!["east".into()],
            strategy: Some(pb::Strategy {
                min_healthy_ms: Some(0),
                ..all_at_once(2)
            }),
            actor: "tester".into(),
            request_id: String::new(),
        })
        .await?;
    let hosts_all = ["east-1-h1", "east-1-h2", "east-2-h1", "east-2-h2"];
    wait_until(T, "every host to hold the artifact", || {
        let all = hosts_all
            .iter()
            .all(|h| c.host_root(h).join("sim/web").exists());
        async move { all.then_some(()) }
    })
    .await?;
    let racks = 2;
    assert_eq!(
        store_reads()? - reads_before,
        chunks * racks,
        "the store served a chunk more than once per rack"
    );
    let done = wait_release(&client, &r.id, "to end", is_final).await?;
    assert_eq!(done.state().name(), "SUCCEEDED");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_a_node_and_a_relay_parse_and_count_a_release() -> anyhow::Result<()> {
    // Relays only, so the relay's counts are exact (tests/exchange.rs counts the exchange).
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .chunk_bytes(64 * 1024)
        .rack("east", 2)
        .without_peer_exchange();
    let mut c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    c.start_fleet(&Limits::default(), true).await?;
    let ids = builds(&client, &c.dir(), 200 * 1024, &[("v1", true)]).await?;
    let done = release(&client, &ids[0], "east", all_at_once(2)).await?;
    assert_eq!(done.state().name(), "SUCCEEDED");
    let http = reqwest::Client::new();
    let get = |addr: String, path: &'static str| {
        let http = http.clone();
        async move { anyhow::Ok(http.get(format!("http://{addr}{path}")).send().await?) }
    };
    // The regional node leads its group and served the relay; the global one ran the build.
    let east = c.region_addrs("east")[0].clone();
    let text = get(east.clone(), "/metrics").await?.text().await?;
    let m = test_harness::releases::parse_metrics(&text)?;
    assert_eq!(
        m.get("deploy_raft_is_leader{group=\"region/east\"}"),
        Some(&1.0),
        "{text}"
    );
    assert!(m
        .get("deploy_raft_last_applied{group=\"region/east\"}")
        .is_some_and(|v| *v > 0.0));
    assert!(
        m.get("deploy_store_chunk_reads").is_some_and(|v| *v >= 4.0),
        "{text}"
    );
    assert_eq!(
        m.get("deploy_region_host_services{region=\"east\",state=\"HEALTHY\"}"),
        Some(&2.0),
        "{text}"
    );
    assert!(m
        .keys()
        .any(|k| k.starts_with("deploy_request_seconds_count{route=\"/deploy.v1.RegionService/")));
    let commit = m
        .get("deploy_raft_commit_index{group=\"region/east\"}")
        .copied();
    assert!(commit.is_some_and(|c| c > 0.0), "{text}");
    assert_eq!(get(east, "/readyz").await?.status(), 200);
    let global = c.addrs["g1"].clone();
    let m = test_harness::releases::parse_metrics(&get(global, "/metrics").await?.text().await?)?;
    assert_eq!(m.get("deploy_builds{state=\"SUCCEEDED\"}"), Some(&1.0));
    assert_eq!(m.get("deploy_build_queue_depth"), Some(&0.0));
    let relay = c
        .config
        .relay("east-rack-1-relay")
        .map(|(_, r)| r.addr.clone())
        .unwrap_or_default();
    let text = get(relay.clone(), "/metrics").await?.text().await?;
    let m = test_harness::releases::parse_metrics(&text)?;
    let chunks = manifest_chunks(&c, "east", &client, &ids[0]).await? as f64;
    assert_eq!(
        m.get("deploy_relay_upstream_fetches_total"),
        Some(&chunks),
        "{text}"
    );
    assert_eq!(
        m.get("deploy_relay_chunk_requests_total"),
        Some(&(2.0 * chunks))
    );
    // Hosts asking at once share one fetch (no hit); later ones hit the cache.
    let hits = m
        .get("deploy_relay_cache_hits_total")
        .copied()
        .unwrap_or(-1.0);
    let ratio = m
        .get("deploy_relay_cache_hit_ratio")
        .copied()
        .unwrap_or(-1.0);
    assert!((0.0..=chunks).contains(&hits), "{text}");
    assert!((ratio - hits / (2.0 * chunks)).abs() < 1e-9, "{text}");
    assert_eq!(get(relay, "/readyz").await?.status(), 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_below_another_fetches_from_it_and_the_store_is_read_once() -> anyhow::Result<()> {
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .chunk_bytes(64 * 1024)
        .rack("east", 2)
        .rack("east", 2)
        .relay_parent("east-rack-2-relay", "east-rack-1-relay")
        // Relays only, so every host's chunk goes through its relay and the count is exact.
        .without_peer_exchange();
    let mut c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    c.start_fleet(&Limits::default(), true).await?;
    let ids = builds(&client, &c.dir(), 512 * 1024, &[("v1", true)]).await?;
    let chunks = manifest_chunks(&c, "east", &client, &ids[0]).await?;
    let before = c.node("east-1")?.node.chunk_reads.load(Ordering::Relaxed);
    let done = release(&client, &ids[0], "east", all_at_once(2)).await?;
    assert_eq!(done.state().name(), "SUCCEEDED", "{done:#?}");
    let reads = c.node("east-1")?.node.chunk_reads.load(Ordering::Relaxed) - before;
    assert_eq!(reads as usize, chunks, "only the top relay read the store");
    let top = c.relay("east-rack-1-relay").expect("relay");
    let below = c.relay("east-rack-2-relay").expect("relay");
    assert_eq!(
        below.stats().upstream_fetches.load(Ordering::Relaxed) as usize,
        chunks
    );
    // The top relay served its two hosts and the relay below it.
    assert_eq!(
        top.stats().chunk_requests.load(Ordering::Relaxed) as usize,
        3 * chunks
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_keeps_the_three_newest_releases() -> anyhow::Result<()> {
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .rack("east", 1);
    let mut c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    c.start_fleet(&Limits::default(), false).await?;
    let versions = [("v1", true), ("v2", true), ("v3", true), ("v4", true)];
    let ids = builds(&client, &c.dir(), 1024, &versions).await?;
    for id in &ids {
        let done = release(&client, id, "east", all_at_once(1)).await?;
        assert_eq!(done.state().name(), "SUCCEEDED", "{done:#?}");
    }
    let releases = c.host_root("east-1-h1").join("services/web/releases");
    let mut kept: Vec<String> = std::fs::read_dir(&releases)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept, ids[1..].to_vec(), "the oldest release went");
    assert_eq!(current(&c, "east-1-h1").map(|x| x.0), Some(ids[3].clone()));
    Ok(())
}

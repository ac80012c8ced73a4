//! The intra-rack exchange over real processes: hosts share chunks inside their rack, as
//! their relay plans, so each relay sends about one copy of an artifact per rack; bad bytes
//! from a peer are never installed and the peer is reported; a host killed while it owes
//! chunks costs only time.

use std::collections::BTreeMap;

use test_harness::releases::{all_at_once, release, scrape, web_builds};
use test_harness::{ProcessCluster, Spec};

/// What a release's artifact weighs, and its chunks: several per host of a rack.
const BLOB: u64 = 3 * 1024 * 1024;
const CHUNK: u64 = 128 * 1024;

async fn metrics(c: &ProcessCluster, who: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let http = reqwest::Client::new();
    scrape(&http, c.addr(who)?)
        .await
        .ok_or_else(|| anyhow::anyhow!("no metrics from {who}"))
}

fn count(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

/// The built artifact's size, from the store's manifest as a relay serves it.
async fn artifact_bytes(c: &ProcessCluster, build: &str) -> anyhow::Result<u64> {
    let client = c.client()?;
    let b = client.get_build(build, false).await?;
    Ok(b.artifact_size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_racks_of_eight_hosts_take_about_one_copy_per_rack_from_their_relays(
) -> anyhow::Result<()> {
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .rack("east", 8)
        .rack("east", 8)
        .chunk_bytes(CHUNK)
        .sim_agents()
        .nic_limit(16 * 1024 * 1024);
    let relays = spec.relay_ids();
    let racks = spec.racks_of();
    let mut c = ProcessCluster::start_spec(spec)?;
    c.start_agents()?;
    let client = c.client()?;
    let ids = web_builds(&client, c.dir(), BLOB, &[("v1", true)]).await?;
    let r = release(&client, &ids[0], "east", all_at_once(8)).await?;
    assert_eq!(r.state().name(), "SUCCEEDED", "{r:#?}");
    let size = artifact_bytes(&c, &ids[0]).await? as f64;
    assert!(size >= BLOB as f64, "the artifact is {size} bytes");
    for rack in &racks {
        for h in &rack.hosts {
            let rec = std::fs::read_to_string(c.host_root(h).join("sim/web"))?;
            assert!(rec.starts_with(&ids[0]), "{h}: {rec}");
        }
    }
    let mut from_peers = 0.0;
    for rack in &racks {
        for h in &rack.hosts {
            from_peers += count(
                &metrics(&c, h).await?,
                "deploy_agent_chunks_from_peers_total",
            );
        }
    }
    for relay in &relays {
        let m = metrics(&c, relay).await?;
        let sent = count(&m, "deploy_relay_served_bytes_total");
        let copies = sent / size;
        println!("{relay} sent {copies:.2} copies of the artifact");
        // Each chunk leaves the relay once, to its owner; a few more may, when a peer was
        // slow to have one (the fallback). Without the exchange it would be 8 copies.
        assert!(
            (0.99..=1.5).contains(&copies),
            "{relay} sent {copies:.2} copies: {m:?}"
        );
        assert!(count(&m, "deploy_relay_exchange_asks_total") > 0.0, "{m:?}");
        assert_eq!(count(&m, "deploy_relay_bad_peers_total"), 0.0, "{m:?}");
    }
    // 16 hosts, 7 of every 8 chunks from a peer.
    let chunks = (size / CHUNK as f64).ceil();
    assert!(
        from_peers >= 16.0 * chunks * 0.75,
        "{from_peers} chunks came from peers"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_serving_bad_bytes_is_reported_and_nobody_installs_them() -> anyhow::Result<()> {
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .rack("east", 4)
        .chunk_bytes(CHUNK)
        .nic_limit(16 * 1024 * 1024);
    let relay = spec.relay_ids()[0].clone();
    let hosts = spec.racks_of()[0].hosts.clone();
    let mut c = ProcessCluster::start_spec(spec)?;
    c.start_agent(&hosts[0], Some("corrupt-peer"))?;
    for h in &hosts[1..] {
        c.start_agent(h, None)?;
    }
    let client = c.client()?;
    let ids = web_builds(&client, c.dir(), BLOB, &[("v1", true)]).await?;
    let r = release(&client, &ids[0], "east", all_at_once(4)).await?;
    assert_eq!(r.state().name(), "SUCCEEDED", "{r:#?}");
    // Every host runs the build, unpacked from verified chunks (the unpacker checks the
    // artifact's digest as a whole too).
    for h in &hosts {
        let link = std::fs::read_link(c.host_root(h).join("services/web/current"))?;
        assert!(link.ends_with(&ids[0]), "{h}: {}", link.display());
    }
    let m = metrics(&c, &relay).await?;
    let mut seen = Vec::new();
    for h in &hosts {
        let m = metrics(&c, h).await?;
        seen.push(format!(
            "{h}: {} from peers, {} served, {} troubles",
            count(&m, "deploy_agent_chunks_from_peers_total"),
            count(&m, "deploy_agent_peer_served_bytes_total"),
            count(&m, "deploy_agent_peer_troubles_total")
        ));
    }
    assert!(
        count(&m, "deploy_relay_bad_peers_total") >= 1.0,
        "{m:?} {seen:?}"
    );
    // A host skips the bad peer after its first bad chunk, so it reports it at most once per
    // fetch it already had going to it (4 at once in a rack of 4), and the relay plans
    // around it.
    let mut troubles = 0.0;
    for h in &hosts[1..] {
        troubles += count(&metrics(&c, h).await?, "deploy_agent_peer_troubles_total");
    }
    assert!(
        (1.0..=12.0).contains(&troubles),
        "{troubles} troubles reported"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_while_it_owes_chunks_costs_the_rest_only_time() -> anyhow::Result<()> {
    // Slow NICs, so the release is still moving when the owner dies.
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .rack("east", 4)
        .chunk_bytes(CHUNK)
        .sim_agents()
        .nic_limit(512 * 1024);
    let hosts = spec.racks_of()[0].hosts.clone();
    let mut c = ProcessCluster::start_spec(spec)?;
    c.start_agents()?;
    let client = c.client()?;
    let ids = web_builds(&client, c.dir(), BLOB, &[("v1", true)]).await?;
    let r = client
        .create_release(deploy_proto::v1::CreateReleaseRequest {
            service: "web".into(),
            build_id: ids[0].clone(),
            regions: vec!["east".into()],
            strategy: Some(all_at_once(4)),
            actor: "tester".into(),
            request_id: String::new(),
        })
        .await?;
    // Once the first host has served a chunk to a peer, it owes the others more: kill it.
    let victim = hosts[0].clone();
    test_harness::wait_until(
        test_harness::releases::T,
        "the first host to serve a peer",
        || {
            let (c, victim) = (&c, victim.clone());
            async move {
                let m = metrics(c, &victim).await.ok()?;
                (count(&m, "deploy_agent_peer_served_bytes_total") > 0.0).then_some(())
            }
        },
    )
    .await?;
    c.kill9(&victim)?;
    for h in &hosts[1..] {
        let rec = c.host_root(h).join("sim/web");
        test_harness::wait_until(
            test_harness::releases::T,
            &format!("{h} to install"),
            || {
                let (rec, ids) = (rec.clone(), &ids);
                async move {
                    let s = std::fs::read_to_string(&rec).ok()?;
                    s.starts_with(&ids[0]).then_some(())
                }
            },
        )
        .await?;
    }
    // The release waits for the dead host; the rest got everything without it.
    let _ = r;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_chunk_server_answers_only_its_racks_hosts_and_relays() -> anyhow::Result<()> {
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .rack("east", 2)
        .rack("east", 2)
        .chunk_bytes(CHUNK)
        .sim_agents()
        .secure();
    let mut c = ProcessCluster::start_spec(spec)?;
    c.start_agents()?;
    let client = c.client()?;
    let ids = web_builds(&client, c.dir(), 512 * 1024, &[("v1", true)]).await?;
    let r = release(&client, &ids[0], "east", all_at_once(2)).await?;
    assert_eq!(r.state().name(), "SUCCEEDED", "{r:#?}");
    let root = c.host_root("east-1-h1");
    let addr = std::fs::read_to_string(root.join(deploy_fanout::agent::PEER_ADDR_FILE))?;
    let chunk = std::fs::read_dir(root.join("chunks"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.len() == 64)
        .ok_or_else(|| anyhow::anyhow!("east-1-h1 holds no chunk"))?;
    let url = format!("https://{}/v1/chunks/{chunk}", addr.trim());
    let as_process = |id: &str| -> anyhow::Result<reqwest::Client> {
        Ok(deploy_fanout::fetch::client(
            &test_harness::secure::transport_of(&c, id)?,
        ))
    };
    // Its rack's peer and its rack's relay: the chunk, whole.
    for id in ["east-1-h2", "east-rack-1-relay"] {
        let r = as_process(id)?.get(&url).send().await?;
        assert_eq!(r.status(), 200, "{id}");
        let body = r.bytes().await?;
        assert_eq!(deploy_types::Digest::of(&body).hex(), chunk, "{id}");
    }
    // A host of the other rack: refused, and told why.
    let r = as_process("east-2-h1")?.get(&url).send().await?;
    assert_eq!(r.status(), 403);
    let why = r.text().await?;
    assert!(why.contains("rack-1"), "{why}");
    // No certificate: no handshake.
    let ca = std::fs::read(test_harness::certs_dir(c.dir()).join("ca.pem"))?;
    let anonymous = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .build()?;
    let r = anonymous.get(&url).send().await;
    assert!(
        r.is_err(),
        "a host's chunk server answered a client with no certificate: {r:?}"
    );
    Ok(())
}

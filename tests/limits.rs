//! Limits on a secure cluster of real processes: a client flooding a node with calls waits
//! its turn past its share, one opening too many streams is refused with
//! `ResourceExhausted`, while another client is served, the Raft group keeps its leader and
//! term, and writes still commit.

use deploy_proto::v1 as pb;
use deploy_proto::v1::build_service_client::BuildServiceClient as Builds;
use futures::StreamExt;
use test_harness::releases::T;
use test_harness::secure::{api_channel, bearer};
use test_harness::{wait_until, ProcessCluster, Spec};
use tonic::transport::Channel;
use tonic::Code;

/// Opens a followed log of `build`: the stream, or the node's refusal.
async fn follow(
    ch: &Channel,
    build: &str,
    token: &str,
) -> Result<tonic::Streaming<pb::LogChunk>, tonic::Status> {
    Builds::new(ch.clone())
        .build_logs(bearer(
            pb::BuildLogsRequest {
                id: build.into(),
                follow: true,
            },
            Some(token),
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// The global group's leader and term, as `client` sees them.
async fn leadership(client: &deploy_client::Client) -> anyhow::Result<(String, u64)> {
    let s = client.cluster_status().await?;
    let g = s
        .groups
        .iter()
        .find(|g| g.name == "global")
        .ok_or_else(|| anyhow::anyhow!("no global group in {s:?}"))?;
    Ok((g.leader.clone(), g.term))
}

/// The index the global group's member `node` has applied, as the cluster status shows it.
async fn applied(client: &deploy_client::Client, node: &str) -> anyhow::Result<u64> {
    let s = client.cluster_status().await?;
    s.groups
        .iter()
        .find(|g| g.name == "global")
        .and_then(|g| g.members.iter().find(|m| m.id == node))
        .map(|m| m.last_applied)
        .ok_or_else(|| anyhow::anyhow!("no member {node} of global in {s:?}"))
}

/// The node's `deploy_api_calls_shed` gauge.
async fn shed(addr: &str, ca: &[u8]) -> anyhow::Result<f64> {
    gauge(addr, ca, "deploy_api_calls_shed").await
}

/// One of the node's gauges.
async fn gauge(addr: &str, ca: &[u8], name: &str) -> anyhow::Result<f64> {
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca)?)
        .build()?;
    let text = http
        .get(format!("https://{addr}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let m = test_harness::releases::parse_metrics(&text)?;
    m.get(name)
        .copied()
        .ok_or_else(|| anyhow::anyhow!("no {name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_waits_its_turn_and_nobody_else_is_refused() -> anyhow::Result<()> {
    let spec = Spec::new(3)
        .allowed_repos(&["https://git.example/**"])
        .secure();
    let c = ProcessCluster::start_spec(spec)?;
    let admin = c.client()?;
    let (leader, term) = wait_until(T, "a global leader", || async {
        leadership(&admin).await.ok().filter(|(l, _)| !l.is_empty())
    })
    .await?;
    let mut secrets = Vec::new();
    for (name, role) in [("flood", "releaser"), ("calm", "reader")] {
        let r = admin
            .create_token(pb::CreateTokenRequest {
                name: name.into(),
                role: role.into(),
                services: vec![],
                request_id: String::new(),
            })
            .await?;
        secrets.push(r.secret);
    }
    let (flood, calm) = (secrets[0].clone(), secrets[1].clone());
    // A build no worker takes: its followed log stays open.
    let build = admin
        .submit_build("web", "https://git.example/web.git", &"a".repeat(40))
        .await?;

    let ca = std::fs::read(test_harness::certs_dir(c.dir()).join("ca.pem"))?;
    let ch = api_channel(c.dir(), c.addr(&leader)?).await?;
    let before = shed(c.addr(&leader)?, &ca).await?;

    // Streams: sixteen followed logs are one client's share; the seventeenth is refused,
    // another client still opens one, and closing one frees its place.
    let mut open = Vec::new();
    for _ in 0..16 {
        open.push(follow(&ch, &build.id, &flood).await?);
    }
    let refused = follow(&ch, &build.id, &flood)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a 17th stream was let open"))?;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("token flood has 16 streams open"),
        "{}",
        refused.message()
    );
    let calm_stream = follow(&ch, &build.id, &calm).await?;
    drop(open.pop());
    let again = wait_until(T, "a closed stream to free its place", || async {
        follow(&ch, &build.id, &flood).await.ok()
    })
    .await?;
    drop((open, again, calm_stream));

    // Calls: a burst of 400 concurrent reads from one token. Past 64 in flight they wait
    // their turn; none fails, and the other token's reads all pass meanwhile.
    let burst = (0..400).map(|_| {
        let ch = ch.clone();
        let flood = flood.clone();
        async move {
            Builds::new(ch)
                .list_builds(bearer(
                    pb::ListBuildsRequest::default(),
                    Some(flood.as_str()),
                ))
                .await
                .map(drop)
        }
    });
    let calm_reads = (0..20).map(|_| {
        let ch = ch.clone();
        let calm = calm.clone();
        let id = build.id.clone();
        async move {
            Builds::new(ch)
                .get_build(bearer(
                    pb::GetBuildRequest { id, stale: false },
                    Some(calm.as_str()),
                ))
                .await
                .map(drop)
        }
    });
    let (flooded, calmed) = tokio::join!(
        futures::future::join_all(burst),
        futures::stream::iter(calm_reads)
            .buffer_unordered(4)
            .collect::<Vec<_>>()
    );
    let refused: Vec<_> = flooded.iter().filter_map(|r| r.as_ref().err()).collect();
    let queued = gauge(c.addr(&leader)?, &ca, "deploy_api_calls_queued").await?;
    eprintln!("of 400 concurrent calls, {queued} waited in the client's queue");
    // Past 64 in flight a call waits its turn (the queue holds 1,024): none is refused.
    assert!(refused.is_empty(), "flood calls were refused: {refused:?}");
    for r in &calmed {
        assert!(r.is_ok(), "the other client was refused: {r:?}");
    }
    let after = shed(c.addr(&leader)?, &ca).await?;
    // The refused stream counts (and so may the retries while a closed one freed its place);
    // no call was refused, as checked above.
    assert!(
        after >= before + 1.0,
        "/metrics counted {after} shed, {before} before, and at least one stream refused since"
    );

    // Raft kept going: the same leader in the same term, and a write commits.
    assert_eq!(leadership(&admin).await?, (leader, term));
    admin.set_meta("global", "after-flood", Some("ok")).await?;
    assert_eq!(
        admin.get_meta("global", "after-flood", false).await?.value,
        Some("ok".to_string())
    );
    Ok(())
}

/// The largest requests the API admits, several at once, and one past its bounds: the past one
/// is refused before it is proposed, the rest commit, and the global group holds its leader
/// and term throughout (a heartbeat never waits behind a large AppendEntries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_admitted_requests_leave_the_term_where_it_was() -> anyhow::Result<()> {
    let c = ProcessCluster::start_spec(Spec::new(3).secure())?;
    let admin = c.client()?;
    let (leader, term) = wait_until(T, "a global leader", || async {
        leadership(&admin).await.ok().filter(|(l, _)| !l.is_empty())
    })
    .await?;

    // 100,000 service names (under the 4 MiB message limit): refused before it is proposed,
    // so the log does not grow. (The leader's own tasks may write meanwhile: a try whose
    // index moved is made again, and every one of three moving is a failure.)
    let names: Vec<String> = (0..100_000).map(|i| format!("svc-{i}")).collect();
    let mut unmoved = false;
    for _ in 0..3 {
        let before = applied(&admin, &leader).await?;
        let e = admin
            .create_token(pb::CreateTokenRequest {
                name: "wide".into(),
                role: "releaser".into(),
                services: names.clone(),
                request_id: String::new(),
            })
            .await
            .expect_err("a token naming 100,000 services was made");
        assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
        assert!(e.to_string().len() < 1024, "{e}");
        if applied(&admin, &leader).await? == before {
            unmoved = true;
            break;
        }
    }
    assert!(
        unmoved,
        "the refused token was proposed: the log grew each time"
    );

    // The largest admitted: 64 KiB metadata values from 256 callers at once (16 MiB a round),
    // and tokens naming 64 services of 63 characters. Before replication read the log in
    // bounded pieces (`deploy_raft::store::MAX_APPEND_BYTES`), a follower that fell behind
    // was sent an ever larger AppendEntries that never arrived within a heartbeat, and stood
    // for election.
    let value = "v".repeat(deploy_state::MAX_META_VALUE_BYTES);
    let admin = std::sync::Arc::new(admin);
    for round in 0..4 {
        let writes = (0..256).map(|i| {
            let (admin, value) = (admin.clone(), value.clone());
            async move {
                admin
                    .set_meta("global", &format!("big-{i}"), Some(&value))
                    .await
                    .map(drop)
            }
        });
        for r in futures::future::join_all(writes).await {
            r.map_err(|e| anyhow::anyhow!("round {round}: {e}"))?;
        }
        let services: Vec<String> = (0..deploy_state::tokens::MAX_SERVICES)
            .map(|s| format!("{}{s:02}", "s".repeat(61)))
            .collect();
        admin
            .create_token(pb::CreateTokenRequest {
                name: format!("wide-{round}"),
                role: "releaser".into(),
                services,
                request_id: String::new(),
            })
            .await?;
    }
    assert_eq!(
        leadership(&admin).await?,
        (leader, term),
        "the group held an election"
    );
    Ok(())
}

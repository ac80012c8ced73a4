//! The security holes a review found, each tried as an attacker would against a secure
//! cluster of real processes, and each refused: a process speaking for another with its own
//! valid certificate (hosts, relays, workers), two `authorization` headers, repositories the
//! cluster's policy does not list, a client's hop count, and idle connections that never
//! start a TLS handshake. (The unpack escape, reused pids and the fault build have their own
//! tests: `deploy-fanout`'s unpack and agent tests, and chaos's scenarios.)

use std::time::Duration;

use tokio::io::AsyncReadExt;

use deploy_proto::v1 as pb;
use deploy_proto::v1::build_service_client::BuildServiceClient as Builds;
use deploy_proto::v1::region_service_client::RegionServiceClient as Regions;
use deploy_proto::v1::token_service_client::TokenServiceClient as Tokens;
use deploy_proto::v1::worker_service_client::WorkerServiceClient as Workers;
use test_harness::releases::{web_builds, T};
use test_harness::secure::{api_channel, bearer, channel_as, snapshot, transport_of as transport};
use test_harness::{wait_until, ProcessCluster, Spec};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Where the cluster's tests keep their git repositories: the only local paths it allows.
fn temp_patterns() -> Vec<String> {
    let raw = std::env::temp_dir();
    let real = raw.canonicalize().unwrap_or_else(|_| raw.clone());
    let mut p = vec![
        format!("{}/**", raw.display()),
        "https://git.example.com/acme/**".to_string(),
    ];
    if real != raw {
        p.push(format!("{}/**", real.display()));
    }
    p
}

async fn started() -> anyhow::Result<(ProcessCluster, deploy_client::Client, String)> {
    let patterns = temp_patterns();
    let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .worker("wk2", "east")
        .rack("east", 2)
        .rack("east", 1)
        .allowed_repos(&refs)
        .secure();
    let (c, admin, token) = test_harness::secure::start_with_admin(spec)?;
    // Up: both racks' relays have reported their hosts to the region.
    wait_until(T, "the relays to register their hosts", || async {
        let hosts = admin
            .list_hosts(pb::ListHostsRequest {
                region: "east".into(),
                ..Default::default()
            })
            .await
            .ok()?;
        (hosts.hosts.len() == 3).then_some(())
    })
    .await?;
    Ok((c, admin, token))
}

fn denied(what: &str, r: Result<impl std::fmt::Debug, Status>, words: &str) {
    match r {
        Ok(v) => panic!("{what} was served: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), Code::PermissionDenied, "{what}: {s:?}");
            assert!(s.message().contains(words), "{what}: {:?}", s.message());
        }
    }
}

fn report(region: &str, rack: &str, relay: &str, hosts: &[&str]) -> pb::ReportRackRequest {
    pb::ReportRackRequest {
        region: region.into(),
        rack: rack.into(),
        relay: relay.into(),
        hosts: hosts
            .iter()
            .map(|h| pb::HostReport {
                host: h.to_string(),
                services: vec![pb::ServiceReport {
                    service: "web".into(),
                    build_id: "b-1".into(),
                    state: pb::ServiceState::Healthy as i32,
                    detail: String::new(),
                }],
            })
            .collect(),
    }
}

async fn watch(ch: &Channel, rack: &str, hosts: &[&str]) -> Result<(), Status> {
    let mut req = tonic::Request::new(pb::WatchRackRequest {
        region: "east".into(),
        rack: rack.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
    });
    req.set_timeout(Duration::from_secs(10));
    Regions::new(ch.clone()).watch_rack(req).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_speaks_only_for_itself_whatever_certificate_it_holds() -> anyhow::Result<()>
{
    let (c, admin, _token) = started().await?;
    let east = c.addr("east-1")?.to_string();
    let relay = transport(&c, "east-1-h2")?.url(c.addr("east-rack-1-relay")?);
    let http = deploy_fanout::fetch::client(&transport(&c, "east-1-h2")?);

    // A host's own calls at its relay are served.
    let own = http
        .get(format!("{relay}/v1/goal?host=east-1-h2&wait_ms=0"))
        .send()
        .await?;
    assert_eq!(own.status(), 200, "{}", own.text().await?);
    let mine = serde_json::json!({"host": "east-1-h2", "services": []});
    let r = http
        .post(format!("{relay}/v1/report"))
        .body(serde_json::to_vec(&mine)?)
        .send()
        .await?;
    assert_eq!(r.status(), 204);
    let before = snapshot(&admin, &["east"]).await?;

    // A host's certificate at its relay: another host's goals and reports are refused.
    let r = http
        .get(format!("{relay}/v1/goal?host=east-1-h1&wait_ms=0"))
        .send()
        .await?;
    let (status, body) = (r.status(), r.text().await?);
    assert_eq!(status, 403, "another host's goals were handed out: {body}");
    assert!(
        body.contains("east-1-h2") && body.contains("only for itself"),
        "{body}"
    );
    let forged = serde_json::json!({
        "host": "east-1-h1",
        "services": [{"service": "web", "build_id": "b-1", "state": "HEALTHY", "detail": ""}],
    });
    let r = http
        .post(format!("{relay}/v1/report"))
        .body(serde_json::to_vec(&forged)?)
        .send()
        .await?;
    assert_eq!(r.status(), 403, "a report for another host was taken");

    // A host's certificate at the region: for another host, or for itself in another rack.
    let as_h1 = Regions::new(channel_as(&c, &east, "east-1-h1")?);
    denied(
        "a host reporting for another",
        as_h1
            .clone()
            .report_rack(report("east", "rack-1", "", &["east-1-h2"]))
            .await,
        "only for itself",
    );
    denied(
        "a host reporting itself into another rack",
        as_h1
            .clone()
            .report_rack(report("east", "rack-2", "", &["east-1-h1"]))
            .await,
        "own rack",
    );
    let h1_channel = channel_as(&c, &east, "east-1-h1")?;
    denied(
        "a host watching another's goals",
        watch(&h1_channel, "rack-1", &["east-1-h2"]).await,
        "only for itself",
    );

    // A relay's certificate: another rack, or its own rack with another rack's host.
    let as_relay = Regions::new(channel_as(&c, &east, "east-rack-1-relay")?);
    denied(
        "a relay reporting for another rack",
        as_relay
            .clone()
            .report_rack(report(
                "east",
                "rack-2",
                "east-rack-1-relay",
                &["east-2-h1"],
            ))
            .await,
        "own rack",
    );
    denied(
        "a relay reporting another rack's host",
        as_relay
            .clone()
            .report_rack(report(
                "east",
                "rack-1",
                "east-rack-1-relay",
                &["east-2-h1"],
            ))
            .await,
        "hosts of its rack",
    );
    let relay_channel = channel_as(&c, &east, "east-rack-1-relay")?;
    denied(
        "a relay watching another rack",
        watch(&relay_channel, "rack-2", &["east-2-h1"]).await,
        "own rack",
    );

    // A worker's certificate, acting as another worker.
    let g1 = c.addr("g1")?.to_string();
    let as_wk2 = Workers::new(channel_as(&c, &g1, "wk2")?);
    denied(
        "a worker completing another's lease",
        as_wk2
            .clone()
            .complete_build(pb::CompleteBuildRequest {
                id: "b-1".into(),
                worker: "wk".into(),
                attempt: 1,
                error: "forged".into(),
                ..Default::default()
            })
            .await,
        "cannot act as worker",
    );

    // Nothing any of them tried changed anything.
    assert_eq!(before, snapshot(&admin, &["east"]).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_credentials_a_foreign_repository_or_a_hop_count_change_nothing() -> anyhow::Result<()>
{
    let (c, admin, token) = started().await?;
    let reader = admin
        .create_token(pb::CreateTokenRequest {
            name: "viewer".into(),
            role: "reader".into(),
            services: Vec::new(),
            request_id: String::new(),
        })
        .await?
        .secret;
    let before = snapshot(&admin, &["east"]).await?;
    let g1 = c.addr("g1")?.to_string();
    let ch = api_channel(c.dir(), &g1).await?;

    // Two authorization headers, in either order: refused, whichever would have won.
    for (first, second) in [(&token, &reader), (&reader, &token)] {
        let mut req = bearer(
            pb::CreateTokenRequest {
                name: "sneaky".into(),
                role: "admin".into(),
                services: Vec::new(),
                request_id: String::new(),
            },
            Some(first),
        );
        req.metadata_mut()
            .append("authorization", format!("Bearer {second}").parse()?);
        let s = Tokens::new(ch.clone())
            .create_token(req)
            .await
            .expect_err("a call with two credentials was served");
        assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
        assert!(s.message().contains("more than one"), "{s:?}");
    }

    // Repositories: the policy lists the temporary directory and one https prefix.
    for (repo, words) in [
        ("file:///etc", "not allowed by builds.allowed_repos"),
        ("/etc/deploy", "not allowed by builds.allowed_repos"),
        ("https://git.example.com/other/web.git", "not allowed"),
        ("ssh://-oProxyCommand=touch${IFS}/tmp/pwned/x", "invalid"),
        ("ssh://git@-oProxyCommand=x/y", "invalid"),
        ("https://git.example.com/acme/-upload-pack=x", "invalid"),
    ] {
        let s = Builds::new(ch.clone())
            .submit_build(bearer(
                pb::SubmitBuildRequest {
                    service: "web".into(),
                    repo: repo.into(),
                    commit: "a".repeat(40),
                },
                Some(&token),
            ))
            .await
            .expect_err("a repository outside the policy was taken");
        assert_eq!(s.code(), Code::InvalidArgument, "{repo}: {s:?}");
        assert!(
            s.message().starts_with("repo "),
            "{repo}: names the field: {s:?}"
        );
        assert!(s.message().contains(words), "{repo}: {s:?}");
    }
    assert_eq!(before, snapshot(&admin, &["east"]).await?);

    // A hop count from a client: the region's node forwards this global read to g1. A
    // count at the bound was refused, one at u32::MAX panicked the request; a client's
    // count is now dropped, so both are served.
    let east = c.addr("east-1")?.to_string();
    let via_region = api_channel(c.dir(), &east).await?;
    for hops in ["3", "4294967295"] {
        let mut req = bearer(pb::ListBuildsRequest::default(), Some(&token));
        req.metadata_mut().insert("x-deploy-hops", hops.parse()?);
        let got = Builds::new(via_region.clone()).list_builds(req).await;
        assert!(got.is_ok(), "hops {hops}: {got:?}");
    }

    // A repository the policy lists builds as before.
    let ids = web_builds(&admin, c.dir(), 1024, &[("v1", true)]).await?;
    wait_until(T, "the allowed build to succeed", || async {
        let b = admin.get_build(&ids[0], false).await.ok()?;
        (b.state().name() == "SUCCEEDED").then_some(())
    })
    .await?;
    Ok(())
}

/// Opens `n` TCP connections to `addr` from `source` that never send a byte.
async fn idle_connections(
    addr: std::net::SocketAddr,
    source: std::net::IpAddr,
    n: usize,
) -> anyhow::Result<Vec<tokio::net::TcpStream>> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        held.push(socket.connect(addr).await?);
    }
    Ok(held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_do_not_hold_up_other_clients() -> anyhow::Result<()> {
    let (c, _admin, token) = started().await?;
    let g1: std::net::SocketAddr = c.addr("g1")?.parse()?;
    // More connections than the node runs handshakes at once, none sending a ClientHello.
    let mut idle = idle_connections(g1, "127.0.0.2".parse()?, 600).await?;
    // A new client elsewhere connects and is answered well within the handshake timeout
    // (5 s; it was 10 s, and before the per-source bound such a client waited for it).
    for _ in 0..3 {
        let answered = tokio::time::timeout(Duration::from_secs(3), async {
            let ch = api_channel(c.dir(), &g1.to_string()).await?;
            let req = bearer(pb::ListBuildsRequest::default(), Some(&token));
            Builds::new(ch).list_builds(req).await?;
            anyhow::Ok(())
        })
        .await;
        assert!(
            matches!(answered, Ok(Ok(()))),
            "a new client was not answered while idle connections were held: {answered:?}"
        );
    }
    // The node closed the idle connections past the per-source bound at once: most of
    // them read end-of-file already, while the handshake timeout has not passed.
    let mut closed = 0;
    for s in idle.iter_mut() {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 600 - deploy_tls::listener::MAX_HANDSHAKES_PER_SOURCE - 8,
        "{closed} of 600 idle connections were closed"
    );
    drop(idle);
    Ok(())
}

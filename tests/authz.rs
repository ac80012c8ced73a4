//! Tokens and roles on a secure cluster of real processes: every API call against every kind
//! of caller (the bootstrap admin, a releaser, a releaser limited to one service, a reader,
//! no token, a wrong token). A caller lacking the role gets exactly `PermissionDenied`, one
//! without a valid token exactly `Unauthenticated`, and a refused call changes nothing; a
//! caller with the role gets past the check (its answer is the call's own). Decisions record
//! the token's name, and a region checks tokens from its own copy while the global group is
//! down.

use deploy_proto::v1 as pb;
use deploy_proto::v1::artifact_service_client::ArtifactServiceClient as Artifacts;
use deploy_proto::v1::build_service_client::BuildServiceClient as Builds;
use deploy_proto::v1::cluster_service_client::ClusterServiceClient as Cluster;
use deploy_proto::v1::raft_service_client::RaftServiceClient as Raft;
use deploy_proto::v1::region_service_client::RegionServiceClient as Regions;
use deploy_proto::v1::release_service_client::ReleaseServiceClient as Releases;
use deploy_proto::v1::token_service_client::TokenServiceClient as Tokens;
use deploy_proto::v1::worker_service_client::WorkerServiceClient as Workers;
use test_harness::releases::{all_at_once, release, web_builds, T};
use test_harness::secure::{api_channel, bearer as req, snapshot};
use test_harness::{wait_until, ProcessCluster, Spec};
use tonic::transport::Channel;
use tonic::Code;

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Caller {
    NoToken,
    BadToken,
    Reader,
    /// A releaser limited to the service `db`.
    ScopedReleaser,
    Releaser,
    Admin,
}

const CALLERS: [Caller; 6] = [
    Caller::NoToken,
    Caller::BadToken,
    Caller::Reader,
    Caller::ScopedReleaser,
    Caller::Releaser,
    Caller::Admin,
];

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Reader,
    Releaser,
    /// A releaser of the service `web`.
    ReleaserOfWeb,
    Admin,
    /// A certificate of the cluster's own processes: no token will do.
    Internal,
}

/// What `caller` must get from a call needing `need`: `None` when it may make it.
fn refusal(caller: Caller, need: Need) -> Option<Code> {
    let role = match caller {
        Caller::NoToken | Caller::BadToken if need != Need::Internal => {
            return Some(Code::Unauthenticated)
        }
        c => c,
    };
    let enough = match need {
        Need::Internal => false,
        Need::Reader => role >= Caller::Reader,
        Need::Releaser => role >= Caller::ScopedReleaser,
        Need::ReleaserOfWeb => role >= Caller::Releaser,
        Need::Admin => role == Caller::Admin,
    };
    (!enough).then_some(Code::PermissionDenied)
}

/// What the calls act on: a SUCCEEDED build of `web` and its SUCCEEDED release.
struct Ctx {
    repo: String,
    commit: String,
    web_build: String,
    web_release: String,
}

/// Every public and internal call, with what it needs. Calls an allowed caller makes are
/// chosen to be refused by the call itself (unknown ids, a finished build) or to change
/// nothing, so the table can run them all; the real effects are checked separately.
const CALLS: &[(&str, Need)] = &[
    ("ClusterService/Status", Need::Reader),
    ("ClusterService/GetMeta", Need::Reader),
    ("ClusterService/SetMeta", Need::Admin),
    ("ClusterService/AddNode", Need::Admin),
    ("ClusterService/RemoveNode", Need::Admin),
    ("BuildService/SubmitBuild web", Need::ReleaserOfWeb),
    ("BuildService/GetBuild", Need::Reader),
    ("BuildService/ListBuilds", Need::Reader),
    ("BuildService/CancelBuild unknown", Need::Releaser),
    ("BuildService/CancelBuild web", Need::ReleaserOfWeb),
    ("BuildService/BuildLogs", Need::Reader),
    ("ArtifactService/CollectGarbage", Need::Admin),
    ("ReleaseService/CreateRelease web", Need::ReleaserOfWeb),
    ("ReleaseService/GetRelease", Need::Reader),
    ("ReleaseService/ListReleases", Need::Reader),
    ("ReleaseService/ReleaseAction unknown", Need::Releaser),
    ("ReleaseService/ReleaseAction web", Need::ReleaserOfWeb),
    ("RegionService/RegionStatus", Need::Reader),
    ("RegionService/ListHosts", Need::Reader),
    ("RegionService/GetHost", Need::Reader),
    ("RegionService/ReportRack", Need::Internal),
    ("RegionService/WatchRack", Need::Internal),
    ("RegionService/PullDecisions", Need::Internal),
    ("RegionService/ReportRegion", Need::Internal),
    ("TokenService/CreateToken", Need::Admin),
    ("TokenService/ListTokens", Need::Admin),
    ("TokenService/RevokeToken", Need::Admin),
    ("WorkerService/RegisterWorker", Need::Internal),
    ("WorkerService/AcquireBuild", Need::Internal),
    ("WorkerService/RenewLease", Need::Internal),
    ("WorkerService/CompleteBuild", Need::Internal),
    ("RaftService/AppendEntries", Need::Internal),
    ("RaftService/NodeStatus", Need::Internal),
];

async fn call(ch: &Channel, name: &str, ctx: &Ctx, tok: Option<&str>) -> Result<(), tonic::Status> {
    let ch = ch.clone();
    let east = || "east".to_string();
    let unknown_release = "r-999999".to_string();
    match name {
        "ClusterService/Status" => Cluster::new(ch)
            .status(req(pb::ClusterStatusRequest {}, tok))
            .await
            .map(drop),
        "ClusterService/GetMeta" => Cluster::new(ch)
            .get_meta(req(
                pb::GetMetaRequest {
                    group: "global".into(),
                    key: "owner".into(),
                    stale: false,
                },
                tok,
            ))
            .await
            .map(drop),
        // Sets the value it has: allowed, it changes nothing.
        "ClusterService/SetMeta" => Cluster::new(ch)
            .set_meta(req(
                pb::SetMetaRequest {
                    group: "global".into(),
                    key: "owner".into(),
                    value: Some("ops".into()),
                    request_id: String::new(),
                },
                tok,
            ))
            .await
            .map(drop),
        "ClusterService/AddNode" => Cluster::new(ch)
            .add_node(req(
                pb::AddNodeRequest {
                    group: "global".into(),
                    node_id: "g1".into(),
                    addr: "127.0.0.1:1".into(),
                    request_id: String::new(),
                },
                tok,
            ))
            .await
            .map(drop),
        "ClusterService/RemoveNode" => Cluster::new(ch)
            .remove_node(req(
                pb::RemoveNodeRequest {
                    group: "global".into(),
                    node_id: "nobody".into(),
                    request_id: String::new(),
                },
                tok,
            ))
            .await
            .map(drop),
        // The commit already built: answered with the existing build.
        "BuildService/SubmitBuild web" => Builds::new(ch)
            .submit_build(req(
                pb::SubmitBuildRequest {
                    service: "web".into(),
                    repo: ctx.repo.clone(),
                    commit: ctx.commit.clone(),
                },
                tok,
            ))
            .await
            .map(drop),
        "BuildService/GetBuild" => Builds::new(ch)
            .get_build(req(
                pb::GetBuildRequest {
                    id: ctx.web_build.clone(),
                    stale: false,
                },
                tok,
            ))
            .await
            .map(drop),
        "BuildService/ListBuilds" => Builds::new(ch)
            .list_builds(req(pb::ListBuildsRequest::default(), tok))
            .await
            .map(drop),
        "BuildService/CancelBuild unknown" => Builds::new(ch)
            .cancel_build(req(
                pb::CancelBuildRequest {
                    id: "b-999999".into(),
                    request_id: String::new(),
                },
                tok,
            ))
            .await
            .map(drop),
        "BuildService/CancelBuild web" => Builds::new(ch)
            .cancel_build(req(
                pb::CancelBuildRequest {
                    id: ctx.web_build.clone(),
                    request_id: String::new(),
                },
                tok,
            ))
            .await
            .map(drop),
        "BuildService/BuildLogs" => Builds::new(ch)
            .build_logs(req(
                pb::BuildLogsRequest {
                    id: ctx.web_build.clone(),
                    follow: false,
                },
                tok,
            ))
            .await
            .map(drop),
        "ArtifactService/CollectGarbage" => Artifacts::new(ch)
            .collect_garbage(req(pb::CollectGarbageRequest { dry_run: true }, tok))
            .await
            .map(drop),
        // A build that does not exist: refused by the release call itself.
        "ReleaseService/CreateRelease web" => Releases::new(ch)
            .create_release(req(
                pb::CreateReleaseRequest {
                    service: "web".into(),
                    build_id: "b-999999".into(),
                    regions: vec![east()],
                    strategy: None,
                    actor: String::new(),
                    request_id: String::new(),
                },
                tok,
            ))
            .await
            .map(drop),
        "ReleaseService/GetRelease" => Releases::new(ch)
            .get_release(req(
                pb::GetReleaseRequest {
                    id: ctx.web_release.clone(),
                    stale: false,
                },
                tok,
            ))
            .await
            .map(drop),
        "ReleaseService/ListReleases" => Releases::new(ch)
            .list_releases(req(pb::ListReleasesRequest::default(), tok))
            .await
            .map(drop),
        "ReleaseService/ReleaseAction unknown" | "ReleaseService/ReleaseAction web" => {
            let id = if name.ends_with("web") {
                ctx.web_release.clone()
            } else {
                unknown_release
            };
            // Pausing a release that has SUCCEEDED: refused by the release itself.
            Releases::new(ch)
                .release_action(req(
                    pb::ReleaseActionRequest {
                        id,
                        action: "pause".into(),
                        actor: String::new(),
                        reason: String::new(),
                        request_id: String::new(),
                    },
                    tok,
                ))
                .await
                .map(drop)
        }
        "RegionService/RegionStatus" => Regions::new(ch)
            .region_status(req(
                pb::RegionStatusRequest {
                    region: east(),
                    stale: false,
                },
                tok,
            ))
            .await
            .map(drop),
        "RegionService/ListHosts" => Regions::new(ch)
            .list_hosts(req(
                pb::ListHostsRequest {
                    region: east(),
                    ..Default::default()
                },
                tok,
            ))
            .await
            .map(drop),
        "RegionService/GetHost" => Regions::new(ch)
            .get_host(req(
                pb::GetHostRequest {
                    region: east(),
                    host: "east-1-h1".into(),
                    stale: false,
                },
                tok,
            ))
            .await
            .map(drop),
        "RegionService/ReportRack" => Regions::new(ch)
            .report_rack(req(
                pb::ReportRackRequest {
                    region: east(),
                    rack: "east-rack-1".into(),
                    hosts: vec![],
                    relay: "x".into(),
                },
                tok,
            ))
            .await
            .map(drop),
        "RegionService/WatchRack" => Regions::new(ch)
            .watch_rack(req(
                pb::WatchRackRequest {
                    region: east(),
                    rack: "east-rack-1".into(),
                    hosts: vec![],
                },
                tok,
            ))
            .await
            .map(drop),
        "RegionService/PullDecisions" => Regions::new(ch)
            .pull_decisions(req(
                pb::PullDecisionsRequest {
                    region: east(),
                    after: 0,
                    limit: 10,
                },
                tok,
            ))
            .await
            .map(drop),
        "RegionService/ReportRegion" => Regions::new(ch)
            .report_region(req(
                pb::ReportRegionRequest {
                    release_id: ctx.web_release.clone(),
                    region: east(),
                    state: pb::ReleaseState::Failed as i32,
                    ..Default::default()
                },
                tok,
            ))
            .await
            .map(drop),
        // A name in use: refused by the token call itself.
        "TokenService/CreateToken" => Tokens::new(ch)
            .create_token(req(
                pb::CreateTokenRequest {
                    name: "viewer".into(),
                    role: "admin".into(),
                    services: vec![],
                    request_id: String::new(),
                },
                tok,
            ))
            .await
            .map(drop),
        "TokenService/ListTokens" => Tokens::new(ch)
            .list_tokens(req(pb::ListTokensRequest {}, tok))
            .await
            .map(drop),
        "TokenService/RevokeToken" => Tokens::new(ch)
            .revoke_token(req(
                pb::RevokeTokenRequest {
                    name: "nobody".into(),
                    request_id: String::new(),
                },
                tok,
            ))
            .await
            .map(drop),
        "WorkerService/RegisterWorker" => Workers::new(ch)
            .register_worker(req(
                pb::RegisterWorkerRequest {
                    worker: "wk".into(),
                    region: east(),
                },
                tok,
            ))
            .await
            .map(drop),
        "WorkerService/AcquireBuild" => Workers::new(ch)
            .acquire_build(req(
                pb::AcquireBuildRequest {
                    worker: "wk".into(),
                    wait_ms: 0,
                },
                tok,
            ))
            .await
            .map(drop),
        "WorkerService/RenewLease" => Workers::new(ch)
            .renew_lease(req(
                pb::RenewLeaseRequest {
                    id: ctx.web_build.clone(),
                    worker: "wk".into(),
                    attempt: 1,
                },
                tok,
            ))
            .await
            .map(drop),
        "WorkerService/CompleteBuild" => Workers::new(ch)
            .complete_build(req(
                pb::CompleteBuildRequest {
                    id: ctx.web_build.clone(),
                    worker: "wk".into(),
                    attempt: 1,
                    error: "forged".into(),
                    ..Default::default()
                },
                tok,
            ))
            .await
            .map(drop),
        "RaftService/AppendEntries" => Raft::new(ch)
            .append_entries(req(
                pb::RaftRequest {
                    group: "global".into(),
                    payload: b"{}".to_vec(),
                },
                tok,
            ))
            .await
            .map(drop),
        "RaftService/NodeStatus" => Raft::new(ch)
            .node_status(req(
                pb::NodeStatusRequest {
                    group: "global".into(),
                },
                tok,
            ))
            .await
            .map(drop),
        other => panic!("no call {other}"),
    }
}

async fn make_token(
    admin: &deploy_client::Client,
    name: &str,
    role: &str,
    services: &[&str],
) -> anyhow::Result<String> {
    let r = admin
        .create_token(pb::CreateTokenRequest {
            name: name.into(),
            role: role.into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            request_id: String::new(),
        })
        .await?;
    Ok(r.secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_admits_exactly_the_roles_it_should() -> anyhow::Result<()> {
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .rack("east", 2)
        .secure();
    let mut c = ProcessCluster::start_spec(spec)?;
    let admin = c.client()?;
    for h in ["east-1-h1", "east-1-h2"] {
        c.start_agent(h, None)?;
    }
    let ids = web_builds(&admin, c.dir(), 1024, &[("v1", true)]).await?;
    let done = release(&admin, &ids[0], "east", all_at_once(2)).await?;
    assert_eq!(done.state().name(), "SUCCEEDED", "{done:#?}");
    let web = admin.get_build(&ids[0], false).await?;
    admin.set_meta("global", "owner", Some("ops")).await?;
    let ctx = Ctx {
        repo: web.repo.clone(),
        commit: web.commit.clone(),
        web_build: web.id.clone(),
        web_release: done.id.clone(),
    };

    let admin_token = test_harness::admin_token(c.dir())?;
    let reader = make_token(&admin, "viewer", "reader", &[]).await?;
    let releaser = make_token(&admin, "ci", "releaser", &[]).await?;
    let scoped = make_token(&admin, "ci-db", "releaser", &["db"]).await?;
    let wrong = format!("dpl_{}", "0".repeat(64));
    let token_of = |who: Caller| match who {
        Caller::NoToken => None,
        Caller::BadToken => Some(wrong.as_str()),
        Caller::Reader => Some(reader.as_str()),
        Caller::ScopedReleaser => Some(scoped.as_str()),
        Caller::Releaser => Some(releaser.as_str()),
        Caller::Admin => Some(admin_token.as_str()),
    };
    let ca = std::fs::read(test_harness::certs_dir(c.dir()).join("ca.pem"))?;
    let ch = api_channel(c.dir(), c.addr("g1")?).await?;
    // A region learns of new tokens as it pulls the global group's decisions.
    for t in [&reader, &releaser, &scoped] {
        wait_until(T, "the region to know the tokens", || async {
            call(&ch, "RegionService/RegionStatus", &ctx, Some(t))
                .await
                .ok()
        })
        .await?;
    }

    // Every refusal first, then what is left must be as it was.
    let before = snapshot(&admin, &[]).await?;
    let mut checked = 0;
    for (name, need) in CALLS {
        for who in CALLERS {
            let Some(code) = refusal(who, *need) else {
                continue;
            };
            let got = call(&ch, name, &ctx, token_of(who)).await;
            let e = got
                .err()
                .unwrap_or_else(|| panic!("{name} as {who:?} was let through"));
            assert_eq!(e.code(), code, "{name} as {who:?}: {e:?}");
            checked += 1;
        }
    }
    assert_eq!(
        snapshot(&admin, &[]).await?,
        before,
        "a refused call changed something"
    );

    // The rest get past the check: their answer is the call's own.
    for (name, need) in CALLS {
        for who in CALLERS {
            if refusal(who, *need).is_some() {
                continue;
            }
            if let Err(e) = call(&ch, name, &ctx, token_of(who)).await {
                assert!(
                    !matches!(e.code(), Code::Unauthenticated | Code::PermissionDenied),
                    "{name} as {who:?} was refused: {e:?}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, CALLS.len() * CALLERS.len());
    assert_eq!(
        snapshot(&admin, &[]).await?,
        before,
        "the allowed no-op calls changed something"
    );

    // What each may really do, recorded under its token's name.
    let pem = deploy_client::trusting(&ca);
    let as_token = |t: &str| -> anyhow::Result<deploy_client::Client> {
        Ok(deploy_client::Client::secure([c.addr("g1")?], pem.clone())?.with_token(t)?)
    };
    let ci_db = as_token(&scoped)?;
    let db = ci_db.submit_build("db", &ctx.repo, &ctx.commit).await?;
    let note = db
        .history
        .first()
        .map(|h| h.note.clone())
        .unwrap_or_default();
    assert_eq!(note, "submitted by ci-db", "{db:#?}");
    let ci = as_token(&releaser)?;
    let r = ci
        .create_release(pb::CreateReleaseRequest {
            service: "web".into(),
            build_id: ctx.web_build.clone(),
            regions: vec!["east".into()],
            strategy: Some(all_at_once(2)),
            actor: "alice".into(),
            request_id: String::new(),
        })
        .await?;
    assert_eq!(r.created_by, "ci (alice)", "{r:#?}");
    let viewer = as_token(&reader)?;
    assert_eq!(viewer.get_release(&r.id, false).await?.id, r.id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_checks_tokens_from_its_own_copy_while_the_global_group_is_down(
) -> anyhow::Result<()> {
    let mut c = ProcessCluster::start_spec(Spec::new(1).region("east", 1).secure())?;
    let admin = c.client()?;
    let addr = c.addr("east-1")?.to_string();
    let east = wait_until(T, "the region node to serve", || async {
        api_channel(c.dir(), &addr).await.ok()
    })
    .await?;
    let status = |tok: String| {
        let east = east.clone();
        async move {
            Regions::new(east)
                .region_status(req(
                    pb::RegionStatusRequest {
                        region: "east".into(),
                        stale: true,
                    },
                    Some(&tok),
                ))
                .await
                .map(drop)
        }
    };
    let viewer = make_token(&admin, "viewer", "reader", &[]).await?;
    let gone = make_token(&admin, "leaver", "reader", &[]).await?;
    let known = wait_until(T, "the region to know both tokens", || async {
        (status(viewer.clone()).await.is_ok() && status(gone.clone()).await.is_ok()).then_some(())
    })
    .await;
    if known.is_err() {
        eprintln!("{}", c.log("east-1"));
    }
    known?;
    admin
        .revoke_token(pb::RevokeTokenRequest {
            name: "leaver".into(),
            request_id: String::new(),
        })
        .await?;
    wait_until(T, "the region to refuse the revoked token", || async {
        let e = status(gone.clone()).await.err()?;
        (e.code() == Code::Unauthenticated).then_some(())
    })
    .await?;

    c.kill9("g1")?;
    status(viewer.clone()).await?;
    let e = status(gone.clone())
        .await
        .expect_err("a revoked token, global group down");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    Ok(())
}

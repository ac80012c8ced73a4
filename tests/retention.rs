//! Retention of finished builds across a three-node global group over loopback gRPC, on real
//! RocksDB stores: collected alike on every replica, answered from the history, then
//! answered as removed by retention.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deploy_client::Client;
use deploy_proto::v1::ReleaseState;
use deploy_state::retention::Collect;
use deploy_state::{GlobalCommand as Command, Response};
use deploy_types::GroupName;
use test_harness::{wait_until, GrpcCluster, Spec};

const T: Duration = Duration::from_secs(30);
const DAY_MS: u64 = 86_400_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Submits `n` builds of `web` (no worker takes them) and cancels each, so all are final.
async fn finished_builds(client: &Client, n: usize) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for i in 0..n {
        let b = client
            .submit_build("web", "/srv/git/app", &format!("{i:040x}"))
            .await?;
        client.cancel_build(&b.id).await?;
        ids.push(b.id);
    }
    Ok(ids)
}

/// Where each node stands on build `seq`: (in its live state, in its history with the build,
/// a tombstone).
fn where_is(c: &GrpcCluster, node: &str, seq: u64) -> anyhow::Result<(bool, bool, bool)> {
    let h = c
        .node(node)?
        .node
        .global()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("{node} hosts no global group"))?;
    let live = h.state.read(|d| d.state.builds.by_seq.contains_key(&seq));
    let row = h.state.collected_build(seq)?;
    let kept = row.as_ref().is_some_and(|r| r.record.is_some());
    let gone = row.as_ref().is_some_and(|r| r.removed_at_ms.is_some());
    Ok((live, kept, gone))
}

const NODES: [&str; 3] = ["g1", "g2", "g3"];

/// The global group's handle on whichever node leads it.
async fn global_leader(
    c: &GrpcCluster,
) -> anyhow::Result<deploy_coordinator::GroupHandle<deploy_raft::GlobalTypes>> {
    wait_until(T, "a global leader", || async {
        NODES.into_iter().find_map(|n| {
            let h = c.node(n).ok()?.node.global()?.clone();
            h.is_leader().then_some(h)
        })
    })
    .await
}

/// A collect at `now_ms` keeping one finished record per service, with a day of history.
fn collect(now_ms: u64) -> Command {
    Command::Collect(Collect {
        now_ms,
        keep_per_service: 1,
        keep_ms: 0,
        artifact_keep: 0,
        history_ms: DAY_MS,
        decisions_upto: 0,
    })
}

const COLLECTED: (bool, bool, bool) = (false, true, false);
const LIVE: (bool, bool, bool) = (true, false, false);
const TOMBSTONE: (bool, bool, bool) = (false, false, true);

/// Waits until every replica places each build `seq` as `want` says.
async fn wait_everywhere(
    c: &GrpcCluster,
    what: &str,
    want: &[(u64, (bool, bool, bool))],
) -> anyhow::Result<()> {
    for n in NODES {
        wait_until(T, what, || async {
            want.iter()
                .all(|(seq, w)| where_is(c, n, *seq).ok() == Some(*w))
                .then_some(())
        })
        .await?;
    }
    Ok(())
}

/// A collect decided by the leader removes the same builds on every replica; `build get`
/// still answers for them from the history, and once the history period is over says when
/// retention removed them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collected_builds_leave_every_replica_and_are_answered_from_history_then_as_removed(
) -> anyhow::Result<()> {
    let c = GrpcCluster::start_spec(Spec::new(3)).await?;
    let client = c.client()?;
    let ids = finished_builds(&client, 3).await?;
    let h = global_leader(&c).await?;
    let now = now_ms();
    match h.propose(collect(now)).await?.1 {
        Response::Collected(removed) => assert_eq!(
            removed.builds.iter().map(|b| b.id()).collect::<Vec<_>>(),
            ids[..2],
            "the two older builds are collected, the newest kept"
        ),
        other => anyhow::bail!("unexpected answer {other:?}"),
    }
    let collected = [(1, COLLECTED), (2, COLLECTED), (3, LIVE)];
    wait_everywhere(&c, "the collect applied on every replica", &collected).await?;
    let from_history = client.get_build(&ids[0], false).await?;
    assert_eq!(from_history.id, ids[0]);
    assert_eq!(from_history.state().name(), "CANCELLED");

    // Two days later the history (one day) is over: tombstones, and a dated answer.
    h.propose(collect(now + 2 * DAY_MS)).await?;
    let expired = [(1, TOMBSTONE), (2, TOMBSTONE)];
    wait_everywhere(&c, "the history expired on every replica", &expired).await?;
    let err = client.get_build(&ids[0], false).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::NotFound), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("build {} was removed by retention on 20", ids[0])),
        "{err}"
    );
    // The list no longer shows them either.
    let listed = client
        .list_builds(deploy_proto::v1::ListBuildsRequest::default())
        .await?;
    assert_eq!(
        listed
            .builds
            .iter()
            .map(|b| b.id.as_str())
            .collect::<Vec<_>>(),
        [ids[2].as_str()]
    );
    // The newest build was never collected; one that never existed is still "does not exist".
    assert_eq!(
        client.get_build(&ids[2], false).await?.state().name(),
        "CANCELLED"
    );
    let none = client.get_build("b-99", false).await.unwrap_err();
    assert!(none.to_string().contains("does not exist"), "{none}");
    Ok(())
}

/// With `[retention]` set, the global leader collects finished builds by itself: the state
/// keeps the newest, and the older ones are answered from the history on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_collects_finished_builds_under_the_configured_policy() -> anyhow::Result<()> {
    let c = GrpcCluster::start_spec(Spec::new(3).state_retention(1, 1)).await?;
    let client = c.client()?;
    let ids = finished_builds(&client, 3).await?;
    let collected = [(1, COLLECTED), (2, COLLECTED), (3, LIVE)];
    wait_everywhere(&c, "the leader's collect on every replica", &collected).await?;
    // The list still shows the collected builds, from the history, newest first, page by
    // page.
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_builds(deploy_proto::v1::ListBuildsRequest {
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await?;
        listed.extend(
            page.builds
                .into_iter()
                .map(|b| (b.id.clone(), b.state().name())),
        );
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let cancelled = |i: usize| (ids[i].clone(), "CANCELLED");
    assert_eq!(listed, [cancelled(2), cancelled(1), cancelled(0)]);
    // A filter applies to the history too.
    let none = client
        .list_builds(deploy_proto::v1::ListBuildsRequest {
            state: deploy_proto::v1::BuildState::Succeeded as i32,
            ..Default::default()
        })
        .await?;
    assert!(none.builds.is_empty(), "{none:?}");
    assert_eq!(
        client.get_build(&ids[0], false).await?.state().name(),
        "CANCELLED"
    );
    Ok(())
}

/// Three successful builds of `web` (v1, v2, v3), each released to east in turn, so the
/// first two end superseded (ABORTED); with `request_ids`, each create carries one.
async fn three_releases(
    client: &Client,
    dir: &std::path::Path,
    request_ids: bool,
) -> anyhow::Result<Vec<String>> {
    let builds =
        test_harness::releases::succeeded_builds(client, dir, "web", &["v1", "v2", "v3"]).await?;
    let mut releases = Vec::new();
    for b in &builds {
        let r = client
            .create_release(deploy_proto::v1::CreateReleaseRequest {
                service: "web".into(),
                build_id: b.clone(),
                regions: vec!["east".into()],
                strategy: Some(test_harness::releases::fast(100)),
                actor: "tester".into(),
                request_id: if request_ids {
                    format!("req-{b}")
                } else {
                    String::new()
                },
            })
            .await?;
        releases.push(r.id);
    }
    Ok(releases)
}

/// Superseded releases (ABORTED) leave the state under a collect, while the one a rollback
/// acts on stays; `release get` answers for them from the history, then as removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collected_releases_are_answered_from_history_then_as_removed() -> anyhow::Result<()> {
    let spec = Spec::new(3).region("east", 1).worker("wk", "east");
    let c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    let releases = three_releases(&client, &c.dir(), false).await?;
    // Superseded (ABORTED), or SUCCEEDED first: the region has no hosts, so a release can
    // end before the next one is made. Either way it is final, and collectable.
    let first = wait_until(T, "the first release to end", || async {
        let r = client.get_release(&releases[0], false).await.ok()?;
        r.state().is_final().then(|| r.state())
    })
    .await?;
    assert!(
        matches!(first, ReleaseState::Aborted | ReleaseState::Succeeded),
        "{first:?}"
    );
    let h = global_leader(&c).await?;
    let now = now_ms();
    match h.propose(collect(now)).await?.1 {
        Response::Collected(removed) => assert_eq!(
            removed.releases.iter().map(|r| r.id()).collect::<Vec<_>>(),
            releases[..2],
            "the superseded releases go; the newest, which a rollback acts on, stays"
        ),
        other => anyhow::bail!("unexpected answer {other:?}"),
    }
    let listed = client
        .list_releases(deploy_proto::v1::ListReleasesRequest::default())
        .await?;
    let newest_first: Vec<String> = releases.iter().rev().cloned().collect();
    assert_eq!(
        listed
            .releases
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>(),
        newest_first,
        "collected releases are listed from the history"
    );
    let old = client.get_release(&releases[0], false).await?;
    assert_eq!(
        (old.id.as_str(), old.state()),
        (releases[0].as_str(), first)
    );
    assert!(client.get_release(&releases[2], false).await.is_ok());
    h.propose(collect(now + 2 * DAY_MS)).await?;
    let err = client.get_release(&releases[0], false).await.unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "release {} was removed by retention on 20",
            releases[0]
        )),
        "{err}"
    );
    Ok(())
}

/// A report of region east's `rack`, from `relay` (none: empty), of `hosts` running nothing.
fn rack_report(rack: &str, relay: &str, hosts: &[&str]) -> deploy_proto::v1::ReportRackRequest {
    deploy_proto::v1::ReportRackRequest {
        region: "east".into(),
        rack: rack.into(),
        relay: relay.into(),
        hosts: hosts
            .iter()
            .map(|h| deploy_proto::v1::HostReport {
                host: h.to_string(),
                services: vec![],
            })
            .collect(),
    }
}

/// A host that stops reporting leaves the region's registry after the policy's timeout, while
/// one that keeps reporting stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_that_stop_reporting_leave_the_registry() -> anyhow::Result<()> {
    let spec = Spec::new(1)
        .region("east", 1)
        .state_retention(1, 1)
        .forget_hosts_after_secs(2);
    let c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    let report = |hosts: &[&str]| rack_report("k1", "k1-relay", hosts);
    let hosts = || async {
        let r = client
            .list_hosts(deploy_proto::v1::ListHostsRequest {
                region: "east".into(),
                ..Default::default()
            })
            .await
            .ok()?;
        Some(r.hosts.into_iter().map(|h| h.host).collect::<Vec<_>>())
    };
    wait_until(T, "both hosts registered", || async {
        client.report_rack(report(&["h1", "h2"])).await.ok()?;
        (hosts().await? == ["h1", "h2"]).then_some(())
    })
    .await?;
    // Only h1 goes on reporting; h2 (and nothing else) is forgotten.
    // h1 reports every 200 ms, as a relay would, until h2 is gone.
    test_harness::wait_every(
        Duration::from_millis(200),
        T,
        "the quiet host forgotten",
        || async {
            client.report_rack(report(&["h1"])).await.ok()?;
            (hosts().await? == ["h1"]).then_some(())
        },
    )
    .await?;
    let h = c
        .node("east-1")?
        .node
        .region(&GroupName::Region("east".into()))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no east group"))?;
    assert!(h
        .state
        .read(|d| d.state.region.relays.contains_key("k1-relay")));
    Ok(())
}

/// A region whose fleet config lists its racks registers only the hosts listed there: a
/// report naming an invented host, or a listed host in another rack, is refused and
/// registers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_with_a_fleet_config_takes_only_the_hosts_it_lists() -> anyhow::Result<()> {
    let spec = Spec::new(1)
        .region("east", 1)
        .rack("east", 2)
        .rack("east", 1);
    let c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    let report = |rack: &str, hosts: &[&str]| rack_report(rack, "", hosts);
    for (rack, hosts, why) in [
        (
            "rack-1",
            &["east-1-h1", "invented"][..],
            "host \"invented\" is not in rack rack-1",
        ),
        (
            "rack-2",
            &["east-1-h2"][..],
            "host \"east-1-h2\" is not in rack rack-2",
        ),
        (
            "rack-9",
            &["east-1-h1"][..],
            "rack \"rack-9\" is not in region east's fleet config",
        ),
    ] {
        let err = client.report_rack(report(rack, hosts)).await.unwrap_err();
        assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition), "{err}");
        assert!(err.to_string().contains(why), "{err}");
    }
    client
        .report_rack(report("rack-1", &["east-1-h1", "east-1-h2"]))
        .await?;
    let listed = client
        .list_hosts(deploy_proto::v1::ListHostsRequest {
            region: "east".into(),
            ..Default::default()
        })
        .await?;
    assert_eq!(
        listed
            .hosts
            .iter()
            .map(|h| h.host.as_str())
            .collect::<Vec<_>>(),
        ["east-1-h1", "east-1-h2"]
    );
    Ok(())
}

/// With `[retention]` set, the global decisions every region applied leave the global state,
/// and a region's finished release records beyond the policy leave the region's, its newest
/// (which a rollback undoes) staying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_decisions_and_old_region_release_records_leave_the_state() -> anyhow::Result<()> {
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .state_retention(1, 1);
    let c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    let releases = three_releases(&client, &c.dir(), true).await?;
    let newest = deploy_state::releases::parse_release_id(&releases[2])
        .ok_or_else(|| anyhow::anyhow!("bad release id {}", releases[2]))?;
    let east = c
        .node("east-1")?
        .node
        .region(&GroupName::Region("east".into()))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no east group"))?;
    wait_until(T, "east's older release records collected", || async {
        let left = east.state.read(|d| {
            let r = &d.state.region;
            (r.releases.keys().copied().collect::<Vec<_>>(), r.applied)
        });
        (left.0 == [newest]).then_some(left.1)
    })
    .await?;
    let g = global_leader(&c).await?;
    let made = g.state.read(|d| d.state.releases.last_decision);
    assert!(made >= 3, "three starts at least, and the aborts: {made}");
    wait_until(T, "the decisions east applied dropped", || async {
        let (kept, applied) = (
            g.state.read(|d| d.state.releases.decisions.len()),
            east.state.read(|d| d.state.region.applied),
        );
        (kept == 0 && applied == made).then_some(())
    })
    .await?;
    // The global release records are untouched by the region's collect; the request ids,
    // younger than a keep_days of 0 only by clock, are gone with it.
    assert_eq!(
        client
            .get_release(&releases[2], false)
            .await?
            .state()
            .name(),
        "SUCCEEDED"
    );
    wait_until(T, "old request ids forgotten", || async {
        g.state
            .read(|d| d.state.releases.requests.ids.is_empty())
            .then_some(())
    })
    .await?;
    Ok(())
}

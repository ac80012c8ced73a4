//! Releases over loopback gRPC with simulated hosts: waves in region order, health gating
//! and rollback, region autonomy with the global group stopped, a region catching up after
//! being cut off, and operator decisions.

use std::sync::{Arc, Mutex};

use deploy_client::Client;
use deploy_proto::v1 as pb;
use test_harness::releases::{
    act, fast, goal, hosts, is_final, region_release, simulate, succeeded_builds, wait_hosts,
    wait_release, T,
};
use test_harness::{wait_until, GrpcCluster, Spec};

fn region_client(c: &GrpcCluster, region: &str) -> anyhow::Result<Client> {
    Ok(Client::new(c.region_addrs(region))?)
}

async fn create(
    client: &Client,
    build: &str,
    regions: &[&str],
    strategy: pb::Strategy,
) -> anyhow::Result<pb::Release> {
    Ok(client
        .create_release(pb::CreateReleaseRequest {
            service: "web".into(),
            build_id: build.into(),
            regions: regions.iter().map(|s| s.to_string()).collect(),
            strategy: Some(strategy),
            actor: "tester".into(),
            request_id: String::new(),
        })
        .await?)
}

fn position(r: &pb::Release, what: &str) -> usize {
    r.history
        .iter()
        .position(|e| e.what.starts_with(what))
        .unwrap_or_else(|| panic!("no {what:?} in {:#?}", r.history))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_goes_through_every_wave_of_both_regions_in_order() -> anyhow::Result<()> {
    let spec = Spec::new(3)
        .region("east", 1)
        .region("west", 1)
        .worker("wk", "east");
    let c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    let _east = simulate(&c.region_addrs("east"), "east", 3, 2, None)?;
    let _west = simulate(&c.region_addrs("west"), "west", 2, 2, None)?;
    let ids = succeeded_builds(&client, &c.dir(), "web", &["v1"]).await?;
    wait_hosts(&client, "east", 6).await?;
    wait_hosts(&client, "west", 4).await?;

    // Refused: an unknown region, a bad strategy, a build that does not exist.
    let e = create(&client, &ids[0], &["mars"], fast(100))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("mars"), "{e}");
    let bad = pb::Strategy {
        waves: vec![60, 30],
        ..fast(100)
    };
    assert!(create(&client, &ids[0], &["east"], bad).await.is_err());
    assert!(create(&client, "b-999", &["east"], fast(100))
        .await
        .is_err());

    // West first, then east.
    let r = create(&client, &ids[0], &["west", "east"], fast(200)).await?;
    assert_eq!(r.created_by, "tester");
    let done = wait_release(&client, &r.id, "to end", is_final).await?;
    assert_eq!(done.state().name(), "SUCCEEDED", "{done:#?}");
    assert_eq!(done.hosts_total, 10);
    assert_eq!(done.hosts_updated, 10);
    assert_eq!(done.hosts_failed, 0);
    let order: Vec<&str> = done.regions.iter().map(|g| g.region.as_str()).collect();
    assert_eq!(order, ["west", "east"]);
    for g in &done.regions {
        assert_eq!(g.state().name(), "SUCCEEDED");
        assert_eq!(g.wave, g.waves, "{g:?}");
        assert_eq!(g.hosts_updated, g.hosts_total);
    }
    // east had 3 racks: canary, 50% (one more rack), 100%: three waves.
    assert_eq!(done.regions[1].waves, 3);
    assert!(position(&done, "region west SUCCEEDED") < position(&done, "started region east"));
    // Every host's goal is the build, and every host runs it healthy.
    for region in ["east", "west"] {
        let hs = hosts(&client, region).await?;
        assert!(!hs.is_empty());
        for h in &hs {
            assert_eq!(goal(h, "web"), ids[0], "{h:?}");
        }
        let rr = region_release(&client, region, &r.id)
            .await
            .expect("region view");
        assert_eq!(rr.state().name(), "SUCCEEDED");
        assert!(rr.history.iter().any(|e| e.what.contains("wave 1 passed")));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_halts_the_release_and_rolls_every_moved_host_back() -> anyhow::Result<()>
{
    let spec = Spec::new(3).region("east", 1).worker("wk", "east");
    let c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    // Hosts fail health on whichever build is set here.
    let bad: Arc<Mutex<String>> = Arc::default();
    let rule = bad.clone();
    let fails = Arc::new(move |_: &str, _: &str, build: &str| {
        *rule.lock().unwrap_or_else(|p| p.into_inner()) == build
    });
    let _sim = simulate(&c.region_addrs("east"), "east", 3, 2, Some(fails))?;
    let ids = succeeded_builds(&client, &c.dir(), "web", &["v1", "v2"]).await?;
    wait_hosts(&client, "east", 6).await?;
    let first = create(&client, &ids[0], &["east"], fast(100)).await?;
    let first = wait_release(&client, &first.id, "to end", is_final).await?;
    assert_eq!(first.state().name(), "SUCCEEDED");

    *bad.lock().unwrap_or_else(|p| p.into_inner()) = ids[1].clone();
    let second = create(&client, &ids[1], &["east"], fast(100)).await?;
    let done = wait_release(&client, &second.id, "to end", is_final).await?;
    assert_eq!(done.state().name(), "ROLLED_BACK", "{done:#?}");
    let east = &done.regions[0];
    assert_eq!(east.state().name(), "ROLLED_BACK");
    assert_eq!(east.wave, 1, "halted in the canary wave, before the second");
    assert!(east.reason.contains("failed"), "{}", east.reason);
    // One host of a rack updates at a time: the first failure halted it.
    assert_eq!(east.hosts_failed, 1);
    // Every host's goal is the previous build again, and the hosts return to it.
    wait_until(T, "every host back on the previous build", || async {
        let hs = hosts(&client, "east").await.ok()?;
        let back = hs.iter().all(|h| {
            goal(h, "web") == ids[0]
                && h.services
                    .iter()
                    .any(|s| s.running_build_id == ids[0] && s.state().name() == "HEALTHY")
        });
        back.then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_finishes_its_release_with_the_global_group_stopped() -> anyhow::Result<()> {
    let spec = Spec::new(3).region("east", 1).worker("wk", "east");
    let mut c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    let regional = region_client(&c, "east")?;
    let _sim = simulate(&c.region_addrs("east"), "east", 3, 2, None)?;
    let ids = succeeded_builds(&client, &c.dir(), "web", &["v1"]).await?;
    wait_hosts(&client, "east", 6).await?;
    // A long enough healthy time that the region is mid-rollout when the global group stops.
    let r = create(&client, &ids[0], &["east"], fast(1500)).await?;
    wait_until(T, "the region to hold the release", || async {
        region_release(&regional, "east", &r.id).await
    })
    .await?;
    for g in ["g1", "g2", "g3"] {
        c.stop_node(g).await?;
    }
    let here = wait_until(T, "the region to finish on its own", || async {
        let rr = region_release(&regional, "east", &r.id).await?;
        (rr.state().name() == "SUCCEEDED").then_some(rr)
    })
    .await?;
    assert_eq!(here.hosts_updated, 6);
    // The region still answers its operators, linearizably and from a stale replica.
    let status = regional
        .region_status(pb::RegionStatusRequest {
            region: "east".into(),
            stale: true,
        })
        .await?;
    assert_eq!(status.hosts, 6);
    let h = regional
        .get_host(pb::GetHostRequest {
            region: "east".into(),
            host: "east-r0-h0".into(),
            stale: false,
        })
        .await?;
    assert_eq!(goal(&h, "web"), ids[0]);
    assert!(
        regional.get_release(&r.id, false).await.is_err(),
        "the global group is down"
    );

    for g in ["g1", "g2", "g3"] {
        c.start_node(g).await?;
    }
    let done = wait_release(&client, &r.id, "the global view to catch up", is_final).await?;
    assert_eq!(done.state().name(), "SUCCEEDED");
    assert_eq!(done.regions[0].hosts_updated, 6);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_cut_off_applies_every_decision_in_order_once_restored() -> anyhow::Result<()> {
    let spec = Spec::new(3)
        .region("east", 1)
        .region("west", 1)
        .worker("wk", "east");
    let mut c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    let _east = simulate(&c.region_addrs("east"), "east", 2, 2, None)?;
    let _west = simulate(&c.region_addrs("west"), "west", 2, 2, None)?;
    let ids = succeeded_builds(&client, &c.dir(), "web", &["v1", "v2", "v3"]).await?;
    wait_hosts(&client, "west", 4).await?;
    // West's nodes can no longer reach the global group (the other way needs no path:
    // regions pull).
    c.cut(&["west-1"], &["g1", "g2", "g3"]);
    let west = region_client(&c, "west")?;
    let both = pb::Strategy {
        regions_at_once: Some(2),
        ..fast(100)
    };
    let mut rel = Vec::new();
    for id in &ids {
        rel.push(
            create(&client, id, &["east", "west"], both.clone())
                .await?
                .id,
        );
    }
    // The first two were superseded while west was away.
    for id in &rel[..2] {
        let r = client.get_release(id, false).await?;
        assert_eq!(r.state().name(), "ABORTED");
    }
    // East went ahead; west, cut off, has applied none of it and still answers.
    wait_until(T, "east to finish the third", || async {
        let rr = region_release(&client, "east", &rel[2]).await?;
        (rr.state().name() == "SUCCEEDED").then_some(())
    })
    .await?;
    let status = west
        .region_status(pb::RegionStatusRequest {
            region: "west".into(),
            stale: false,
        })
        .await?;
    assert!(status.releases.is_empty(), "{:?}", status.releases);
    assert_eq!(status.applied_decision, 0);
    assert_eq!(
        client.get_release(&rel[2], false).await?.state().name(),
        "ROLLING_OUT"
    );
    c.heal();
    let done = wait_release(&client, &rel[2], "to end", is_final).await?;
    assert_eq!(done.state().name(), "SUCCEEDED", "{done:#?}");
    let status = west
        .region_status(pb::RegionStatusRequest {
            region: "west".into(),
            stale: false,
        })
        .await?;
    let seen: Vec<(&str, &str)> = status
        .releases
        .iter()
        .map(|r| (r.id.as_str(), r.state().name()))
        .collect();
    for (i, id) in rel.iter().enumerate() {
        let r = status
            .releases
            .iter()
            .find(|r| r.id == *id)
            .unwrap_or_else(|| panic!("west never applied {id}: {seen:?}"));
        let starts = r
            .history
            .iter()
            .filter(|e| e.what.starts_with("started"))
            .count();
        assert_eq!(starts, 1, "{id} started once: {:?}", r.history);
        if i < 2 {
            assert_eq!(r.state().name(), "ABORTED", "{seen:?}");
            let next = &rel[i + 1];
            assert!(
                r.reason.contains(&format!("superseded by {next}")),
                "{}",
                r.reason
            );
        } else {
            assert_eq!(r.state().name(), "SUCCEEDED");
        }
    }
    for h in hosts(&west, "west").await? {
        assert_eq!(goal(&h, "web"), ids[2]);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_resume_continues_promote_skips_the_wait_and_abort_stops() -> anyhow::Result<()>
{
    let spec = Spec::new(3).region("east", 1).worker("wk", "east");
    let c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    let _sim = simulate(&c.region_addrs("east"), "east", 3, 2, None)?;
    let ids = succeeded_builds(&client, &c.dir(), "web", &["v1", "v2", "v3"]).await?;
    wait_hosts(&client, "east", 6).await?;

    // Pause at once: the canary hosts update and stay healthy, but the wave does not pass.
    let r = create(&client, &ids[0], &["east"], fast(300)).await?;
    let paused = act(&client, &r.id, "pause").await?;
    assert_eq!(paused.state().name(), "PAUSED");
    assert!(
        act(&client, &r.id, "pause").await.is_err(),
        "already paused"
    );
    let since = wait_until(T, "the canary to be healthy while paused", || async {
        let rr = region_release(&client, "east", &r.id).await?;
        assert_eq!(rr.wave, 1, "a paused release moved on: {rr:?}");
        (rr.state().name() == "PAUSED" && rr.hosts_updated >= 2).then(std::time::Instant::now)
    })
    .await?;
    // Held for several times the minimum healthy time: still wave 1 at every look.
    wait_until(T, "1.5 s of holding at wave 1", || async {
        let rr = region_release(&client, "east", &r.id)
            .await
            .expect("region view");
        assert_eq!((rr.state().name(), rr.wave), ("PAUSED", 1));
        (since.elapsed() >= std::time::Duration::from_millis(1500)).then_some(())
    })
    .await?;
    act(&client, &r.id, "resume").await?;
    let done = wait_release(&client, &r.id, "to end", is_final).await?;
    assert_eq!(done.state().name(), "SUCCEEDED");
    let who: Vec<(&str, &str)> = done
        .history
        .iter()
        .map(|e| (e.by.as_str(), e.what.as_str()))
        .collect();
    assert!(
        who.contains(&("tester", "pause")) && who.contains(&("tester", "resume")),
        "{who:?}"
    );

    // A minimum healthy time of a minute: only promote moves it, one wave each.
    let slow = create(&client, &ids[1], &["east"], fast(60_000)).await?;
    for wave in 1..=3u32 {
        wait_until(T, &format!("wave {wave} under way"), || async {
            let rr = region_release(&client, "east", &slow.id).await?;
            (rr.wave == wave && rr.state().name() == "ROLLING_OUT").then_some(())
        })
        .await?;
        act(&client, &slow.id, "promote").await?;
    }
    let done = wait_release(&client, &slow.id, "to end", is_final).await?;
    assert_eq!(done.state().name(), "SUCCEEDED", "{done:#?}");

    // Abort stops it where it is: canary hosts that took the build keep it, the others
    // (held back in their rack, or never reached) keep what they had, once the region has
    // settled the wave; no host beyond the canary moves.
    let stopped = create(&client, &ids[2], &["east"], fast(60_000)).await?;
    wait_until(T, "a canary host to take the build", || async {
        let hs = hosts(&client, "east").await.ok()?;
        hs.iter()
            .any(|h| h.services.iter().any(|s| s.running_build_id == ids[2]))
            .then_some(())
    })
    .await?;
    let aborted = act(&client, &stopped.id, "abort").await?;
    assert_eq!(aborted.state().name(), "ABORTED");
    wait_until(T, "the region to settle the aborted wave", || async {
        let rr = region_release(&client, "east", &stopped.id).await?;
        (rr.state().name() == "ABORTED" && rr.history.iter().any(|e| e.what.starts_with("settled")))
            .then_some(())
    })
    .await?;
    let hs = hosts(&client, "east").await?;
    let on_new = hs.iter().filter(|h| goal(h, "web") == ids[2]).count();
    let on_old = hs.iter().filter(|h| goal(h, "web") == ids[1]).count();
    assert!(
        (1..=2).contains(&on_new),
        "{on_new} hosts kept the aborted build"
    );
    assert_eq!(on_new + on_old, 6, "{hs:#?}");
    wait_until(T, "every host to run its goal", || async {
        let hs = hosts(&client, "east").await.ok()?;
        hs.iter()
            .all(|h| {
                h.services
                    .iter()
                    .any(|s| s.running_build_id == goal(h, "web") && s.state().name() == "HEALTHY")
            })
            .then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_a_released_artifact_past_keep_per_service() -> anyhow::Result<()> {
    // Keep one build per service, no grace: only a release keeps the older artifact.
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .retention(1, 0);
    let c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    let ids = succeeded_builds(&client, &c.dir(), "web", &["v1", "v2", "v3"]).await?;
    let digest = |id: &str| {
        let client = &client;
        let id = id.to_string();
        async move { anyhow::Ok(client.get_build(&id, false).await?.artifact_digest) }
    };
    // A region without hosts: the release succeeds at once.
    let r = create(&client, &ids[0], &["east"], fast(100)).await?;
    let done = wait_release(&client, &r.id, "to end", is_final).await?;
    assert_eq!(done.state().name(), "SUCCEEDED");
    let gc = client.collect_garbage(false).await?;
    let kept: Vec<&String> = gc.kept_artifacts.iter().collect();
    assert!(
        kept.contains(&&digest(&ids[0]).await?),
        "the released v1: {kept:?}"
    );
    assert!(kept.contains(&&digest(&ids[2]).await?), "the newest v3");
    let v2 = digest(&ids[1]).await?;
    assert!(!kept.contains(&&v2), "v2 is neither newest nor released");
    let deleted: Vec<&String> = gc
        .stores
        .iter()
        .flat_map(|s| s.delete_manifests.iter())
        .collect();
    assert!(deleted.contains(&&v2), "{deleted:?}");
    Ok(())
}

/// A create or an action sent again with the same request id (its answer was lost, the
/// caller retried, perhaps through another node) happens once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_create_or_action_with_its_request_id_happens_once() -> anyhow::Result<()> {
    let spec = Spec::new(1).region("east", 1).worker("wk", "east");
    let c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    let via_region = region_client(&c, "east")?;
    let _east = simulate(&c.region_addrs("east"), "east", 2, 2, None)?;
    let ids = succeeded_builds(&client, &c.dir(), "web", &["v1"]).await?;
    wait_hosts(&client, "east", 4).await?;
    let req = pb::CreateReleaseRequest {
        service: "web".into(),
        build_id: ids[0].clone(),
        regions: vec!["east".into()],
        strategy: Some(fast(60_000)),
        actor: "ci".into(),
        request_id: "ci-run-42".into(),
    };
    let first = client.create_release(req.clone()).await?;
    let again = via_region.create_release(req).await?;
    assert_eq!(first.id, again.id, "the repeat answers the first's release");
    let all = client
        .list_releases(pb::ListReleasesRequest::default())
        .await?;
    assert_eq!(all.releases.len(), 1, "{:#?}", all.releases);
    let pause = pb::ReleaseActionRequest {
        id: first.id.clone(),
        action: "pause".into(),
        actor: "ci".into(),
        reason: String::new(),
        request_id: "ci-run-43".into(),
    };
    let paused = client.release_action(pause.clone()).await?;
    assert_eq!(paused.state().name(), "PAUSED");
    // Without its id the second pause would be refused: the release is paused already.
    let repeat = via_region.release_action(pause).await?;
    assert_eq!(repeat.state().name(), "PAUSED");
    let pauses = repeat.history.iter().filter(|e| e.what == "pause").count();
    assert_eq!(pauses, 1, "{:#?}", repeat.history);
    Ok(())
}

//! Releases on real `deployd node` processes: the regional leader killed with SIGKILL
//! mid-wave.

use std::collections::BTreeMap;
use std::sync::Mutex;

use deploy_client::{Client, ClusterStatusView};
use deploy_proto::v1 as pb;
use test_harness::releases::{
    fast, goal, hosts, is_final, region_release, simulate, succeeded_builds, wait_hosts,
    wait_release, T,
};
use test_harness::{wait_until, ProcessCluster, Spec};

async fn create(client: &Client, build: &str, min_healthy_ms: u64) -> anyhow::Result<String> {
    Ok(client
        .create_release(pb::CreateReleaseRequest {
            service: "web".into(),
            build_id: build.into(),
            regions: vec!["east".into()],
            strategy: Some(fast(min_healthy_ms)),
            actor: "tester".into(),
            request_id: String::new(),
        })
        .await?
        .id)
}

/// Appends each host's current goal for `web` to what was seen of it, if it changed.
async fn record_goals(client: &Client, seen: &Mutex<BTreeMap<String, Vec<String>>>) {
    let Ok(hs) = hosts(client, "east").await else {
        return;
    };
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    for h in hs {
        let goals = seen.entry(h.host.clone()).or_default();
        let g = goal(&h, "web");
        if goals.last() != Some(&g) {
            goals.push(g);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_regional_leader_mid_wave_resumes_and_no_goal_moves_backwards(
) -> anyhow::Result<()> {
    let spec = Spec::new(1).region("east", 3).worker("wk", "east");
    let mut c = ProcessCluster::start_spec(spec)?;
    let client = c.client()?;
    let east: Vec<String> = ["east-1", "east-2", "east-3"]
        .iter()
        .map(|n| c.addr(n).map(str::to_string))
        .collect::<anyhow::Result<_>>()?;
    // Four racks: the canary rack, then half the racks, then the rest: three waves.
    let _sim = simulate(&east, "east", 4, 2, None)?;
    let ids = succeeded_builds(&client, c.dir(), "web", &["v1", "v2"]).await?;
    wait_hosts(&client, "east", 8).await?;
    let first = create(&client, &ids[0], 100).await?;
    let first = wait_release(&client, &first, "to end", is_final).await?;
    assert_eq!(first.state().name(), "SUCCEEDED", "{first:#?}");

    // Every host's goals in the order seen, sampled at each look while waiting below: once
    // on v2, never back on v1.
    let seen: Mutex<BTreeMap<String, Vec<String>>> = Mutex::default();
    let watcher = Client::new(&east)?;
    let second = create(&client, &ids[1], 800).await?;
    wait_until(T, "the second wave under way", || async {
        record_goals(&watcher, &seen).await;
        let rr = region_release(&client, "east", &second).await?;
        (rr.wave >= 2).then_some(())
    })
    .await?;
    let status = ClusterStatusView(client.cluster_status().await?);
    let leader = status.leader("region/east").expect("a regional leader");
    c.kill9(&leader)?;

    let done = wait_until(T, "the second release to end", || async {
        record_goals(&watcher, &seen).await;
        let r = client.get_release(&second, false).await.ok()?;
        is_final(&r).then_some(r)
    })
    .await?;
    record_goals(&watcher, &seen).await;
    assert_eq!(done.state().name(), "SUCCEEDED", "{done:#?}");
    assert_eq!(done.hosts_updated, 8);
    let rr = region_release(&client, "east", &second)
        .await
        .expect("region view");
    let passed: Vec<&str> = rr
        .history
        .iter()
        .filter(|e| e.what.ends_with("passed"))
        .map(|e| e.what.as_str())
        .collect();
    assert_eq!(
        passed,
        ["wave 1 passed", "wave 2 passed", "wave 3 passed"],
        "each wave passed once"
    );
    let seen = seen.into_inner().unwrap_or_else(|p| p.into_inner());
    assert_eq!(seen.len(), 8, "{seen:?}");
    for (host, goals) in &seen {
        let v2 = goals.iter().position(|g| *g == ids[1]);
        let v2 = v2.unwrap_or_else(|| panic!("{host} never got v2: {goals:?}"));
        assert!(
            goals[v2..].iter().all(|g| *g == ids[1]),
            "{host} moved backwards: {goals:?}"
        );
    }
    let new_leader = wait_until(T, "a new regional leader", || async {
        let s = ClusterStatusView(client.cluster_status().await.ok()?);
        s.leader("region/east").filter(|l| *l != leader)
    })
    .await?;
    assert_ne!(new_leader, leader);
    Ok(())
}

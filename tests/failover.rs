//! Failover across real `deployd node` processes on loopback: a leader stopped with SIGTERM
//! hands its leadership to the voter it chose, losing no acknowledged write; a follower that
//! finds the dead leader's port refused stands for election as soon as the lease allows.

use std::time::{Duration, Instant};

use deploy_client::ClusterStatusView;
use deploy_proto::v1 as pb;
use deploy_proto::v1::raft_service_client::RaftServiceClient;
use test_harness::{wait_every, wait_until, ProcessCluster, Spec};

const T: Duration = Duration::from_secs(30);
const NODES: [&str; 3] = ["g1", "g2", "g3"];

/// The global leader every member agrees on, with every member a follower or the leader and
/// caught up to the same applied index.
async fn settled_leader(c: &ProcessCluster) -> anyhow::Result<String> {
    let client = c.client()?;
    wait_until(T, "a settled global leader", || async {
        let s = ClusterStatusView(client.cluster_status().await.ok()?);
        let leader = s.leader("global")?;
        let m = s.members("global");
        let applied: Vec<u64> = m.iter().map(|m| m.last_applied).collect();
        let settled = m.len() == 3
            && m.iter()
                .all(|m| m.role().name() == "LEADER" || m.role().name() == "FOLLOWER")
            && applied.windows(2).all(|w| w[0] == w[1]);
        settled.then_some(leader)
    })
    .await
}

/// What node `name` itself says of the global group: (role, term).
async fn own_view(c: &ProcessCluster, name: &str) -> Option<(pb::Role, u64)> {
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", c.addr(name).ok()?))
        .ok()?
        .connect()
        .await
        .ok()?;
    let r = RaftServiceClient::new(ch)
        .node_status(pb::NodeStatusRequest {
            group: "global".into(),
        })
        .await
        .ok()?
        .into_inner();
    Some((r.role(), r.term))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_hands_over_to_the_voter_it_chose() -> anyhow::Result<()> {
    let mut c = ProcessCluster::start_spec(Spec::new(3))?;
    let client = c.client()?;
    settled_leader(&c).await?;
    for i in 0..20 {
        client
            .set_meta("global", &format!("k{i}"), Some(&format!("v{i}")))
            .await?;
    }
    let leader = settled_leader(&c).await?;
    // Both followers hold every entry, so the leader's rule (a caught-up voter, the lowest
    // name first) names the lower of the two.
    let chosen = NODES
        .into_iter()
        .find(|n| *n != leader)
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no follower"))?;
    tokio::task::block_in_place(|| c.terminate(&leader, Duration::from_secs(15)))?;
    let survivors: Vec<&str> = NODES.into_iter().filter(|n| *n != leader).collect();
    let new_leader = wait_every(Duration::from_millis(5), T, "a new leader", || async {
        for n in &survivors {
            if own_view(&c, n)
                .await
                .is_some_and(|(role, _)| role == pb::Role::Leader)
            {
                return Some(n.to_string());
            }
        }
        None
    })
    .await?;
    assert_eq!(
        new_leader, chosen,
        "the new leader is the voter the old one chose"
    );
    let log = c.log(&leader);
    assert!(
        log.lines()
            .any(|l| l.contains("handed the leadership over") && l.contains(&chosen)),
        "the stopped leader says it handed over to {chosen}:\n{log}"
    );
    let survivors_client = deploy_client::Client::new(
        survivors
            .iter()
            .map(|n| c.addr(n).map(str::to_string))
            .collect::<Result<Vec<_>, _>>()?,
    )?;
    for i in 0..20 {
        let got = survivors_client
            .get_meta("global", &format!("k{i}"), false)
            .await?;
        assert_eq!(got.value.as_deref(), Some(format!("v{i}").as_str()), "k{i}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_finds_the_leader_refused_stands_once_the_lease_runs_out(
) -> anyhow::Result<()> {
    // A lease of 2 s and election timeouts of 1.5-2 s: openraft's own timers would start an
    // election no sooner than 3.4 s after the kill (lease plus the shortest timeout, less one
    // heartbeat); the refused probe starts one just past the lease.
    let (heartbeat, lease) = (100, 2_000);
    let mut c = ProcessCluster::start_spec(Spec::new(3).raft_timing(heartbeat, 1_500, lease))?;
    let leader = settled_leader(&c).await?;
    let (_, term) = own_view(&c, &leader)
        .await
        .ok_or_else(|| anyhow::anyhow!("{leader} does not answer"))?;
    c.kill9(&leader)?;
    let killed = Instant::now();
    let survivors: Vec<&str> = NODES.into_iter().filter(|n| *n != leader).collect();
    let within = Duration::from_millis(lease + 600);
    wait_every(
        Duration::from_millis(5),
        within,
        "a survivor to start an election within the lease and a margin",
        || async {
            for n in &survivors {
                if own_view(&c, n).await.is_some_and(|(_, t)| t > term) {
                    return Some(());
                }
            }
            None
        },
    )
    .await?;
    let started = killed.elapsed();
    // It did wait for the lease: voters refuse votes while theirs lasts.
    assert!(
        started >= Duration::from_millis(lease - heartbeat),
        "an election {started:?} after the kill is inside the lease"
    );
    wait_until(T, "a new leader", || async {
        for n in &survivors {
            if own_view(&c, n)
                .await
                .is_some_and(|(r, _)| r == pb::Role::Leader)
            {
                return Some(());
            }
        }
        None
    })
    .await?;
    Ok(())
}

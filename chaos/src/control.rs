//! The harness's own view of the cluster: every question goes straight to a node's real
//! listener, around its proxy, so faults never hide the truth from the checker.

use std::time::Duration;

use deploy_proto::v1 as pb;
use deploy_proto::v1::raft_service_client::RaftServiceClient;
use tonic::transport::Endpoint;

use crate::cluster::Cluster;

/// What `node` says of itself in `group`, or `None` if it does not answer within `within`.
pub async fn node_status(
    cluster: &Cluster,
    node: &str,
    group: &str,
    within: Duration,
) -> Option<pb::NodeStatusReply> {
    let n = cluster.layout.node(node)?;
    let endpoint = Endpoint::from_shared(format!("http://{}", n.listen))
        .ok()?
        .connect_timeout(within);
    let call = async {
        let channel = endpoint.connect().await.ok()?;
        let mut req = tonic::Request::new(pb::NodeStatusRequest {
            group: group.to_string(),
        });
        req.set_timeout(within);
        RaftServiceClient::new(channel)
            .node_status(req)
            .await
            .ok()
            .map(tonic::Response::into_inner)
    };
    tokio::time::timeout(within, call).await.ok().flatten()
}

/// The members of `group` that say they lead it, newest term first.
pub async fn leader(cluster: &Cluster, group: &str) -> Option<String> {
    let mut best: Option<(u64, String)> = None;
    for m in cluster.layout.members(group) {
        if !cluster.is_up(&m.name) {
            continue;
        }
        let Some(s) = node_status(cluster, &m.name, group, Duration::from_millis(700)).await else {
            continue;
        };
        if s.role().name() == "LEADER" && best.as_ref().is_none_or(|(t, _)| s.term > *t) {
            best = Some((s.term, m.name.clone()));
        }
    }
    best.map(|(_, n)| n)
}

/// The leader of `group`, waiting up to `within` for one.
pub async fn wait_leader(cluster: &Cluster, group: &str, within: Duration) -> Option<String> {
    test_support::wait_every(Duration::from_millis(200), within, "a leader", || {
        leader(cluster, group)
    })
    .await
    .ok()
}

/// Each member's status, `None` for those that do not answer.
pub async fn group_status(
    cluster: &Cluster,
    group: &str,
) -> Vec<(String, Option<pb::NodeStatusReply>)> {
    let mut out = Vec::new();
    for m in cluster.layout.members(group) {
        let s = node_status(cluster, &m.name, group, Duration::from_secs(1)).await;
        out.push((m.name.clone(), s));
    }
    out
}

/// True once `group` has one leader and every member answers with the same applied index.
pub async fn group_converged(cluster: &Cluster, group: &str) -> Result<(), String> {
    let status = group_status(cluster, group).await;
    let mut applied = None;
    let mut leaders = 0;
    for (name, s) in &status {
        let Some(s) = s else {
            return Err(format!("{group}: {name} does not answer"));
        };
        if s.role().name() == "LEADER" {
            leaders += 1;
        }
        match applied {
            None => applied = Some(s.last_applied),
            Some(a) if a != s.last_applied => {
                return Err(format!("{group}: members have applied different indexes"));
            }
            _ => {}
        }
    }
    if leaders != 1 {
        return Err(format!("{group}: {leaders} leaders"));
    }
    Ok(())
}

/// Every page of a list call, from `next(page_token)` -> (items, next_page_token).
async fn paged<T, F, Fut>(mut next: F) -> Result<Vec<T>, String>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), deploy_client::ClientError>>,
{
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let (items, next_token) = next(token).await.map_err(|e| e.to_string())?;
        out.extend(items);
        if next_token.is_empty() {
            return Ok(out);
        }
        token = next_token;
    }
}

/// Every build, newest first: from the global leader, or (`stale`) the replica asked.
pub async fn builds(client: &deploy_client::Client, stale: bool) -> Result<Vec<pb::Build>, String> {
    paged(|page_token| async move {
        let r = client
            .list_builds(pb::ListBuildsRequest {
                page_size: 500,
                page_token,
                stale,
                ..Default::default()
            })
            .await?;
        Ok((r.builds, r.next_page_token))
    })
    .await
}

/// Every release, newest first: from the global leader, or (`stale`) the replica asked.
pub async fn releases(
    client: &deploy_client::Client,
    stale: bool,
) -> Result<Vec<pb::Release>, String> {
    paged(|page_token| async move {
        let r = client
            .list_releases(pb::ListReleasesRequest {
                page_size: 500,
                page_token,
                stale,
                ..Default::default()
            })
            .await?;
        Ok((r.releases, r.next_page_token))
    })
    .await
}

/// Every host of `region` with its goal and last report: from the region's leader, or
/// (`stale`) the replica asked.
pub async fn hosts(
    client: &deploy_client::Client,
    region: &str,
    stale: bool,
) -> Result<Vec<pb::Host>, String> {
    paged(|page_token| async move {
        let r = client
            .list_hosts(pb::ListHostsRequest {
                region: region.into(),
                page_token,
                page_size: 1000,
                stale,
                ..Default::default()
            })
            .await?;
        Ok((r.hosts, r.next_page_token))
    })
    .await
}

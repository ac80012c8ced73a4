//! Background work of the global leader: expiring leases, replicating artifacts, and
//! collecting finished builds under the retention policy.
//!
//! The loops run on every node that hosts the global group and act only while it leads, so
//! a new leader picks the work up from the committed state: it watches each lease afresh on
//! its own clock (`lease_watch`), and replication skips chunks the destination already holds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_artifact::copy::copy_artifact;
use deploy_raft::GlobalTypes;
use deploy_state::builds::{BuildCommand, BuildState};
use deploy_state::retention::Collect;
use deploy_state::{GlobalCommand, Response};
use tracing::{info, warn};

use crate::build_api::{now_ms, propose};
use crate::group::GroupHandle;
use crate::node::Node;

const REAP_EVERY: Duration = Duration::from_millis(250);
const REPLICATE_EVERY: Duration = Duration::from_millis(250);
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Starts the loops if this node hosts the global group; they end when the node stops.
pub fn spawn(node: Arc<Node>) {
    if node.global().is_none() {
        return;
    }
    tokio::spawn(reaper(node.clone()));
    tokio::spawn(collector(node.clone()));
    tokio::spawn(replicator(node));
}

async fn ticks(node: &Node, every: Duration) -> bool {
    tokio::select! {
        _ = node.stopped() => false,
        _ = tokio::time::sleep(every) => true,
    }
}

async fn reaper(node: Arc<Node>) {
    let lease = Duration::from_millis(node.config.builds.lease_ms);
    while ticks(&node, REAP_EVERY).await {
        let Some(h) = node.global() else {
            return;
        };
        if !h.is_leader() {
            node.leases.clear();
            continue;
        }
        let running: Vec<_> = h.state.read(|d| d.state.builds.lease_versions().collect());
        let mut leases = node.leases.observe(running, Instant::now(), lease);
        if leases.is_empty() {
            continue;
        }
        leases.truncate(deploy_state::builds::MAX_EXPIRE);
        let cmd = BuildCommand::ExpireLeases {
            now_ms: now_ms(),
            max_attempts: node.config.builds.max_attempts,
            leases,
        };
        match propose(h, cmd).await {
            Ok(r) => info!(result = ?r, "expired build leases"),
            Err(e) => warn!(error = %e, "cannot expire leases"),
        }
    }
}

/// Proposes a collect whenever the policy finds finished builds to remove: stamped with this
/// leader's clock and the config's policy, so every replica removes the same ones.
///
/// One collect removes at most [`deploy_state::retention::MAX_COLLECT`] records of each kind
/// (a bounded entry). While a collect comes back full, the next is proposed at once, up to
/// [`COLLECTS_PER_TICK`] per tick: so the collection rate follows the build rate instead of
/// capping it at `MAX_COLLECT` per `collect_every_secs` (200 builds/s at 5 s, which a busy
/// group outruns, growing its state without bound).
async fn collector(node: Arc<Node>) {
    let every = Duration::from_secs(node.config.retention.collect_every_secs);
    while ticks(&node, every).await {
        let Some(h) = node.global() else {
            return;
        };
        for _ in 0..COLLECTS_PER_TICK {
            if !h.is_leader() || !collect_once(&node, h).await {
                break;
            }
        }
    }
}

/// Collects under retention once from this leader. Whether it removed a full batch (so
/// there may be more to collect).
async fn collect_once(node: &Node, h: &GroupHandle<GlobalTypes>) -> bool {
    let r = &node.config.retention;
    let c = Collect {
        now_ms: now_ms(),
        keep_per_service: r.keep_per_service,
        keep_ms: r.keep_ms(),
        artifact_keep: node.config.builds.keep_per_service,
        history_ms: r.history_ms(),
        decisions_upto: node.pulls.applied_by_all(node.config.regions()),
    };
    if !h
        .state
        .read(|d| deploy_state::retention::anything(&d.state, &c))
    {
        return false;
    }
    match h.propose(GlobalCommand::Collect(c)).await {
        Ok((_, Response::Collected(r))) => {
            info!(
                builds = r.builds.len(),
                releases = r.releases.len(),
                decisions = r.decisions,
                request_ids = r.requests,
                "collected finished builds, releases, applied decisions and old request ids"
            );
            r.full()
        }
        Ok((_, other)) => {
            warn!(response = ?other, "unexpected answer to a collect");
            false
        }
        Err(e) => {
            warn!(error = %e, "cannot collect finished builds");
            false
        }
    }
}

/// Collects proposed back to back in one tick at most, while each comes back full.
const COLLECTS_PER_TICK: usize = 100;

/// Per (build, region): when to try again after a failure, and how long to wait then.
type Backoff = BTreeMap<(String, String), (Instant, Duration)>;

async fn replicator(node: Arc<Node>) {
    let mut backoff: Backoff = BTreeMap::new();
    while ticks(&node, REPLICATE_EVERY).await {
        let Some(h) = node.global() else {
            return;
        };
        if !h.is_leader() {
            continue;
        }
        let regions: Vec<String> = node.config.regions().map(str::to_string).collect();
        let work: Vec<(String, deploy_types::Digest, String, Vec<String>, u64)> =
            h.state.read(|d| {
                d.state
                    .builds
                    .by_seq
                    .values()
                    .filter(|b| b.state == BuildState::Replicating)
                    .filter_map(|b| {
                        let missing: Vec<String> = regions
                            .iter()
                            .filter(|r| !b.regions_done.contains(*r))
                            .cloned()
                            .collect();
                        let since = b
                            .history
                            .iter()
                            .rev()
                            .find(|t| t.state == BuildState::Replicating)
                            .map(|t| t.at_ms)
                            .unwrap_or(b.updated_at_ms);
                        b.artifact_digest
                            .map(|d| (b.id(), d, b.worker_region.clone(), missing, since))
                    })
                    .collect()
            });
        let deadline_ms = node
            .config
            .builds
            .replication_deadline_secs
            .saturating_mul(1000);
        for (id, digest, source, missing, since) in work {
            for region in missing {
                let key = (id.clone(), region.clone());
                if backoff
                    .get(&key)
                    .is_some_and(|(at, _)| Instant::now() < *at)
                {
                    continue;
                }
                match replicate_one(&node, h, &id, &digest, &source, &region, &regions).await {
                    Ok(()) => {
                        backoff.remove(&key);
                    }
                    Err(e) if now_ms().saturating_sub(since) > deadline_ms => {
                        warn!(build = %id, %region, error = %e, "replication deadline passed; failing the build");
                        let cmd = BuildCommand::ReplicationFailed {
                            id: id.clone(),
                            region: region.clone(),
                            error: e,
                            now_ms: now_ms(),
                        };
                        if let Err(e) = propose(h, cmd).await {
                            warn!(build = %id, error = %e, "cannot fail the build");
                        }
                        backoff.remove(&key);
                        break;
                    }
                    Err(e) => {
                        let wait = backoff
                            .get(&key)
                            .map(|(_, w)| (*w * 2).min(RETRY_MAX))
                            .unwrap_or(RETRY_MIN);
                        warn!(build = %id, %region, error = %e, retry_in_ms = wait.as_millis() as u64, "replication failed");
                        backoff.insert(key, (Instant::now() + wait, wait));
                    }
                }
            }
        }
    }
}

async fn replicate_one(
    node: &Node,
    h: &GroupHandle<GlobalTypes>,
    id: &str,
    digest: &deploy_types::Digest,
    source: &str,
    region: &str,
    regions: &[String],
) -> Result<(), String> {
    let from = node
        .store(source)
        .ok_or_else(|| format!("no store for region {source}"))?;
    let to = node
        .store(region)
        .ok_or_else(|| format!("no store for region {region}"))?;
    let stats = copy_artifact(from, to, digest, &node.trusted)
        .await
        .map_err(|e| e.to_string())?;
    info!(build = %id, %region, chunks = stats.chunks, skipped = stats.chunks_skipped, bytes = stats.bytes_copied, "replicated artifact");
    let cmd = BuildCommand::Replicated {
        id: id.to_string(),
        region: region.to_string(),
        now_ms: now_ms(),
        regions: regions.to_vec(),
        bytes_copied: stats.bytes_copied,
    };
    propose(h, cmd).await.map(|_| ()).map_err(|e| e.to_string())
}

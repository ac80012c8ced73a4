//! The regional leader's rollout driver.
//!
//! One loop per regional group hosted here, acting only while this replica leads: it pulls
//! the region's global decisions after the last one applied and proposes them into the
//! region's log; judges each release's current wave from the hosts' reports and commits the
//! outcome (wave passed, release halted) and periodic summaries; and reports each release's
//! progress back to the global group until acknowledged. Everything it needs survives a
//! failover in the log, except reports, which a new leader rebuilds from fresh ones.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_proto::v1 as pb;
use deploy_proto::v1::region_service_client::RegionServiceClient;
use deploy_state::region::RegionCommand;
use deploy_state::releases::{Counts, Decision, ReleaseState};
use deploy_state::RegionalCommand;
use deploy_types::GroupName;
use tracing::{debug, info, warn};

use crate::build_api::now_ms;
use crate::group::GroupHandle;
use crate::node::Node;
use crate::region_api::MAX_PULL;
use crate::release_api::propose_release;
use crate::reports::{Verdict, REPORT_TTL};
use deploy_raft::RegionTypes;

const TICK: Duration = Duration::from_millis(250);
/// How often unchanged-but-moving counts are committed as a summary.
const SUMMARY_EVERY: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The most decisions a pulled reply may hold once decoded.
const MAX_PULL_BYTES: usize = 16 * 1024 * 1024;

/// Starts a driver for every regional group this node hosts.
pub fn spawn(node: Arc<Node>) {
    let regions: Vec<String> = node
        .regions()
        .filter_map(|g| match &g.name {
            GroupName::Region(r) => Some(r.clone()),
            GroupName::Global => None,
        })
        .collect();
    for region in regions {
        tokio::spawn(drive(node.clone(), region));
    }
}

/// A release's reported progress: (state, wave, counts).
type Progress = (ReleaseState, u32, Counts);
/// What was last acknowledged by the global group for each release.
type Acked = HashMap<u64, Progress>;

struct Driver {
    node: Arc<Node>,
    region: String,
    group: GroupName,
    /// Which global voter to ask next.
    next_global: usize,
    acked: Acked,
    summarized: HashMap<u64, Instant>,
    /// When the global group was last unreachable, to log that once per outage.
    global_down_since: Option<Instant>,
    /// When this replica's current leadership began: reports older than it are not here.
    leading_since: Instant,
    /// When the registry was last swept for hosts that went quiet.
    swept: Instant,
}

async fn drive(node: Arc<Node>, region: String) {
    let mut d = Driver {
        group: GroupName::Region(region.clone()),
        node,
        region,
        next_global: 0,
        acked: HashMap::new(),
        summarized: HashMap::new(),
        global_down_since: None,
        leading_since: Instant::now(),
        swept: Instant::now(),
    };
    let mut term = 0;
    loop {
        tokio::select! {
            _ = d.node.stopped() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        let Some(h) = d.node.region(&d.group).cloned() else {
            return;
        };
        if !h.is_leader() {
            continue;
        }
        let now_term = h.metrics().current_term;
        if now_term != term {
            // A new term: report everything again, the global group may have missed some.
            term = now_term;
            d.acked.clear();
            d.leading_since = Instant::now();
            info!(region = %d.region, term, "leading the region's rollouts");
        }
        d.pull(&h).await;
        d.judge(&h, term).await;
        d.settle(&h, term).await;
        d.report(&h).await;
        d.sweep(&h, term).await;
    }
}

/// Collects of release records proposed back to back in one sweep at most.
const COLLECTS_PER_SWEEP: usize = 10;

impl Driver {
    /// Every `collect_every_secs`: finished release records beyond the retention policy
    /// leave the region's state (see [`Self::collect_releases`]); then hosts and relays of
    /// the registry this leader has heard nothing from for the policy's timeout leave it, in
    /// bounded batches.
    async fn sweep(&mut self, h: &GroupHandle<RegionTypes>, term: u64) {
        let policy = &self.node.config.retention;
        if self.swept.elapsed() < Duration::from_secs(policy.collect_every_secs) {
            return;
        }
        self.swept = Instant::now();
        self.collect_releases(h).await;
        let after = Duration::from_secs(policy.forget_hosts_after_secs);
        let (hosts, relays) = h.state.read(|d| {
            let r = &d.state.region;
            self.node.reports.quiet(
                &self.region,
                term,
                r.hosts.keys(),
                r.relays.keys(),
                after,
                Instant::now(),
            )
        });
        let max = deploy_state::region::MAX_HOSTS_PER_COMMAND;
        let relays: Vec<String> = relays.into_iter().take(max).collect();
        let hosts: Vec<String> = hosts.into_iter().take(max - relays.len()).collect();
        if hosts.is_empty() && relays.is_empty() {
            return;
        }
        let (n_hosts, n_relays) = (hosts.len(), relays.len());
        let cmd = RegionalCommand::Region(RegionCommand::Forget { hosts, relays });
        match propose_release(h, cmd).await {
            Ok(_) => {
                info!(region = %self.region, hosts = n_hosts, relays = n_relays, after_secs = after.as_secs(), "forgot hosts and relays that stopped reporting")
            }
            Err(e) => warn!(region = %self.region, error = %e, "cannot forget quiet hosts"),
        }
    }

    /// Finished release records beyond the retention policy leave the region's state, in
    /// batches of at most `MAX_COLLECT`, while a batch comes back full.
    async fn collect_releases(&self, h: &GroupHandle<RegionTypes>) {
        let policy = &self.node.config.retention;
        for _ in 0..COLLECTS_PER_SWEEP {
            let (now_ms, keep_per_service, keep_ms) =
                (now_ms(), policy.keep_per_service, policy.keep_ms());
            let n = h.state.read(|d| {
                d.state
                    .region
                    .collectable(now_ms, keep_per_service, keep_ms)
                    .len()
            });
            if n == 0 {
                return;
            }
            let cmd = RegionalCommand::Region(RegionCommand::Collect {
                now_ms,
                keep_per_service,
                keep_ms,
            });
            match propose_release(h, cmd).await {
                Ok(_) => {
                    info!(region = %self.region, releases = n, "collected finished release records")
                }
                Err(e) => {
                    warn!(region = %self.region, error = %e, "cannot collect finished release records");
                    return;
                }
            }
            if n < deploy_state::retention::MAX_COLLECT {
                return;
            }
        }
    }

    /// A client of some global voter, rotating on failure.
    fn global_client(&mut self) -> Option<RegionServiceClient<tonic::transport::Channel>> {
        let voters = self.node.config.voters(&GroupName::Global)?;
        if voters.is_empty() {
            return None;
        }
        let name = &voters[self.next_global % voters.len()];
        let addr = self.node.config.node(name)?.addr.clone();
        let channel = self.node.pool.get(&addr).ok()?;
        Some(RegionServiceClient::new(channel))
    }

    fn global_failed(&mut self, what: &str, e: &tonic::Status) {
        self.next_global += 1;
        if self.global_down_since.is_none() {
            warn!(region = %self.region, error = %e.message(), "cannot {what} the global group; the region carries on with what it holds");
            self.global_down_since = Some(Instant::now());
        } else {
            debug!(region = %self.region, error = %e.message(), "global group still unreachable");
        }
    }

    fn global_ok(&mut self) {
        if let Some(since) = self.global_down_since.take() {
            info!(region = %self.region, after_ms = since.elapsed().as_millis() as u64, "global group reachable again");
        }
    }

    /// Pulls decisions after the last applied and proposes them, until caught up.
    async fn pull(&mut self, h: &GroupHandle<RegionTypes>) {
        for _ in 0..16 {
            let after = h.state.read(|s| s.state.region.applied);
            let Some(mut client) = self.global_client() else {
                return;
            };
            let mut req = tonic::Request::new(pb::PullDecisionsRequest {
                region: self.region.clone(),
                after,
                limit: MAX_PULL,
            });
            req.set_timeout(CALL_TIMEOUT);
            let reply = match tokio::time::timeout(CALL_TIMEOUT, client.pull_decisions(req)).await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(e)) => return self.global_failed("pull decisions from", &e),
                Err(_) => {
                    return self.global_failed(
                        "pull decisions from",
                        &tonic::Status::deadline_exceeded("no answer"),
                    )
                }
            };
            self.global_ok();
            if reply.decisions.len() > MAX_PULL_BYTES {
                warn!(region = %self.region, bytes = reply.decisions.len(), "refusing an oversized pull");
                return;
            }
            let decisions: Vec<Decision> = match serde_json::from_slice(&reply.decisions) {
                Ok(d) => d,
                Err(e) => {
                    warn!(region = %self.region, error = %e, "cannot decode pulled decisions");
                    return;
                }
            };
            if decisions.is_empty() && reply.upto <= after {
                return;
            }
            let full = decisions.len() >= MAX_PULL as usize;
            let n = decisions.len();
            let cmd = RegionalCommand::Region(RegionCommand::Apply {
                decisions,
                upto: reply.upto,
                now_ms: now_ms(),
            });
            match propose_release(h, cmd).await {
                Ok(_) if n > 0 => {
                    info!(region = %self.region, decisions = n, upto = reply.upto, "applied global decisions")
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(region = %self.region, error = %e, "cannot apply pulled decisions");
                    return;
                }
            }
            if !full {
                return;
            }
        }
    }

    /// Judges every rolling release's current wave and commits what follows.
    async fn judge(&mut self, h: &GroupHandle<RegionTypes>, term: u64) {
        let now = Instant::now();
        let now_ms = now_ms();
        let releases = h
            .state
            .read(|s| s.state.region.unfinished().cloned().collect::<Vec<_>>());
        for r in releases {
            let (verdict, counts) =
                self.node
                    .reports
                    .judge_release(&self.region, term, &r, now, now_ms);
            let id = r.id();
            let cmd = match verdict {
                _ if r.state == ReleaseState::Paused => None,
                Verdict::Pass => Some(RegionCommand::WavePassed {
                    id: id.clone(),
                    wave: r.wave,
                    counts,
                    now_ms,
                }),
                Verdict::Halt(reason) => {
                    warn!(region = %self.region, release = %id, wave = r.wave + 1, %reason, "halting the release");
                    Some(RegionCommand::Halt {
                        id: id.clone(),
                        wave: r.wave,
                        reason,
                        counts,
                        now_ms,
                    })
                }
                Verdict::Wait => None,
            };
            let cmd = cmd.or_else(|| {
                let due = self
                    .summarized
                    .get(&r.seq)
                    .is_none_or(|t| t.elapsed() >= SUMMARY_EVERY);
                (counts != r.counts && due).then(|| {
                    self.summarized.insert(r.seq, now);
                    RegionCommand::Summary {
                        id: id.clone(),
                        counts,
                    }
                })
            });
            let Some(cmd) = cmd else {
                continue;
            };
            match propose_release(h, RegionalCommand::Region(cmd)).await {
                Ok(deploy_state::Response::Region(deploy_state::RegionResponse::State {
                    state,
                    wave,
                    ..
                })) => {
                    if state != r.state || wave != r.wave {
                        info!(region = %self.region, release = %id, state = state.as_str(), wave = wave + 1, "release moved");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(region = %self.region, release = %id, error = %e, "wave outcome not committed")
                }
            }
        }
    }

    /// Settles each release that ended ABORTED or FAILED: the hosts of its last wave that no
    /// fresh report shows on its build go back to the goal they had. It waits until every
    /// such host has a fresh report, or until reports had [`REPORT_TTL`] to arrive under this
    /// leader and since the release ended, so a new leader's empty book reverts no host that
    /// did move.
    async fn settle(&mut self, h: &GroupHandle<RegionTypes>, term: u64) {
        let unsettled: Vec<(String, String, String, Vec<String>, u64)> = h.state.read(|s| {
            s.state
                .region
                .unsettled()
                .map(|r| {
                    (
                        r.id(),
                        r.service.clone(),
                        r.build_id.clone(),
                        r.wave_hosts().to_vec(),
                        r.finished_at_ms.unwrap_or(0),
                    )
                })
                .collect()
        });
        let now = Instant::now();
        for (id, service, build, hosts, finished_ms) in unsettled {
            let (keep, fresh) =
                self.node
                    .reports
                    .on_build(&self.region, term, &service, &build, &hosts, now);
            let waited = now.saturating_duration_since(self.leading_since) >= REPORT_TTL
                && now_ms().saturating_sub(finished_ms) >= REPORT_TTL.as_millis() as u64;
            if fresh < hosts.len() && !waited {
                continue;
            }
            let cmd = RegionalCommand::Region(RegionCommand::Settle {
                id: id.clone(),
                keep: keep.clone(),
                now_ms: now_ms(),
            });
            match propose_release(h, cmd).await {
                Ok(_) => {
                    info!(region = %self.region, release = %id, kept = keep.len(), of = hosts.len(), "settled the release's last wave")
                }
                Err(e) => {
                    debug!(region = %self.region, release = %id, error = %e, "settle not committed")
                }
            }
        }
    }

    /// Reports each release whose progress changed since the global group last acknowledged.
    async fn report(&mut self, h: &GroupHandle<RegionTypes>) {
        // Only the progress of releases not yet acknowledged as they are now: no plans are
        // copied out of the state on this 250 ms path.
        let pending: Vec<(u64, Progress, pb::ReportRegionRequest)> = h.state.read(|s| {
            s.state
                .region
                .releases
                .values()
                .filter(|r| self.acked.get(&r.seq) != Some(&(r.state, r.wave, r.counts)))
                .map(|r| {
                    let req = pb::ReportRegionRequest {
                        release_id: r.id(),
                        region: self.region.clone(),
                        state: crate::states::release_state(r.state) as i32,
                        wave: r.wave,
                        waves: r.plan.len() as u32,
                        hosts_total: r.counts.hosts_total,
                        hosts_updated: r.counts.hosts_updated,
                        hosts_failed: r.counts.hosts_failed,
                        reason: r.reason.clone(),
                    };
                    (r.seq, (r.state, r.wave, r.counts), req)
                })
                .collect()
        });
        for (seq, now, req) in pending {
            let Some(mut client) = self.global_client() else {
                return;
            };
            let id = req.release_id.clone();
            let mut req = tonic::Request::new(req);
            req.set_timeout(CALL_TIMEOUT);
            match tokio::time::timeout(CALL_TIMEOUT, client.report_region(req)).await {
                Ok(Ok(_)) => {
                    self.global_ok();
                    self.acked.insert(seq, now);
                }
                // The global group does not know this release in this region (it was
                // dropped, or never sent here): nothing to report.
                Ok(Err(e))
                    if matches!(
                        e.code(),
                        tonic::Code::NotFound
                            | tonic::Code::FailedPrecondition
                            | tonic::Code::InvalidArgument
                    ) =>
                {
                    debug!(region = %self.region, release = %id, error = %e.message(), "report refused");
                    self.acked.insert(seq, now);
                }
                Ok(Err(e)) => return self.global_failed("report to", &e),
                Err(_) => {
                    return self
                        .global_failed("report to", &tonic::Status::deadline_exceeded("no answer"))
                }
            }
        }
    }
}

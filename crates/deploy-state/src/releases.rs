//! Releases in the global group: the decisions, each region's reported progress, and the
//! global verdict.
//!
//! A release is decided here once; what each region must do is written as numbered
//! [`Decision`]s addressed to that region. Regional leaders pull the decisions after the last
//! one they applied, so a region that was cut off catches up by itself, in order, each once.
//! Regions report their progress back; from those reports this module starts the next regions
//! (in the release's order, so many at once) and stops the others when one fails.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::builds::{BuildState, Builds};
use crate::rollout::{Canary, WavePlanSpec};

/// How many decisions the global group keeps for regions to pull.
pub const MAX_DECISIONS_KEPT: usize = 100_000;
/// Request ids remembered, so that a create or an action repeated by a client (its answer
/// was lost) happens once.
pub const MAX_REQUESTS_KEPT: usize = 10_000;
const MAX_REQUEST_ID_BYTES: usize = 64;
const MAX_HISTORY: usize = 200;
const MAX_REASON_BYTES: usize = 1024;
const MAX_ACTOR_BYTES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ReleaseState {
    Pending,
    RollingOut,
    Paused,
    Succeeded,
    Failed,
    Aborted,
    RolledBack,
}

impl ReleaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseState::Pending => "PENDING",
            ReleaseState::RollingOut => "ROLLING_OUT",
            ReleaseState::Paused => "PAUSED",
            ReleaseState::Succeeded => "SUCCEEDED",
            ReleaseState::Failed => "FAILED",
            ReleaseState::Aborted => "ABORTED",
            ReleaseState::RolledBack => "ROLLED_BACK",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            ReleaseState::Pending,
            ReleaseState::RollingOut,
            ReleaseState::Paused,
            ReleaseState::Succeeded,
            ReleaseState::Failed,
            ReleaseState::Aborted,
            ReleaseState::RolledBack,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            ReleaseState::Succeeded
                | ReleaseState::Failed
                | ReleaseState::Aborted
                | ReleaseState::RolledBack
        )
    }
}

/// Waves after the canary, at most.
pub const MAX_WAVES: usize = 20;
/// A canary of more hosts than this could mean no fleet: a region has 100,000 hosts.
pub const MAX_CANARY_HOSTS: u32 = 1_000_000;
/// Hosts of one rack updating at once, at most (a rack has tens of hosts).
pub const MAX_UNAVAILABLE_PER_RACK: u32 = 10_000;
/// Regions one release may name (and so roll at once): far above any real cluster, a bound
/// on hostile requests.
pub const MAX_RELEASE_REGIONS: u32 = 64;

/// How a release moves through regions, racks and hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Strategy {
    pub canary: Canary,
    /// Cumulative percentages of racks per wave after the canary, ending at 100.
    pub waves: Vec<u32>,
    /// Hosts of one rack that may be updating (so unavailable) at once.
    pub max_unavailable_per_rack: u32,
    /// A wave halts once more than this percentage of its hosts failed.
    pub failure_threshold_pct: u32,
    /// How long every host of a wave must stay healthy before the wave passes.
    pub min_healthy_ms: u64,
    /// A wave not passed this long after it started halts the release.
    pub progress_deadline_ms: u64,
    /// Regions rolling out at the same time, taken in the release's order.
    pub regions_at_once: u32,
    /// On a halt, return every moved host to the build it had.
    pub auto_rollback: bool,
    /// A region that fails stops the release in every other region too.
    pub halt_all_on_failure: bool,
}

impl Default for Strategy {
    fn default() -> Self {
        Self {
            canary: Canary::FirstRack,
            waves: vec![10, 50, 100],
            max_unavailable_per_rack: 1,
            failure_threshold_pct: 0,
            min_healthy_ms: 5_000,
            progress_deadline_ms: 600_000,
            regions_at_once: 1,
            auto_rollback: true,
            halt_all_on_failure: true,
        }
    }
}

impl Strategy {
    pub fn wave_spec(&self) -> WavePlanSpec {
        WavePlanSpec {
            canary: self.canary.clone(),
            waves: self.waves.clone(),
        }
    }

    /// Checks what a new release asks for against what a fleet could mean: the API refuses
    /// a strategy past these bounds. (Kept apart from [`Strategy::check`], which replicas run
    /// when they apply a release, so that entries already in a log apply as they did.)
    pub fn check_bounds(&self) -> Result<(), ReleaseError> {
        let bad = |field: &str, max: u64| {
            Err(ReleaseError::Invalid {
                field: field.into(),
                why: format!("must be at most {max}"),
            })
        };
        if let Canary::Hosts(n) = self.canary {
            if n > MAX_CANARY_HOSTS {
                return bad("canary", MAX_CANARY_HOSTS.into());
            }
        }
        if self.max_unavailable_per_rack > MAX_UNAVAILABLE_PER_RACK {
            return bad("max_unavailable_per_rack", MAX_UNAVAILABLE_PER_RACK.into());
        }
        if self.regions_at_once > MAX_RELEASE_REGIONS {
            return bad("regions_at_once", MAX_RELEASE_REGIONS.into());
        }
        Ok(())
    }

    /// Checks every field; the error names the field.
    pub fn check(&self) -> Result<(), ReleaseError> {
        let bad = |field: &str, why: String| {
            Err(ReleaseError::Invalid {
                field: field.into(),
                why,
            })
        };
        let w = &self.waves;
        if w.is_empty()
            || w.len() > MAX_WAVES
            || w[0] == 0
            || w.last() != Some(&100)
            || !w.windows(2).all(|p| p[0] < p[1])
        {
            let shown: Vec<u32> = w.iter().take(24).copied().collect();
            let more = if w.len() > 24 {
                format!(" and {} more", w.len() - 24)
            } else {
                String::new()
            };
            return bad(
                "waves",
                format!("{shown:?}{more}: expected strictly increasing percentages of racks ending at 100, at most {MAX_WAVES}"),
            );
        }
        if self.canary == Canary::Hosts(0) {
            return bad("canary", "a canary of 0 hosts".into());
        }
        if self.max_unavailable_per_rack == 0 {
            return bad("max_unavailable_per_rack", "must be at least 1".into());
        }
        if self.failure_threshold_pct > 100 {
            return bad("failure_threshold_pct", "must be 0-100".into());
        }
        if self.min_healthy_ms > 3_600_000 {
            return bad("min_healthy_ms", "must be at most one hour".into());
        }
        if !(1_000..=86_400_000).contains(&self.progress_deadline_ms) {
            return bad(
                "progress_deadline_ms",
                "must be between one second and one day".into(),
            );
        }
        if self.progress_deadline_ms <= self.min_healthy_ms {
            return bad(
                "progress_deadline_ms",
                "must be longer than min_healthy_ms, or no wave could ever pass".into(),
            );
        }
        if self.regions_at_once == 0 {
            return bad("regions_at_once", "must be at least 1".into());
        }
        Ok(())
    }
}

/// Hosts of a release (or of one of its regions) by what they report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub hosts_total: u64,
    /// Running the release's build and healthy.
    pub hosts_updated: u64,
    /// Failed to install or start the release's build, or unhealthy on it.
    pub hosts_failed: u64,
}

/// A region's progress on a release, as it reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionProgress {
    pub state: Option<ReleaseState>,
    /// The wave in progress (0-based), or the last one once final.
    pub wave: u32,
    pub waves: u32,
    pub counts: Counts,
    pub reason: String,
    pub updated_at_ms: u64,
}

impl RegionProgress {
    pub fn state(&self) -> ReleaseState {
        self.state.unwrap_or(ReleaseState::Pending)
    }
}

/// One line of a release's decision history: who decided what, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub at_ms: u64,
    pub by: String,
    pub what: String,
}

pub(crate) fn push_history(history: &mut Vec<Entry>, at_ms: u64, by: &str, what: String) {
    history.push(Entry {
        at_ms,
        by: by.to_string(),
        what,
    });
    if history.len() > MAX_HISTORY {
        let cut = history.len() - MAX_HISTORY;
        history.drain(..cut);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub seq: u64,
    pub service: String,
    pub build_id: String,
    pub artifact_digest: String,
    /// In rollout order.
    pub regions: Vec<String>,
    pub strategy: Strategy,
    pub state: ReleaseState,
    pub reason: String,
    pub created_by: String,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub superseded_by: Option<String>,
    /// Regions told to start, with what they reported.
    pub progress: BTreeMap<String, RegionProgress>,
    pub history: Vec<Entry>,
}

impl Release {
    pub fn id(&self) -> String {
        release_id(self.seq)
    }

    /// The whole release's counts: the sum over its regions.
    pub fn counts(&self) -> Counts {
        self.progress
            .values()
            .fold(Counts::default(), |a, p| Counts {
                hosts_total: a.hosts_total + p.counts.hosts_total,
                hosts_updated: a.hosts_updated + p.counts.hosts_updated,
                hosts_failed: a.hosts_failed + p.counts.hosts_failed,
            })
    }

    fn end(&mut self, state: ReleaseState, now_ms: u64, reason: String) {
        self.state = state;
        self.reason = clip(&reason);
        self.updated_at_ms = now_ms;
        self.finished_at_ms = Some(now_ms);
    }

    /// Started regions that have not reached a final state.
    fn active_regions(&self) -> Vec<String> {
        self.progress
            .iter()
            .filter(|(_, p)| !p.state().is_final())
            .map(|(r, _)| r.clone())
            .collect()
    }
}

pub fn release_id(seq: u64) -> String {
    format!("r-{seq}")
}

/// The sequence number of a release id, `r-<n>`.
pub fn parse_release_id(id: &str) -> Option<u64> {
    let n = id.strip_prefix("r-")?;
    if n.is_empty() || n.len() > 19 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Operator decisions on a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Hold at the current wave.
    Pause,
    Resume,
    /// Stop where it is; moved hosts keep the new build.
    Abort,
    /// Return every moved host to the build it had.
    Rollback,
    /// Pass the current wave now (skip the canary wait).
    Promote,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
            Action::Rollback => "rollback",
            Action::Promote => "promote",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Action::Pause,
            Action::Resume,
            Action::Abort,
            Action::Rollback,
            Action::Promote,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecisionKind {
    /// Roll the release out in the region.
    Start {
        service: String,
        build_id: String,
        artifact_digest: String,
        strategy: Strategy,
    },
    Act(Action),
    /// An API token made or revoked, for the region's copy.
    Token(crate::tokens::TokenChange),
}

/// What one region must do, numbered in the global group's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub seq: u64,
    pub release: String,
    pub region: String,
    pub kind: DecisionKind,
    pub by: String,
    pub reason: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseCommand {
    Create {
        service: String,
        build_id: String,
        /// Rollout order; every one must be in `known_regions`.
        regions: Vec<String>,
        strategy: Strategy,
        by: String,
        now_ms: u64,
        /// The cluster's regions, stamped by the proposer from its config.
        known_regions: Vec<String>,
        /// The client's id for this call: a repeat returns what the first made.
        #[serde(default)]
        request_id: Option<String>,
    },
    Act {
        id: String,
        action: Action,
        by: String,
        reason: String,
        now_ms: u64,
        /// The client's id for this call: a repeat acts once.
        #[serde(default)]
        request_id: Option<String>,
    },
    /// A region's progress, sent by its leader.
    Report {
        id: String,
        region: String,
        progress: RegionProgress,
        now_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseResponse {
    Created {
        id: String,
        superseded: Option<String>,
    },
    State {
        id: String,
        state: ReleaseState,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ReleaseError {
    #[error("release {0} does not exist")]
    NotFound(String),
    #[error("{field} is invalid: {why}")]
    Invalid { field: String, why: String },
    #[error("release {id} is {state}: {why}")]
    WrongState {
        id: String,
        state: String,
        why: String,
    },
    #[error("{0}")]
    Refused(String),
}

/// The releases of the global group and the decisions regions pull.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Releases {
    pub by_seq: imbl::OrdMap<u64, Release>,
    pub next_seq: u64,
    /// The unfinished release of each service.
    pub active: imbl::OrdMap<String, u64>,
    /// The newest release of each service.
    pub latest: imbl::OrdMap<String, u64>,
    pub decisions: imbl::OrdMap<u64, Decision>,
    /// The last decision's number (0: none yet).
    pub last_decision: u64,
    /// Request id -> the release the call made or acted on.
    #[serde(default)]
    pub requests: imbl::OrdMap<String, u64>,
    /// The same ids, oldest first, to forget beyond [`MAX_REQUESTS_KEPT`].
    #[serde(default)]
    pub request_order: imbl::Vector<String>,
}

pub(crate) fn clip(s: &str) -> String {
    crate::clip_to(s, MAX_REASON_BYTES)
}

fn check_request_id(id: &Option<String>) -> Result<(), ReleaseError> {
    match id {
        Some(r)
            if r.is_empty()
                || r.len() > MAX_REQUEST_ID_BYTES
                || !r.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Err(ReleaseError::Invalid {
                field: "request_id".into(),
                why: format!("expected 1-{MAX_REQUEST_ID_BYTES} printable characters"),
            })
        }
        _ => Ok(()),
    }
}

fn check_actor(by: &str) -> Result<(), ReleaseError> {
    if by.is_empty() || by.len() > MAX_ACTOR_BYTES || by.chars().any(char::is_control) {
        return Err(ReleaseError::Invalid {
            field: "by".into(),
            why: format!("expected 1-{MAX_ACTOR_BYTES} printable bytes"),
        });
    }
    Ok(())
}

impl Releases {
    /// Remembers that call `request_id` made or acted on release `seq`.
    fn remember(&mut self, request_id: &Option<String>, seq: u64) {
        let Some(r) = request_id else { return };
        if self.requests.insert(r.clone(), seq).is_none() {
            self.request_order.push_back(r.clone());
        }
        while self.request_order.len() > MAX_REQUESTS_KEPT {
            if let Some(old) = self.request_order.pop_front() {
                self.requests.remove(&old);
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<&Release> {
        parse_release_id(id).and_then(|s| self.by_seq.get(&s))
    }

    /// Newest first, optionally only one service's or one state's.
    pub fn list<'a>(
        &'a self,
        service: Option<&'a str>,
        state: Option<ReleaseState>,
        before: Option<u64>,
    ) -> impl Iterator<Item = &'a Release> + 'a {
        self.by_seq
            .range(..before.unwrap_or(u64::MAX))
            .rev()
            .map(|(_, r)| r)
            .filter(move |r| service.is_none_or(|s| r.service == s))
            .filter(move |r| state.is_none_or(|s| r.state == s))
    }

    /// Artifacts hosts may run or roll back to, which retention must keep: those of every
    /// unfinished release and of each service's newest `per_service` releases (what runs,
    /// what a rollback returns to, what an abort left on part of the hosts).
    pub fn referenced_artifacts(&self, per_service: usize) -> BTreeSet<String> {
        let mut kept = BTreeSet::new();
        let mut taken: BTreeMap<&str, usize> = BTreeMap::new();
        for r in self.by_seq.values().rev() {
            let n = taken.entry(&r.service).or_default();
            if !r.state.is_final() || *n < per_service {
                kept.insert(r.artifact_digest.clone());
            }
            *n += 1;
        }
        kept
    }

    /// Up to `limit` decisions for `region` after number `after`, and the number the region
    /// may record as applied once it applied them (decisions for other regions included).
    /// `Err` names the oldest decision kept when the region fell further behind than that.
    pub fn decisions_for(
        &self,
        region: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Decision>, u64), u64> {
        if let Some(&(oldest, _)) = self.decisions.get_min() {
            if after + 1 < oldest {
                return Err(oldest);
            }
        }
        let mut out = Vec::new();
        for (&seq, d) in self.decisions.range(after.saturating_add(1)..) {
            if d.region != region {
                continue;
            }
            out.push(d.clone());
            if out.len() >= limit {
                return Ok((out, seq));
            }
        }
        Ok((out, self.last_decision.max(after)))
    }

    /// Tells `region` of a token change (its own copy, for checking tokens without the
    /// global group).
    pub fn decide_token(
        &mut self,
        region: &str,
        change: &crate::tokens::TokenChange,
        by: &str,
        now_ms: u64,
    ) {
        self.decide(
            "",
            region,
            DecisionKind::Token(change.clone()),
            by,
            "",
            now_ms,
        );
    }

    fn decide(
        &mut self,
        release: &str,
        region: &str,
        kind: DecisionKind,
        by: &str,
        reason: &str,
        now_ms: u64,
    ) {
        self.last_decision += 1;
        let seq = self.last_decision;
        self.decisions.insert(
            seq,
            Decision {
                seq,
                release: release.to_string(),
                region: region.to_string(),
                kind,
                by: by.to_string(),
                reason: clip(reason),
                at_ms: now_ms,
            },
        );
        while self.decisions.len() > MAX_DECISIONS_KEPT {
            let Some(&(oldest, _)) = self.decisions.get_min() else {
                break;
            };
            self.decisions.remove(&oldest);
        }
    }

    fn release_mut(&mut self, id: &str) -> Result<&mut Release, ReleaseError> {
        parse_release_id(id)
            .and_then(|s| self.by_seq.get_mut(&s))
            .ok_or_else(|| ReleaseError::NotFound(id.chars().take(40).collect()))
    }

    /// Starts the next regions in order while fewer than `regions_at_once` are rolling out.
    fn start_due(&mut self, seq: u64, now_ms: u64) {
        let Some(r) = self.by_seq.get(&seq) else {
            return;
        };
        if r.state != ReleaseState::RollingOut {
            return;
        }
        let running = r.active_regions().len();
        let room = (r.strategy.regions_at_once as usize).saturating_sub(running);
        let next: Vec<String> = r
            .regions
            .iter()
            .filter(|g| !r.progress.contains_key(*g))
            .take(room)
            .cloned()
            .collect();
        let kind = DecisionKind::Start {
            service: r.service.clone(),
            build_id: r.build_id.clone(),
            artifact_digest: r.artifact_digest.clone(),
            strategy: r.strategy.clone(),
        };
        let id = r.id();
        for region in next {
            self.decide(&id, &region, kind.clone(), "global", "", now_ms);
            if let Some(r) = self.by_seq.get_mut(&seq) {
                r.progress.insert(
                    region.clone(),
                    RegionProgress {
                        updated_at_ms: now_ms,
                        ..Default::default()
                    },
                );
                push_history(
                    &mut r.history,
                    now_ms,
                    "global",
                    format!("started region {region}"),
                );
            }
        }
    }

    /// Sends `action` to every started region that has not finished.
    fn tell_active(&mut self, seq: u64, action: Action, by: &str, reason: &str, now_ms: u64) {
        let Some(r) = self.by_seq.get(&seq) else {
            return;
        };
        let id = r.id();
        let regions = if action == Action::Rollback {
            // A rollback also undoes regions that already finished.
            r.progress.keys().cloned().collect()
        } else {
            r.active_regions()
        };
        for region in regions {
            self.decide(&id, &region, DecisionKind::Act(action), by, reason, now_ms);
        }
    }

    /// Ends the release when every region has finished.
    fn settle(&mut self, seq: u64, now_ms: u64) {
        let Some(r) = self.by_seq.get_mut(&seq) else {
            return;
        };
        if r.state.is_final() || r.progress.len() < r.regions.len() {
            return;
        }
        if r.progress.values().any(|p| !p.state().is_final()) {
            return;
        }
        let failed: Vec<String> = r
            .progress
            .iter()
            .filter(|(_, p)| p.state() != ReleaseState::Succeeded)
            .map(|(g, p)| format!("{g}: {}", p.state().as_str()))
            .collect();
        if failed.is_empty() {
            r.end(ReleaseState::Succeeded, now_ms, String::new());
        } else {
            r.end(ReleaseState::Failed, now_ms, failed.join(", "));
        }
        let what = format!("release {}", r.state.as_str());
        push_history(&mut r.history, now_ms, "global", what);
        let service = r.service.clone();
        if self.active.get(&service) == Some(&seq) {
            self.active.remove(&service);
        }
    }

    pub fn apply(
        &mut self,
        builds: &Builds,
        cmd: &ReleaseCommand,
    ) -> Result<ReleaseResponse, ReleaseError> {
        match cmd {
            ReleaseCommand::Create {
                service,
                build_id,
                regions,
                strategy,
                by,
                now_ms,
                known_regions,
                request_id,
            } => {
                check_request_id(request_id)?;
                if let Some(seq) = request_id.as_ref().and_then(|r| self.requests.get(r)) {
                    // A repeat of a call that already made its release.
                    return Ok(ReleaseResponse::Created {
                        id: release_id(*seq),
                        superseded: None,
                    });
                }
                check_actor(by)?;
                strategy.check()?;
                let build = builds.get(build_id).ok_or_else(|| {
                    ReleaseError::Refused(format!(
                        "build {} does not exist",
                        build_id.chars().take(40).collect::<String>()
                    ))
                })?;
                if build.state != BuildState::Succeeded {
                    return Err(ReleaseError::Refused(format!(
                        "build {build_id} is {}, not SUCCEEDED: only a build stored in every region can be released",
                        build.state.as_str()
                    )));
                }
                if build.service != *service {
                    return Err(ReleaseError::Invalid {
                        field: "service".into(),
                        why: format!(
                            "build {build_id} is of service {:?}, not {service:?}",
                            build.service
                        ),
                    });
                }
                if regions.is_empty() {
                    return Err(ReleaseError::Invalid {
                        field: "regions".into(),
                        why: "name at least one region".into(),
                    });
                }
                for (i, g) in regions.iter().enumerate() {
                    if !known_regions.contains(g) {
                        return Err(ReleaseError::Invalid {
                            field: "regions".into(),
                            why: format!(
                                "{:?} is not a region of this cluster (regions: {})",
                                g.chars().take(64).collect::<String>(),
                                known_regions.join(", ")
                            ),
                        });
                    }
                    if regions[..i].contains(g) {
                        return Err(ReleaseError::Invalid {
                            field: "regions".into(),
                            why: format!("{g} is named twice"),
                        });
                    }
                }
                let Some(digest) = build.artifact_digest.clone() else {
                    return Err(ReleaseError::Refused(format!(
                        "build {build_id} has no artifact"
                    )));
                };
                self.next_seq += 1;
                let seq = self.next_seq;
                let id = release_id(seq);
                // A rolling release of the same service is superseded: it ends ABORTED and
                // its regions stop before this one starts there.
                let superseded = self.active.remove(service);
                if let Some(old) = superseded {
                    let reason = format!("superseded by {id}");
                    self.tell_active(old, Action::Abort, by, &reason, *now_ms);
                    if let Some(o) = self.by_seq.get_mut(&old) {
                        o.superseded_by = Some(id.clone());
                        o.end(ReleaseState::Aborted, *now_ms, reason.clone());
                        push_history(&mut o.history, *now_ms, by, reason);
                    }
                }
                let mut history = Vec::new();
                push_history(
                    &mut history,
                    *now_ms,
                    by,
                    format!(
                        "created: {service} build {build_id} to {}",
                        regions.join(", ")
                    ),
                );
                self.by_seq.insert(
                    seq,
                    Release {
                        seq,
                        service: service.clone(),
                        build_id: build_id.clone(),
                        artifact_digest: digest,
                        regions: regions.clone(),
                        strategy: strategy.clone(),
                        state: ReleaseState::RollingOut,
                        reason: String::new(),
                        created_by: by.clone(),
                        created_at_ms: *now_ms,
                        updated_at_ms: *now_ms,
                        finished_at_ms: None,
                        superseded_by: None,
                        progress: BTreeMap::new(),
                        history,
                    },
                );
                self.active.insert(service.clone(), seq);
                self.latest.insert(service.clone(), seq);
                self.start_due(seq, *now_ms);
                self.remember(request_id, seq);
                Ok(ReleaseResponse::Created {
                    id,
                    superseded: superseded.map(release_id),
                })
            }
            ReleaseCommand::Act {
                id,
                action,
                by,
                reason,
                now_ms,
                request_id,
            } => {
                check_request_id(request_id)?;
                check_actor(by)?;
                let latest = self.latest.clone();
                let done = request_id
                    .as_ref()
                    .and_then(|r| self.requests.get(r))
                    .copied();
                let r = self.release_mut(id)?;
                let seq = r.seq;
                if let Some(done) = done {
                    if done != seq {
                        return Err(ReleaseError::Invalid {
                            field: "request_id".into(),
                            why: format!("it was used for release {}", release_id(done)),
                        });
                    }
                    // A repeat of an action already taken: what it did stands.
                    return Ok(ReleaseResponse::State {
                        id: id.clone(),
                        state: r.state,
                    });
                }
                let wrong = |r: &Release, why: &str| ReleaseError::WrongState {
                    id: r.id(),
                    state: r.state.as_str().into(),
                    why: why.into(),
                };
                let allowed = match action {
                    Action::Pause => r.state == ReleaseState::RollingOut,
                    Action::Resume => r.state == ReleaseState::Paused,
                    Action::Abort | Action::Promote => !r.state.is_final(),
                    Action::Rollback => {
                        !r.state.is_final()
                            || (r.state == ReleaseState::Succeeded
                                && latest.get(&r.service) == Some(&seq))
                    }
                };
                if !allowed {
                    let why = match action {
                        Action::Pause => "only a release ROLLING_OUT can be paused",
                        Action::Resume => "only a PAUSED release can be resumed",
                        Action::Rollback => "only an unfinished release, or the newest release of its service once SUCCEEDED, can be rolled back",
                        _ => "it has already ended",
                    };
                    return Err(wrong(r, why));
                }
                let what = if reason.is_empty() {
                    action.as_str().to_string()
                } else {
                    format!("{}: {}", action.as_str(), clip(reason))
                };
                push_history(&mut r.history, *now_ms, by, what);
                r.updated_at_ms = *now_ms;
                let service = r.service.clone();
                match action {
                    Action::Pause => r.state = ReleaseState::Paused,
                    Action::Resume => r.state = ReleaseState::RollingOut,
                    Action::Promote => {}
                    Action::Abort => {
                        r.end(ReleaseState::Aborted, *now_ms, format!("aborted by {by}"))
                    }
                    Action::Rollback => r.end(
                        ReleaseState::RolledBack,
                        *now_ms,
                        format!("rolled back by {by}"),
                    ),
                }
                let state = r.state;
                self.tell_active(seq, *action, by, reason, *now_ms);
                if state.is_final() && self.active.get(&service) == Some(&seq) {
                    self.active.remove(&service);
                }
                if *action == Action::Resume {
                    self.start_due(seq, *now_ms);
                }
                self.remember(request_id, seq);
                Ok(ReleaseResponse::State {
                    id: id.clone(),
                    state,
                })
            }
            ReleaseCommand::Report {
                id,
                region,
                progress,
                now_ms,
            } => {
                let r = self.release_mut(id)?;
                let seq = r.seq;
                let Some(known) = r.progress.get_mut(region) else {
                    return Err(ReleaseError::Refused(format!(
                        "release {id} was not started in region {}",
                        region.chars().take(64).collect::<String>()
                    )));
                };
                let new_state = progress.state();
                // What a region reported final stays so.
                if known.state().is_final() {
                    return Ok(ReleaseResponse::State {
                        id: id.clone(),
                        state: r.state,
                    });
                }
                let entered = known.state() != new_state;
                *known = RegionProgress {
                    reason: clip(&progress.reason),
                    updated_at_ms: *now_ms,
                    ..progress.clone()
                };
                if entered {
                    let mut what = format!("region {region} {}", new_state.as_str());
                    if !progress.reason.is_empty() {
                        what = format!("{what}: {}", clip(&progress.reason));
                    }
                    push_history(&mut r.history, *now_ms, region, what);
                }
                r.updated_at_ms = *now_ms;
                if r.state.is_final() {
                    return Ok(ReleaseResponse::State {
                        id: id.clone(),
                        state: r.state,
                    });
                }
                let failed = matches!(new_state, ReleaseState::Failed | ReleaseState::RolledBack);
                if failed && r.strategy.halt_all_on_failure {
                    let verdict = if new_state == ReleaseState::RolledBack {
                        ReleaseState::RolledBack
                    } else {
                        ReleaseState::Failed
                    };
                    let reason = format!("region {region}: {}", progress.reason);
                    r.end(verdict, *now_ms, reason.clone());
                    let action = if r.strategy.auto_rollback {
                        Action::Rollback
                    } else {
                        Action::Abort
                    };
                    let service = r.service.clone();
                    // Only the other regions still rolling out are stopped.
                    let others: Vec<String> = r
                        .active_regions()
                        .into_iter()
                        .filter(|g| g != region)
                        .collect();
                    for g in others {
                        self.decide(
                            id,
                            &g,
                            DecisionKind::Act(action),
                            "global",
                            &reason,
                            *now_ms,
                        );
                    }
                    if self.active.get(&service) == Some(&seq) {
                        self.active.remove(&service);
                    }
                } else {
                    self.start_due(seq, *now_ms);
                    self.settle(seq, *now_ms);
                }
                let state = self
                    .by_seq
                    .get(&seq)
                    .map(|r| r.state)
                    .unwrap_or(ReleaseState::Pending);
                Ok(ReleaseResponse::State {
                    id: id.clone(),
                    state,
                })
            }
        }
    }
}

#[cfg(test)]
#[path = "releases_tests.rs"]
mod tests;

//! Releases in the global group: the decisions, each region's reported progress, and the
//! global verdict.
//!
//! A release is decided here once; what each region must do is written as numbered
//! [`Decision`]s addressed to that region. Regional leaders pull the decisions after the last
//! one they applied, so a region that was cut off catches up by itself, in order, each once.
//! Regions report their progress back; from those reports this module starts the next regions
//! (in the release's order, so many at once) and stops the others when one fails.

//!
//! - [`strategy`]: how a release moves, and the bounds on it;
//! - [`release`]: one release, its state, progress and history;
//! - [`decisions`]: the numbered decisions regions pull, token changes among them;
//! - [`machine`]: the release state machine (create, act, report).

mod decisions;
mod machine;
mod release;
mod strategy;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::builds::Builds;
pub use decisions::{Decision, DecisionKind};
pub(crate) use release::push_history;
pub use release::{
    parse_release_id, release_id, Action, Counts, Entry, RegionProgress, Release, ReleaseState,
};
pub use strategy::{
    Strategy, MAX_CANARY_HOSTS, MAX_RELEASE_REGIONS, MAX_UNAVAILABLE_PER_RACK, MAX_WAVES,
};

/// How many decisions the global group keeps for regions to pull, at most. A decision leaves
/// sooner, by retention, once every region has applied it ([`Releases::collect_decisions`]);
/// this bound is for a region that stopped pulling, which past it must be rebuilt.
pub const MAX_DECISIONS_KEPT: usize = 100_000;
/// Request ids remembered, so that a create or an action repeated by a client (its answer
/// was lost) happens once. They leave sooner, by retention, once older than the policy's
/// `keep_days` ([`Releases::collect_requests`]); this bound is for a burst.
pub const MAX_REQUESTS_KEPT: usize = crate::once::MAX_REQUEST_IDS_KEPT;
/// History entries kept per release.
const MAX_HISTORY: usize = 200;
const MAX_REASON_BYTES: usize = 1024;
const MAX_ACTOR_BYTES: usize = 64;

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
    /// Request id -> the release the call made or acted on, forgotten oldest first beyond
    /// [`MAX_REQUESTS_KEPT`] or the retention policy.
    #[serde(default)]
    pub requests: crate::once::RequestIds,
}

pub(crate) fn clip(s: &str) -> String {
    crate::clip_to(s, MAX_REASON_BYTES)
}

pub(super) fn check_request_id(id: &Option<String>) -> Result<(), ReleaseError> {
    match id {
        Some(r) if crate::once::check_id(r).is_err() => Err(ReleaseError::Invalid {
            field: "request_id".into(),
            why: format!(
                "expected 1-{} printable characters",
                crate::once::MAX_REQUEST_ID_BYTES
            ),
        }),
        _ => Ok(()),
    }
}

pub(super) fn check_actor(by: &str) -> Result<(), ReleaseError> {
    if by.is_empty() || by.len() > MAX_ACTOR_BYTES || by.chars().any(char::is_control) {
        return Err(ReleaseError::Invalid {
            field: "by".into(),
            why: format!("expected 1-{MAX_ACTOR_BYTES} printable bytes"),
        });
    }
    Ok(())
}

impl Releases {
    /// Remembers that call `request_id` made or acted on release `seq` at `now_ms`.
    fn remember(&mut self, request_id: &Option<String>, seq: u64, now_ms: u64) {
        if let Some(r) = request_id {
            self.requests.remember(r, seq, now_ms);
        }
    }

    /// Forgets up to `max` request ids first seen before `before_ms`, oldest first; how many.
    pub(crate) fn collect_requests(&mut self, before_ms: u64, max: usize) -> usize {
        self.requests.forget_before(before_ms, max)
    }

    /// How many request ids [`Self::collect_requests`] would forget (up to `max`).
    pub fn requests_collectable(&self, before_ms: u64, max: usize) -> usize {
        self.requests.forgettable(before_ms, max)
    }

    /// Drops up to `max` decisions numbered `upto` or lower, oldest first: every region has
    /// applied them, so none will be pulled again. How many.
    pub(crate) fn collect_decisions(&mut self, upto: u64, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            match self.decisions.get_min() {
                Some(&(seq, _)) if seq <= upto => {
                    self.decisions.remove(&seq);
                    n += 1;
                }
                _ => break,
            }
        }
        n
    }

    /// How many decisions [`Self::collect_decisions`] would drop (up to `max`).
    pub fn decisions_collectable(&self, upto: u64, max: usize) -> usize {
        self.decisions.range(..=upto).take(max).count()
    }

    /// Removes a finished release that is neither its service's active nor newest one.
    pub(crate) fn remove_finished(&mut self, seq: u64) -> Option<Release> {
        let r = self.by_seq.get(&seq)?;
        let current =
            self.active.get(&r.service) == Some(&seq) || self.latest.get(&r.service) == Some(&seq);
        if !r.state.is_final() || current {
            return None;
        }
        self.by_seq.remove(&seq)
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
    pub fn referenced_artifacts(&self, per_service: usize) -> BTreeSet<deploy_types::Digest> {
        let mut kept = BTreeSet::new();
        let mut taken: BTreeMap<&str, usize> = BTreeMap::new();
        for r in self.by_seq.values().rev() {
            let n = taken.entry(&r.service).or_default();
            if !r.state.is_final() || *n < per_service {
                kept.insert(r.artifact_digest);
            }
            *n += 1;
        }
        kept
    }

    /// Applies one release command; a refusal changes nothing.
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
            } => self.create(
                builds,
                machine::Create {
                    service,
                    build_id,
                    regions,
                    strategy,
                    by,
                    now_ms: *now_ms,
                    known_regions,
                    request_id,
                },
            ),
            ReleaseCommand::Act {
                id,
                action,
                by,
                reason,
                now_ms,
                request_id,
            } => self.act(machine::Act {
                id,
                action: *action,
                by,
                reason,
                now_ms: *now_ms,
                request_id,
            }),
            ReleaseCommand::Report {
                id,
                region,
                progress,
                now_ms,
            } => self.report(id, region, progress, *now_ms),
        }
    }
}

#[cfg(test)]
mod tests;

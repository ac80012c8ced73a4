//! One release: its state, its regions' reported progress, its history, its actions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{clip, Strategy, MAX_HISTORY};

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
    pub artifact_digest: deploy_types::Digest,
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

    pub(super) fn end(&mut self, state: ReleaseState, now_ms: u64, reason: String) {
        self.state = state;
        self.reason = clip(&reason);
        self.updated_at_ms = now_ms;
        self.finished_at_ms = Some(now_ms);
    }

    /// Started regions that have not reached a final state.
    pub(super) fn active_regions(&self) -> Vec<String> {
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

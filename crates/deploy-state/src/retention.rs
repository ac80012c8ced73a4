//! Retention: which finished builds and releases leave the replicated state.
//!
//! The global leader proposes a [`Collect`] stamped with its clock and the cluster's policy;
//! every replica computes the same set from the same state ([`collectable`]) and removes it,
//! so the hot state stays bounded by the policy, not by history. What leaves is returned in
//! the response, for the store to keep in its on-disk history.
//!
//! Never collected: a build that has not finished; one of the newest `keep_per_service`
//! finished builds of its service; one finished less than `keep_ms` ago; one of the newest
//! `artifact_keep` successful builds of its service (the artifact retention policy keeps
//! their artifacts, so rollbacks and releases can use them); any build a release names
//! (what runs, what a rollback returns to).
//!
//! Decisions leave once every region has applied them: the leader stamps in the collect the
//! number every region's pull had reached ([`Collect::decisions_upto`]). Request ids leave
//! once older than `keep_ms`.
//!
//! A release is never collected while unfinished, while it is its service's active or newest
//! release (the one a rollback acts on), while it is one of the newest `keep_per_service`
//! releases of its service, or within `keep_ms` of finishing. Both sets are computed on the
//! state before either is removed, so a build named by a release collected in the same pass
//! stays until a later one.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::builds::{Build, BuildState};
use crate::releases::Release;
use crate::GlobalState;

/// What one collect removed, for the store's history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collected {
    pub builds: Vec<Build>,
    pub releases: Vec<Release>,
    /// Decisions dropped (every region had applied them).
    pub decisions: u64,
    /// Request ids forgotten.
    pub requests: u64,
}

impl Collected {
    /// Whether one kind of record came back at [`MAX_COLLECT`], so more may be waiting.
    pub fn full(&self) -> bool {
        let full = MAX_COLLECT;
        self.builds.len() >= full
            || self.releases.len() >= full
            || self.decisions >= full as u64
            || self.requests >= full as u64
    }
}

/// Builds (and, apart, releases) one collect command removes at most, so one apply stays
/// short.
pub const MAX_COLLECT: usize = 1_000;

/// A garbage collection of the state, decided by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collect {
    pub now_ms: u64,
    /// Newest finished builds kept per service.
    pub keep_per_service: u32,
    /// Finished builds younger than this are kept.
    pub keep_ms: u64,
    /// Newest successful builds kept per service for their artifacts.
    pub artifact_keep: u32,
    /// How long the history keeps what was collected (for the store; the state ignores it).
    pub history_ms: u64,
    /// Every region has applied the global decisions up to this number (the leader saw each
    /// region's pull say so); 0 when some region's is not known.
    pub decisions_upto: u64,
}

/// Whether `c` would remove anything from `state` (the leader's check before proposing).
pub fn anything(state: &GlobalState, c: &Collect) -> bool {
    !collectable(state, c).is_empty()
        || !collectable_releases(state, c).is_empty()
        || state
            .releases
            .decisions_collectable(c.decisions_upto, MAX_COLLECT)
            > 0
        || state
            .releases
            .requests_collectable(requests_before(c), MAX_COLLECT)
            > 0
        || state.once.forgettable(requests_before(c), MAX_COLLECT) > 0
}

/// Request ids first seen before this leave.
fn requests_before(c: &Collect) -> u64 {
    c.now_ms.saturating_sub(c.keep_ms)
}

/// The sequence numbers of the builds `c` removes from `state`, oldest first, at most
/// [`MAX_COLLECT`].
pub fn collectable(state: &GlobalState, c: &Collect) -> Vec<u64> {
    let released: BTreeSet<&str> = state
        .releases
        .by_seq
        .values()
        .map(|r| r.build_id.as_str())
        .collect();
    let mut finished: BTreeMap<&str, u32> = BTreeMap::new();
    let mut succeeded: BTreeMap<&str, u32> = BTreeMap::new();
    let mut out = Vec::new();
    for b in state.builds.by_seq.values().rev() {
        if !b.state.is_final() {
            continue;
        }
        let nth_finished = bump(&mut finished, &b.service);
        let nth_succeeded = if b.state == BuildState::Succeeded {
            bump(&mut succeeded, &b.service)
        } else {
            0
        };
        if keeps(b, c, nth_finished, nth_succeeded) || released.contains(b.id().as_str()) {
            continue;
        }
        out.push(b.seq);
    }
    out.reverse();
    out.truncate(MAX_COLLECT);
    out
}

/// The sequence numbers of the releases `c` removes from `state`, oldest first, at most
/// [`MAX_COLLECT`].
pub fn collectable_releases(state: &GlobalState, c: &Collect) -> Vec<u64> {
    let rs = &state.releases;
    let mut nth: BTreeMap<&str, u32> = BTreeMap::new();
    let mut out = Vec::new();
    for r in rs.by_seq.values().rev() {
        let n = bump(&mut nth, &r.service);
        let finished_at = r.finished_at_ms.unwrap_or(r.updated_at_ms);
        let kept = !r.state.is_final()
            || n <= c.keep_per_service
            || rs.active.get(&r.service) == Some(&r.seq)
            || rs.latest.get(&r.service) == Some(&r.seq)
            || finished_at.saturating_add(c.keep_ms) > c.now_ms;
        if !kept {
            out.push(r.seq);
        }
    }
    out.reverse();
    out.truncate(MAX_COLLECT);
    out
}

/// Counts one more build of `service`; returns its rank (1: the newest).
fn bump<'a>(counts: &mut BTreeMap<&'a str, u32>, service: &'a str) -> u32 {
    let n = counts.entry(service).or_default();
    *n += 1;
    *n
}

fn keeps(b: &Build, c: &Collect, nth_finished: u32, nth_succeeded: u32) -> bool {
    let finished_at = b.finished_at_ms.unwrap_or(b.updated_at_ms);
    nth_finished <= c.keep_per_service
        || (nth_succeeded >= 1 && nth_succeeded <= c.artifact_keep)
        || finished_at.saturating_add(c.keep_ms) > c.now_ms
}

impl GlobalState {
    /// Applies a collect: removes what [`collectable`] and [`collectable_releases`] name (both
    /// computed first) and returns it.
    pub(crate) fn collect(&mut self, c: &Collect) -> Collected {
        let builds = collectable(self, c);
        let releases = collectable_releases(self, c);
        Collected {
            builds: builds
                .into_iter()
                .filter_map(|seq| self.builds.remove_finished(seq))
                .collect(),
            releases: releases
                .into_iter()
                .filter_map(|seq| self.releases.remove_finished(seq))
                .collect(),
            decisions: self
                .releases
                .collect_decisions(c.decisions_upto, MAX_COLLECT) as u64,
            requests: self
                .releases
                .collect_requests(requests_before(c), MAX_COLLECT)
                .max(self.once.forget_before(requests_before(c), MAX_COLLECT))
                as u64,
        }
    }
}

#[cfg(test)]
#[path = "retention_tests.rs"]
mod tests;

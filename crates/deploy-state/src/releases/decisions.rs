//! The decisions regions pull: numbered, addressed to one region, kept up to
//! [`MAX_DECISIONS_KEPT`]; a token change is one too, so a region keeps its own copy.

use serde::{Deserialize, Serialize};

use super::{clip, Action, Releases, Strategy, MAX_DECISIONS_KEPT};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecisionKind {
    /// Roll the release out in the region.
    Start {
        service: String,
        build_id: String,
        artifact_digest: deploy_types::Digest,
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

impl Releases {
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

    pub(super) fn decide(
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

    /// Sends `action` to every started region that has not finished.
    pub(super) fn tell_active(
        &mut self,
        seq: u64,
        action: Action,
        by: &str,
        reason: &str,
        now_ms: u64,
    ) {
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
}

//! How a release moves through regions, racks and hosts, and the bounds on it.

use serde::{Deserialize, Serialize};

use super::ReleaseError;
use crate::rollout::{Canary, WavePlanSpec};

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

//! What this node, serving the global group, saw of each region's decision pulls: how far
//! each region has applied the global decisions. It is observed, soft state (never
//! persisted): the collector stamps the lowest of them into a replicated collect, so every
//! replica drops the same decisions. A new leader learns it again from the next pulls and
//! drops no decision until it has heard from every region.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Region -> the last decision number it said it had applied. Holds only the config's
/// regions: callers check the name against the config first.
#[derive(Debug, Default)]
pub struct Pulls(Mutex<BTreeMap<String, u64>>);

impl Pulls {
    /// `region` pulled after `applied`: it applied every decision up to it. The newest pull
    /// counts, even when lower (a region rebuilt from an older replica needs the ones after).
    pub fn saw(&self, region: &str, applied: u64) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(region) {
            Some(n) => *n = applied,
            None => {
                m.insert(region.to_string(), applied);
            }
        }
    }

    /// The decision number every one of `regions` has applied up to; 0 while one of them has
    /// not pulled from this node (nothing may be dropped for it yet).
    pub fn applied_by_all<'a>(&self, regions: impl IntoIterator<Item = &'a str>) -> u64 {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut low: Option<u64> = None;
        for r in regions {
            let Some(&n) = m.get(r) else { return 0 };
            low = Some(low.map_or(n, |l| l.min(n)));
        }
        low.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_region_counts_and_an_unheard_one_holds_everything() {
        let p = Pulls::default();
        assert_eq!(p.applied_by_all(["east", "west"]), 0);
        p.saw("east", 40);
        assert_eq!(p.applied_by_all(["east", "west"]), 0, "west not heard yet");
        p.saw("west", 25);
        assert_eq!(p.applied_by_all(["east", "west"]), 25);
        p.saw("west", 60);
        assert_eq!(p.applied_by_all(["east", "west"]), 40);
        // A region that went back (rebuilt) holds what it now needs.
        p.saw("east", 10);
        assert_eq!(p.applied_by_all(["east", "west"]), 10);
        assert_eq!(p.applied_by_all([]), 0);
    }
}

//! Planning a region's rollout: which hosts go in which wave.
//!
//! [`plan`] is a pure function of the region's racks and hosts and the release's strategy:
//! the same inputs give the same waves on every replica, whatever order they arrive in.
//! Racks are taken in name order and hosts in name order within a rack. The canary (the
//! first N hosts, or the whole first rack) is wave 0; the following waves cover the racks
//! up to each cumulative percentage of the strategy, leaving out hosts already planned.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Which hosts try a release first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Canary {
    /// No canary wave.
    None,
    /// The first N hosts (in rack order).
    Hosts(u32),
    /// Every host of the first rack.
    FirstRack,
}

/// How a region's hosts are split into waves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WavePlanSpec {
    pub canary: Canary,
    /// Cumulative percentages of racks, strictly increasing, ending at 100 (e.g. 10, 50, 100).
    pub waves: Vec<u32>,
}

/// One wave: the hosts it moves, and the racks they are in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    pub canary: bool,
    pub racks: Vec<String>,
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the region has no hosts")]
    NoHosts,
    #[error("wave percentages must be strictly increasing, from 1 to 100, and end at 100: {0:?}")]
    BadWaves(Vec<u32>),
    #[error("a canary of 0 hosts")]
    EmptyCanary,
    #[error("host {0:?} is in two racks")]
    HostInTwoRacks(String),
}

/// The waves of a region with `racks` (rack -> hosts) under `spec`.
pub fn plan(
    racks: &BTreeMap<String, Vec<String>>,
    spec: &WavePlanSpec,
) -> Result<Vec<Wave>, PlanError> {
    let w = &spec.waves;
    let increasing = w.windows(2).all(|p| p[0] < p[1]);
    if w.is_empty() || !increasing || w[0] == 0 || w.last() != Some(&100) {
        return Err(PlanError::BadWaves(w.clone()));
    }
    // Racks in name order, hosts sorted and deduplicated within each; empty racks dropped.
    let mut seen = BTreeSet::new();
    let mut ordered: Vec<(&String, Vec<&String>)> = Vec::new();
    for (rack, hosts) in racks {
        let hosts: BTreeSet<&String> = hosts.iter().collect();
        for h in &hosts {
            if !seen.insert(*h) {
                return Err(PlanError::HostInTwoRacks((*h).clone()));
            }
        }
        if !hosts.is_empty() {
            ordered.push((rack, hosts.into_iter().collect()));
        }
    }
    if ordered.is_empty() {
        return Err(PlanError::NoHosts);
    }
    let mut planned: BTreeSet<&String> = BTreeSet::new();
    let mut waves = Vec::new();
    let canary_hosts: Vec<&String> = match spec.canary {
        Canary::None => Vec::new(),
        Canary::Hosts(0) => return Err(PlanError::EmptyCanary),
        Canary::Hosts(n) => ordered
            .iter()
            .flat_map(|(_, h)| h.iter().copied())
            .take(n as usize)
            .collect(),
        Canary::FirstRack => ordered[0].1.clone(),
    };
    if !canary_hosts.is_empty() {
        waves.push(wave(true, &ordered, &canary_hosts));
        planned.extend(canary_hosts);
    }
    let total = ordered.len() as u64;
    let mut covered = 0usize;
    for pct in w {
        // Racks covered once this wave is done: ceil(pct% of racks), never beyond it. A
        // percentage that adds no rack makes no wave.
        let upto = ((u64::from(*pct) * total).div_ceil(100) as usize).clamp(covered, ordered.len());
        let hosts: Vec<&String> = ordered[covered.min(upto)..upto]
            .iter()
            .flat_map(|(_, h)| h.iter().copied())
            .filter(|h| !planned.contains(h))
            .collect();
        covered = upto;
        if !hosts.is_empty() {
            planned.extend(hosts.iter().copied());
            waves.push(wave(false, &ordered, &hosts));
        }
        if covered == ordered.len() {
            break;
        }
    }
    Ok(waves)
}

fn wave(canary: bool, ordered: &[(&String, Vec<&String>)], hosts: &[&String]) -> Wave {
    let set: BTreeSet<&String> = hosts.iter().copied().collect();
    Wave {
        canary,
        racks: ordered
            .iter()
            .filter(|(_, h)| h.iter().any(|x| set.contains(x)))
            .map(|(r, _)| (*r).clone())
            .collect(),
        hosts: hosts.iter().map(|h| (*h).clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn region(racks: usize, hosts: usize) -> BTreeMap<String, Vec<String>> {
        (0..racks)
            .map(|r| {
                (
                    format!("r{r:02}"),
                    (0..hosts).map(|h| format!("r{r:02}-h{h:02}")).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn canary_then_cumulative_rack_percentages() {
        let spec = WavePlanSpec {
            canary: Canary::Hosts(2),
            waves: vec![10, 50, 100],
        };
        let waves = plan(&region(10, 4), &spec).unwrap();
        assert_eq!(waves.len(), 4);
        assert!(waves[0].canary);
        assert_eq!(waves[0].hosts, ["r00-h00", "r00-h01"]);
        // 10% of 10 racks = rack r00, less the canary hosts.
        assert_eq!(waves[1].hosts, ["r00-h02", "r00-h03"]);
        assert_eq!(waves[2].racks, ["r01", "r02", "r03", "r04"]);
        assert_eq!(waves[3].racks.len(), 5);
    }

    #[test]
    fn first_rack_canary_and_tiny_regions() {
        let spec = WavePlanSpec {
            canary: Canary::FirstRack,
            waves: vec![10, 100],
        };
        let waves = plan(&region(2, 3), &spec).unwrap();
        assert_eq!(waves.len(), 2);
        assert_eq!(waves[0].racks, ["r00"]);
        assert_eq!(waves[1].racks, ["r01"]);
        // A single rack: the canary takes it all; nothing is left for later waves.
        let waves = plan(&region(1, 3), &spec).unwrap();
        assert_eq!(waves.len(), 1);
    }

    #[test]
    fn bad_specs_are_refused() {
        let r = region(3, 3);
        for waves in [
            vec![],
            vec![50],
            vec![50, 40, 100],
            vec![0, 100],
            vec![50, 100, 100],
        ] {
            let spec = WavePlanSpec {
                canary: Canary::None,
                waves: waves.clone(),
            };
            assert!(
                matches!(plan(&r, &spec), Err(PlanError::BadWaves(_))),
                "{waves:?}"
            );
        }
        let spec = WavePlanSpec {
            canary: Canary::Hosts(0),
            waves: vec![100],
        };
        assert_eq!(plan(&r, &spec), Err(PlanError::EmptyCanary));
        let spec = WavePlanSpec {
            canary: Canary::None,
            waves: vec![100],
        };
        assert_eq!(plan(&BTreeMap::new(), &spec), Err(PlanError::NoHosts));
        let mut twice = region(2, 1);
        twice.insert("r09".into(), vec!["r00-h00".into()]);
        assert!(matches!(
            plan(&twice, &spec),
            Err(PlanError::HostInTwoRacks(_))
        ));
    }

    fn spec_strategy() -> impl Strategy<Value = WavePlanSpec> {
        let canary = prop_oneof![
            Just(Canary::None),
            Just(Canary::FirstRack),
            (1u32..20).prop_map(Canary::Hosts)
        ];
        let waves = proptest::collection::btree_set(1u32..100, 0..4).prop_map(|s| {
            let mut v: Vec<u32> = s.into_iter().collect();
            v.push(100);
            v
        });
        (canary, waves).prop_map(|(canary, waves)| WavePlanSpec { canary, waves })
    }

    fn topology() -> impl Strategy<Value = BTreeMap<String, Vec<String>>> {
        proptest::collection::btree_map(
            "[a-z]{1,3}",
            proptest::collection::btree_set("[a-z0-9]{1,4}", 1..6),
            1..12,
        )
        .prop_map(|m| {
            // Host names unique across racks: prefix them with their rack.
            m.into_iter()
                .map(|(r, hs)| {
                    let hosts = hs.into_iter().map(|h| format!("{r}/{h}")).collect();
                    (r, hosts)
                })
                .collect()
        })
    }

    proptest! {
        /// Every host is in exactly one wave; the canary is first and as the strategy says;
        /// after each wave, the racks touched stay within the cumulative percentage; the plan
        /// does not depend on the order hosts are listed in.
        #[test]
        fn plans_are_complete_ordered_and_deterministic(racks in topology(), spec in spec_strategy()) {
            let waves = plan(&racks, &spec).unwrap();
            let all: BTreeSet<&String> = racks.values().flatten().collect();
            let mut seen = BTreeSet::new();
            for w in &waves {
                prop_assert!(!w.hosts.is_empty());
                for h in &w.hosts {
                    prop_assert!(seen.insert(h), "{} planned twice", h);
                }
            }
            prop_assert_eq!(seen.len(), all.len());
            for (i, w) in waves.iter().enumerate() {
                prop_assert_eq!(w.canary, i == 0 && spec.canary != Canary::None);
            }
            if let (Canary::Hosts(n), Some(first)) = (&spec.canary, waves.first()) {
                prop_assert_eq!(first.hosts.len(), (*n as usize).min(all.len()));
            }
            if let (Canary::FirstRack, Some(first)) = (&spec.canary, waves.first()) {
                prop_assert_eq!(first.racks.len(), 1);
                prop_assert_eq!(first.hosts.len(), racks.values().next().map(Vec::len).unwrap_or(0));
            }
            // Without a canary, the racks covered after each wave are exactly those up to one
            // of the strategy's percentages: never more than the operator asked for.
            if spec.canary == Canary::None {
                let r = racks.len() as u64;
                let allowed: BTreeSet<usize> =
                    spec.waves.iter().map(|p| (u64::from(*p) * r).div_ceil(100) as usize).collect();
                let mut touched = BTreeSet::new();
                for w in &waves {
                    touched.extend(w.racks.iter().cloned());
                    prop_assert!(allowed.contains(&touched.len()), "{} racks is no percentage's count", touched.len());
                }
            }
            // Same region listed in another order, same plan.
            let reversed: BTreeMap<String, Vec<String>> = racks
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().rev().cloned().collect()))
                .collect();
            prop_assert_eq!(plan(&reversed, &spec).unwrap(), waves);
        }
    }
}

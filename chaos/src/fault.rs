//! Fault kinds and the seeded fault schedule.
//!
//! [`plan`] is a pure function of the scenario, the seed and the duration: the same seed
//! always gives the same schedule (when, what kind, how long, and the draws that later pick
//! a target among the candidates). Which process a role such as "the global leader" names is
//! only known when the fault fires, so the report records both the plan and what was hit.

use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::scenario::{Range, Scenario};

/// Every kind of fault the harness injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// `kill -9` the global group's leader; restarted after the hold.
    KillGlobalLeader,
    /// `kill -9` a region's leader.
    KillRegionLeader,
    /// `kill -9` a follower of some group.
    KillFollower,
    /// `kill -9` a build worker, one that holds a build when there is one.
    KillWorker,
    /// `kill -9` a relay, one whose hosts are downloading when there is one.
    KillRelay,
    /// `kill -9` a host agent, one that is installing when there is one.
    KillAgent,
    /// SIGSTOP a group's leader for longer than the election timeout, then SIGCONT.
    PauseLeader,
    /// SIGSTOP any process (node, worker, relay or agent), then SIGCONT.
    PauseProcess,
    /// Cut a leader off from every other coordinator node, both ways.
    IsolateLeader,
    /// Split a group into a minority and a majority.
    PartitionMinority,
    /// One node can no longer reach another; the other way still works.
    PartitionOneWay,
    /// Cut a region's nodes off from the global group's.
    CutRegion,
    /// Add latency to every link between a group's members.
    SlowLinks,
    /// A relay's responses have bytes flipped on the way to its hosts.
    CorruptRelay,
    /// Fill a node's disk (a small tmpfs) while it writes, then free it.
    DiskFull,
    /// Stop and restart every member of a group, one after another.
    RollingRestart,
    /// Stop and restart a rack's relay and agents, one after another.
    RollingRestartFleet,
    /// Restart a global follower with its wall clock 30-120 s off (libfaketime), then hand
    /// the global group's leadership over, so the skewed node may lead while builds hold
    /// leases; healed by a restart on the true clock.
    SkewClock,
}

impl FaultKind {
    pub const ALL: [FaultKind; 18] = [
        FaultKind::KillGlobalLeader,
        FaultKind::KillRegionLeader,
        FaultKind::KillFollower,
        FaultKind::KillWorker,
        FaultKind::KillRelay,
        FaultKind::KillAgent,
        FaultKind::PauseLeader,
        FaultKind::PauseProcess,
        FaultKind::IsolateLeader,
        FaultKind::PartitionMinority,
        FaultKind::PartitionOneWay,
        FaultKind::CutRegion,
        FaultKind::SlowLinks,
        FaultKind::CorruptRelay,
        FaultKind::DiskFull,
        FaultKind::RollingRestart,
        FaultKind::RollingRestartFleet,
        FaultKind::SkewClock,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::KillGlobalLeader => "kill-global-leader",
            FaultKind::KillRegionLeader => "kill-region-leader",
            FaultKind::KillFollower => "kill-follower",
            FaultKind::KillWorker => "kill-worker",
            FaultKind::KillRelay => "kill-relay",
            FaultKind::KillAgent => "kill-agent",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::PauseProcess => "pause-process",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::PartitionMinority => "partition-minority",
            FaultKind::PartitionOneWay => "partition-one-way",
            FaultKind::CutRegion => "cut-region",
            FaultKind::SlowLinks => "slow-links",
            FaultKind::CorruptRelay => "corrupt-relay",
            FaultKind::DiskFull => "disk-full",
            FaultKind::RollingRestart => "rolling-restart",
            FaultKind::RollingRestartFleet => "rolling-restart-fleet",
            FaultKind::SkewClock => "skew-clock",
        }
    }

    /// Whether the fault may, by design, keep a live worker from renewing its lease for a
    /// whole lease (a killed or paused worker, a cut or slowed network, a leader gone for
    /// longer than failover takes). In a run of only the others, no lease may expire.
    pub fn may_cost_a_lease(self) -> bool {
        !matches!(
            self,
            FaultKind::KillRelay
                | FaultKind::KillAgent
                | FaultKind::CorruptRelay
                | FaultKind::RollingRestartFleet
                | FaultKind::SkewClock
        )
    }

    /// Pauses must outlast the election timeout (at most 900 ms in the chaos cluster).
    fn min_hold_ms(self) -> u64 {
        match self {
            FaultKind::PauseLeader | FaultKind::PauseProcess => 1_500,
            _ => 300,
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Planned {
    /// Its place in the schedule, from 0.
    pub index: usize,
    /// When it starts, from the start of the workload.
    pub at_ms: u64,
    pub kind: FaultKind,
    /// How long it lasts (a kill: until the restart; a pause: until SIGCONT).
    pub hold_ms: u64,
    /// A draw that picks the target among the candidates when the fault fires.
    pub pick: u64,
    /// A second draw for the fault's variant (drop or reset, which side, how slow).
    pub variant: u64,
}

fn draw(rng: &mut ChaCha8Rng, r: Range) -> u64 {
    if r.0 >= r.1 {
        r.0
    } else {
        rng.random_range(r.0..=r.1)
    }
}

/// The fault schedule of `scenario` for a run of `duration_ms` with `seed`: every fault
/// starts after the warm-up and ends (heals) before `duration_ms`, with at most
/// `max_concurrent` in effect at once.
pub fn plan(scenario: &Scenario, seed: u64, duration_ms: u64) -> Vec<Planned> {
    let f = &scenario.faults;
    let weighted: Vec<(FaultKind, u32)> = f
        .weights
        .iter()
        .filter(|(_, w)| **w > 0)
        .map(|(k, w)| (*k, *w))
        .collect();
    let total: u64 = weighted.iter().map(|(_, w)| u64::from(*w)).sum();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    if total == 0 {
        return out;
    }
    let mut t = f.warmup_ms;
    let mut active: Vec<u64> = Vec::new();
    while t < duration_ms {
        active.retain(|end| *end > t);
        if active.len() >= f.max_concurrent.max(1) {
            t = active.iter().copied().min().unwrap_or(t).max(t + 1);
            continue;
        }
        let mut x = rng.random_range(0..total);
        let kind = weighted
            .iter()
            .find(|(_, w)| {
                let w = u64::from(*w);
                if x < w {
                    true
                } else {
                    x -= w;
                    false
                }
            })
            .map(|(k, _)| *k)
            .unwrap_or(weighted[0].0);
        let hold = draw(&mut rng, f.hold_ms).max(kind.min_hold_ms());
        let pick = rng.random::<u64>();
        let variant = rng.random::<u64>();
        let gap = draw(&mut rng, f.every_ms).max(200);
        let room = duration_ms.saturating_sub(t);
        if room >= kind.min_hold_ms() {
            let hold_ms = hold.min(room);
            out.push(Planned {
                index: out.len(),
                at_ms: t,
                kind,
                hold_ms,
                pick,
                variant,
            });
            active.push(t + hold_ms);
        }
        t += gap;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{scenario_dir, Scenario};

    fn scenario(name: &str) -> Scenario {
        Scenario::find(name, &scenario_dir()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        for name in crate::scenario::list(&scenario_dir()) {
            let s = scenario(&name);
            let a = plan(&s, 7, 60_000);
            assert_eq!(a, plan(&s, 7, 60_000), "{name}");
            assert_ne!(a, plan(&s, 8, 60_000), "{name}: seeds 7 and 8 agree");
        }
    }

    #[test]
    fn faults_fit_the_run_and_the_concurrency() {
        for name in crate::scenario::list(&scenario_dir()) {
            let s = scenario(&name);
            for seed in 0..20 {
                let p = plan(&s, seed, 45_000);
                assert!(!p.is_empty(), "{name} seed {seed}: no fault");
                for f in &p {
                    assert!(f.at_ms >= s.faults.warmup_ms);
                    assert!(
                        f.at_ms + f.hold_ms <= 45_000,
                        "{name}: {f:?} outlasts the run"
                    );
                    assert!(s.faults.weights.get(&f.kind).is_some_and(|w| *w > 0));
                    let overlapping = p
                        .iter()
                        .filter(|g| g.at_ms <= f.at_ms && f.at_ms < g.at_ms + g.hold_ms)
                        .count();
                    assert!(
                        overlapping <= s.faults.max_concurrent,
                        "{name}: {overlapping} at once"
                    );
                }
            }
        }
    }

    #[test]
    fn everything_at_once_injects_at_least_twenty_faults_in_two_minutes() {
        let s = scenario("everything-at-once");
        for seed in 0..50 {
            let n = plan(&s, seed, 120_000).len();
            assert!(n >= 20, "seed {seed}: only {n} faults");
        }
        let kinds: std::collections::BTreeSet<FaultKind> =
            plan(&s, 1, 120_000).iter().map(|f| f.kind).collect();
        assert!(kinds.len() >= 8, "seed 1 mixes only {kinds:?}");
    }

    #[test]
    fn pauses_outlast_the_election_timeout() {
        let s = scenario("everything-at-once");
        for f in plan(&s, 3, 120_000) {
            if matches!(f.kind, FaultKind::PauseLeader | FaultKind::PauseProcess) {
                assert!(f.hold_ms >= 1_500, "{f:?}");
            }
        }
    }

    #[test]
    fn kinds_round_trip_their_names() {
        for k in FaultKind::ALL {
            let s = serde_json::to_string(&k).unwrap_or_default();
            assert_eq!(s, format!("\"{}\"", k.as_str()));
        }
    }
}

use deploy_types::Digest;
use proptest::prelude::*;
use proptest::strategy::Strategy as Gen;

use super::*;
use crate::releases::Strategy;
use crate::rollout::Canary;

/// A region of `racks` racks (k0, k1, ...) with `per` hosts each (k0-h0, ...).
fn region(racks: usize, per: usize) -> Region {
    let mut r = Region::default();
    let hosts = (0..racks)
        .flat_map(|k| (0..per).map(move |h| (format!("k{k}-h{h}"), format!("k{k}"))))
        .collect();
    r.apply(&RegionCommand::RegisterHosts { hosts }).unwrap();
    r
}

fn start(seq: u64, dseq: u64, build: &str, strategy: Strategy) -> Decision {
    Decision {
        seq: dseq,
        release: release_id(seq),
        region: "east".into(),
        kind: DecisionKind::Start {
            service: "web".into(),
            build_id: build.into(),
            artifact_digest: Digest::of(build.as_bytes()),
            strategy,
        },
        by: "global".into(),
        reason: String::new(),
        at_ms: 0,
    }
}

fn act(seq: u64, dseq: u64, action: Action) -> Decision {
    Decision {
        seq: dseq,
        release: release_id(seq),
        region: "east".into(),
        kind: DecisionKind::Act(action),
        by: "carol".into(),
        reason: String::new(),
        at_ms: 0,
    }
}

fn apply(r: &mut Region, ds: Vec<Decision>) {
    let upto = ds.iter().map(|d| d.seq).max().unwrap_or(0);
    r.apply(&RegionCommand::Apply {
        decisions: ds,
        upto,
        now_ms: 100,
    })
    .unwrap();
}

fn passed(r: &mut Region, seq: u64, wave: u32) -> Result<RegionResponse, ReleaseError> {
    r.apply(&RegionCommand::WavePassed {
        id: release_id(seq),
        wave,
        counts: Counts::default(),
        now_ms: 200,
    })
}

/// Each host's build for `web`, "-" for none.
fn builds(r: &Region) -> BTreeMap<String, String> {
    r.hosts
        .keys()
        .map(|h| {
            let b = r
                .goals_of(h)
                .into_iter()
                .find(|(s, _)| s == "web")
                .map(|(_, g)| g.build_id)
                .unwrap_or_else(|| "-".into());
            (h.clone(), b)
        })
        .collect()
}

fn count(r: &Region, build: &str) -> usize {
    builds(r).values().filter(|b| *b == build).count()
}

fn strategy() -> Strategy {
    Strategy {
        canary: Canary::Hosts(2),
        waves: vec![50, 100],
        ..Strategy::default()
    }
}

#[test]
fn waves_move_the_canary_then_racks_and_the_last_wave_succeeds() {
    let mut r = region(4, 3);
    apply(&mut r, vec![start(1, 1, "b-1", strategy())]);
    let rel = r.release("r-1").unwrap();
    assert_eq!(rel.plan.len(), 3);
    assert_eq!(rel.counts.hosts_total, 12);
    assert_eq!(count(&r, "b-1"), 2, "the canary: two hosts of rack k0");
    assert_eq!(r.services["web"].racks.len(), 0, "k0 is only partly moved");
    assert!(passed(&mut r, 1, 1).is_err(), "not the current wave");
    passed(&mut r, 1, 0).unwrap();
    assert_eq!(count(&r, "b-1"), 6, "racks k0 and k1");
    assert!(
        r.services["web"].hosts.is_empty(),
        "k0's goal covers its canary hosts"
    );
    passed(&mut r, 1, 1).unwrap();
    assert_eq!(count(&r, "b-1"), 12);
    passed(&mut r, 1, 2).unwrap();
    let rel = r.release("r-1").unwrap();
    assert_eq!(rel.state, ReleaseState::Succeeded);
    assert_eq!(r.services["web"].active, None);
    // A host that joins a moved rack later gets the rack's goal.
    r.apply(&RegionCommand::RegisterHosts {
        hosts: vec![("k3-h9".into(), "k3".into())],
    })
    .unwrap();
    assert_eq!(builds(&r)["k3-h9"], "b-1");
}

#[test]
fn a_halt_with_auto_rollback_restores_every_previous_goal() {
    let mut r = region(3, 2);
    apply(&mut r, vec![start(1, 1, "b-1", strategy())]);
    for w in 0..3 {
        passed(&mut r, 1, w).unwrap();
    }
    let before = builds(&r);
    apply(&mut r, vec![start(2, 2, "b-2", strategy())]);
    passed(&mut r, 2, 0).unwrap();
    assert!(count(&r, "b-2") > 2);
    r.apply(&RegionCommand::Halt {
        id: "r-2".into(),
        wave: 1,
        reason: "1 of 2 hosts failed".into(),
        counts: Counts::default(),
        now_ms: 300,
    })
    .unwrap();
    assert_eq!(r.release("r-2").unwrap().state, ReleaseState::RolledBack);
    assert_eq!(builds(&r), before, "every host is back on b-1");
    // Without auto-rollback the moved hosts stay and the release FAILED.
    let keep = Strategy {
        auto_rollback: false,
        ..strategy()
    };
    apply(&mut r, vec![start(3, 3, "b-3", keep)]);
    r.apply(&RegionCommand::Halt {
        id: "r-3".into(),
        wave: 0,
        reason: "deadline".into(),
        counts: Counts::default(),
        now_ms: 300,
    })
    .unwrap();
    assert_eq!(r.release("r-3").unwrap().state, ReleaseState::Failed);
    assert_eq!(count(&r, "b-3"), 2);
}

#[test]
fn decisions_apply_in_order_each_once() {
    let mut r = region(2, 2);
    let ds = vec![
        start(1, 4, "b-1", strategy()),
        act(1, 5, Action::Pause),
        act(1, 7, Action::Resume),
    ];
    apply(&mut r, ds.clone());
    let once = r.clone();
    apply(&mut r, ds);
    assert_eq!(r, once, "a repeated pull changes nothing");
    assert_eq!(r.applied, 7);
    assert_eq!(r.release("r-1").unwrap().state, ReleaseState::RollingOut);
    // A stale decision (older than the applied number) is skipped.
    apply(&mut r, vec![act(1, 6, Action::Abort)]);
    assert_eq!(r.release("r-1").unwrap().state, ReleaseState::RollingOut);
}

#[test]
fn pause_holds_promote_passes_abort_freezes_and_a_new_release_supersedes() {
    let mut r = region(3, 2);
    apply(&mut r, vec![start(1, 1, "b-1", strategy())]);
    apply(&mut r, vec![act(1, 2, Action::Pause)]);
    assert!(
        passed(&mut r, 1, 0).is_err(),
        "a paused release does not move on"
    );
    apply(&mut r, vec![act(1, 3, Action::Promote)]);
    let rel = r.release("r-1").unwrap();
    assert_eq!((rel.state, rel.wave), (ReleaseState::RollingOut, 1));
    assert!(rel
        .history
        .iter()
        .any(|e| e.by == "carol" && e.what.contains("promoted")));
    let moved = builds(&r);
    apply(&mut r, vec![act(1, 4, Action::Abort)]);
    assert_eq!(r.release("r-1").unwrap().state, ReleaseState::Aborted);
    assert_eq!(builds(&r), moved, "an abort leaves goals where they are");
    apply(&mut r, vec![start(2, 5, "b-2", strategy())]);
    apply(&mut r, vec![start(3, 6, "b-3", strategy())]);
    assert_eq!(r.release("r-2").unwrap().state, ReleaseState::Aborted);
    assert!(r
        .release("r-2")
        .unwrap()
        .reason
        .contains("superseded by r-3"));
    assert_eq!(r.services["web"].active, Some(3));
}

#[test]
fn a_region_without_hosts_succeeds_at_once_and_bad_hosts_are_refused() {
    let mut r = Region::default();
    apply(&mut r, vec![start(1, 1, "b-1", strategy())]);
    let rel = r.release("r-1").unwrap();
    assert_eq!(rel.state, ReleaseState::Succeeded);
    assert!(rel.reason.contains("no hosts"));
    let before = r.clone();
    for bad in [("", "k0"), ("h/1", "k0"), ("h1", "K 0")] {
        let e = r.apply(&RegionCommand::RegisterHosts {
            hosts: vec![("ok".into(), "k0".into()), (bad.0.into(), bad.1.into())],
        });
        assert!(
            matches!(e, Err(ReleaseError::Invalid { .. })),
            "{bad:?}: {e:?}"
        );
    }
    assert_eq!(r, before);
}

#[derive(Debug, Clone)]
enum Op {
    Start(Strategy),
    Pass,
    Halt,
    Act(Action),
    Join(u8, u8),
}

fn op() -> impl Gen<Value = Op> {
    let strat = (0u32..3, any::<bool>(), 0usize..3).prop_map(|(c, auto, w)| Strategy {
        canary: match c {
            0 => Canary::None,
            1 => Canary::Hosts(1 + w as u32),
            _ => Canary::FirstRack,
        },
        waves: [vec![100], vec![50, 100], vec![10, 30, 100]][w].clone(),
        auto_rollback: auto,
        ..Strategy::default()
    });
    prop_oneof![
        strat.prop_map(Op::Start),
        Just(Op::Pass),
        Just(Op::Pass),
        Just(Op::Halt),
        prop_oneof![
            Just(Action::Pause),
            Just(Action::Resume),
            Just(Action::Abort),
            Just(Action::Rollback),
            Just(Action::Promote),
        ]
        .prop_map(Op::Act),
        (0u8..5, 0u8..4).prop_map(|(k, h)| Op::Join(k, h)),
    ]
}

proptest! {
    /// Over random histories: a host's goal is always the build of a release that reached
    /// it or none; rolling back the newest release restores the goals from before it; every
    /// wave's hosts are distinct; a refused command changes nothing; replaying the same
    /// commands gives the same state.
    #[test]
    fn goals_and_rollbacks_stay_consistent(ops in proptest::collection::vec(op(), 1..40), racks in 1usize..4, per in 1usize..4) {
        let mut r = region(racks, per);
        let mut log: Vec<RegionCommand> = Vec::new();
        let mut dseq = 0u64;
        let mut rseq = 0u64;
        // The goals before the newest release started.
        let mut before_newest: Option<BTreeMap<String, String>> = None;
        for op in ops {
            let cmd = match op {
                Op::Start(s) => {
                    dseq += 1;
                    rseq += 1;
                    before_newest = Some(builds(&r));
                    RegionCommand::Apply { decisions: vec![start(rseq, dseq, &format!("b-{rseq}"), s)], upto: dseq, now_ms: dseq }
                }
                Op::Pass | Op::Halt if rseq == 0 => continue,
                Op::Pass => {
                    let wave = r.releases.get(&rseq).map(|x| x.wave).unwrap_or(0);
                    RegionCommand::WavePassed { id: release_id(rseq), wave, counts: Counts::default(), now_ms: dseq }
                }
                Op::Halt => {
                    let wave = r.releases.get(&rseq).map(|x| x.wave).unwrap_or(0);
                    RegionCommand::Halt { id: release_id(rseq), wave, reason: "x".into(), counts: Counts::default(), now_ms: dseq }
                }
                Op::Act(a) => {
                    if rseq == 0 { continue; }
                    dseq += 1;
                    RegionCommand::Apply { decisions: vec![act(rseq, dseq, a)], upto: dseq, now_ms: dseq }
                }
                Op::Join(k, h) => RegionCommand::RegisterHosts { hosts: vec![(format!("k{k}-n{h}"), format!("k{k}"))] },
            };
            let prior = r.clone();
            let result = r.apply(&cmd);
            log.push(cmd.clone());
            if result.is_err() {
                prop_assert_eq!(&r, &prior);
            }
            // Every goal names a release that was started here, with its build.
            for g in r.services.values() {
                for goal in g.racks.values().chain(g.hosts.values()) {
                    let rel = r.release(&goal.release);
                    prop_assert!(rel.is_some_and(|x| x.build_id == goal.build_id), "{:?}", goal);
                }
            }
            if let Some(rel) = r.releases.get(&rseq) {
                let mut seen = BTreeSet::new();
                for w in &rel.plan {
                    for h in &w.hosts {
                        prop_assert!(seen.insert(h.clone()), "{} in two waves", h);
                    }
                }
                let joined = matches!(cmd, RegionCommand::RegisterHosts { .. });
                if rel.state == ReleaseState::RolledBack && !joined {
                    if let Some(b) = &before_newest {
                        // Hosts that joined since may have no goal before; compare the rest.
                        let now = builds(&r);
                        for (h, build) in b {
                            prop_assert_eq!(now.get(h), Some(build), "{} after rollback", h);
                        }
                    }
                }
            }
        }
        let mut replay = region(racks, per);
        for c in &log {
            let _ = replay.apply(c);
        }
        prop_assert_eq!(replay, r);
    }
}

fn settle(r: &mut Region, seq: u64, keep: &[&str]) -> Result<RegionResponse, ReleaseError> {
    r.apply(&RegionCommand::Settle {
        id: release_id(seq),
        keep: keep.iter().map(|s| s.to_string()).collect(),
        now_ms: 300,
    })
}

#[test]
fn an_aborted_wave_keeps_the_hosts_that_never_took_the_build_where_they_were() {
    // b-1 everywhere, then b-2 to the first rack, aborted while only k0-h0 had taken it.
    let mut r = region(2, 3);
    let whole_racks = Strategy {
        canary: Canary::FirstRack,
        waves: vec![100],
        ..Strategy::default()
    };
    apply(&mut r, vec![start(1, 1, "b-1", whole_racks.clone())]);
    passed(&mut r, 1, 0).unwrap();
    passed(&mut r, 1, 1).unwrap();
    assert_eq!(count(&r, "b-1"), 6);
    apply(&mut r, vec![start(2, 2, "b-2", whole_racks)]);
    assert_eq!(count(&r, "b-2"), 3, "rack k0 moved");
    assert!(
        settle(&mut r, 2, &[]).is_err(),
        "a rolling release is not settled"
    );
    apply(&mut r, vec![act(2, 3, Action::Abort)]);
    assert_eq!(
        count(&r, "b-2"),
        3,
        "an abort alone leaves goals where they are"
    );
    settle(&mut r, 2, &["k0-h0"]).unwrap();
    let b = builds(&r);
    assert_eq!(b["k0-h0"], "b-2", "the host that took it keeps it");
    assert_eq!(b["k0-h1"], "b-1", "the others keep what they had");
    assert_eq!(b["k0-h2"], "b-1");
    assert_eq!(b["k1-h0"], "b-1");
    assert!(settle(&mut r, 2, &[]).is_err(), "once");
    let rel = r.release("r-2").unwrap();
    assert!(rel.settled);
    assert!(rel
        .history
        .iter()
        .any(|e| e.what.contains("never took b-2")));
}

#[test]
fn settling_a_first_release_leaves_the_hosts_that_never_took_it_with_nothing() {
    let mut r = region(1, 2);
    apply(
        &mut r,
        vec![start(
            1,
            1,
            "b-1",
            Strategy {
                canary: Canary::None,
                waves: vec![100],
                ..Strategy::default()
            },
        )],
    );
    apply(&mut r, vec![act(1, 2, Action::Abort)]);
    settle(&mut r, 1, &["k0-h1"]).unwrap();
    let b = builds(&r);
    assert_eq!(b["k0-h0"], "-", "an explicit nothing hides the rack's goal");
    assert_eq!(b["k0-h1"], "b-1");
    // A later release moves the whole rack again, the exception with it.
    apply(
        &mut r,
        vec![start(
            2,
            3,
            "b-3",
            Strategy {
                canary: Canary::None,
                waves: vec![100],
                ..Strategy::default()
            },
        )],
    );
    assert_eq!(count(&r, "b-3"), 2);
}

#[test]
fn settling_never_undoes_a_newer_release() {
    let mut r = region(1, 2);
    let all = Strategy {
        canary: Canary::None,
        waves: vec![100],
        ..Strategy::default()
    };
    apply(&mut r, vec![start(1, 1, "b-1", all.clone())]);
    // r-2 supersedes r-1 (which ends ABORTED) and takes the rack.
    apply(&mut r, vec![start(2, 2, "b-2", all)]);
    assert_eq!(r.release("r-1").unwrap().state, ReleaseState::Aborted);
    settle(&mut r, 1, &[]).unwrap();
    assert_eq!(count(&r, "b-2"), 2, "the rack's goal is r-2's, not r-1's");
}

#[test]
fn forgotten_hosts_and_relays_leave_the_registry_but_not_while_a_release_plans_them() {
    let mut r = region(2, 2);
    r.apply(&RegionCommand::RegisterRelay {
        relay: "k1-relay".into(),
        rack: "k1".into(),
    })
    .unwrap();
    apply(&mut r, vec![start(1, 1, "b-1", strategy())]);
    let forget = |r: &mut Region, hosts: &[&str], relays: &[&str]| {
        r.apply(&RegionCommand::Forget {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            relays: relays.iter().map(|h| h.to_string()).collect(),
        })
        .unwrap()
    };
    // Rolling out: its plan names every host, so none leaves; the relay does.
    assert_eq!(
        forget(&mut r, &["k1-h0", "nobody"], &["k1-relay", "nobody"]),
        RegionResponse::Forgotten {
            hosts: 0,
            relays: 1
        }
    );
    assert!(r.hosts.contains_key("k1-h0"));
    assert!(r.relays.is_empty());
    let mut wave = 0;
    while !r.release("r-1").unwrap().state.is_final() {
        passed(&mut r, 1, wave).unwrap();
        wave += 1;
    }
    // Finished: the host goes, with its goal exceptions.
    r.services
        .get_mut("web")
        .unwrap()
        .hosts
        .insert("k1-h0".into(), Goal::nothing());
    assert_eq!(
        forget(&mut r, &["k1-h0"], &[]),
        RegionResponse::Forgotten {
            hosts: 1,
            relays: 0
        }
    );
    assert!(!r.hosts.contains_key("k1-h0"));
    assert!(r.services["web"].hosts.get("k1-h0").is_none());
    assert!(r.goals_of("k1-h0").is_empty());
    // Too many names in one command changes nothing.
    let many: Vec<String> = (0..=MAX_HOSTS_PER_COMMAND)
        .map(|i| format!("h{i}"))
        .collect();
    let before = r.clone();
    assert!(r
        .apply(&RegionCommand::Forget {
            hosts: many,
            relays: vec![]
        })
        .is_err());
    assert_eq!(r, before);
}

#[test]
fn finished_release_records_beyond_the_policy_are_collected_but_never_the_newest() {
    let mut r = Region::default();
    for seq in 1..=3 {
        apply(
            &mut r,
            vec![start(seq, seq, &format!("b-{seq}"), strategy())],
        );
        assert_eq!(r.releases[&seq].state, ReleaseState::Succeeded);
    }
    let collect = |r: &mut Region, now_ms, keep_per_service, keep_ms| {
        r.apply(&RegionCommand::Collect {
            now_ms,
            keep_per_service,
            keep_ms,
        })
        .unwrap()
    };
    let left = |r: &Region| r.releases.keys().copied().collect::<Vec<_>>();
    // Finished at 100: too young for a policy of 1,000 ms at 500.
    assert_eq!(
        collect(&mut r, 500, 0, 1_000),
        RegionResponse::Collected { releases: 0 }
    );
    assert_eq!(
        collect(&mut r, 5_000, 2, 1_000),
        RegionResponse::Collected { releases: 1 }
    );
    assert_eq!(left(&r), [2, 3]);
    // Keeping none per service still keeps the newest, which a rollback undoes.
    assert_eq!(
        collect(&mut r, 5_000, 0, 0),
        RegionResponse::Collected { releases: 1 }
    );
    assert_eq!(left(&r), [3]);
    assert_eq!(r.services["web"].latest, Some(3));
}

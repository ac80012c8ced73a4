use deploy_types::Digest;
use proptest::prelude::*;

use super::*;
use crate::builds::{BuildCommand, BuildResponse, Outcome};
use crate::releases::{ReleaseCommand, Strategy as ReleaseStrategy};
use crate::{GlobalCommand as Command, GlobalState as GroupState, Response, StateMachine};

/// What becomes of one build in a generated history.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Queued,
    Running,
    Succeeded { released: bool },
    Cancelled,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        Just(Fate::Queued),
        Just(Fate::Running),
        any::<bool>().prop_map(|released| Fate::Succeeded { released }),
        Just(Fate::Cancelled),
    ]
}

/// A state holding one build per `(service, fate)`, the i-th finishing at time `10 * i`
/// (those left queued are submitted last, so that no worker takes them).
fn history(builds: &[(u8, Fate)]) -> GroupState {
    let mut s = GroupState::default();
    let cmd = |s: &mut GroupState, c: BuildCommand| s.apply(&Command::Build(c));
    let mut builds = builds.to_vec();
    builds.sort_by_key(|(_, f)| matches!(f, Fate::Queued));
    for (i, (service, fate)) in builds.iter().enumerate() {
        let worker = format!("w{i}");
        cmd(
            &mut s,
            BuildCommand::RegisterWorker {
                worker: worker.clone(),
                region: "r1".into(),
                now_ms: 0,
            },
        );
        let now = 10 * i as u64 + 10;
        let service = format!("svc{service}");
        let id = match cmd(
            &mut s,
            BuildCommand::Submit {
                service: service.clone(),
                repo: "/srv/git/app".into(),
                commit: format!("{i:040x}"),
                now_ms: now,
                by: None,
                max_queued: None,
            },
        ) {
            Response::Build(BuildResponse::Submitted { id, .. }) => id,
            other => panic!("submit: {other:?}"),
        };
        match fate {
            Fate::Queued => {}
            Fate::Cancelled => {
                cmd(
                    &mut s,
                    BuildCommand::Cancel {
                        id,
                        now_ms: now,
                        by: None,
                    },
                );
            }
            Fate::Running | Fate::Succeeded { .. } => {
                cmd(
                    &mut s,
                    BuildCommand::Acquire {
                        worker: worker.clone(),
                        now_ms: now,
                        lease_ms: u64::MAX / 4,
                    },
                );
                if let Fate::Succeeded { released } = fate {
                    cmd(
                        &mut s,
                        BuildCommand::Complete {
                            id: id.clone(),
                            worker: worker.clone(),
                            attempt: 1,
                            now_ms: now,
                            outcome: Outcome::Built {
                                artifact_digest: Digest::of(&i.to_le_bytes()),
                                artifact_size: 1,
                            },
                            regions: vec!["r1".into()],
                            max_attempts: 3,
                        },
                    );
                    if *released {
                        let r = s.apply(&Command::Release(ReleaseCommand::Create {
                            service,
                            build_id: id,
                            regions: vec!["r1".into()],
                            strategy: ReleaseStrategy::default(),
                            by: "alice".into(),
                            now_ms: now,
                            known_regions: vec!["r1".into()],
                            request_id: None,
                        }));
                        assert!(matches!(r, Response::Release(_)), "release: {r:?}");
                    }
                }
            }
        }
    }
    s
}

fn policy() -> impl Strategy<Value = Collect> {
    (0u32..4, 0u64..200, 0u32..3, 0u64..2_000, 0u64..8).prop_map(
        |(keep_per_service, keep_ms, artifact_keep, now_ms, decisions_upto)| Collect {
            now_ms,
            keep_per_service,
            keep_ms,
            artifact_keep,
            history_ms: 1_000,
            decisions_upto,
        },
    )
}

proptest! {
    /// Over random histories and policies: nothing unfinished, released, among the newest
    /// kept per service or for artifacts, or younger than the policy is collected; every
    /// replica removes the same builds; and a second collect at the same time removes nothing.
    #[test]
    fn nothing_a_release_a_rollback_or_the_artifacts_need_is_collected(
        builds in proptest::collection::vec((0u8..3, fate()), 0..40),
        c in policy(),
    ) {
        let before = history(&builds);
        let mut replica = before.clone();
        let mut s = before.clone();
        let removed = match s.apply(&Command::Collect(c.clone())) {
            Response::Collected(b) => b,
            other => panic!("collect: {other:?}"),
        };
        prop_assert_eq!(replica.apply(&Command::Collect(c.clone())), Response::Collected(removed.clone()));
        // The generated histories do collect releases (superseded ones end ABORTED), so the
        // release rules below are exercised, not vacuous.
        prop_assert!(replica == s, "replicas differ after the same collect");

        let released: BTreeSet<String> =
            before.releases.by_seq.values().map(|r| r.build_id.clone()).collect();
        for b in &removed.builds {
            prop_assert!(b.state.is_final(), "{} collected while {:?}", b.id(), b.state);
            prop_assert!(!released.contains(&b.id()), "{} collected though released", b.id());
            let finished_at = b.finished_at_ms.unwrap_or(b.updated_at_ms);
            prop_assert!(finished_at + c.keep_ms <= c.now_ms, "{} collected too young", b.id());
            let newer = |succeeded_only: bool| {
                before
                    .builds
                    .by_seq
                    .values()
                    .filter(|x| x.service == b.service && x.seq > b.seq && x.state.is_final())
                    .filter(|x| !succeeded_only || x.state == BuildState::Succeeded)
                    .count() as u32
            };
            prop_assert!(newer(false) >= c.keep_per_service, "{} is among the newest kept", b.id());
            if b.state == BuildState::Succeeded {
                prop_assert!(newer(true) >= c.artifact_keep, "{}'s artifact is kept", b.id());
            }
            prop_assert!(s.builds.get(&b.id()).is_none());
        }
        // Whatever was not collected is still there, unchanged.
        prop_assert_eq!(s.builds.by_seq.len() + removed.builds.len(), before.builds.by_seq.len());

        // Releases: never an unfinished one, nor the one a rollback acts on, nor the newest
        // kept per service, nor a young one.
        let rs = &before.releases;
        for r in &removed.releases {
            prop_assert!(r.state.is_final(), "{} collected while {:?}", r.id(), r.state);
            prop_assert!(rs.active.get(&r.service) != Some(&r.seq), "{} is active", r.id());
            prop_assert!(rs.latest.get(&r.service) != Some(&r.seq), "{} is the newest", r.id());
            let newer = rs.by_seq.values().filter(|x| x.service == r.service && x.seq > r.seq).count() as u32;
            prop_assert!(newer >= c.keep_per_service, "{} is among the newest kept", r.id());
            let finished_at = r.finished_at_ms.unwrap_or(r.updated_at_ms);
            prop_assert!(finished_at + c.keep_ms <= c.now_ms, "{} collected too young", r.id());
            prop_assert!(s.releases.get(&r.id()).is_none());
        }
        prop_assert_eq!(s.releases.by_seq.len() + removed.releases.len(), rs.by_seq.len());
        // Decisions: exactly those every region applied leave; the rest stay for their pull.
        prop_assert!(s.releases.decisions.keys().all(|&seq| seq > c.decisions_upto));
        prop_assert_eq!(
            removed.decisions as usize,
            rs.decisions.range(..=c.decisions_upto).count()
        );
        prop_assert_eq!(s.releases.last_decision, rs.last_decision);
        // A build named by a release collected in this pass stays until a later one.
        for r in &removed.releases {
            prop_assert!(s.builds.get(&r.build_id).is_some() || before.builds.get(&r.build_id).is_none());
        }
        // A second collect at the same time takes only the builds those releases named; a
        // third, nothing.
        let freed: BTreeSet<String> = removed.releases.iter().map(|r| r.build_id.clone()).collect();
        match s.apply(&Command::Collect(c.clone())) {
            Response::Collected(again) => {
                prop_assert!(again.releases.is_empty());
                for b in &again.builds {
                    prop_assert!(freed.contains(&b.id()), "{} collected only on a second pass", b.id());
                }
            }
            other => prop_assert!(false, "collect: {:?}", other),
        }
        prop_assert_eq!(s.apply(&Command::Collect(c)), Response::Collected(Collected::default()));
    }
}

/// A collected build's idempotency key goes with it: submitting its commit again makes a
/// new build instead of answering with one the state no longer holds.
#[test]
fn a_collected_builds_commit_can_be_submitted_again() {
    let mut s = history(&[(0, Fate::Cancelled), (0, Fate::Cancelled)]);
    let c = Collect {
        now_ms: 1_000,
        keep_per_service: 1,
        keep_ms: 0,
        artifact_keep: 0,
        history_ms: 0,
        decisions_upto: 0,
    };
    let Response::Collected(removed) = s.apply(&Command::Collect(c)) else {
        panic!("not a collect response");
    };
    assert_eq!(
        removed.builds.iter().map(|b| b.id()).collect::<Vec<_>>(),
        ["b-1"]
    );
    let again = s.apply(&Command::Build(BuildCommand::Submit {
        service: "svc0".into(),
        repo: "/srv/git/app".into(),
        commit: format!("{:040x}", 0),
        now_ms: 1_001,
        by: None,
        max_queued: None,
    }));
    assert_eq!(
        again,
        Response::Build(BuildResponse::Submitted {
            id: "b-3".into(),
            created: true
        })
    );
}

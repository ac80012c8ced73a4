use proptest::prelude::*;

use super::*;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const LEASE: u64 = 3000;
const MAX: u32 = 3;

fn submit(q: &mut Builds, service: &str, now_ms: u64) -> String {
    match q.apply(&BuildCommand::Submit {
        service: service.into(),
        repo: "/srv/git/app".into(),
        commit: COMMIT.into(),
        now_ms,
        by: None,
        max_queued: None,
    }) {
        Ok(BuildResponse::Submitted { id, .. }) => id,
        other => panic!("{other:?}"),
    }
}

fn register(q: &mut Builds, w: &str) {
    q.apply(&BuildCommand::RegisterWorker {
        worker: w.into(),
        region: "r1".into(),
        now_ms: 0,
    })
    .unwrap();
}

fn acquire(q: &mut Builds, w: &str, now_ms: u64) -> Result<BuildResponse, BuildError> {
    q.apply(&BuildCommand::Acquire {
        worker: w.into(),
        now_ms,
        lease_ms: LEASE,
    })
}

fn complete(
    q: &mut Builds,
    id: &str,
    w: &str,
    attempt: u32,
    now_ms: u64,
    outcome: Outcome,
) -> Result<BuildResponse, BuildError> {
    q.apply(&BuildCommand::Complete {
        id: id.into(),
        worker: w.into(),
        attempt,
        now_ms,
        outcome,
        regions: vec!["r1".into(), "r2".into()],
        max_attempts: MAX,
    })
}

/// Expires every running lease at its current version, as a leader that watched them all
/// go unrenewed would.
fn expire_all(q: &mut Builds, now_ms: u64) -> Result<BuildResponse, BuildError> {
    let leases = q.lease_versions().collect();
    q.apply(&BuildCommand::ExpireLeases {
        now_ms,
        max_attempts: MAX,
        leases,
    })
}

/// A test's short name for an artifact, as its digest.
fn digest(name: &str) -> Digest {
    Digest::of(name.as_bytes())
}

fn built(name: &str) -> Outcome {
    Outcome::Built {
        artifact_digest: digest(name),
        artifact_size: 1,
    }
}

#[test]
fn submission_is_idempotent_until_failed_or_cancelled() {
    let mut q = Builds::default();
    let a = submit(&mut q, "svc", 1);
    assert_eq!(submit(&mut q, "svc", 2), a);
    assert_ne!(submit(&mut q, "other", 3), a);
    q.apply(&BuildCommand::Cancel {
        id: a.clone(),
        now_ms: 4,
        by: None,
    })
    .unwrap();
    let b = submit(&mut q, "svc", 5);
    assert_ne!(b, a, "a cancelled build is submitted anew");
}

#[test]
fn bad_input_is_refused_naming_the_field() {
    let mut q = Builds::default();
    for (service, repo, commit, field) in [
        ("Bad", "/r", COMMIT, "service"),
        ("ok", "relative", COMMIT, "repo"),
        ("ok", "/r", "HEAD", "commit"),
    ] {
        let e = q
            .apply(&BuildCommand::Submit {
                service: service.into(),
                repo: repo.into(),
                commit: commit.into(),
                now_ms: 0,
                by: None,
                max_queued: None,
            })
            .unwrap_err();
        assert!(
            matches!(&e, BuildError::Invalid { field: f, .. } if *f == field),
            "{e}"
        );
    }
    assert!(q.by_seq.is_empty());
}

#[test]
fn the_queue_is_bounded_and_a_refusal_changes_nothing() {
    let mut q = Builds::default();
    let submit_n = |q: &mut Builds, n: usize| {
        q.apply(&BuildCommand::Submit {
            service: "svc".into(),
            repo: "/srv/git/app".into(),
            commit: format!("{n:040x}"),
            now_ms: 1,
            by: None,
            max_queued: None,
        })
    };
    for n in 0..MAX_QUEUED {
        assert!(submit_n(&mut q, n).is_ok());
    }
    let before = q.clone();
    let e = submit_n(&mut q, MAX_QUEUED).unwrap_err();
    assert_eq!(e, BuildError::QueueFull { max: MAX_QUEUED });
    assert!(e.to_string().contains("queue is full"), "{e}");
    assert_eq!(q, before);
    // A build already queued is still answered: submitting is idempotent.
    assert!(matches!(
        submit_n(&mut q, 7),
        Ok(BuildResponse::Submitted { created: false, .. })
    ));
    // Once a worker takes one, there is room again.
    register(&mut q, "w1");
    acquire(&mut q, "w1", 2).unwrap();
    assert!(submit_n(&mut q, MAX_QUEUED).is_ok());

    // The bound the proposer stamps from the config is the one applied.
    let mut small = Builds::default();
    let stamped = |n: usize| BuildCommand::Submit {
        service: "svc".into(),
        repo: "/srv/git/app".into(),
        commit: format!("{n:040x}"),
        now_ms: 1,
        by: None,
        max_queued: Some(2),
    };
    assert!(small.apply(&stamped(0)).is_ok() && small.apply(&stamped(1)).is_ok());
    assert_eq!(
        small.apply(&stamped(2)).unwrap_err(),
        BuildError::QueueFull { max: 2 }
    );
}

#[test]
fn lease_fencing_refuses_stale_attempts() {
    let mut q = Builds::default();
    register(&mut q, "w1");
    register(&mut q, "w2");
    let id = submit(&mut q, "svc", 0);
    assert!(matches!(
        acquire(&mut q, "w1", 10),
        Ok(BuildResponse::Assigned { attempt: 1, .. })
    ));
    // The lease expires; the build goes to w2 as attempt 2.
    expire_all(&mut q, 10 + LEASE + 1).unwrap();
    assert!(matches!(
        acquire(&mut q, "w2", 4000),
        Ok(BuildResponse::Assigned { attempt: 2, .. })
    ));
    // w1's attempt 1 can neither renew nor complete.
    let renew = q.apply(&BuildCommand::Renew {
        id: id.clone(),
        worker: "w1".into(),
        attempt: 1,
        now_ms: 4001,
        lease_ms: LEASE,
    });
    assert!(matches!(renew, Err(BuildError::Stale { .. })), "{renew:?}");
    assert!(matches!(
        complete(&mut q, &id, "w1", 1, 4002, built("sha256:old")),
        Err(BuildError::Stale { .. })
    ));
    assert!(matches!(
        complete(&mut q, &id, "w2", 1, 4002, built("sha256:old")),
        Err(BuildError::Stale { .. })
    ));
    // w2's attempt 2 decides.
    let done = complete(&mut q, &id, "w2", 2, 4003, built("sha256:new")).unwrap();
    assert_eq!(
        done,
        BuildResponse::State {
            id: id.clone(),
            state: BuildState::Replicating
        }
    );
    let b = q.get(&id).unwrap();
    assert_eq!(b.artifact_digest, Some(digest("sha256:new")));
    // The second region completes it.
    q.apply(&BuildCommand::Replicated {
        id: id.clone(),
        region: "r2".into(),
        now_ms: 5000,
        regions: vec!["r1".into(), "r2".into()],
        bytes_copied: 1,
    })
    .unwrap();
    assert_eq!(q.get(&id).unwrap().state, BuildState::Succeeded);
}

#[test]
fn a_poll_from_a_lease_holder_hands_back_the_same_attempt() {
    // The leader committed the lease and died before its reply reached the worker, which
    // polls again: it gets the same build and attempt back, with a fresh expiry, instead of
    // a second build while the first waits out its lease.
    let mut q = Builds::default();
    register(&mut q, "w1");
    let first = submit(&mut q, "svc", 0);
    let second = submit(&mut q, "other", 0);
    let Ok(BuildResponse::Assigned { id, attempt: 1, .. }) = acquire(&mut q, "w1", 10) else {
        panic!("no assignment");
    };
    assert_eq!(id, first);
    let again = acquire(&mut q, "w1", 2000).unwrap();
    assert_eq!(
        again,
        BuildResponse::Assigned {
            id: first.clone(),
            attempt: 1,
            expires_at_ms: 2000 + LEASE
        }
    );
    let b = q.get(&first).unwrap();
    assert_eq!(b.attempts, 1);
    assert!(
        b.history.last().unwrap().note.contains("again"),
        "{:?}",
        b.history
    );
    assert_eq!(q.get(&second).unwrap().state, BuildState::Queued);
    // Handing it back is a renewal: an expiry of the version before it leaves it alone.
    let before = q.get(&first).unwrap().lease.as_ref().unwrap().version(1);
    assert_eq!(before.renewals, 1);
    // Once that lease has expired, a poll takes the next attempt instead.
    expire_all(&mut q, 2000 + LEASE + 1).unwrap();
    let later = acquire(&mut q, "w1", 2000 + LEASE + 2).unwrap();
    assert!(
        matches!(&later, BuildResponse::Assigned { id, attempt: 2, .. } if *id == first),
        "{later:?}"
    );
}

#[test]
fn expired_leases_fail_the_build_after_max_attempts() {
    let mut q = Builds::default();
    register(&mut q, "w1");
    let id = submit(&mut q, "svc", 0);
    let mut now = 0;
    for attempt in 1..=MAX {
        assert!(
            matches!(acquire(&mut q, "w1", now), Ok(BuildResponse::Assigned { attempt: a, .. }) if a == attempt)
        );
        now += LEASE + 1;
        expire_all(&mut q, now).unwrap();
    }
    let b = q.get(&id).unwrap();
    assert_eq!(b.state, BuildState::Failed);
    assert!(
        b.error
            .as_deref()
            .unwrap_or_default()
            .contains("3 attempts"),
        "{:?}",
        b.error
    );
    assert_eq!(acquire(&mut q, "w1", now), Ok(BuildResponse::NoWork));
}

#[test]
fn a_renewal_committed_after_the_expiry_was_decided_keeps_the_lease() {
    let mut q = Builds::default();
    register(&mut q, "w1");
    let id = submit(&mut q, "svc", 0);
    acquire(&mut q, "w1", 0).unwrap();
    // The leader decided to expire the lease as it saw it...
    let seen: Vec<LeaseVersion> = q.lease_versions().collect();
    assert_eq!(seen[0].renewals, 0);
    // ...and a renewal committed first.
    q.apply(&BuildCommand::Renew {
        id: id.clone(),
        worker: "w1".into(),
        attempt: 1,
        now_ms: 2000,
        lease_ms: LEASE,
    })
    .unwrap();
    let r = q
        .apply(&BuildCommand::ExpireLeases {
            now_ms: 4000,
            max_attempts: MAX,
            leases: seen,
        })
        .unwrap();
    assert_eq!(
        r,
        BuildResponse::Expired {
            requeued: vec![],
            failed: vec![]
        }
    );
    assert_eq!(q.get(&id).unwrap().state, BuildState::Running);
    // The version after the renewal expires, once; naming it twice expires it once.
    let v = q.lease_versions().next().unwrap();
    let r = q
        .apply(&BuildCommand::ExpireLeases {
            now_ms: 5001,
            max_attempts: MAX,
            leases: vec![v, v],
        })
        .unwrap();
    assert_eq!(
        r,
        BuildResponse::Expired {
            requeued: vec![id.clone()],
            failed: vec![]
        }
    );
    assert_eq!(q.get(&id).unwrap().attempts, 1);
}

/// Leaders stamp commands with their own wall clocks, which need not agree. A lease stamped
/// by a leader an hour ahead is renewed by one an hour behind and completed by one a day
/// ahead: no replica takes the stamps for expiry, so the worker keeps its lease throughout.
#[test]
fn skewed_stamps_neither_expire_nor_extend_a_lease() {
    const HOUR: u64 = 3_600_000;
    let t = 10 * 24 * HOUR;
    let mut q = Builds::default();
    register(&mut q, "w1");
    register(&mut q, "w2");
    let id = submit(&mut q, "svc", t);
    acquire(&mut q, "w1", t + HOUR).unwrap();
    // A leader an hour behind renews it: accepted, and its version moves on.
    q.apply(&BuildCommand::Renew {
        id: id.clone(),
        worker: "w1".into(),
        attempt: 1,
        now_ms: t - HOUR,
        lease_ms: LEASE,
    })
    .unwrap();
    // That leader's poll from another worker does not take the build: it is held.
    assert_eq!(acquire(&mut q, "w2", t - HOUR), Ok(BuildResponse::NoWork));
    // A leader a day ahead stamps an expiry that names no lease: nothing expires.
    let r = q
        .apply(&BuildCommand::ExpireLeases {
            now_ms: t + 24 * HOUR,
            max_attempts: MAX,
            leases: vec![],
        })
        .unwrap();
    assert_eq!(
        r,
        BuildResponse::Expired {
            requeued: vec![],
            failed: vec![]
        }
    );
    // The same leader takes w1's result: its stamp is far past the expiry the first leader
    // wrote, and the lease still holds.
    let done = complete(&mut q, &id, "w1", 1, t + 24 * HOUR, built("sha256:ok")).unwrap();
    assert_eq!(
        done,
        BuildResponse::State {
            id,
            state: BuildState::Replicating
        }
    );
}

#[derive(Debug, Clone)]
enum Op {
    Submit(u8),
    Acquire(u8),
    Renew(u8, u8, u32),
    Complete(u8, u8, u32, bool, bool),
    Expire(u8),
    Cancel(u8),
    Tick(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4).prop_map(Op::Submit),
        (0u8..3).prop_map(Op::Acquire),
        (0u8..6, 0u8..3, 0u32..5).prop_map(|(b, w, a)| Op::Renew(b, w, a)),
        (0u8..6, 0u8..3, 0u32..5, any::<bool>(), any::<bool>())
            .prop_map(|(b, w, a, ok, retry)| Op::Complete(b, w, a, ok, retry)),
        any::<u8>().prop_map(Op::Expire),
        (0u8..6).prop_map(Op::Cancel),
        (0u64..2500).prop_map(Op::Tick),
    ]
}

proptest! {
    /// Over random histories: at most one live lease per build and only it can renew or
    /// complete; attempts never exceed the maximum; final states and artifacts never change;
    /// the indexes match the states.
    #[test]
    fn queue_invariants_hold(ops in proptest::collection::vec(op(), 1..120)) {
        let workers = ["w1", "w2", "w3"];
        let mut q = Builds::default();
        for w in workers {
            register(&mut q, w);
        }
        let mut now = 0u64;
        let mut finals: BTreeMap<u64, (BuildState, Option<Digest>)> = BTreeMap::new();
        for op in ops {
            let before = q.clone();
            let result = match &op {
                Op::Submit(s) => q.apply(&BuildCommand::Submit {
                    service: format!("s{s}"), repo: "/r".into(), commit: COMMIT.into(), now_ms: now, by: None, max_queued: None }),
                Op::Acquire(w) => acquire(&mut q, workers[*w as usize], now),
                Op::Renew(b, w, a) => q.apply(&BuildCommand::Renew {
                    id: build_id(*b as u64), worker: workers[*w as usize].into(), attempt: *a, now_ms: now, lease_ms: LEASE }),
                Op::Complete(b, w, a, ok, retry) => {
                    let outcome = if *ok { built(&format!("d{b}-{a}")) } else { Outcome::Failed { error: "x".into(), retry: *retry } };
                    complete(&mut q, &build_id(*b as u64), workers[*w as usize], *a, now, outcome)
                }
                // Some of the running leases, at their versions, or one version behind.
                Op::Expire(pick) => {
                    let leases = q.lease_versions().enumerate()
                        .filter(|(i, _)| pick & (1 << (i % 4)) != 0)
                        .map(|(i, v)| if pick & 0x80 != 0 && i % 2 == 0 { LeaseVersion { renewals: v.renewals.wrapping_sub(1), ..v } } else { v })
                        .collect();
                    q.apply(&BuildCommand::ExpireLeases { now_ms: now, max_attempts: MAX, leases })
                }
                Op::Cancel(b) => q.apply(&BuildCommand::Cancel { id: build_id(*b as u64), now_ms: now, by: None }),
                Op::Tick(d) => { now += d; Ok(BuildResponse::NoWork) }
            };
            // A renewal or completion is accepted only from the live lease holder.
            if let (Op::Renew(b, w, a) | Op::Complete(b, w, a, _, _), Ok(_)) = (&op, &result) {
                let held = before.by_seq.get(&(*b as u64)).and_then(|x| x.lease.clone());
                let held = held.filter(|l| l.worker == workers[*w as usize] && l.attempt == *a);
                prop_assert!(held.is_some(), "{op:?} accepted without the live lease");
            }
            // A refused command changes nothing.
            if result.is_err() {
                prop_assert_eq!(&q, &before);
            }
            // A worker holds at most one live lease: a poll re-delivers the one it holds.
            for w in workers {
                let live = q.by_seq.values().filter(|b| b.lease.as_ref()
                    .is_some_and(|l| l.worker == w)).count();
                prop_assert!(live <= 1, "{} holds {} live leases", w, live);
            }
            for (seq, b) in &q.by_seq {
                prop_assert!(b.attempts <= MAX, "{} attempts", b.attempts);
                prop_assert_eq!(b.lease.is_some(), b.state == BuildState::Running, "{:?}", b);
                prop_assert_eq!(q.queued.contains(seq), b.state == BuildState::Queued);
                prop_assert_eq!(q.running.contains(seq), b.state == BuildState::Running);
                if let Some((state, d)) = finals.get(seq) {
                    prop_assert_eq!(*state, b.state, "a final state changed");
                    prop_assert_eq!(d, &b.artifact_digest);
                }
                if b.state.is_final() {
                    finals.insert(*seq, (b.state, b.artifact_digest));
                }
            }
        }
    }
}

#[test]
fn an_unreachable_region_fails_the_build_naming_it() {
    let mut q = Builds::default();
    register(&mut q, "w1");
    let id = submit(&mut q, "svc", 0);
    acquire(&mut q, "w1", 1).unwrap();
    complete(&mut q, &id, "w1", 1, 2, built("sha256:d")).unwrap();
    let r = q.apply(&BuildCommand::ReplicationFailed {
        id: id.clone(),
        region: "r2".into(),
        error: "connection refused".into(),
        now_ms: 3,
    });
    assert_eq!(
        r,
        Ok(BuildResponse::State {
            id: id.clone(),
            state: BuildState::Failed
        })
    );
    let b = q.get(&id).unwrap();
    assert!(
        b.error.as_deref().unwrap_or_default().contains("region r2"),
        "{:?}",
        b.error
    );
    // A late success report for that region changes nothing.
    let late = q.apply(&BuildCommand::Replicated {
        id,
        region: "r2".into(),
        now_ms: 4,
        regions: vec!["r1".into(), "r2".into()],
        bytes_copied: 1,
    });
    assert!(matches!(late, Err(BuildError::WrongState { .. })));
}

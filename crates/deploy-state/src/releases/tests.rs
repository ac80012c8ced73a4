use super::*;
use crate::builds::{BuildCommand, Outcome};
use deploy_types::Digest;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const REGIONS: [&str; 3] = ["r1", "r2", "r3"];

fn regions(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// A build of `service` that went all the way to SUCCEEDED (or stopped RUNNING).
fn build(q: &mut Builds, service: &str, succeed: bool) -> String {
    let ok = |r: Result<_, _>| r.expect("build command");
    let id = match ok(q.apply(&BuildCommand::Submit {
        service: service.into(),
        repo: "/srv/git/app".into(),
        commit: COMMIT.into(),
        now_ms: 1,
        by: None,
        max_queued: None,
    })) {
        crate::BuildResponse::Submitted { id, .. } => id,
        other => panic!("{other:?}"),
    };
    ok(q.apply(&BuildCommand::RegisterWorker {
        worker: "w".into(),
        region: "r1".into(),
        now_ms: 1,
    }));
    ok(q.apply(&BuildCommand::Acquire {
        worker: "w".into(),
        now_ms: 2,
        lease_ms: 1000,
    }));
    if !succeed {
        return id;
    }
    ok(q.apply(&BuildCommand::Complete {
        id: id.clone(),
        worker: "w".into(),
        attempt: 1,
        now_ms: 3,
        outcome: Outcome::Built {
            artifact_digest: Digest::of(service.as_bytes()),
            artifact_size: 1,
        },
        regions: regions(&["r1"]),
        max_attempts: 3,
    }));
    id
}

fn create(
    q: &mut Releases,
    b: &Builds,
    build_id: &str,
    service: &str,
    strategy: Strategy,
) -> Result<ReleaseResponse, ReleaseError> {
    q.apply(
        b,
        &ReleaseCommand::Create {
            service: service.into(),
            build_id: build_id.into(),
            regions: regions(&REGIONS),
            strategy,
            by: "alice".into(),
            now_ms: 10,
            known_regions: regions(&REGIONS),
            request_id: None,
        },
    )
}

fn report(
    q: &mut Releases,
    b: &Builds,
    id: &str,
    region: &str,
    state: ReleaseState,
) -> Result<ReleaseResponse, ReleaseError> {
    q.apply(
        b,
        &ReleaseCommand::Report {
            id: id.into(),
            region: region.into(),
            progress: RegionProgress {
                state: Some(state),
                reason: if state == ReleaseState::Succeeded {
                    String::new()
                } else {
                    "2 of 4 hosts failed".into()
                },
                ..Default::default()
            },
            now_ms: 20,
        },
    )
}

fn act(
    q: &mut Releases,
    b: &Builds,
    id: &str,
    action: Action,
) -> Result<ReleaseResponse, ReleaseError> {
    act_as(q, b, id, action, None)
}

/// `act`, as the call with request id `rid`.
fn act_as(
    q: &mut Releases,
    b: &Builds,
    id: &str,
    action: Action,
    rid: Option<&str>,
) -> Result<ReleaseResponse, ReleaseError> {
    q.apply(
        b,
        &ReleaseCommand::Act {
            id: id.into(),
            action,
            by: "bob".into(),
            reason: String::new(),
            now_ms: 30,
            request_id: rid.map(Into::into),
        },
    )
}

/// The kinds of the decisions addressed to `region`.
fn told(q: &Releases, region: &str) -> Vec<String> {
    let (ds, _) = q.decisions_for(region, 0, 1000).unwrap();
    ds.iter()
        .map(|d| match &d.kind {
            DecisionKind::Start { .. } => format!("{} start", d.release),
            DecisionKind::Act(a) => format!("{} {}", d.release, a.as_str()),
            DecisionKind::Token(_) => format!("{} token", d.release),
        })
        .collect()
}

#[test]
fn only_a_succeeded_build_of_the_service_to_known_regions_is_released() {
    let mut b = Builds::default();
    let running = build(&mut b, "web", false);
    let mut q = Releases::default();
    let e = create(&mut q, &b, &running, "web", Strategy::default()).unwrap_err();
    assert!(e.to_string().contains("not SUCCEEDED"), "{e}");
    assert!(create(&mut q, &b, "b-99", "web", Strategy::default()).is_err());
    let mut b = Builds::default();
    let ok = build(&mut b, "web", true);
    let e = create(&mut q, &b, &ok, "api", Strategy::default()).unwrap_err();
    assert!(
        matches!(&e, ReleaseError::Invalid { field, .. } if field == "service"),
        "{e}"
    );
    let e = q
        .apply(
            &b,
            &ReleaseCommand::Create {
                service: "web".into(),
                build_id: ok.clone(),
                regions: regions(&["r1", "mars"]),
                strategy: Strategy::default(),
                by: "alice".into(),
                now_ms: 1,
                known_regions: regions(&REGIONS),
                request_id: None,
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("mars"), "{e}");
    let bad = Strategy {
        waves: vec![50, 20],
        ..Strategy::default()
    };
    let e = create(&mut q, &b, &ok, "web", bad).unwrap_err();
    assert!(
        matches!(&e, ReleaseError::Invalid { field, .. } if field == "waves"),
        "{e}"
    );
    assert_eq!(q, Releases::default(), "refusals change nothing");
}

#[test]
fn regions_start_in_order_so_many_at_once_and_the_release_succeeds_with_all() {
    let mut b = Builds::default();
    let bid = build(&mut b, "web", true);
    let mut q = Releases::default();
    let strategy = Strategy {
        regions_at_once: 2,
        ..Strategy::default()
    };
    let ReleaseResponse::Created {
        id,
        superseded: None,
    } = create(&mut q, &b, &bid, "web", strategy).unwrap()
    else {
        panic!()
    };
    assert_eq!(told(&q, "r1"), [format!("{id} start")]);
    assert_eq!(told(&q, "r2"), [format!("{id} start")]);
    assert!(told(&q, "r3").is_empty(), "only two regions at once");
    report(&mut q, &b, &id, "r2", ReleaseState::RollingOut).unwrap();
    report(&mut q, &b, &id, "r2", ReleaseState::Succeeded).unwrap();
    assert_eq!(told(&q, "r3"), [format!("{id} start")]);
    assert!(report(&mut q, &b, &id, "r9", ReleaseState::Succeeded).is_err());
    report(&mut q, &b, &id, "r1", ReleaseState::Succeeded).unwrap();
    assert_eq!(q.get(&id).unwrap().state, ReleaseState::RollingOut);
    report(&mut q, &b, &id, "r3", ReleaseState::Succeeded).unwrap();
    let r = q.get(&id).unwrap().clone();
    assert_eq!(r.state, ReleaseState::Succeeded);
    assert!(r.finished_at_ms.is_some());
    assert!(q.active.is_empty());
    // A final report never changes.
    report(&mut q, &b, &id, "r3", ReleaseState::Failed).unwrap();
    assert_eq!(
        q.get(&id).unwrap().progress["r3"].state(),
        ReleaseState::Succeeded
    );
    assert!(r
        .history
        .iter()
        .any(|e| e.by == "alice" && e.what.starts_with("created")));
}

#[test]
fn a_failed_region_stops_the_others_and_rolls_them_back() {
    let mut b = Builds::default();
    let bid = build(&mut b, "web", true);
    let mut q = Releases::default();
    let strategy = Strategy {
        regions_at_once: 3,
        ..Strategy::default()
    };
    let ReleaseResponse::Created { id, .. } = create(&mut q, &b, &bid, "web", strategy).unwrap()
    else {
        panic!()
    };
    report(&mut q, &b, &id, "r1", ReleaseState::Succeeded).unwrap();
    report(&mut q, &b, &id, "r2", ReleaseState::RolledBack).unwrap();
    let r = q.get(&id).unwrap();
    assert_eq!(r.state, ReleaseState::RolledBack);
    assert!(r.reason.contains("r2"), "{}", r.reason);
    assert_eq!(
        told(&q, "r3"),
        [format!("{id} start"), format!("{id} rollback")]
    );
    assert_eq!(
        told(&q, "r1"),
        [format!("{id} start")],
        "a finished region is left alone"
    );
    assert_eq!(told(&q, "r2"), [format!("{id} start")]);
}

#[test]
fn a_new_release_supersedes_the_rolling_one() {
    let mut b = Builds::default();
    let bid = build(&mut b, "web", true);
    let mut q = Releases::default();
    let ReleaseResponse::Created { id: first, .. } =
        create(&mut q, &b, &bid, "web", Strategy::default()).unwrap()
    else {
        panic!()
    };
    let ReleaseResponse::Created {
        id: second,
        superseded,
    } = create(&mut q, &b, &bid, "web", Strategy::default()).unwrap()
    else {
        panic!()
    };
    assert_eq!(superseded.as_deref(), Some(first.as_str()));
    let old = q.get(&first).unwrap();
    assert_eq!(old.state, ReleaseState::Aborted);
    assert_eq!(old.superseded_by.as_deref(), Some(second.as_str()));
    assert_eq!(
        told(&q, "r1"),
        [
            format!("{first} start"),
            format!("{first} abort"),
            format!("{second} start")
        ]
    );
    assert_eq!(q.active.get("web"), parse_release_id(&second).as_ref());
}

#[test]
fn operator_actions_are_checked_recorded_and_sent_to_active_regions() {
    let mut b = Builds::default();
    let bid = build(&mut b, "web", true);
    let mut q = Releases::default();
    let ReleaseResponse::Created { id, .. } =
        create(&mut q, &b, &bid, "web", Strategy::default()).unwrap()
    else {
        panic!()
    };
    assert!(act(&mut q, &b, &id, Action::Resume).is_err(), "not paused");
    act(&mut q, &b, &id, Action::Pause).unwrap();
    assert_eq!(q.get(&id).unwrap().state, ReleaseState::Paused);
    // r1 finishes while paused: r2 waits for the resume.
    report(&mut q, &b, &id, "r1", ReleaseState::Succeeded).unwrap();
    assert!(told(&q, "r2").is_empty());
    act(&mut q, &b, &id, Action::Resume).unwrap();
    assert_eq!(told(&q, "r2"), [format!("{id} start")]);
    act(&mut q, &b, &id, Action::Promote).unwrap();
    assert_eq!(
        told(&q, "r2"),
        [format!("{id} start"), format!("{id} promote")]
    );
    act(&mut q, &b, &id, Action::Abort).unwrap();
    assert_eq!(q.get(&id).unwrap().state, ReleaseState::Aborted);
    let e = act(&mut q, &b, &id, Action::Pause).unwrap_err();
    assert!(matches!(e, ReleaseError::WrongState { .. }), "{e}");
    assert_eq!(
        told(&q, "r1"),
        [format!("{id} start"), format!("{id} pause")],
        "r1 had finished when the abort came"
    );
    let who: Vec<&str> = q
        .get(&id)
        .unwrap()
        .history
        .iter()
        .map(|e| e.by.as_str())
        .collect();
    assert!(who.contains(&"bob") && who.contains(&"alice"), "{who:?}");
}

#[test]
fn the_newest_succeeded_release_can_be_rolled_back_and_older_ones_cannot() {
    let mut b = Builds::default();
    let bid = build(&mut b, "web", true);
    let mut q = Releases::default();
    let single = |q: &mut Releases, b: &Builds| {
        let r = q.apply(
            b,
            &ReleaseCommand::Create {
                service: "web".into(),
                build_id: bid.clone(),
                regions: regions(&["r1"]),
                strategy: Strategy::default(),
                by: "alice".into(),
                now_ms: 1,
                known_regions: regions(&REGIONS),
                request_id: None,
            },
        );
        let Ok(ReleaseResponse::Created { id, .. }) = r else {
            panic!("{r:?}")
        };
        report(q, b, &id, "r1", ReleaseState::Succeeded).unwrap();
        id
    };
    let old = single(&mut q, &b);
    let new = single(&mut q, &b);
    assert!(act(&mut q, &b, &old, Action::Rollback).is_err());
    act(&mut q, &b, &new, Action::Rollback).unwrap();
    assert_eq!(q.get(&new).unwrap().state, ReleaseState::RolledBack);
    assert_eq!(told(&q, "r1").last().unwrap(), &format!("{new} rollback"));
}

#[test]
fn pulls_page_in_order_and_say_how_far_they_reach() {
    let mut b = Builds::default();
    let bid = build(&mut b, "web", true);
    let mut q = Releases::default();
    for _ in 0..5 {
        create(&mut q, &b, &bid, "web", Strategy::default()).unwrap();
    }
    // r1 gets start, abort, start, abort, ... : 9 decisions, numbered 1..=9.
    let (page, upto) = q.decisions_for("r1", 0, 4).unwrap();
    assert_eq!(page.iter().map(|d| d.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(upto, 4);
    let (rest, upto) = q.decisions_for("r1", upto, 100).unwrap();
    assert_eq!(rest.len(), 5);
    assert_eq!(upto, q.last_decision);
    let (none, upto2) = q.decisions_for("r2", 0, 100).unwrap();
    assert!(none.is_empty(), "regions_at_once is 1");
    assert_eq!(upto2, q.last_decision, "a region skips what is not its own");
    assert!(parse_release_id("r-1").is_some());
    for bad in ["r-", "r-x", "b-1", "r--1", "r-99999999999999999999"] {
        assert_eq!(parse_release_id(bad), None, "{bad}");
    }
}

#[test]
fn retention_keeps_what_hosts_run_or_may_return_to() {
    let mut b = Builds::default();
    let web = build(&mut b, "web", true);
    let api = build(&mut b, "api", true);
    let mut q = Releases::default();
    for _ in 0..4 {
        create(&mut q, &b, &web, "web", Strategy::default()).unwrap();
    }
    create(&mut q, &b, &api, "api", Strategy::default()).unwrap();
    let kept = q.referenced_artifacts(3);
    assert!(
        kept.contains(&Digest::of(b"web")) && kept.contains(&Digest::of(b"api")),
        "{kept:?}"
    );
    assert_eq!(kept.len(), 2);
    assert!(Releases::default().referenced_artifacts(3).is_empty());
}

fn create_with(
    q: &mut Releases,
    b: &Builds,
    build_id: &str,
    rid: &str,
) -> Result<ReleaseResponse, ReleaseError> {
    q.apply(
        b,
        &ReleaseCommand::Create {
            service: "web".into(),
            build_id: build_id.into(),
            regions: regions(&REGIONS),
            strategy: Strategy::default(),
            by: "alice".into(),
            now_ms: 10,
            known_regions: regions(&REGIONS),
            request_id: Some(rid.into()),
        },
    )
}

#[test]
fn a_repeated_call_makes_one_release_and_acts_once() {
    let mut b = Builds::default();
    let ok = build(&mut b, "web", true);
    let mut q = Releases::default();
    let first = create_with(&mut q, &b, &ok, "req-1").unwrap();
    let again = create_with(&mut q, &b, &ok, "req-1").unwrap();
    assert_eq!(first, again, "the repeat answers what the first made");
    assert_eq!(q.by_seq.len(), 1, "and makes nothing");
    let ReleaseResponse::Created { id, .. } = first else {
        panic!("{first:?}")
    };
    act_as(&mut q, &b, &id, Action::Pause, Some("req-2")).unwrap();
    let events = q.get(&id).unwrap().history.len();
    let repeat = act_as(&mut q, &b, &id, Action::Pause, Some("req-2")).unwrap();
    assert_eq!(
        repeat,
        ReleaseResponse::State {
            id: id.clone(),
            state: ReleaseState::Paused
        },
        "a repeated pause is not refused as 'already paused'"
    );
    assert_eq!(
        q.get(&id).unwrap().history.len(),
        events,
        "nor recorded twice"
    );
    // A new call with its own id is a new call.
    create_with(&mut q, &b, &ok, "req-3").unwrap();
    assert_eq!(q.by_seq.len(), 2);
    // One id cannot act on two releases, nor be malformed.
    assert!(act_as(&mut q, &b, "r-2", Action::Pause, Some("req-2")).is_err());
    assert!(create_with(&mut q, &b, &ok, "").is_err());
    assert!(create_with(&mut q, &b, &ok, &"x".repeat(65)).is_err());
    assert!(create_with(&mut q, &b, &ok, "a b").is_err());
}

#[test]
fn request_ids_older_than_the_policy_are_collected_oldest_first() {
    let mut q = Releases::default();
    for (i, at) in [10u64, 20, 30].into_iter().enumerate() {
        q.remember(&Some(format!("id-{i}")), i as u64, at);
    }
    assert_eq!(q.requests_collectable(25, 10), 2);
    assert_eq!(q.requests_collectable(25, 1), 1);
    assert_eq!(q.collect_requests(25, 1), 1);
    assert!(!q.requests.ids.contains_key("id-0"));
    assert_eq!(q.collect_requests(25, 10), 1);
    assert_eq!(q.collect_requests(25, 10), 0);
    assert_eq!(q.requests.ids.keys().collect::<Vec<_>>(), ["id-2"]);
    assert_eq!(q.requests.order.len(), 1);
}

#[test]
fn request_ids_are_forgotten_oldest_first_beyond_the_bound() {
    let mut q = Releases::default();
    for i in 0..(MAX_REQUESTS_KEPT + 5) as u64 {
        q.remember(&Some(format!("id-{i}")), i, i);
    }
    assert_eq!(q.requests.ids.len(), MAX_REQUESTS_KEPT);
    assert_eq!(q.requests.order.len(), MAX_REQUESTS_KEPT);
    assert!(!q.requests.ids.contains_key("id-0"));
    assert!(q
        .requests
        .ids
        .contains_key(&format!("id-{}", MAX_REQUESTS_KEPT + 4)));
}

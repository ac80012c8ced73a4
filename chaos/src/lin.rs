//! Linearizability of the build and release API, checked with `todc-utils`' WGL checker.
//!
//! Linearizability is local: a history is linearizable if and only if each object's is, so
//! every object is checked on its own, which keeps each search small. The objects:
//!
//! - each **build** and each **release**, observed through every answer that carries it
//!   (`SubmitBuild`, `GetBuild`; `CreateRelease`, `ReleaseAction`, `GetRelease`). Their
//!   histories (transitions, decisions) are append-only, and the cluster also moves them on
//!   its own (workers, regions), so the sequential model accepts any observation that
//!   extends the previous one and refuses one that goes back, forks, or changes what it
//!   already said (a stale read, a lost write, a split brain). "Does not exist" is valid only
//!   before the object was seen;
//! - each **submission key** (service, repo, commit): `SubmitBuild` must answer the build the
//!   key already has (`created = false`), or a new one (`created = true`) only while there is
//!   none or the previous one ended FAILED or CANCELLED.
//!
//! Calls whose outcome is unknown constrain nothing and are left out; their effects, if any,
//! show up in later observations, which the model allows. Each object's history is cut where
//! no call is in flight, and each piece is checked from the state the previous one ended in,
//! which is unique in these models (the longest observation).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;
use todc_utils::linearizability::history::{Action, History};
use todc_utils::{Specification, WGLChecker};

use crate::history::{BuildObs, Op, OpKind, Outcome, ReleaseObs};

const BUILD_HISTORY_CAP: usize = 32;
const RELEASE_HISTORY_CAP: usize = 200;

/// `new` extends `old`: it is `old` plus entries, after dropping entries from the front when
/// the list is at its cap (at least one entry of `old` must remain, to line the two up).
pub fn extends<T: PartialEq>(old: &[T], new: &[T], cap: usize) -> bool {
    if new.len() >= old.len() && new[..old.len()] == *old {
        return true;
    }
    if old.len() < cap && new.len() < cap {
        return false;
    }
    (1..old.len()).any(|k| new.len() >= old.len() - k && new[..old.len() - k] == old[k..])
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum View {
    Build(BuildObs),
    Release(ReleaseObs),
}

impl View {
    fn len(&self) -> usize {
        match self {
            View::Build(b) => b.history.len(),
            View::Release(r) => r.history.len(),
        }
    }

    /// Whether `self` may be seen after `old`.
    fn follows(&self, old: &View) -> bool {
        match (old, self) {
            (View::Build(a), View::Build(b)) => {
                let same = (&a.id, &a.service, &a.repo, &a.commit)
                    == (&b.id, &b.service, &b.repo, &b.commit);
                let grows = extends(&a.history, &b.history, BUILD_HISTORY_CAP);
                let steady = a.history != b.history || (a.state == b.state && a.digest == b.digest);
                let digest = a.digest.is_empty() || a.digest == b.digest;
                same && grows && steady && digest
            }
            (View::Release(a), View::Release(b)) => {
                let same = (&a.id, &a.build, &a.created_by) == (&b.id, &b.build, &b.created_by);
                let grows = extends(&a.history, &b.history, RELEASE_HISTORY_CAP);
                let steady = a.history != b.history || a.state == b.state;
                same && grows && steady
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub enum ObjOp {
    /// The state the previous piece of this object's history ended in.
    Seed(Option<View>),
    /// `None`: the object did not exist.
    Read(Option<View>),
}

pub struct ObjectSpec;

impl Specification for ObjectSpec {
    type State = Option<View>;
    type Operation = ObjOp;

    fn init() -> Self::State {
        None
    }

    fn apply(op: &ObjOp, state: &Option<View>) -> (bool, Option<View>) {
        match (op, state) {
            (ObjOp::Seed(v), None) => (true, v.clone()),
            (ObjOp::Seed(_), Some(_)) => (false, state.clone()),
            (ObjOp::Read(None), s) => (s.is_none(), s.clone()),
            (ObjOp::Read(Some(v)), None) => (true, Some(v.clone())),
            (ObjOp::Read(Some(v)), Some(old)) => (v.follows(old), Some(v.clone())),
        }
    }
}

/// A key's builds: the current one, and every earlier one.
pub type KeyState = (Option<String>, BTreeSet<String>);

#[derive(Debug, Clone)]
pub enum KeyOp {
    Seed(KeyState),
    Submit {
        id: String,
        created: bool,
        /// Builds known to have ended FAILED or CANCELLED: a key may get a new build after.
        dead: Arc<BTreeSet<String>>,
    },
}

pub struct KeySpec;

impl Specification for KeySpec {
    type State = KeyState;
    type Operation = KeyOp;

    fn init() -> KeyState {
        (None, BTreeSet::new())
    }

    fn apply(op: &KeyOp, (cur, earlier): &KeyState) -> (bool, KeyState) {
        match op {
            KeyOp::Seed(s) => (cur.is_none() && earlier.is_empty(), s.clone()),
            KeyOp::Submit {
                id, created: false, ..
            } => {
                // An existing build: the current one (or, with none seen yet, one whose
                // creating call's answer was lost).
                let ok = cur.as_ref() == Some(id) || (cur.is_none() && !earlier.contains(id));
                (ok, (Some(id.clone()), earlier.clone()))
            }
            KeyOp::Submit {
                id,
                created: true,
                dead,
            } => {
                let fresh = cur.as_ref() != Some(id) && !earlier.contains(id);
                let allowed = cur.as_ref().is_none_or(|c| dead.contains(c));
                let mut e = earlier.clone();
                e.extend(cur.clone());
                (fresh && allowed, (Some(id.clone()), e))
            }
        }
    }
}

/// One call of one object's history.
#[derive(Debug, Clone)]
struct Call<O> {
    op: u64,
    start: u64,
    end: u64,
    what: O,
}

/// Splits calls (sorted by start) where none is in flight.
fn pieces<O: Clone>(mut calls: Vec<Call<O>>) -> Vec<Vec<Call<O>>> {
    calls.sort_by_key(|c| (c.start, c.end));
    let mut out: Vec<Vec<Call<O>>> = Vec::new();
    let mut reach = 0u64;
    for c in calls {
        if out.is_empty() || c.start > reach {
            out.push(Vec::new());
        }
        reach = reach.max(c.end);
        if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    out
}

/// The WGL check of one piece, `seed` first (it completes before anything else starts).
///
/// Events are ordered by time; at one instant a return comes before a call, so a call that
/// began the moment another returned is ordered after it. That is sound: a return is recorded
/// after the answer arrived and a call before the request leaves.
fn check<S: Specification>(seed: S::Operation, calls: &[Call<S::Operation>]) -> bool {
    const CALL: u8 = 1;
    const RETURN: u8 = 0;
    let mut events: Vec<(u64, u8, usize, Action<S::Operation>)> = Vec::new();
    events.push((0, CALL, 0, Action::Call(seed.clone())));
    events.push((1, RETURN, 0, Action::Response(seed)));
    for (i, c) in calls.iter().enumerate() {
        let start = c.start + 2;
        let end = c.end.max(c.start + 1) + 2;
        events.push((start, CALL, i + 1, Action::Call(c.what.clone())));
        events.push((end, RETURN, i + 1, Action::Response(c.what.clone())));
    }
    events.sort_by_key(|(t, kind, p, _)| (*t, *kind, *p));
    let actions = events.into_iter().map(|(_, _, p, a)| (p, a)).collect();
    WGLChecker::<S>::is_linearizable(History::from_actions(actions))
}

/// A failed object, with the calls of the first piece that does not linearize.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub object: String,
    pub detail: String,
    pub ops: Vec<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LinReport {
    pub objects: usize,
    pub calls: usize,
    pub failures: Vec<Failure>,
}

/// Why a piece of an object's history fails, in words: the first call that saw less, or
/// something else, than a call that had returned before it began.
fn explain(calls: &[Call<ObjOp>], ops: &BTreeMap<u64, &Op>) -> String {
    let view = |c: &Call<ObjOp>| match &c.what {
        ObjOp::Read(v) | ObjOp::Seed(v) => v.clone(),
    };
    let show = |c: &Call<ObjOp>| {
        let via = ops.get(&c.op).map(|o| o.via.as_str()).unwrap_or("?");
        let what = match view(c) {
            None => "nothing (does not exist)".to_string(),
            Some(v) => format!("{} entries of history", v.len()),
        };
        format!(
            "op {} via {via} ({:.3}-{:.3} s) saw {what}",
            c.op,
            c.start as f64 / 1e6,
            c.end as f64 / 1e6
        )
    };
    for a in calls {
        for b in calls {
            if a.end >= b.start {
                continue;
            }
            let ok = match (view(a), view(b)) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(x), Some(y)) => y.follows(&x),
            };
            if !ok {
                return format!("{}, but later {}", show(a), show(b));
            }
        }
    }
    "no single pair explains it; several calls overlap".into()
}

/// Checks every object of `history`. `dead` are the builds that ended FAILED or CANCELLED.
pub fn check_history(history: &[Op], dead: &BTreeSet<String>) -> LinReport {
    let by_id: BTreeMap<u64, &Op> = history.iter().map(|o| (o.id, o)).collect();
    let mut objects: BTreeMap<String, Vec<Call<ObjOp>>> = BTreeMap::new();
    let mut keys: BTreeMap<String, Vec<Call<KeyOp>>> = BTreeMap::new();
    let dead = Arc::new(dead.clone());
    for op in history {
        let call = |what| Call {
            op: op.id,
            start: op.start_us,
            end: op.end_us,
            what,
        };
        match (&op.kind, &op.outcome) {
            (_, Outcome::Build(b)) => {
                objects
                    .entry(format!("build {}", b.id))
                    .or_default()
                    .push(call(ObjOp::Read(Some(View::Build(b.clone())))));
                if let OpKind::SubmitBuild { commit } = &op.kind {
                    keys.entry(format!("key {commit}")).or_default().push(Call {
                        op: op.id,
                        start: op.start_us,
                        end: op.end_us,
                        what: KeyOp::Submit {
                            id: b.id.clone(),
                            created: b.created,
                            dead: dead.clone(),
                        },
                    });
                }
            }
            (_, Outcome::Release(r)) => objects
                .entry(format!("release {}", r.id))
                .or_default()
                .push(call(ObjOp::Read(Some(View::Release(r.clone()))))),
            // A list reads each object it shows, somewhere within the call.
            (_, Outcome::Builds { builds }) => {
                for b in builds {
                    objects
                        .entry(format!("build {}", b.id))
                        .or_default()
                        .push(call(ObjOp::Read(Some(View::Build(b.clone())))));
                }
            }
            (_, Outcome::Releases { releases }) => {
                for r in releases {
                    objects
                        .entry(format!("release {}", r.id))
                        .or_default()
                        .push(call(ObjOp::Read(Some(View::Release(r.clone())))));
                }
            }
            (OpKind::GetBuild { id }, o) if o.not_found() => objects
                .entry(format!("build {id}"))
                .or_default()
                .push(call(ObjOp::Read(None))),
            (OpKind::GetRelease { id }, o) if o.not_found() => objects
                .entry(format!("release {id}"))
                .or_default()
                .push(call(ObjOp::Read(None))),
            _ => {}
        }
    }
    let mut report = LinReport::default();
    for (name, calls) in objects {
        report.objects += 1;
        report.calls += calls.len();
        let mut seed: Option<View> = None;
        for piece in pieces(calls) {
            if !check::<ObjectSpec>(ObjOp::Seed(seed.clone()), &piece) {
                report.failures.push(Failure {
                    object: name.clone(),
                    detail: explain(&piece, &by_id),
                    ops: piece.iter().map(|c| c.op).collect(),
                });
                break;
            }
            let longest = piece
                .iter()
                .filter_map(|c| match &c.what {
                    ObjOp::Read(Some(v)) => Some(v.clone()),
                    _ => None,
                })
                .max_by_key(View::len);
            if longest.is_some() {
                seed = longest;
            }
        }
    }
    for (name, calls) in keys {
        report.objects += 1;
        report.calls += calls.len();
        let mut seed: KeyState = (None, BTreeSet::new());
        for piece in pieces(calls) {
            if !check::<KeySpec>(KeyOp::Seed(seed.clone()), &piece) {
                let ids: Vec<String> = piece
                    .iter()
                    .map(|c| match &c.what {
                        KeyOp::Submit { id, created, .. } => {
                            format!(
                                "op {} -> {id}{}",
                                c.op,
                                if *created { " (new)" } else { "" }
                            )
                        }
                        KeyOp::Seed(_) => String::new(),
                    })
                    .collect();
                report.failures.push(Failure {
                    object: name.clone(),
                    detail: format!(
                        "submissions of one commit were answered with builds no sequential order explains: {}",
                        ids.join(", ")
                    ),
                    ops: piece.iter().map(|c| c.op).collect(),
                });
                break;
            }
            let seq = |id: &str| id.trim_start_matches("b-").parse::<u64>().unwrap_or(0);
            let mut all: BTreeSet<String> = seed.1.clone();
            all.extend(seed.0.clone());
            for c in &piece {
                if let KeyOp::Submit { id, .. } = &c.what {
                    all.insert(id.clone());
                }
            }
            let cur = all.iter().max_by_key(|id| seq(id)).cloned();
            if let Some(c) = &cur {
                all.remove(c);
            }
            seed = (cur, all);
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(history: &[&str], state: &str) -> View {
        View::Release(ReleaseObs {
            id: "r-1".into(),
            build: "b-1".into(),
            state: state.into(),
            created_by: "t".into(),
            history: history
                .iter()
                .enumerate()
                .map(|(i, w)| (i as u64, "t".to_string(), w.to_string()))
                .collect(),
        })
    }

    fn read(op: u64, start: u64, end: u64, v: Option<View>) -> Call<ObjOp> {
        Call {
            op,
            start,
            end,
            what: ObjOp::Read(v),
        }
    }

    fn linearizable(calls: Vec<Call<ObjOp>>) -> bool {
        let mut seed = None;
        for p in pieces(calls) {
            if !check::<ObjectSpec>(ObjOp::Seed(seed.clone()), &p) {
                return false;
            }
            seed = p
                .iter()
                .filter_map(|c| match &c.what {
                    ObjOp::Read(Some(v)) => Some(v.clone()),
                    _ => None,
                })
                .max_by_key(View::len)
                .or(seed);
        }
        true
    }

    #[test]
    fn growing_observations_linearize_even_when_they_overlap() {
        let a = rel(&["created"], "ROLLING_OUT");
        let b = rel(&["created", "pause"], "PAUSED");
        let c = rel(&["created", "pause", "resume"], "ROLLING_OUT");
        assert!(linearizable(vec![
            read(1, 0, 10, Some(a.clone())),
            read(2, 20, 30, Some(b.clone())),
            read(3, 40, 50, Some(c.clone())),
        ]));
        // Overlapping calls may take effect in either order.
        assert!(linearizable(vec![
            read(1, 0, 100, Some(c)),
            read(2, 10, 20, Some(a)),
            read(3, 30, 40, Some(b)),
        ]));
    }

    #[test]
    fn a_stale_read_after_a_newer_one_returned_is_refused() {
        let a = rel(&["created"], "ROLLING_OUT");
        let b = rel(&["created", "pause"], "PAUSED");
        assert!(!linearizable(vec![
            read(1, 0, 10, Some(b)),
            read(2, 20, 30, Some(a)),
        ]));
    }

    #[test]
    fn forks_changed_facts_and_vanishing_objects_are_refused() {
        let a = rel(&["created", "pause"], "PAUSED");
        let fork = rel(&["created", "abort"], "ABORTED");
        assert!(!linearizable(vec![
            read(1, 0, 10, Some(a.clone())),
            read(2, 20, 30, Some(fork)),
        ]));
        let changed = rel(&["created", "pause"], "ROLLING_OUT");
        assert!(!linearizable(vec![
            read(1, 0, 10, Some(a.clone())),
            read(2, 20, 30, Some(changed)),
        ]));
        assert!(!linearizable(vec![
            read(1, 0, 10, Some(a.clone())),
            read(2, 20, 30, None)
        ]));
        // Not existing yet, then existing, is fine.
        assert!(linearizable(vec![
            read(1, 0, 10, None),
            read(2, 20, 30, Some(a))
        ]));
    }

    #[test]
    fn capped_histories_still_extend() {
        let old: Vec<u32> = (0..32).collect();
        let new: Vec<u32> = (2..34).collect();
        assert!(extends(&old, &new, 32));
        assert!(!extends(&new, &old, 32));
        assert!(extends(&[1, 2], &[1, 2, 3], 32));
        assert!(!extends(&[1, 2], &[1, 3], 32));
    }

    fn submit(
        op: u64,
        start: u64,
        end: u64,
        id: &str,
        created: bool,
        dead: &[&str],
    ) -> Call<KeyOp> {
        Call {
            op,
            start,
            end,
            what: KeyOp::Submit {
                id: id.into(),
                created,
                dead: Arc::new(dead.iter().map(|s| s.to_string()).collect()),
            },
        }
    }

    #[test]
    fn a_key_gets_one_live_build() {
        let ok = vec![
            submit(1, 0, 10, "b-1", true, &[]),
            submit(2, 20, 30, "b-1", false, &[]),
        ];
        assert!(check::<KeySpec>(KeyOp::Seed((None, BTreeSet::new())), &ok));
        // Two builds created for one commit while the first lives: an acknowledged build lost.
        let lost = vec![
            submit(1, 0, 10, "b-1", true, &[]),
            submit(2, 20, 30, "b-2", true, &[]),
        ];
        assert!(!check::<KeySpec>(
            KeyOp::Seed((None, BTreeSet::new())),
            &lost
        ));
        // Unless the first had failed.
        let retried = vec![
            submit(1, 0, 10, "b-1", true, &["b-1"]),
            submit(2, 20, 30, "b-2", true, &["b-1"]),
        ];
        assert!(check::<KeySpec>(
            KeyOp::Seed((None, BTreeSet::new())),
            &retried
        ));
    }
}

//! Request ids: a write a client sends again (its answer was lost with a connection) happens
//! once. The client names each write with a request id; the proposer wraps the command in a
//! `Once` ([`crate::GlobalCommand::Once`], [`crate::RegionalCommand::Once`]), and applying
//! it a second time answers [`crate::Response::Repeated`] instead of applying again. Releases
//! keep their own ids (which also name the release they made); this table serves every other
//! write: metadata, cancelling a build, tokens, and membership changes, which are made outside
//! the state and recorded by a `Once` around an empty batch (a marker) once they are done.
//!
//! Bounded: at most [`MAX_REQUEST_IDS_KEPT`] ids, oldest forgotten first, and ids older than the
//! retention policy's `keep_days` leave with each collect. Only ids of writes that applied
//! are kept: a refused write changes nothing, and sent again is refused again.

use serde::{Deserialize, Serialize};

/// Ids one table remembers at most (a burst); each is at most [`MAX_REQUEST_ID_BYTES`].
pub const MAX_REQUEST_IDS_KEPT: usize = 10_000;
pub const MAX_REQUEST_ID_BYTES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("request_id: expected 1-{MAX_REQUEST_ID_BYTES} printable characters")]
pub struct BadRequestId;

/// A request id, checked: 1-64 printable ASCII characters.
pub fn check_id(id: &str) -> Result<(), BadRequestId> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID_BYTES || !id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(BadRequestId);
    }
    Ok(())
}

/// Request ids remembered, each with a value (when the write applied, or the release a call
/// made), and the order they came in, to forget the oldest first: beyond
/// [`MAX_REQUEST_IDS_KEPT`], or once older than the retention policy. The `Once` table of
/// each group and the releases' table are both one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestIds {
    /// Id -> its value.
    pub ids: imbl::OrdMap<String, u64>,
    /// The same ids with when each was first seen (proposer's stamp), oldest first.
    pub order: imbl::Vector<(String, u64)>,
}

impl RequestIds {
    /// The value remembered for `id`, if it is still remembered.
    pub fn get(&self, id: &str) -> Option<u64> {
        self.ids.get(id).copied()
    }

    /// Remembers `id` with `value`, first seen at `at_ms` (a known id keeps its value).
    pub(crate) fn remember(&mut self, id: &str, value: u64, at_ms: u64) {
        if self.ids.get(id).is_none() {
            self.ids.insert(id.to_string(), value);
            self.order.push_back((id.to_string(), at_ms));
        }
        while self.order.len() > MAX_REQUEST_IDS_KEPT {
            if let Some((old, _)) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }

    /// Forgets up to `max` ids first seen before `before_ms`, oldest first; how many.
    pub(crate) fn forget_before(&mut self, before_ms: u64, max: usize) -> usize {
        let mut n = 0;
        while n < max && self.order.front().is_some_and(|(_, at)| *at < before_ms) {
            if let Some((old, _)) = self.order.pop_front() {
                self.ids.remove(&old);
                n += 1;
            }
        }
        n
    }

    /// How many ids [`Self::forget_before`] would forget (up to `max`).
    pub fn forgettable(&self, before_ms: u64, max: usize) -> usize {
        self.order
            .iter()
            .take(max)
            .take_while(|(_, at)| *at < before_ms)
            .count()
    }
}

/// Applies `cmd` to `state` once for `request_id`: a second time answers
/// [`crate::Response::Repeated`] and changes nothing. `once` finds the state's table.
pub(crate) fn apply_once<S: crate::StateMachine>(
    state: &mut S,
    once: fn(&mut S) -> &mut RequestIds,
    request_id: &str,
    now_ms: u64,
    cmd: &S::Command,
) -> crate::Response {
    if let Some(first_ms) = once(state).get(request_id) {
        return crate::Response::Repeated { first_ms };
    }
    let r = state.apply(cmd);
    if applied(&r) {
        once(state).remember(request_id, now_ms, now_ms);
    }
    r
}

/// Whether `r` says the write applied (its id is then remembered).
pub(crate) fn applied(r: &crate::Response) -> bool {
    !matches!(
        r,
        crate::Response::Rejected(_)
            | crate::Response::BuildRejected(_)
            | crate::Response::ReleaseRejected(_)
            | crate::Response::TokenRejected(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_and_forgotten_oldest_first() {
        let mut o = RequestIds::default();
        for i in 0..(MAX_REQUEST_IDS_KEPT + 5) {
            o.remember(&format!("r{i}"), i as u64, i as u64);
        }
        assert_eq!(o.ids.len(), MAX_REQUEST_IDS_KEPT);
        assert_eq!(o.get("r0"), None);
        assert_eq!(o.get("r5"), Some(5));
        assert_eq!(o.forgettable(10, 100), 5);
        assert_eq!(o.forget_before(10, 3), 3);
        assert_eq!(o.get("r7"), None);
        assert_eq!(o.get("r8"), Some(8));
        assert_eq!(o.order.len(), o.ids.len());
    }

    use crate::{GlobalCommand, RegionalCommand, RegionalState, Response, StateMachine};

    fn set(key: &str, value: &str) -> GlobalCommand {
        GlobalCommand::SetMeta {
            key: key.into(),
            value: Some(value.into()),
        }
    }

    /// A write sent again under its request id (the first answer was lost) applies once,
    /// even when another write came in between: the repeat does not undo it.
    #[test]
    fn a_write_sent_again_with_its_request_id_applies_once() {
        let mut g = crate::GlobalState::default();
        let first = g.apply(&<crate::GlobalState as StateMachine>::once(
            "r-1".into(),
            10,
            set("k", "a"),
        ));
        assert_eq!(first, Response::MetaSet { previous: None });
        g.apply(&set("k", "b"));
        let again = g.apply(&<crate::GlobalState as StateMachine>::once(
            "r-1".into(),
            20,
            set("k", "a"),
        ));
        assert_eq!(again, Response::Repeated { first_ms: 10 });
        assert_eq!(g.meta.get("k").map(String::as_str), Some("b"));
        // The regional group's metadata, the same way.
        let mut r = RegionalState::default();
        let cmd = <RegionalState as StateMachine>::once(
            "r-2".into(),
            5,
            RegionalCommand::SetMeta {
                key: "k".into(),
                value: None,
            },
        );
        assert_eq!(r.apply(&cmd), Response::MetaSet { previous: None });
        assert_eq!(r.apply(&cmd), Response::Repeated { first_ms: 5 });
    }

    #[test]
    fn a_refused_write_is_not_remembered_and_only_some_writes_take_an_id() {
        let mut g = crate::GlobalState::default();
        let bad = <crate::GlobalState as StateMachine>::once("r-1".into(), 10, set("", "a"));
        assert!(matches!(g.apply(&bad), Response::Rejected(_)));
        assert_eq!(g.once.get("r-1"), None);
        let wrapped_twice = <crate::GlobalState as StateMachine>::once(
            "r-2".into(),
            10,
            <crate::GlobalState as StateMachine>::once("r-3".into(), 10, set("k", "a")),
        );
        assert!(matches!(g.apply(&wrapped_twice), Response::Rejected(_)));
        let bad_id = <crate::GlobalState as StateMachine>::once("a b".into(), 10, set("k", "a"));
        assert!(matches!(g.apply(&bad_id), Response::Rejected(_)));
        assert!(g.meta.is_empty());
    }

    /// A change made outside the state (membership) is recorded by a marker: a `Once` around
    /// an empty batch. Nothing else may hide inside a batch under an id.
    #[test]
    fn an_empty_batch_marks_an_id_and_a_full_one_is_refused() {
        type G = crate::GlobalState;
        let mut g = G::default();
        let mark = <G as StateMachine>::once("m-1".into(), 7, GlobalCommand::Batch(vec![]));
        assert_eq!(g.apply(&mark), Response::Batch(vec![]));
        assert_eq!(g.once.get("m-1"), Some(7));
        let hidden =
            <G as StateMachine>::once("m-2".into(), 7, GlobalCommand::Batch(vec![set("k", "v")]));
        assert!(matches!(g.apply(&hidden), Response::Rejected(_)));
        assert!(g.meta.is_empty());
        let mut r = RegionalState::default();
        let mark =
            <RegionalState as StateMachine>::once("m-3".into(), 9, RegionalCommand::Batch(vec![]));
        r.apply(&mark);
        assert_eq!(r.once.get("m-3"), Some(9));
    }

    #[test]
    fn an_id_must_be_short_and_printable() {
        assert!(check_id("abc-123").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("a b").is_err());
        assert!(check_id(&"x".repeat(65)).is_err());
    }
}

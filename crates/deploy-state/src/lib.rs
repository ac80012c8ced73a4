//! The pure logic of the replicated state machines.
//!
//! The global group applies committed [`GlobalCommand`]s to a [`GlobalState`]; a regional
//! group applies [`RegionalCommand`]s to a [`RegionalState`] (both [`StateMachine`]s). Applying is a pure,
//! deterministic function: no clock, no randomness, no I/O, so every replica that applies the
//! same log reaches the same state, and the logic is unit- and property-tested without Raft or
//! a disk. Anything time-dependent arrives inside the command, stamped by the proposer.
//!
//! This crate must not depend on openraft, RocksDB, tonic or tokio: the RocksDB adapter in
//! `deploy-raft` wraps it, never the other way round.

pub mod builds;
mod global;
mod meta;
pub mod once;
pub mod region;
mod regional;
pub mod releases;
pub mod retention;
pub mod rollout;
pub mod tokens;

use serde::{Deserialize, Serialize};

pub use builds::{Build, BuildCommand, BuildError, BuildResponse, BuildState, Builds, Outcome};
pub use global::{GlobalCommand, GlobalState};
pub use meta::{MetaError, MAX_META_KEYS, MAX_META_KEY_BYTES, MAX_META_VALUE_BYTES};
pub use region::{Region, RegionCommand, RegionResponse};
pub use regional::{RegionalCommand, RegionalState};
pub use releases::{ReleaseCommand, ReleaseError, ReleaseResponse, ReleaseState, Releases};

/// Commands one batch holds at most.
pub const MAX_BATCH: usize = 256;

/// What applying a command produced, returned to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A no-op entry (leader's blank entry, membership change).
    None,
    /// The metadata value before the change.
    MetaSet {
        previous: Option<String>,
    },
    Build(BuildResponse),
    /// A build command refused by the queue; the state is unchanged.
    BuildRejected(BuildError),
    Release(ReleaseResponse),
    Region(RegionResponse),
    /// A release or region command refused; the state is unchanged.
    ReleaseRejected(ReleaseError),
    /// The command was committed but refused by the state machine; the state is unchanged.
    Rejected(String),
    /// The responses of a batch's commands, in order.
    Batch(Vec<Response>),
    /// The token of a token command.
    Token {
        name: String,
    },
    /// A token command refused; the state is unchanged.
    TokenRejected(tokens::TokenError),
    /// What a collect removed, for the store's history.
    Collected(retention::Collected),
    /// A `Once` whose request id already applied (at `first_ms`): nothing changed now.
    Repeated {
        first_ms: u64,
    },
}

/// Why a command is refused. Checked before proposing and again when applying, so a command
/// that slipped past the first check still changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Token(#[from] tokens::TokenError),
    #[error(transparent)]
    RequestId(#[from] once::BadRequestId),
    #[error("a request id names one write: {0} cannot be wrapped")]
    NotOnce(&'static str),
}

/// `s` cut to at most `max` bytes (on a character boundary), marked with `...` when cut.
pub(crate) fn clip_to(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Checks the user-supplied fields of a build submission.
pub fn check_build_input(service: &str, repo: &str, commit: &str) -> Result<(), BuildError> {
    let invalid = |field: &str, e: deploy_types::InputError| BuildError::Invalid {
        field: field.into(),
        why: e.to_string(),
    };
    deploy_types::check_service(service).map_err(|e| invalid("service", e))?;
    deploy_types::check_repo(repo).map_err(|e| invalid("repo", e))?;
    deploy_types::check_commit(commit).map_err(|e| invalid("commit", e))?;
    Ok(())
}

/// The state machine of one kind of group: what its log holds and how it is applied.
///
/// The global group and a regional group are two types, each with its own command enum, so a
/// command of the wrong kind (a build command in a region's log, say) cannot be written down,
/// let alone proposed: the Raft layer is generic over this trait and each group's log carries
/// only its own kind's commands.
///
/// ```
/// use deploy_state::{RegionalCommand, RegionalState, StateMachine};
/// let mut region = RegionalState::default();
/// region.apply(&RegionalCommand::SetMeta { key: "k".into(), value: None });
/// ```
///
/// The same with a global command does not compile:
///
/// ```compile_fail
/// use deploy_state::{GlobalCommand, RegionalState, StateMachine};
/// let mut region = RegionalState::default();
/// region.apply(&GlobalCommand::SetMeta { key: "k".into(), value: None });
/// ```
pub trait StateMachine:
    std::fmt::Debug
    + Clone
    + Default
    + PartialEq
    + Serialize
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// What this kind of group's log entries hold.
    type Command: std::fmt::Debug
        + Clone
        + PartialEq
        + Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static;

    /// Checks a command against the current state without applying it.
    fn check(&self, cmd: &Self::Command) -> Result<(), CommandError>;

    /// Applies one committed command. Never panics, whatever the command holds.
    fn apply(&mut self, cmd: &Self::Command) -> Response;

    /// Commands proposed at the same time, as one entry (see [`MAX_BATCH`]).
    fn batch(cmds: Vec<Self::Command>) -> Self::Command;

    /// How many commands `cmd` holds when it is a batch.
    fn batch_len(cmd: &Self::Command) -> Option<usize>;

    /// The command that sets (`Some`) or deletes (`None`) a metadata key: every group has one.
    fn set_meta(key: String, value: Option<String>) -> Self::Command;

    /// `cmd`, applied at most once for `request_id` (see [`once`]): every group has it.
    fn once(request_id: String, now_ms: u64, cmd: Self::Command) -> Self::Command;

    /// The request ids of the writes that applied.
    fn once_table(&self) -> &once::RequestIds;

    /// Operator-set key/value pairs.
    fn meta(&self) -> &imbl::OrdMap<String, String>;

    fn get_meta(&self, key: &str) -> Option<&str> {
        self.meta().get(key).map(String::as_str)
    }

    /// The collects in `cmd` (itself, or inside its batch) with what each removed, as `resp`
    /// answers them: what the store writes to its on-disk history. None by default.
    fn collects<'a>(
        _cmd: &'a Self::Command,
        _resp: &'a Response,
    ) -> Vec<(&'a retention::Collect, &'a retention::Collected)> {
        Vec::new()
    }
}

/// Applies a batch's commands one by one, in order, each with its own response; a batch
/// inside a batch is refused, as is one over [`MAX_BATCH`].
pub(crate) fn apply_batch<S: StateMachine>(
    state: &mut S,
    cmds: &[S::Command],
    is_batch: impl Fn(&S::Command) -> bool,
) -> Response {
    if cmds.len() > MAX_BATCH {
        return Response::Rejected(format!(
            "a batch of {} commands is over the limit of {MAX_BATCH}",
            cmds.len()
        ));
    }
    Response::Batch(
        cmds.iter()
            .map(|c| {
                if is_batch(c) {
                    Response::Rejected("a batch inside a batch".into())
                } else {
                    state.apply(c)
                }
            })
            .collect(),
    )
}

/// Sets or deletes a metadata key (checked by the caller) and answers the value before.
pub(crate) fn apply_meta(
    meta: &mut imbl::OrdMap<String, String>,
    key: &str,
    value: &Option<String>,
) -> Response {
    let previous = match value {
        Some(v) => meta.insert(key.to_string(), v.clone()),
        None => meta.remove(key),
    };
    Response::MetaSet { previous }
}
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set<S: StateMachine>(k: &str, v: Option<&str>) -> S::Command {
        S::set_meta(k.into(), v.map(Into::into))
    }

    fn set_and_delete_report_previous<S: StateMachine>() {
        let mut s = S::default();
        assert_eq!(
            s.apply(&set::<S>("a", Some("1"))),
            Response::MetaSet { previous: None }
        );
        assert_eq!(
            s.apply(&set::<S>("a", Some("2"))),
            Response::MetaSet {
                previous: Some("1".into())
            }
        );
        assert_eq!(s.get_meta("a"), Some("2"));
        assert_eq!(
            s.apply(&set::<S>("a", None)),
            Response::MetaSet {
                previous: Some("2".into())
            }
        );
        assert_eq!(s.get_meta("a"), None);
    }

    #[test]
    fn set_and_delete_report_previous_in_both_kinds() {
        set_and_delete_report_previous::<GlobalState>();
        set_and_delete_report_previous::<RegionalState>();
    }

    fn invalid_command_is_rejected_and_changes_nothing<S: StateMachine>() {
        let mut s = S::default();
        s.apply(&set::<S>("a", Some("1")));
        let before = s.clone();
        let big = "x".repeat(MAX_META_VALUE_BYTES + 1);
        for bad in [
            set::<S>("a", Some(&big)),
            set::<S>("", Some("1")),
            set::<S>("bad\nkey", Some("1")),
        ] {
            assert!(matches!(s.apply(&bad), Response::Rejected(_)));
        }
        assert_eq!(s, before);
    }

    #[test]
    fn invalid_commands_are_rejected_and_change_nothing_in_both_kinds() {
        invalid_command_is_rejected_and_changes_nothing::<GlobalState>();
        invalid_command_is_rejected_and_changes_nothing::<RegionalState>();
    }

    fn nested_and_oversized_batches_change_nothing<S: StateMachine>() {
        let mut s = S::default();
        let nested = S::batch(vec![S::batch(vec![set::<S>("a", Some("1"))])]);
        assert_eq!(
            s.apply(&nested),
            Response::Batch(vec![Response::Rejected("a batch inside a batch".into())])
        );
        let big = S::batch(vec![set::<S>("a", Some("1")); MAX_BATCH + 1]);
        assert!(matches!(s.apply(&big), Response::Rejected(_)));
        assert_eq!(s, S::default());
    }

    #[test]
    fn nested_and_oversized_batches_change_nothing_in_both_kinds() {
        nested_and_oversized_batches_change_nothing::<GlobalState>();
        nested_and_oversized_batches_change_nothing::<RegionalState>();
    }

    fn arb_meta() -> impl Strategy<Value = (String, Option<String>)> {
        (
            prop_oneof![Just("".to_string()), "[a-c]{1,2}", ".{0,300}"],
            proptest::option::of(".{0,40}"),
        )
    }

    fn commands<S: StateMachine>(meta: &[(String, Option<String>)]) -> Vec<S::Command> {
        meta.iter()
            .map(|(k, v)| S::set_meta(k.clone(), v.clone()))
            .collect()
    }

    /// Replicas applying the same log agree, including after a snapshot round trip, which
    /// is what a lagging node does when it installs a snapshot and applies the rest.
    fn replay_is_deterministic<S: StateMachine>(
        cmds: &[S::Command],
        cut: usize,
    ) -> Result<(), TestCaseError> {
        let mut a = S::default();
        let ra: Vec<Response> = cmds.iter().map(|c| a.apply(c)).collect();
        let cut = cut.min(cmds.len());
        let mut b = S::default();
        let mut rb: Vec<Response> = cmds[..cut].iter().map(|c| b.apply(c)).collect();
        let snap = serde_json::to_vec(&b).unwrap();
        let mut b: S = serde_json::from_slice(&snap).unwrap();
        rb.extend(cmds[cut..].iter().map(|c| b.apply(c)));
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(ra, rb);
        Ok(())
    }

    /// A batch does exactly what its commands do one by one, in order, and answers each.
    fn a_batch_is_its_commands_in_order<S: StateMachine>(
        cmds: Vec<S::Command>,
    ) -> Result<(), TestCaseError> {
        let mut one = S::default();
        let each: Vec<Response> = cmds.iter().map(|c| one.apply(c)).collect();
        let mut batched = S::default();
        let r = batched.apply(&S::batch(cmds));
        prop_assert_eq!(r, Response::Batch(each));
        prop_assert_eq!(one, batched);
        Ok(())
    }

    /// Whatever is applied, every stored key and value is within the limits.
    fn limits_always_hold<S: StateMachine>(cmds: &[S::Command]) -> Result<(), TestCaseError> {
        let mut s = S::default();
        for c in cmds {
            s.apply(c);
        }
        prop_assert!(s.meta().len() <= MAX_META_KEYS);
        for (k, v) in s.meta() {
            prop_assert!(!k.is_empty() && k.len() <= MAX_META_KEY_BYTES);
            prop_assert!(v.len() <= MAX_META_VALUE_BYTES);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn replay_is_deterministic_in_both_kinds(meta in proptest::collection::vec(arb_meta(), 0..60), cut in 0usize..60) {
            replay_is_deterministic::<GlobalState>(&commands::<GlobalState>(&meta), cut)?;
            replay_is_deterministic::<RegionalState>(&commands::<RegionalState>(&meta), cut)?;
        }

        #[test]
        fn a_batch_is_its_commands_in_order_in_both_kinds(meta in proptest::collection::vec(arb_meta(), 0..40)) {
            a_batch_is_its_commands_in_order::<GlobalState>(commands::<GlobalState>(&meta))?;
            a_batch_is_its_commands_in_order::<RegionalState>(commands::<RegionalState>(&meta))?;
        }

        #[test]
        fn limits_always_hold_in_both_kinds(meta in proptest::collection::vec(arb_meta(), 0..60)) {
            limits_always_hold::<GlobalState>(&commands::<GlobalState>(&meta))?;
            limits_always_hold::<RegionalState>(&commands::<RegionalState>(&meta))?;
        }
    }
}

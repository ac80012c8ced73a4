//! The pure logic of the replicated state machines.
//!
//! Every Raft group applies committed [`Command`]s to a [`GroupState`]. Applying is a pure,
//! deterministic function: no clock, no randomness, no I/O, so every replica that applies the
//! same log reaches the same state, and the logic is unit- and property-tested without Raft or
//! a disk. Anything time-dependent arrives inside the command, stamped by the proposer.
//!
//! This crate must not depend on openraft, RocksDB, tonic or tokio: the RocksDB adapter in
//! `deploy-raft` wraps it, never the other way round.

pub mod builds;
mod meta;
pub mod region;
pub mod releases;
pub mod retention;
pub mod rollout;
pub mod tokens;

use serde::{Deserialize, Serialize};

pub use builds::{Build, BuildCommand, BuildError, BuildResponse, BuildState, Builds, Outcome};
pub use meta::{MetaError, MAX_META_KEYS, MAX_META_KEY_BYTES, MAX_META_VALUE_BYTES};
pub use region::{Region, RegionCommand, RegionResponse};
pub use releases::{ReleaseCommand, ReleaseError, ReleaseResponse, ReleaseState, Releases};

/// A decision proposed to a group's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets (`Some`) or deletes (`None`) a cluster metadata key.
    SetMeta { key: String, value: Option<String> },
    /// A build queue transition (global group).
    Build(BuildCommand),
    /// A release decision or a region's report (global group).
    Release(ReleaseCommand),
    /// A regional group's decisions, hosts and wave transitions.
    Region(RegionCommand),
    /// An API token made or revoked (global group; regions get a copy as a decision).
    Token(tokens::TokenCommand),
    /// Commands proposed at the same time, in one log entry so that one disk sync on each
    /// member commits them all; applied one by one, in order, each with its own response.
    Batch(Vec<Command>),
    /// Finished builds beyond the retention policy leave the state (global group). (Last, as
    /// every new variant: the binary format numbers variants in order.)
    Collect(retention::Collect),
}

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
}

/// Why a command is refused. Checked before proposing and again when applying, so a command
/// that slipped past the first check still changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Build(#[from] BuildError),
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

/// The replicated state of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// Operator-set key/value pairs.
    pub meta: imbl::OrdMap<String, String>,
    /// The build queue (global group).
    #[serde(default)]
    pub builds: Builds,
    /// Releases and the decisions regions pull (global group).
    #[serde(default)]
    pub releases: Releases,
    /// A regional group's state.
    #[serde(default)]
    pub region: Region,
    /// API tokens (global group; a region keeps its copy in `region.tokens`).
    #[serde(default)]
    pub tokens: tokens::Tokens,
}

impl GroupState {
    /// Checks a command against the current state without applying it.
    pub fn check(&self, cmd: &Command) -> Result<(), CommandError> {
        match cmd {
            Command::SetMeta { key, value } => meta::check(&self.meta, key, value.as_deref())?,
            Command::Build(BuildCommand::Submit {
                service,
                repo,
                commit,
                ..
            }) => check_build_input(service, repo, commit)?,
            Command::Build(_)
            | Command::Release(_)
            | Command::Region(_)
            | Command::Token(_)
            | Command::Collect(_) => {}
            // Each command of a batch is checked when it is applied, on its own.
            Command::Batch(_) => {}
        }
        Ok(())
    }

    /// Applies one committed command. Never panics, whatever the command holds.
    pub fn apply(&mut self, cmd: &Command) -> Response {
        if let Command::Batch(cmds) = cmd {
            if cmds.len() > MAX_BATCH {
                return Response::Rejected(format!(
                    "a batch of {} commands is over the limit of {MAX_BATCH}",
                    cmds.len()
                ));
            }
            return Response::Batch(
                cmds.iter()
                    .map(|c| match c {
                        Command::Batch(_) => Response::Rejected("a batch inside a batch".into()),
                        c => self.apply(c),
                    })
                    .collect(),
            );
        }
        if let Err(e) = self.check(cmd) {
            return Response::Rejected(e.to_string());
        }
        match cmd {
            Command::SetMeta { key, value } => {
                let previous = match value {
                    Some(v) => self.meta.insert(key.clone(), v.clone()),
                    None => self.meta.remove(key),
                };
                Response::MetaSet { previous }
            }
            Command::Build(b) => match self.builds.apply(b) {
                Ok(r) => Response::Build(r),
                Err(e) => Response::BuildRejected(e),
            },
            // Both check everything before they change anything: a refusal changes nothing.
            Command::Release(c) => match self.releases.apply(&self.builds, c) {
                Ok(r) => Response::Release(r),
                Err(e) => Response::ReleaseRejected(e),
            },
            Command::Region(c) => match self.region.apply(c) {
                Ok(r) => Response::Region(r),
                Err(e) => Response::ReleaseRejected(e),
            },
            Command::Token(c) => match self.tokens.decide(c) {
                Ok(change) => {
                    self.tokens.change(&change);
                    let (regions, by, now_ms) = match c {
                        tokens::TokenCommand::Create { token, regions } => {
                            (regions, token.created_by.as_str(), token.created_at_ms)
                        }
                        tokens::TokenCommand::Revoke {
                            by,
                            now_ms,
                            regions,
                            ..
                        } => (regions, by.as_str(), *now_ms),
                    };
                    for region in regions {
                        self.releases.decide_token(region, &change, by, now_ms);
                    }
                    let name = match &change {
                        tokens::TokenChange::Set(t) => t.name.clone(),
                        tokens::TokenChange::Revoke { name } => name.clone(),
                    };
                    Response::Token { name }
                }
                Err(e) => Response::TokenRejected(e),
            },
            Command::Collect(c) => Response::Collected(self.collect(c)),
            Command::Batch(_) => Response::Rejected("a batch inside a batch".into()),
        }
    }

    pub fn get_meta(&self, key: &str) -> Option<&str> {
        self.meta.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(k: &str, v: Option<&str>) -> Command {
        Command::SetMeta {
            key: k.into(),
            value: v.map(Into::into),
        }
    }

    #[test]
    fn set_and_delete_report_previous() {
        let mut s = GroupState::default();
        assert_eq!(
            s.apply(&set("a", Some("1"))),
            Response::MetaSet { previous: None }
        );
        assert_eq!(
            s.apply(&set("a", Some("2"))),
            Response::MetaSet {
                previous: Some("1".into())
            }
        );
        assert_eq!(s.get_meta("a"), Some("2"));
        assert_eq!(
            s.apply(&set("a", None)),
            Response::MetaSet {
                previous: Some("2".into())
            }
        );
        assert_eq!(s.get_meta("a"), None);
    }

    #[test]
    fn invalid_command_is_rejected_and_changes_nothing() {
        let mut s = GroupState::default();
        s.apply(&set("a", Some("1")));
        let before = s.clone();
        let big = "x".repeat(MAX_META_VALUE_BYTES + 1);
        assert!(matches!(
            s.apply(&set("a", Some(&big))),
            Response::Rejected(_)
        ));
        assert!(matches!(
            s.apply(&set("", Some("1"))),
            Response::Rejected(_)
        ));
        assert!(matches!(
            s.apply(&set("bad\nkey", Some("1"))),
            Response::Rejected(_)
        ));
        assert_eq!(s, before);
    }

    #[test]
    fn nested_and_oversized_batches_change_nothing() {
        let mut s = GroupState::default();
        let nested = Command::Batch(vec![Command::Batch(vec![set("a", Some("1"))])]);
        assert_eq!(
            s.apply(&nested),
            Response::Batch(vec![Response::Rejected("a batch inside a batch".into())])
        );
        let big = Command::Batch(vec![set("a", Some("1")); MAX_BATCH + 1]);
        assert!(matches!(s.apply(&big), Response::Rejected(_)));
        assert_eq!(s, GroupState::default());
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        (
            prop_oneof![Just("".to_string()), "[a-c]{1,2}", ".{0,300}"],
            proptest::option::of(".{0,40}"),
        )
            .prop_map(|(key, value)| Command::SetMeta { key, value })
    }

    proptest! {
        /// Replicas applying the same log agree, including after a snapshot round trip, which
        /// is what a lagging node does when it installs a snapshot and applies the rest.
        #[test]
        fn replay_is_deterministic(cmds in proptest::collection::vec(arb_command(), 0..60), cut in 0usize..60) {
            let mut a = GroupState::default();
            let ra: Vec<Response> = cmds.iter().map(|c| a.apply(c)).collect();

            let cut = cut.min(cmds.len());
            let mut b = GroupState::default();
            let mut rb: Vec<Response> = cmds[..cut].iter().map(|c| b.apply(c)).collect();
            let snap = serde_json::to_vec(&b).unwrap();
            let mut b: GroupState = serde_json::from_slice(&snap).unwrap();
            rb.extend(cmds[cut..].iter().map(|c| b.apply(c)));

            prop_assert_eq!(&a, &b);
            prop_assert_eq!(ra, rb);
        }

        /// A batch does exactly what its commands do one by one, in order, and answers each.
        #[test]
        fn a_batch_is_its_commands_in_order(cmds in proptest::collection::vec(arb_command(), 0..40)) {
            let mut one = GroupState::default();
            let each: Vec<Response> = cmds.iter().map(|c| one.apply(c)).collect();
            let mut batched = GroupState::default();
            let r = batched.apply(&Command::Batch(cmds.clone()));
            prop_assert_eq!(r, Response::Batch(each));
            prop_assert_eq!(one, batched);
        }

        /// Whatever is applied, every stored key and value is within the limits.
        #[test]
        fn limits_always_hold(cmds in proptest::collection::vec(arb_command(), 0..60)) {
            let mut s = GroupState::default();
            for c in &cmds {
                s.apply(c);
            }
            prop_assert!(s.meta.len() <= MAX_META_KEYS);
            for (k, v) in &s.meta {
                prop_assert!(!k.is_empty() && k.len() <= MAX_META_KEY_BYTES);
                prop_assert!(v.len() <= MAX_META_VALUE_BYTES);
            }
        }
    }
}

//! The global group's state machine: the build queue, releases and the decisions regions
//! pull, API tokens, and the cluster's metadata.

use serde::{Deserialize, Serialize};

use crate::builds::{BuildCommand, Builds};
use crate::releases::{ReleaseCommand, Releases};
use crate::{meta, retention, tokens, CommandError, Response, StateMachine};

/// A decision proposed to the global group's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GlobalCommand {
    /// Sets (`Some`) or deletes (`None`) a cluster metadata key.
    SetMeta { key: String, value: Option<String> },
    /// A build queue transition.
    Build(BuildCommand),
    /// A release decision or a region's report.
    Release(ReleaseCommand),
    /// An API token made or revoked (regions get a copy as a decision).
    Token(tokens::TokenCommand),
    /// Commands proposed at the same time, in one log entry so that one disk sync on each
    /// member commits them all; applied one by one, in order, each with its own response.
    Batch(Vec<GlobalCommand>),
    /// Finished builds and releases beyond the retention policy leave the state.
    Collect(retention::Collect),
    /// `cmd` (metadata, a build's cancel, a token), applied once for `request_id`; sent
    /// again, it answers [`Response::Repeated`].
    Once {
        request_id: String,
        now_ms: u64,
        cmd: Box<GlobalCommand>,
    },
}

/// The replicated state of the global group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalState {
    /// Operator-set key/value pairs.
    pub meta: imbl::OrdMap<String, String>,
    /// The build queue.
    pub builds: Builds,
    /// Releases and the decisions regions pull.
    pub releases: Releases,
    /// API tokens.
    pub tokens: tokens::Tokens,
    /// Request ids of the writes that applied (see [`crate::once`]).
    pub once: crate::once::RequestIds,
}

impl StateMachine for GlobalState {
    type Command = GlobalCommand;

    fn check(&self, cmd: &GlobalCommand) -> Result<(), CommandError> {
        match cmd {
            GlobalCommand::SetMeta { key, value } => {
                meta::check(&self.meta, key, value.as_deref())?
            }
            GlobalCommand::Build(BuildCommand::Submit {
                service,
                repo,
                commit,
                ..
            }) => crate::check_build_input(service, repo, commit)?,
            GlobalCommand::Build(BuildCommand::ExpireLeases { leases, .. })
                if leases.len() > crate::builds::MAX_EXPIRE =>
            {
                return Err(crate::builds::BuildError::Invalid {
                    field: "leases".into(),
                    why: format!(
                        "an expiry names at most {} leases, not {}",
                        crate::builds::MAX_EXPIRE,
                        leases.len()
                    ),
                }
                .into());
            }
            GlobalCommand::Token(tokens::TokenCommand::Create { token, .. }) => {
                tokens::check(token)?
            }
            GlobalCommand::Once {
                request_id, cmd, ..
            } => {
                crate::once::check_id(request_id)?;
                match cmd.as_ref() {
                    GlobalCommand::SetMeta { .. }
                    | GlobalCommand::Build(BuildCommand::Cancel { .. })
                    | GlobalCommand::Token(_) => self.check(cmd)?,
                    // A marker: a change made outside the state (membership) is recorded.
                    GlobalCommand::Batch(cmds) if cmds.is_empty() => {}
                    _ => {
                        return Err(CommandError::NotOnce(
                            "only metadata, a cancel, a token or an empty batch",
                        ))
                    }
                }
            }
            GlobalCommand::Build(_)
            | GlobalCommand::Release(_)
            | GlobalCommand::Token(_)
            | GlobalCommand::Collect(_) => {}
            // Each command of a batch is checked when it is applied, on its own.
            GlobalCommand::Batch(_) => {}
        }
        Ok(())
    }

    fn apply(&mut self, cmd: &GlobalCommand) -> Response {
        if let GlobalCommand::Batch(cmds) = cmd {
            return crate::apply_batch(self, cmds, |c| matches!(c, GlobalCommand::Batch(_)));
        }
        if let Err(e) = self.check(cmd) {
            return Response::Rejected(e.to_string());
        }
        match cmd {
            GlobalCommand::SetMeta { key, value } => crate::apply_meta(&mut self.meta, key, value),
            GlobalCommand::Build(b) => match self.builds.apply(b) {
                Ok(r) => Response::Build(r),
                Err(e) => Response::BuildRejected(e),
            },
            // Both check everything before they change anything: a refusal changes nothing.
            GlobalCommand::Release(c) => match self.releases.apply(&self.builds, c) {
                Ok(r) => Response::Release(r),
                Err(e) => Response::ReleaseRejected(e),
            },
            GlobalCommand::Token(c) => self.token(c),
            GlobalCommand::Collect(c) => Response::Collected(self.collect(c)),
            GlobalCommand::Batch(_) => Response::Rejected("a batch inside a batch".into()),
            GlobalCommand::Once {
                request_id,
                now_ms,
                cmd,
            } => crate::once::apply_once(self, |s| &mut s.once, request_id, *now_ms, cmd),
        }
    }

    fn batch(cmds: Vec<GlobalCommand>) -> GlobalCommand {
        GlobalCommand::Batch(cmds)
    }

    fn batch_len(cmd: &GlobalCommand) -> Option<usize> {
        match cmd {
            GlobalCommand::Batch(cmds) => Some(cmds.len()),
            _ => None,
        }
    }

    fn set_meta(key: String, value: Option<String>) -> GlobalCommand {
        GlobalCommand::SetMeta { key, value }
    }

    fn once(request_id: String, now_ms: u64, cmd: GlobalCommand) -> GlobalCommand {
        GlobalCommand::Once {
            request_id,
            now_ms,
            cmd: Box::new(cmd),
        }
    }

    fn meta(&self) -> &imbl::OrdMap<String, String> {
        &self.meta
    }

    fn once_table(&self) -> &crate::once::RequestIds {
        &self.once
    }

    fn collects<'a>(
        cmd: &'a GlobalCommand,
        resp: &'a Response,
    ) -> Vec<(&'a retention::Collect, &'a retention::Collected)> {
        match (cmd, resp) {
            (GlobalCommand::Collect(c), Response::Collected(removed)) => vec![(c, removed)],
            (GlobalCommand::Batch(cmds), Response::Batch(resps)) => cmds
                .iter()
                .zip(resps)
                .flat_map(|(c, r)| Self::collects(c, r))
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl GlobalState {
    /// A token made or revoked, and the same change as a decision for every region named.
    fn token(&mut self, c: &tokens::TokenCommand) -> Response {
        let change = match self.tokens.decide(c) {
            Ok(change) => change,
            Err(e) => return Response::TokenRejected(e),
        };
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
}

//! A regional group's state machine: the region's copy of the decisions it applied, its
//! hosts and relays, its rollouts' waves, and its metadata.

use serde::{Deserialize, Serialize};

use crate::region::{Region, RegionCommand};
use crate::{meta, CommandError, Response, StateMachine};

/// A decision proposed to a regional group's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionalCommand {
    /// Sets (`Some`) or deletes (`None`) a metadata key of the region's group.
    SetMeta { key: String, value: Option<String> },
    /// The region's decisions, hosts and wave transitions.
    Region(RegionCommand),
    /// Commands proposed at the same time, in one log entry (see [`crate::GlobalCommand`]).
    Batch(Vec<RegionalCommand>),
    /// A metadata change applied once for `request_id` (see [`crate::once`]).
    Once {
        request_id: String,
        now_ms: u64,
        cmd: Box<RegionalCommand>,
    },
}

/// The replicated state of one regional group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionalState {
    /// Operator-set key/value pairs.
    pub meta: imbl::OrdMap<String, String>,
    /// The region itself.
    pub region: Region,
    /// Request ids of the writes that applied (see [`crate::once`]).
    pub once: crate::once::RequestIds,
}

impl StateMachine for RegionalState {
    type Command = RegionalCommand;

    fn check(&self, cmd: &RegionalCommand) -> Result<(), CommandError> {
        match cmd {
            RegionalCommand::SetMeta { key, value } => {
                meta::check(&self.meta, key, value.as_deref())?
            }
            RegionalCommand::Once {
                request_id, cmd, ..
            } => {
                crate::once::check_id(request_id)?;
                match cmd.as_ref() {
                    RegionalCommand::SetMeta { .. } => {}
                    // A marker: a change made outside the state (membership) is recorded.
                    RegionalCommand::Batch(cmds) if cmds.is_empty() => {}
                    _ => return Err(CommandError::NotOnce("only metadata or an empty batch")),
                }
                self.check(cmd)?;
            }
            RegionalCommand::Region(_) | RegionalCommand::Batch(_) => {}
        }
        Ok(())
    }

    fn apply(&mut self, cmd: &RegionalCommand) -> Response {
        if let Err(e) = self.check(cmd) {
            return Response::Rejected(e.to_string());
        }
        match cmd {
            RegionalCommand::SetMeta { key, value } => {
                crate::apply_meta(&mut self.meta, key, value)
            }
            RegionalCommand::Region(c) => {
                // Request ids leave by the same policy as the finished release records.
                if let crate::region::RegionCommand::Collect {
                    now_ms, keep_ms, ..
                } = c
                {
                    self.once.forget_before(
                        now_ms.saturating_sub(*keep_ms),
                        crate::retention::MAX_COLLECT,
                    );
                }
                match self.region.apply(c) {
                    Ok(r) => Response::Region(r),
                    Err(e) => Response::ReleaseRejected(e),
                }
            }
            RegionalCommand::Once {
                request_id,
                now_ms,
                cmd,
            } => crate::once::apply_once(self, |s| &mut s.once, request_id, *now_ms, cmd),
            RegionalCommand::Batch(cmds) => {
                crate::apply_batch(self, cmds, |c| matches!(c, RegionalCommand::Batch(_)))
            }
        }
    }

    fn batch(cmds: Vec<RegionalCommand>) -> RegionalCommand {
        RegionalCommand::Batch(cmds)
    }

    fn batch_len(cmd: &RegionalCommand) -> Option<usize> {
        match cmd {
            RegionalCommand::Batch(cmds) => Some(cmds.len()),
            _ => None,
        }
    }

    fn set_meta(key: String, value: Option<String>) -> RegionalCommand {
        RegionalCommand::SetMeta { key, value }
    }

    fn once(request_id: String, now_ms: u64, cmd: RegionalCommand) -> RegionalCommand {
        RegionalCommand::Once {
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
}

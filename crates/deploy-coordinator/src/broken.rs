//! A deliberately broken build, for the chaos harness to prove it can fail.
//!
//! Compiled only with the `chaos-ack-before-commit` feature, which nothing enables by default
//! and which only the `deployd-ack-before-commit` binary turns on. With it, the global leader
//! answers `SubmitBuild` from a scratch copy of its state as soon as it has handed the command
//! to Raft, without waiting for a quorum to commit it: the classic "acknowledged before
//! committed" bug. An acknowledged build can then be lost (its leader was cut off), or its id
//! given to another submission (two submissions answered from the same state). Never ship it.

use deploy_proto::v1::Build as PbBuild;
use deploy_state::builds::BuildCommand;
use deploy_state::{BuildResponse, Command, Response};

use crate::group::GroupHandle;

/// Answers a submission before it commits; the real write goes on in the background.
pub fn submit_before_commit(
    h: &GroupHandle,
    cmd: BuildCommand,
    regions: &[String],
) -> Option<PbBuild> {
    let command = Command::Build(cmd);
    let (response, scratch) = h.state.read(|d| {
        let mut scratch = d.state.clone();
        (scratch.apply(&command), scratch)
    });
    let Response::Build(BuildResponse::Submitted { id, created }) = response else {
        return None;
    };
    let mut b = crate::build_api::to_proto(scratch.builds.get(&id)?, regions);
    b.created = created;
    let handle = h.clone();
    tokio::spawn(async move {
        let _ = handle.write(command).await;
    });
    tracing::warn!(build = %id, "acknowledged before commit (chaos-ack-before-commit build)");
    Some(b)
}

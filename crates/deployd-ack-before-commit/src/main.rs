//! `deployd-ack-before-commit`: `deployd` with the classic "acknowledged before committed"
//! bug, for the chaos harness to prove that it catches one. Never run it anywhere else.
//!
//! It is the real daemon ([`deployd::main_with`]) with one fault in the submission seam
//! ([`deploy_coordinator::seams::SubmitSeam`]): the global leader answers `SubmitBuild` from a
//! scratch copy of its state as soon as it has the command, and hands the write to Raft in
//! the background without waiting for a quorum. An acknowledged build can then be lost (its
//! leader was cut off), or its id given to another submission (two answered from one state).
//!
//! The fault lives only in this crate: no feature of a production crate turns it on, so
//! `cargo build --all-features` still makes a `deployd` that waits for every commit.

use std::sync::Arc;

use deploy_coordinator::seams::{Seams, SubmitSeam};
use deploy_coordinator::GroupHandle;
use deploy_proto::v1::Build as PbBuild;
use deploy_raft::GlobalTypes;
use deploy_state::builds::BuildCommand;
use deploy_state::{BuildResponse, GlobalCommand, Response, StateMachine};

/// Answers a submission before it commits; the real write goes on in the background.
struct AckBeforeCommit;

impl SubmitSeam for AckBeforeCommit {
    fn before_propose(
        &self,
        group: &GroupHandle<GlobalTypes>,
        cmd: &BuildCommand,
        regions: &[String],
    ) -> Option<PbBuild> {
        let command = GlobalCommand::Build(cmd.clone());
        let (response, scratch) = group.state.read(|d| {
            let mut scratch = d.state.clone();
            (scratch.apply(&command), scratch)
        });
        let Response::Build(BuildResponse::Submitted { id, created }) = response else {
            return None;
        };
        let mut b = deploy_coordinator::build_api::to_proto(scratch.builds.get(&id)?, regions);
        b.created = created;
        let handle = group.clone();
        tokio::spawn(async move {
            let _ = handle.write(command).await;
        });
        tracing::warn!(build = %id, "acknowledged before commit (deployd-ack-before-commit)");
        Some(b)
    }
}

fn main() -> std::process::ExitCode {
    eprintln!("deployd-ack-before-commit: a deliberately BROKEN build (acknowledges writes before they commit), for the chaos harness only");
    deployd::main_with(Seams {
        submit: Some(Arc::new(AckBeforeCommit)),
    })
}

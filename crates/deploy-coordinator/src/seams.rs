//! Seams: the places where a test binary may change how a node behaves, to prove that the
//! chaos harness notices a broken system. A node's [`Seams`] are empty unless the binary that
//! builds it fills them; `deployd` never does, and no Cargo feature can, so no build of
//! `deployd` (even `--all-features`) carries a fault. The only binary that fills one is the
//! test crate `deployd-ack-before-commit`.

use std::sync::Arc;

use deploy_proto::v1::Build as PbBuild;
use deploy_state::builds::BuildCommand;

use crate::group::GroupHandle;
use deploy_raft::GlobalTypes;

/// What a seam may do with a build submission on the global leader, before it is proposed.
pub trait SubmitSeam: Send + Sync + 'static {
    /// Returns an answer to send the client instead of the committed one, or `None` to go on
    /// as a correct node does. `regions` are the cluster's regions, for the answer.
    fn before_propose(
        &self,
        group: &GroupHandle<GlobalTypes>,
        cmd: &BuildCommand,
        regions: &[String],
    ) -> Option<PbBuild>;
}

/// A node's seams; the default is none.
#[derive(Clone, Default)]
pub struct Seams {
    pub submit: Option<Arc<dyn SubmitSeam>>,
}

impl Seams {
    /// Whether any seam is set (logged at start, so a faulty node never goes unnoticed).
    pub fn any(&self) -> bool {
        self.submit.is_some()
    }
}

impl std::fmt::Debug for Seams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seams")
            .field("submit", &self.submit.is_some())
            .finish()
    }
}

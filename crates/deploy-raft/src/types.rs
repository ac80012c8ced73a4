//! The openraft type configurations: one per kind of group, each tied to its state machine.

use std::fmt;
use std::sync::Arc;

use deploy_state::StateMachine;
use deploy_types::RaftTiming;
use serde::{Deserialize, Serialize};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The global group's types: its log holds [`deploy_state::GlobalCommand`]s.
    pub GlobalTypes:
        D = deploy_state::GlobalCommand,
        R = deploy_state::Response,
        NodeId = NodeId,
        Node = DeployNode,
        Entry = openraft::Entry<GlobalTypes>,
        SnapshotData = crate::snapshot::SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

openraft::declare_raft_types!(
    /// A regional group's types: its log holds [`deploy_state::RegionalCommand`]s.
    pub RegionTypes:
        D = deploy_state::RegionalCommand,
        R = deploy_state::Response,
        NodeId = NodeId,
        Node = DeployNode,
        Entry = openraft::Entry<RegionTypes>,
        SnapshotData = crate::snapshot::SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

/// One kind of group: its openraft types, tied to the state machine its entries apply to.
/// The store, the network and the coordinator's group handle are generic over it, so a
/// global entry can never be appended to a region's log, nor the other way round.
pub trait GroupTypes:
    openraft::RaftTypeConfig<
    D = <Self::State as StateMachine>::Command,
    R = deploy_state::Response,
    NodeId = NodeId,
    Node = DeployNode,
    Entry = openraft::Entry<Self>,
    SnapshotData = crate::snapshot::SnapshotFile,
    AsyncRuntime = openraft::TokioRuntime,
    Responder = openraft::impls::OneshotResponder<Self>,
>
{
    type State: StateMachine;
}

impl GroupTypes for GlobalTypes {
    type State = deploy_state::GlobalState;
}

impl GroupTypes for RegionTypes {
    type State = deploy_state::RegionalState;
}

/// The command type of group kind `C`.
pub type Cmd<C> = <<C as GroupTypes>::State as StateMachine>::Command;

pub type Raft<C> = openraft::Raft<C>;
pub type GlobalRaft = openraft::Raft<GlobalTypes>;
pub type RegionRaft = openraft::Raft<RegionTypes>;

/// A member as stored in a group's membership: the operator's name for it and its address.
///
/// The name travels inside the membership log entries, so a node added at run time with
/// `deployctl cluster add-node` is known by name on every replica without a config change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployNode {
    pub name: String,
    pub addr: String,
}

impl fmt::Display for DeployNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// openraft's config for one group, from the cluster's timing section.
#[allow(clippy::result_large_err)] // openraft's own error type
pub fn raft_config(
    group: &str,
    timing: &RaftTiming,
) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let config = openraft::Config {
        cluster_name: group.to_string(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_timeout_min_ms,
        election_timeout_max: timing.election_timeout_max_ms,
        // A snapshot chunk stays well under tonic's default 4 MiB message limit.
        snapshot_max_chunk_size: 1024 * 1024,
        install_snapshot_timeout: timing.election_timeout_min_ms.max(1000),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(timing.snapshot_every_logs),
        max_in_snapshot_log_to_keep: timing.keep_logs_after_snapshot,
        // openraft purges only once this many entries are purgeable; scale it with the
        // snapshot interval so a small interval (in tests) still purges.
        purge_batch_size: (timing.snapshot_every_logs / 4).clamp(1, 256),
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}

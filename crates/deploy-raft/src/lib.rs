//! Raft plumbing shared by every group: the openraft type config, the RocksDB store, and the
//! gRPC network client.
//!
//! - [`types`]: one `declare_raft_types!` per kind of group (global, regional), the
//!   [`GroupTypes`] trait the rest is generic over, and the node type carried in memberships.
//! - [`store`]: the log on RocksDB, following openraft's `rocksstore-v2` (the WAL is flushed
//!   before an append is acknowledged and before a vote returns).
//! - [`state_machine`]: the pure `deploy-state` logic applied to committed entries, in
//!   copy-on-write memory, persisted by [`snapshot`] files that are built, sent and installed
//!   as streams.
//! - [`codec`]: the binary, versioned format of every record, message and snapshot.
//! - [`stats`]: what a store measures about itself (snapshot sizes, apply stalls).
//! - [`network`]: openraft's `RaftNetworkFactory` over tonic, naming the group in every request.
//!
//! This crate knows nothing of the public API, of which groups a process hosts, or of the
//! cluster's processes: that is `deploy-coordinator`'s job.

pub mod codec;
pub mod history;
pub mod network;
pub mod snapshot;
pub mod state_machine;
pub mod stats;
pub mod store;
pub mod types;

pub use types::{
    raft_config, DeployNode, GlobalRaft, GlobalTypes, GroupTypes, NodeId, Raft, RegionRaft,
    RegionTypes,
};

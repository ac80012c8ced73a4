//! Raft plumbing shared by every group: the openraft type config, the RocksDB store, and the
//! gRPC network client.
//!
//! - [`types`]: `declare_raft_types!` in one place, and the node type carried in memberships.
//! - [`store`]: the log and state machine on RocksDB, following openraft's `rocksstore-v2`
//!   (the WAL is flushed before an append is acknowledged and before a vote returns), with the
//!   pure `deploy-state` logic applied to committed entries.
//! - [`network`]: openraft's `RaftNetworkFactory` over tonic, naming the group in every request.
//!
//! This crate knows nothing of the public API, of which groups a process hosts, or of the
//! cluster's processes: that is `deploy-coordinator`'s job.

pub mod codec;
pub mod network;
pub mod store;
pub mod types;

pub use types::{raft_config, DeployNode, NodeId, Raft, TypeConfig};

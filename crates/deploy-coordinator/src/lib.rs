//! A coordinator node: the process role that holds replicas of Raft groups.
//!
//! A [`Node`] hosts one `Raft` per group the cluster config gives it (`global`,
//! `region/<name>`), each on its own RocksDB store, bootstraps each group exactly once, and is
//! served over gRPC by [`server::serve`]: the internal Raft service (every request names its
//! group), the public cluster API (writes and linearizable reads go to the group's leader,
//! forwarded by whichever node receives them), gRPC health and reflection.
//!
//! The network is injected: [`Node::start`] takes a function that makes each group's
//! `RaftNetworkFactory`, and [`server::serve`] takes a bound listener, so tests run the same
//! node over loopback gRPC or over an in-process router. This crate must not depend on the
//! binaries, on the client library or on test code.

pub mod api;
pub mod artifact_api;
pub mod auth;
pub mod build_api;
pub mod build_tasks;
pub mod error;
pub mod failover;
pub mod group;
pub mod http;
pub mod lease_watch;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod paging;
pub mod peers;
pub mod pulls;
pub mod raft_service;
pub mod region_api;
pub mod release_api;
pub mod reports;
pub mod request_id;
pub mod rollout_tasks;
pub mod routing;
pub mod seams;
pub mod server;
pub mod states;
pub mod token_api;
pub mod worker_api;

pub use error::ApiError;
pub use group::{GroupHandle, Role};
pub use node::{Node, NodeOptions};

//! Shared identifiers and the cluster configuration.
//!
//! This crate is the vocabulary every other crate speaks: node names and the numeric Raft ids
//! derived from them, group names (`global`, `region/<name>`), and the TOML cluster config with
//! its validation. It is pure data: it must not depend on openraft, tonic, RocksDB or tokio, so
//! that clients, tools and tests can use it without pulling in a server.

pub mod config;
pub mod digest;
pub mod fleet;
pub mod ids;
pub mod repo;
pub mod security;
pub mod validate;

pub use config::{
    check_addr, BuildSettings, ClusterConfig, ConfigError, NodeConfig, RaftTiming, RegionConfig,
    SigningConfig, StoreLocation, WorkerConfig,
};
pub use digest::{Digest, DigestError};
pub use ids::{check_name, node_id_of, GroupName, IdError, NodeName};
pub use repo::{RepoPolicy, RepoUrl};
pub use validate::{check_commit, check_repo, check_service, InputError};

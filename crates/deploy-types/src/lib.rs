//! Shared identifiers and the cluster configuration.
//!
//! This crate is the vocabulary every other crate speaks: node names and the numeric Raft ids
//! derived from them, group names (`global`, `region/<name>`), and the TOML cluster config with
//! its validation. It is pure data: it must not depend on openraft, tonic, RocksDB or tokio, so
//! that clients, tools and tests can use it without pulling in a server.

pub mod config;
pub mod ids;

pub use config::{check_addr, ClusterConfig, ConfigError, NodeConfig, RaftTiming, RegionConfig};
pub use ids::{node_id_of, GroupName, IdError, NodeName};

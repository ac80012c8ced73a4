//! Test clusters, shared by every multi-node test.
//!
//! - [`router`]: an in-process Raft network that can drop, delay and partition messages.
//! - [`inproc`]: [`InProcCluster`], nodes of one process wired through the router; crash and
//!   restart keep each node's RocksDB directory, as a real crash would.
//! - [`grpc`]: [`GrpcCluster`], nodes of one process serving real gRPC on loopback.
//! - Re-exported from `process-harness`: [`Spec`], [`ProcessCluster`] (real `deployd`
//!   processes killed with `kill -9`), the release helpers, and the waits ([`wait_until`],
//!   [`wait_every`]): tests wait on conditions, never on fixed sleeps.
//!
//! Used only by tests; nothing in the product depends on it.

pub mod fleet;
pub mod grpc;
pub mod inproc;
pub mod router;

pub use grpc::GrpcCluster;
pub use inproc::InProcCluster;
pub use process_harness::*;

/// Logs for tests: quiet by default, `RUST_LOG` to see more. Safe to call more than once.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

//! Test clusters, shared by every multi-node test.
//!
//! - [`router`]: an in-process Raft network that can drop, delay and partition messages.
//! - [`inproc`]: [`InProcCluster`], nodes of one process wired through the router; crash and
//!   restart keep each node's RocksDB directory, as a real crash would.
//! - [`grpc`]: [`GrpcCluster`], nodes of one process serving real gRPC on loopback.
//! - [`process`]: [`ProcessCluster`], real `deployd node` processes killed with `kill -9`.
//! - [`wait_until`]: tests wait on conditions, never on fixed sleeps.
//!
//! Used only by tests; nothing in the product depends on it.

pub mod grpc;
pub mod inproc;
pub mod process;
pub mod router;

use std::future::Future;
use std::time::{Duration, Instant};

pub use grpc::GrpcCluster;
pub use inproc::InProcCluster;
pub use process::ProcessCluster;

/// Polls `check` until it returns `Some`, or fails after `within` naming `what`.
pub async fn wait_until<T, F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Logs for tests: quiet by default, `RUST_LOG` to see more. Safe to call more than once.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A TOML cluster config for `n` global nodes `n1..` (and regions of their own nodes) at
/// the given addresses.
pub fn config_toml(
    global: &[(String, String)],
    regions: &[(&str, Vec<(String, String)>)],
    extra_raft: &str,
) -> String {
    let mut s = String::from("[cluster]\nname = \"test\"\n\n[raft]\n");
    s.push_str(extra_raft);
    s.push('\n');
    let mut nodes = global.to_vec();
    for (_, members) in regions {
        nodes.extend(members.iter().cloned());
    }
    for (id, addr) in &nodes {
        s.push_str(&format!("[[nodes]]\nid = \"{id}\"\naddr = \"{addr}\"\n"));
    }
    let list = |m: &[(String, String)]| {
        m.iter()
            .map(|(id, _)| format!("\"{id}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    s.push_str(&format!("\n[global]\nvoters = [{}]\n", list(global)));
    for (name, members) in regions {
        s.push_str(&format!(
            "\n[[regions]]\nname = \"{name}\"\nvoters = [{}]\n",
            list(members)
        ));
    }
    s
}

/// Raft timing for tests: the production defaults, with snapshots every `snapshot_every` logs.
pub fn test_timing(snapshot_every: u64, keep: u64) -> String {
    format!(
        "heartbeat_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 900\n\
         snapshot_every_logs = {snapshot_every}\nkeep_logs_after_snapshot = {keep}\n"
    )
}

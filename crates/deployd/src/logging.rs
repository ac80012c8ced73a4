//! Structured logs: text or JSON lines, filtered by RUST_LOG.

use tracing_subscriber::EnvFilter;

/// openraft logs every replication step at info, and at warn the normal races of an election
/// (a vote answered after the vote changed); keep it to errors unless asked.
const DEFAULT_FILTER: &str = "info,openraft=error";

pub fn init(json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

//! `deploy-bench`: the project's benchmarks. Each writes `<out>/<name>.json`; `report` turns
//! those files into the tables of `docs/benchmarks.md`, with the paper projection.
//!
//! The machine is shared and noisy, so every figure is either a ratio against a baseline
//! measured in the same run (etcd, `S/B`, a naive origin) or a count that does not depend on
//! the machine's speed. Nothing here is a test: `cargo xtask bench` runs it on release builds.
//!
//! It drives the system only from outside (processes, gRPC, HTTP), through `process-harness`,
//! and must not link the coordinator, Raft or the replicated state (`cargo tree -p
//! deploy-bench` shows none); nothing in the product depends on it.

mod e2e;
mod etcd;
mod failover;
mod fanout;
mod report;
mod scale;
mod soak;
mod stats;
mod writes;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "deploy-bench", about = "Benchmarks that write JSON")]
struct Cli {
    /// Where the JSON files go.
    #[arg(long, global = true, default_value = "target/bench")]
    out: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replicated writes: our global group against a 3-node etcd cluster.
    Writes(writes::Args),
    /// An artifact through the relay tree with every link limited, against S/B and a naive origin.
    Fanout(fanout::Args),
    /// One region's control plane with simulated racks of hosts.
    Scale(scale::Args),
    /// A million builds through the global group with retention on, per window of builds.
    Soak(soak::Args),
    /// Kills of the global and a regional leader under a write load.
    Failover(failover::Args),
    /// A commit to every host of a dev-shaped cluster, and the parts of that time.
    E2e(e2e::Args),
    /// Writes docs/benchmarks.md from the JSON files.
    Report(report::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The cluster binaries next to this one (target/release), unless told otherwise.
    if std::env::var_os("DEPLOY_BIN_DIR").is_none() {
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(PathBuf::from))
        {
            std::env::set_var("DEPLOY_BIN_DIR", dir);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("deploy-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = cli.out.clone();
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Writes(a) => stats::save(&out, "writes", &writes::run(a).await?),
            Command::Fanout(a) => stats::save(&out, "fanout", &fanout::run(a).await?),
            Command::Scale(a) => stats::save(&out, "scale", &scale::run(a).await?),
            Command::Soak(a) => stats::save(&out, "soak", &soak::run(a).await?),
            Command::Failover(a) => stats::save(&out, "failover", &failover::run(a).await?),
            Command::E2e(a) => stats::save(&out, "e2e", &e2e::run(a).await?),
            Command::Report(a) => report::run(&out, a),
        }
    });
    // Clusters started on the runtime's threads are dropped with it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deploy-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

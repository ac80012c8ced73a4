//! `deployd`: the daemon, one role per subcommand (see `deployd --help`): coordinator nodes,
//! build workers, relays, agents, and the local `dev` cluster and `demo`.
//!
//! A library so that the binaries stay thin: `deployd` itself, and the deliberately broken
//! `deployd-ack-before-commit` (its own crate) the chaos harness must catch, which runs the
//! same daemon with a fault in a seam ([`main_with`]). `deployd` runs with none.

mod cli;
mod demo;
mod dev;
mod devcerts;
mod fleet;
mod inspect;
pub mod listen;
mod logging;
mod node;
mod probe;
mod worker;

use clap::Parser;

/// Whether `id` names a process of `config`: a node, worker, relay or host.
fn node_kind(config: &deploy_types::ClusterConfig, id: &str) -> Option<&'static str> {
    if deploy_types::NodeName::new(id).is_ok_and(|n| config.node(&n).is_some()) {
        Some("node")
    } else if config.worker(id).is_some() {
        Some("worker")
    } else if config.relay(id).is_some() {
        Some("relay")
    } else {
        config.host(id).map(|_| "host")
    }
}

/// Parses the command line, runs the role it names, and says how it ended.
pub fn main() -> std::process::ExitCode {
    main_with(deploy_coordinator::seams::Seams::default())
}

/// [`main`] with faults injected into coordinator nodes: for test binaries only.
pub fn main_with(seams: deploy_coordinator::seams::Seams) -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    logging::init(cli.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("deployd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli, seams)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deployd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

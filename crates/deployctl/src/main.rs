//! `deployctl`: the command-line client. See `deployctl --help`.

mod cli;
mod cluster;
mod output;

use std::process::ExitCode;

use clap::Parser;

/// Exit codes, documented in docs/cli.md.
pub mod exit {
    /// The command failed: the cluster refused it or answered with an error.
    pub const FAILURE: u8 = 1;
    /// The cluster could not be reached, or the group had no leader.
    pub const UNAVAILABLE: u8 = 2;
    /// The command line itself is wrong (EX_USAGE).
    pub const USAGE: u8 = 64;
}

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("deployctl: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deployctl: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

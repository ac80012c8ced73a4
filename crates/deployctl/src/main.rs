//! `deployctl`: the command-line client. See `deployctl --help`.

mod build;
mod cli;
mod cluster;
mod output;
mod region;
mod release;
mod tokens;

use std::process::ExitCode;

use clap::Parser;

/// Exit codes, documented in docs/cli.md.
pub mod exit {
    /// The command failed: the cluster refused it or answered with an error.
    pub const FAILURE: u8 = 1;
    /// The cluster could not be reached, or the group had no leader.
    pub const UNAVAILABLE: u8 = 2;
    /// A build or release ended in a state other than success (FAILED, CANCELLED, ...).
    pub const ENDED_BADLY: u8 = 3;
    /// The command line itself is wrong (EX_USAGE).
    pub const USAGE: u8 = 64;
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`deployctl build list | head`) instead of failing on a broken pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default action of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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

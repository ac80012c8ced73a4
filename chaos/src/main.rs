//! `chaos`: runs a chaos scenario against a cluster of real `deployd` processes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chaos",
    about = "Kill, pause and partition a real cluster; check the invariants"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario: start the cluster, inject its faults, heal, check, report.
    Run {
        /// A scenario name (see `chaos list`) or a path to a scenario file.
        scenario: String,
        /// Seeds the fault schedule and the workload: the same seed, the same schedule.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How long faults are injected (120s, 2m, ...); default: the scenario's.
        #[arg(long, value_parser = chaos::parse_duration)]
        duration: Option<std::time::Duration>,
        /// The deployd binary to run (default: next to this one, built first by cargo).
        #[arg(long)]
        deployd: Option<PathBuf>,
        /// Keep the cluster's data and logs here (default: a temporary directory, kept only
        /// when something broke).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the run's directory even when every invariant held.
        #[arg(long)]
        keep: bool,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// List the scenarios.
    List,
    /// Print a scenario's fault schedule for a seed, without running anything.
    Plan {
        scenario: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, value_parser = chaos::parse_duration)]
        duration: Option<std::time::Duration>,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let dir = chaos::scenario::scenario_dir();
    match cli.command {
        Cmd::List => {
            for name in chaos::scenario::list(&dir) {
                let desc = chaos::scenario::Scenario::find(&name, &dir)
                    .map(|s| s.description)
                    .unwrap_or_else(|e| format!("(invalid: {e})"));
                println!("{name:<22} {desc}");
            }
            ExitCode::SUCCESS
        }
        Cmd::Plan {
            scenario,
            seed,
            duration,
        } => match chaos::scenario::Scenario::find(&scenario, &dir) {
            Ok(s) => {
                let d = duration
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(s.duration_secs * 1000);
                for f in chaos::fault::plan(&s, seed, d) {
                    println!(
                        "{:>3}  at {:>7.1} s  {:<24} for {:>5} ms  (pick {}, variant {})",
                        f.index,
                        f.at_ms as f64 / 1000.0,
                        f.kind.as_str(),
                        f.hold_ms,
                        f.pick % 1000,
                        f.variant % 1000
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("chaos: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Run {
            scenario,
            seed,
            duration,
            deployd,
            dir: run_dir,
            keep,
            report,
        } => {
            let s = match chaos::scenario::Scenario::find(&scenario, &dir) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("chaos: {e}");
                    return ExitCode::from(2);
                }
            };
            let duration = duration.unwrap_or(std::time::Duration::from_secs(s.duration_secs));
            let deployd = match chaos::run::find_deployd(deployd.as_deref(), "deployd") {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("chaos: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let replay = format!(
                "cargo run -p chaos -- run {} --seed {seed} --duration {}s",
                s.name,
                duration.as_secs()
            );
            let opts = chaos::run::Options {
                scenario: s,
                seed,
                duration,
                deployd,
                dir: run_dir,
                keep,
                replay,
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("chaos: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(chaos::run::run(opts)) {
                Ok(r) => {
                    println!("{}", r.render());
                    if let Some(path) = report {
                        match serde_json::to_vec_pretty(&r) {
                            Ok(json) => {
                                if let Err(e) = std::fs::write(&path, json) {
                                    eprintln!("chaos: cannot write {}: {e}", path.display());
                                }
                            }
                            Err(e) => eprintln!("chaos: cannot encode the report: {e}"),
                        }
                    }
                    if r.passed() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("chaos: the run could not complete: {e:#}");
                    ExitCode::from(3)
                }
            }
        }
    }
}

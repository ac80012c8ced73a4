//! `deploy-fuzz`: runs the fuzz targets (see the library) for a bounded time each.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use deploy_fuzz::runner::{self, Budget};
use deploy_fuzz::{corpus_dir, TARGETS};

#[derive(Parser)]
#[command(about = "Fuzz the parsers of untrusted bytes, over the corpus in the repository")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The targets and their corpus sizes.
    List,
    /// Replays each target's corpus, then fuzzes it for SECONDS.
    Run {
        /// Time per target.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Where generated inputs start (a run is reproducible from its seed).
        #[arg(long)]
        seed: Option<u64>,
        /// Do not keep a breaking input in the corpus.
        #[arg(long)]
        no_save: bool,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// Rewrites the corpus's seed files from the seeds this version makes.
    Seed,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("deploy-fuzz: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Cmd::List => {
            for t in TARGETS {
                let n = runner::load_corpus(&corpus_dir().join(t.name))?.len();
                println!("{:<10} {:>3} inputs  {}", t.name, n, t.what);
            }
            Ok(true)
        }
        Cmd::Seed => {
            for (name, seeds) in deploy_fuzz::seeds::all() {
                let dir = corpus_dir().join(name);
                std::fs::create_dir_all(&dir)?;
                for (file, bytes) in seeds {
                    std::fs::write(dir.join(format!("seed-{file}")), bytes)?;
                }
                println!("{name}: seeds written to {}", dir.display());
            }
            Ok(true)
        }
        Cmd::Run {
            seconds,
            seed,
            no_save,
            targets,
        } => {
            let chosen: Vec<_> = if targets.is_empty() {
                TARGETS.iter().collect()
            } else {
                targets
                    .iter()
                    .map(|n| {
                        deploy_fuzz::targets::target(n).ok_or_else(|| {
                            let known: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
                            anyhow::anyhow!("no target {n:?}; the targets are {}", known.join(", "))
                        })
                    })
                    .collect::<anyhow::Result<_>>()?
            };
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            });
            // Panics are failures the report names; their default message would be noise.
            std::panic::set_hook(Box::new(|_| {}));
            let mut ok = true;
            println!(
                "fuzzing {} targets, {seconds} s each, seed {seed}",
                chosen.len()
            );
            for t in chosen {
                let dir = corpus_dir().join(t.name);
                let corpus = runner::load_corpus(&dir)?;
                for (name, why) in runner::replay(t.check, &corpus) {
                    ok = false;
                    println!("{}: corpus input {name} breaks it: {why}", t.name);
                }
                let seeds = corpus.into_iter().map(|(_, b)| b).collect();
                let r = runner::run(t, seeds, Budget::Time(Duration::from_secs(seconds)), seed);
                match &r.failure {
                    None => println!(
                        "{:<10} {:>9} inputs in {:>5.1} s from {} seeds: no promise broken",
                        r.target,
                        r.cases,
                        r.took.as_secs_f64(),
                        r.seeds
                    ),
                    Some((input, why)) => {
                        ok = false;
                        let shown = String::from_utf8_lossy(&input[..input.len().min(200)]);
                        println!(
                            "{}: BROKEN after {} inputs: {why}\n  input ({} bytes): {shown:?}",
                            r.target,
                            r.cases,
                            input.len()
                        );
                        if !no_save {
                            let saved = runner::save_failure(&dir, input)?;
                            println!("  kept as {} (the tests replay it)", saved.display());
                        }
                    }
                }
            }
            Ok(ok)
        }
    }
}

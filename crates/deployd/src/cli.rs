//! Command-line interface of `deployd`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "deployd",
    version,
    about = "The deploy daemon: coordinator nodes and the local dev cluster"
)]
pub struct Cli {
    /// Log as JSON lines instead of text (filter with RUST_LOG).
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one coordinator node: the replicas of every group the config gives it.
    Node {
        /// Cluster config file.
        #[arg(long)]
        config: PathBuf,
        /// This node's id in the config.
        #[arg(long)]
        id: String,
        /// Where the node keeps its groups' data (default: .deploy/<id>).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Relative store paths of the config are resolved against this directory.
        #[arg(long, default_value = ".")]
        store_base: PathBuf,
    },
    /// Run a build worker: lease builds from the global leader, build them, store artifacts.
    Worker {
        /// Cluster config file.
        #[arg(long)]
        config: PathBuf,
        /// This worker's id in the config.
        #[arg(long)]
        id: String,
        /// Mirrors and scratch space (default: .deploy/<id>).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Relative store paths of the config are resolved against this directory.
        #[arg(long, default_value = ".")]
        store_base: PathBuf,
    },
    /// Signing keys for artifacts.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Run every node and worker of a cluster config in this one process, on loopback.
    Dev {
        /// Cluster config file (default: the embedded cluster-config/local.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the nodes keep their data; restarting with the same directory resumes.
        #[arg(long, default_value = ".deploy/dev")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make an ed25519 key pair: the private key (mode 0600) at OUT, the public key at OUT.pub.
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Node {
            config,
            id,
            data_dir,
            store_base,
        } => crate::node::run(&config, &id, data_dir, store_base).await,
        Command::Worker {
            config,
            id,
            work_dir,
            store_base,
        } => crate::worker::run(&config, &id, work_dir, &store_base).await,
        Command::Keys(KeysCommand::Generate { out }) => {
            let key = deploy_artifact::KeyPair::generate()?;
            key.save(&out).map_err(|e| {
                anyhow::anyhow!(
                    "cannot write {}: {e} (an existing key is never overwritten)",
                    out.display()
                )
            })?;
            let public = key.public_hex();
            let pub_path = out.with_extension("pub");
            std::fs::write(&pub_path, format!("{public}\n"))?;
            println!(
                "private key: {} (keep it on the build workers only)",
                out.display()
            );
            println!("public key:  {}", pub_path.display());
            println!("add to the cluster config:\n[signing]\nkey_file = \"{}\"\ntrusted_keys = [\"{public}\"]", out.display());
            Ok(())
        }
        Command::Dev { config, data_dir } => crate::dev::run(config.as_deref(), &data_dir).await,
    }
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Loads a config file, or the embedded local one, and logs its warnings.
pub fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<deploy_types::ClusterConfig> {
    let config = match path {
        Some(p) => deploy_types::ClusterConfig::load(p)?,
        None => deploy_types::ClusterConfig::local(),
    };
    for w in &config.warnings {
        tracing::warn!(warning = %w, "cluster config");
    }
    Ok(config)
}

//! Command-line grammar of `deployctl`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use deploy_client::{Client, ClientError, DEFAULT_ENDPOINT};

use crate::exit;

#[derive(Debug, Parser)]
#[command(name = "deployctl", version, about = "Client of the deploy cluster")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// API endpoint(s), comma-separated; any node of the cluster will do.
    #[arg(long, global = true, env = "DEPLOY_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Region whose group a command addresses (default: the global group).
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Read from whichever replica answers, without confirming it is up to date.
    #[arg(long, global = true)]
    pub stale: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The coordinator cluster: groups, members, membership changes, metadata.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Builds: submit a commit, follow it to an artifact, read its log.
    #[command(subcommand)]
    Build(BuildCommand),
    /// Artifacts in the regions' stores.
    #[command(subcommand)]
    Artifacts(ArtifactsCommand),
}

#[derive(Debug, Subcommand)]
pub enum ArtifactsCommand {
    /// Delete artifacts the retention policy no longer keeps (builds.keep_per_service).
    Gc {
        /// Only show what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BuildCommand {
    /// Queue a build of an exact commit (idempotent per service, repo and commit).
    Submit {
        #[arg(long)]
        service: String,
        /// Repository: an absolute or existing local path, or a file://, https:// or ssh:// URL.
        #[arg(long)]
        repo: String,
        /// Full commit SHA (40 or 64 lowercase hex characters).
        #[arg(long)]
        commit: String,
        /// Wait for the build to end, showing progress; exit 0 only if it SUCCEEDED.
        #[arg(long)]
        wait: bool,
    },
    /// Show one build.
    Get { id: String },
    /// Builds, newest first.
    List {
        #[arg(long)]
        service: Option<String>,
        /// QUEUED, RUNNING, REPLICATING, SUCCEEDED, FAILED or CANCELLED.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue from a previous page (printed at its end).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Cancel a queued or running build; its processes are killed.
    Cancel { id: String },
    /// Print the build command's output (latest attempt).
    Logs {
        id: String,
        /// Keep printing until the build ends.
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every group with its leader, term, and each member's role and applied index.
    Status,
    /// Add a node to a group: as a learner, then as a voter once it has caught up.
    AddNode {
        /// Node id (its name in the cluster).
        #[arg(long)]
        id: String,
        /// The node's gRPC address, host:port.
        #[arg(long)]
        addr: String,
        /// Group (`global` or `region/<name>`); defaults to --region's group, else global.
        #[arg(long)]
        group: Option<String>,
    },
    /// Remove a node from a group's voters and learners.
    RemoveNode {
        #[arg(long)]
        id: String,
        #[arg(long)]
        group: Option<String>,
    },
    /// Cluster metadata: small key/value pairs kept in a group's log.
    #[command(subcommand)]
    Meta(MetaCommand),
}

#[derive(Debug, Subcommand)]
pub enum MetaCommand {
    Get {
        key: String,
        #[arg(long)]
        group: Option<String>,
    },
    Set {
        key: String,
        value: String,
        #[arg(long)]
        group: Option<String>,
    },
    Delete {
        key: String,
        #[arg(long)]
        group: Option<String>,
    },
}

/// A failure to report: one line and an exit code.
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::BadEndpoint { .. } => exit::USAGE,
            e if e.is_unavailable() => exit::UNAVAILABLE,
            _ => exit::FAILURE,
        };
        let hint = if e.is_unavailable() {
            " (is the cluster running? start one with `deployd dev`, or set --endpoint / DEPLOY_ENDPOINT)"
        } else {
            ""
        };
        Failure {
            message: format!("{e}{hint}"),
            code,
        }
    }
}

impl Global {
    /// The group a command addresses: an explicit `--group`, else `--region`'s, else global.
    pub fn group(&self, explicit: Option<&str>) -> String {
        match (explicit, &self.region) {
            (Some(g), _) => g.to_string(),
            (None, Some(r)) => format!("region/{r}"),
            (None, None) => "global".to_string(),
        }
    }

    pub fn client(&self) -> Result<Client, Failure> {
        Ok(Client::from_list(&self.endpoint)?)
    }
}

pub async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Cluster(c) => crate::cluster::run(&cli.global, c).await,
        Command::Build(c) => crate::build::run(&cli.global, c).await,
        Command::Artifacts(ArtifactsCommand::Gc { dry_run }) => {
            let reply = cli.global.client()?.collect_garbage(dry_run).await?;
            crate::output::print(cli.global.output, &reply, |r| {
                let verb = if r.dry_run { "would delete" } else { "deleted" };
                let rows: Vec<Vec<String>> = r
                    .stores
                    .iter()
                    .map(|s| {
                        vec![
                            s.region.clone(),
                            s.delete_manifests.len().to_string(),
                            s.delete_chunks.to_string(),
                            s.bytes_freed.to_string(),
                            s.kept_manifests.to_string(),
                            s.kept_chunks.to_string(),
                        ]
                    })
                    .collect();
                println!(
                    "{verb} (keeping {} artifacts by policy):",
                    r.kept_artifacts.len()
                );
                crate::output::table(
                    &[
                        "REGION",
                        "MANIFESTS",
                        "CHUNKS",
                        "BYTES",
                        "KEPT_MANIFESTS",
                        "KEPT_CHUNKS",
                    ],
                    &rows,
                );
                for s in &r.stores {
                    for m in &s.delete_manifests {
                        println!("  {} {m}", s.region);
                    }
                }
            })
        }
    }
}

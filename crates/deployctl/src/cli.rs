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
    /// The cluster CA's certificate (PEM): talk TLS, trusting only it.
    #[arg(long, global = true, env = "DEPLOY_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// API token (prefer DEPLOY_TOKEN_FILE: a command line is visible to others).
    #[arg(long, global = true, env = "DEPLOY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the API token.
    #[arg(long, global = true, env = "DEPLOY_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
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
    /// Releases: roll a build out to regions in waves, and steer it.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// A region as its own group sees it (works while the global group is down).
    #[command(subcommand)]
    Region(RegionCommand),
    /// The hosts of a region (--region).
    #[command(subcommand)]
    Hosts(HostsCommand),
    /// One host: its rack, goals, and what it last reported.
    #[command(subcommand)]
    Host(HostCommand),
    /// API tokens (admins): make one for a person or a pipeline, list them, revoke one.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Print a shell completion script (e.g. `deployctl completions bash > /etc/bash_completion.d/deployctl`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct StrategyArgs {
    /// Canary: `first-rack`, `none`, or a number of hosts.
    #[arg(long)]
    pub canary: Option<String>,
    /// Cumulative percentages of racks per wave after the canary (e.g. 10,50,100).
    #[arg(long, value_delimiter = ',')]
    pub waves: Vec<u32>,
    /// Hosts of one rack updating at once.
    #[arg(long)]
    pub max_unavailable: Option<u32>,
    /// Percentage of a wave's hosts that may fail before the release halts.
    #[arg(long)]
    pub failure_threshold: Option<u32>,
    /// How long a wave's hosts must stay healthy, in milliseconds.
    #[arg(long)]
    pub min_healthy_ms: Option<u64>,
    /// A wave not passed within this many seconds halts the release.
    #[arg(long)]
    pub deadline_secs: Option<u64>,
    /// Regions rolling out at once, in the order given.
    #[arg(long)]
    pub regions_at_once: Option<u32>,
    /// On a halt, leave moved hosts on the new build (default: roll them back).
    #[arg(long)]
    pub no_auto_rollback: bool,
    /// Let other regions carry on when one fails (default: stop them all).
    #[arg(long)]
    pub continue_on_failure: bool,
}

#[derive(Debug, Args)]
pub struct Decision {
    /// Release id (r-<n>).
    pub id: String,
    /// Why, recorded in the release's history.
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Release a SUCCEEDED build of a service to regions (default: all, in config order).
    Create {
        #[arg(long)]
        service: String,
        /// Build id (b-<n>); it must have SUCCEEDED.
        #[arg(long)]
        build: String,
        /// Regions in rollout order, comma-separated.
        #[arg(long = "regions", value_delimiter = ',')]
        regions: Vec<String>,
        #[command(flatten)]
        strategy: StrategyArgs,
        /// Wait until the release ends, showing each region's waves; exit 0 only if it SUCCEEDED.
        #[arg(long)]
        wait: bool,
    },
    /// Show one release with its regions and decision history.
    Get { id: String },
    /// Releases, newest first (states: PENDING, ROLLING_OUT, PAUSED, SUCCEEDED, FAILED,
    /// ABORTED, ROLLED_BACK).
    List(ListArgs),
    /// Hold the rollout at its current wave.
    Pause(Decision),
    /// Continue a paused rollout.
    Resume(Decision),
    /// Stop the rollout where it is; moved hosts keep the new build.
    Abort(Decision),
    /// Return every moved host to the build it had.
    Rollback(Decision),
    /// Pass the current wave now (skip the canary's wait).
    Promote(Decision),
    /// Follow a release until it ends; exit 0 only if it SUCCEEDED.
    Watch { id: String },
}

#[derive(Debug, Subcommand)]
pub enum RegionCommand {
    /// The region's releases, services, and what its hosts run (needs --region).
    Status,
}

#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// Hosts of --region, with their goal and reported state per service.
    List {
        /// Only this rack's hosts.
        #[arg(long)]
        rack: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        page_token: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// One host (searched in every region unless --region is given).
    Get { id: String },
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

/// Filters and paging of a list command.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub service: Option<String>,
    /// Only items in this state.
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Continue from a previous page (printed at its end).
    #[arg(long)]
    pub page_token: Option<String>,
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
    /// Builds, newest first (states: QUEUED, RUNNING, REPLICATING, SUCCEEDED, FAILED,
    /// CANCELLED).
    List(ListArgs),
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
pub enum TokensCommand {
    /// Make a token; its text is printed once (only its hash is kept).
    Create {
        /// [a-z0-9-]{1,63}: what decisions made with the token record as their author.
        #[arg(long)]
        name: String,
        /// What it may do: admin (cluster and tokens), releaser (builds and releases),
        /// reader (queries only).
        #[arg(long, value_parser = ["admin", "releaser", "reader"])]
        role: String,
        /// For a releaser: the only services it may build and release, comma-separated.
        #[arg(long, value_delimiter = ',')]
        services: Vec<String>,
    },
    /// Every token: name, role, services, who made it and when (never the text).
    List,
    /// Revoke a token: calls made with it are refused from now on.
    Revoke { name: String },
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

/// A `--state` value, in any case, as the API's enum number (0, any state, without one).
pub fn state_arg<T: Into<i32>>(
    state: Option<String>,
    parse: fn(&str) -> Option<T>,
) -> Result<i32, Failure> {
    let Some(s) = state else { return Ok(0) };
    parse(&s.to_uppercase())
        .filter(|_| !s.is_empty())
        .map(Into::into)
        .ok_or_else(|| Failure {
            message: format!(
                "--state {:?} is not a state (see `--help` for the list)",
                s.chars().take(40).collect::<String>()
            ),
            code: exit::USAGE,
        })
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

    /// Who decides: `DEPLOY_ACTOR`, else the login name.
    pub fn actor(&self) -> String {
        std::env::var("DEPLOY_ACTOR")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "anonymous".into())
    }

    /// The region a command needs.
    pub fn need_region(&self) -> Result<String, Failure> {
        self.region.clone().ok_or_else(|| Failure {
            message: "this command needs --region <name>".into(),
            code: exit::USAGE,
        })
    }

    pub fn client(&self) -> Result<Client, Failure> {
        let usage = |message: String| Failure {
            message,
            code: exit::USAGE,
        };
        let endpoints: Vec<&str> = self.endpoint.split(',').collect();
        let client = match &self.ca {
            None => Client::new(endpoints)?,
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| usage(format!("cannot read --ca {}: {e}", path.display())))?;
                Client::secure(endpoints, deploy_client::trusting(&pem))?
            }
        };
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => {
                let meta = std::fs::metadata(path).map_err(|e| {
                    usage(format!("cannot read --token-file {}: {e}", path.display()))
                })?;
                if meta.len() > 4096 {
                    return Err(usage(format!(
                        "--token-file {}: not a token",
                        path.display()
                    )));
                }
                Some(std::fs::read_to_string(path).map_err(|e| {
                    usage(format!("cannot read --token-file {}: {e}", path.display()))
                })?)
            }
            (None, None) => None,
        };
        Ok(match token {
            Some(t) => client.with_token(&t)?,
            None => client,
        })
    }
}

pub async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Cluster(c) => crate::cluster::run(&cli.global, c).await,
        Command::Build(c) => crate::build::run(&cli.global, c).await,
        Command::Release(c) => crate::release::run(&cli.global, c).await,
        Command::Region(c) => crate::region::region(&cli.global, c).await,
        Command::Hosts(c) => crate::region::hosts(&cli.global, c).await,
        Command::Host(c) => crate::region::host(&cli.global, c).await,
        Command::Tokens(c) => crate::tokens::run(&cli.global, c).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "deployctl", &mut std::io::stdout());
            Ok(())
        }
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

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
        /// Serve /healthz, /readyz and /metrics on this address (host:port).
        #[arg(long)]
        http: Option<String>,
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
    /// Run a rack relay: serve its hosts goals, manifests and chunks; report them upward.
    Relay {
        #[arg(long)]
        config: PathBuf,
        /// This relay's id in the config.
        #[arg(long)]
        id: String,
        /// Its chunk cache (default: .deploy/<id>).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Upstream bandwidth limit, bytes per second (default: none).
        #[arg(long)]
        up_limit: Option<u64>,
        /// Downstream (to hosts) bandwidth limit, bytes per second (default: none).
        #[arg(long)]
        down_limit: Option<u64>,
        /// Cache bound in bytes (default 2 GiB).
        #[arg(long)]
        cache_bytes: Option<u64>,
        #[command(flatten)]
        nic: NicArgs,
    },
    /// Run a host agent: install its goal's releases and run them.
    Agent {
        /// Serve /healthz, /readyz and /metrics on this address (host:port).
        #[arg(long)]
        http: Option<String>,
        #[arg(long)]
        config: PathBuf,
        /// This host's id in the config.
        #[arg(long)]
        id: String,
        /// Where releases live (default: .deploy/<id>).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Verify and record releases but start no process (scale tests).
        #[arg(long)]
        sim: bool,
        /// Download bandwidth limit, bytes per second (default: none).
        #[arg(long)]
        down_limit: Option<u64>,
        #[command(flatten)]
        nic: NicArgs,
        /// Serve verified chunks to the rack's peers on this address (host:port; port 0
        /// picks one).
        #[arg(long, default_value = deploy_fanout::config::DEFAULT_PEER_LISTEN)]
        peer_listen: String,
        /// The address peers reach the chunk server at, if not the one it binds.
        #[arg(long)]
        peer_advertise: Option<String>,
        /// Serve no chunks to peers (the host still takes chunks from them).
        #[arg(long, conflicts_with_all = ["peer_listen", "peer_advertise"])]
        no_peer_server: bool,
    },
    /// Signing keys for artifacts.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The cluster CA, process certificates and the first admin token (mutual TLS).
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Run every node and worker of a cluster config in this one process, on loopback.
    Dev {
        /// Cluster config file (default: the embedded cluster-config/local.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the nodes keep their data; restarting with the same directory resumes.
        #[arg(long, default_value = ".deploy/dev")]
        data_dir: PathBuf,
        /// Also simulate RACKSxHOSTS hosts in every region (e.g. 3x4), reporting like agents.
        #[arg(long, value_name = "RACKSxHOSTS", value_parser = parse_shape)]
        simulate_hosts: Option<(u32, u32)>,
        /// Nodes not to run here (comma-separated), to run them as separate `deployd node`
        /// processes with the config this writes to <data-dir>/cluster.toml, and stop them
        /// at will (e.g. the whole global group).
        #[arg(long, value_delimiter = ',')]
        exclude: Vec<String>,
        /// Replace the config's racks: this many per region, one relay each (ports from
        /// 7101), with --hosts-per-rack agents each.
        #[arg(long, requires = "hosts_per_rack")]
        racks: Option<u32>,
        #[arg(long, requires = "racks")]
        hosts_per_rack: Option<u32>,
        /// Run agents in sim mode: verify and record releases, start no process.
        #[arg(long)]
        sim_agents: bool,
    },
    /// The dev cluster shown working: a sample service built from git and released to every
    /// host in waves, then a broken change halted on the canary and rolled back; exits 0 only
    /// if all of that happened.
    Demo {
        /// Cluster config (default: the embedded cluster-config/local.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the demo's cluster lives; cleared first if a previous demo made it.
        #[arg(long, default_value = ".deploy/demo")]
        data_dir: PathBuf,
        /// Leave the cluster running at the end, until Ctrl-C.
        #[arg(long)]
        keep_running: bool,
        /// Shorter health waits (for tests).
        #[arg(long)]
        short: bool,
    },
    /// Write one group's Raft log from a stopped node's data directory as JSON lines (a
    /// header, then one line per entry), for tools that compare logs from outside.
    InspectLog {
        /// The node's data directory (what `deployd node --data-dir` was given).
        #[arg(long)]
        data_dir: PathBuf,
        /// `global` or `region/<name>`.
        #[arg(long)]
        group: String,
    },
    /// Simulate a region's hosts: report like rack relays and follow the goals, so releases
    /// can be tried without agents.
    Simhosts {
        /// API endpoint(s) of the region's nodes (any node forwards), comma-separated.
        #[arg(long, env = "DEPLOY_ENDPOINT", default_value = "http://127.0.0.1:7001")]
        endpoint: String,
        #[arg(long)]
        region: String,
        /// RACKSxHOSTS, e.g. 3x4.
        #[arg(long, value_parser = parse_shape, default_value = "3x4")]
        shape: (u32, u32),
        /// How long each update step (download, install, start) takes, in milliseconds.
        #[arg(long, default_value_t = 200)]
        step_ms: u64,
        /// Builds on which every host fails its health check (repeatable).
        #[arg(long)]
        fail_build: Vec<String>,
    },
}

/// A fan-out process's network card, overriding the config's `[fanout]` budgets.
#[derive(Debug, clap::Args)]
pub struct NicArgs {
    /// Total ingress over all connections, bytes per second (default: the config's
    /// fanout.nic_in_bytes_per_sec, else none).
    #[arg(long, value_parser = parse_nic_budget)]
    pub nic_in: Option<u64>,
    /// Total egress over all connections, bytes per second (default: the config's
    /// fanout.nic_out_bytes_per_sec, else none).
    #[arg(long, value_parser = parse_nic_budget)]
    pub nic_out: Option<u64>,
}

fn parse_nic_budget(s: &str) -> Result<u64, String> {
    let v: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of bytes per second"))?;
    match deploy_types::config::FanoutSettings::check_budget("the budget", Some(v)) {
        Some(problem) => Err(problem),
        None => Ok(v),
    }
}

/// Parses RACKSxHOSTS, each 1-1000.
pub fn parse_shape(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?}: expected RACKSxHOSTS, each 1-1000, e.g. 3x4");
    let (r, h) = s.split_once('x').ok_or_else(bad)?;
    let r: u32 = r.parse().map_err(|_| bad())?;
    let h: u32 = h.parse().map_err(|_| bad())?;
    if !(1..=1000).contains(&r) || !(1..=1000).contains(&h) {
        return Err(bad());
    }
    Ok((r, h))
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make the cluster CA (DIR/ca.pem, DIR/ca.key) and an admin token (DIR/admin.token);
    /// prints the [security] section for the cluster config.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// The cluster's name, for the CA's.
        #[arg(long, default_value = "deploy")]
        name: String,
    },
    /// Issue process ID (a node, worker, relay or host of the config) its certificate,
    /// DIR/ID.pem and DIR/ID.key, signed by the CA in DIR.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: String,
        /// The cluster config: the certificate is good for the addresses it gives ID.
        #[arg(long)]
        config: Option<PathBuf>,
        /// More host names or IP addresses it is reached at (repeatable).
        #[arg(long)]
        host: Vec<String>,
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

pub async fn run(cli: Cli, seams: deploy_coordinator::seams::Seams) -> anyhow::Result<()> {
    match cli.command {
        Command::Node {
            config,
            id,
            data_dir,
            store_base,
        } => crate::node::run(&config, &id, data_dir, store_base, seams).await,
        Command::Worker {
            http,
            config,
            id,
            work_dir,
            store_base,
        } => crate::worker::run(&config, &id, work_dir, &store_base, http.as_deref()).await,
        Command::Relay {
            config,
            id,
            data_dir,
            up_limit,
            down_limit,
            cache_bytes,
            nic,
        } => {
            let limits = crate::fleet::Limits {
                up: up_limit,
                down: down_limit,
                cache_bytes,
                nic_in: nic.nic_in,
                nic_out: nic.nic_out,
                ..Default::default()
            };
            crate::fleet::run_relay(config, &id, data_dir, limits).await
        }
        Command::Agent {
            http,
            config,
            id,
            root,
            sim,
            down_limit,
            nic,
            peer_listen,
            peer_advertise,
            no_peer_server,
        } => {
            let limits = crate::fleet::Limits {
                down: down_limit,
                nic_in: nic.nic_in,
                nic_out: nic.nic_out,
                peer_listen: Some(if no_peer_server {
                    String::new()
                } else {
                    peer_listen
                }),
                peer_advertise,
                ..Default::default()
            };
            crate::fleet::run_agent(config, &id, root, sim, limits, http.as_deref()).await
        }
        Command::Certs(c) => crate::devcerts::command(c),
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
        Command::Dev {
            config,
            data_dir,
            simulate_hosts,
            exclude,
            racks,
            hosts_per_rack,
            sim_agents,
        } => {
            let opts = crate::dev::DevOptions {
                config_path: config,
                data_dir,
                simulate_hosts,
                exclude,
                fleet: crate::dev::Fleet {
                    shape: racks.zip(hosts_per_rack),
                    sim_agents,
                },
            };
            crate::dev::run(opts).await
        }
        Command::Demo {
            config,
            data_dir,
            keep_running,
            short,
        } => {
            crate::demo::run(crate::demo::DemoOptions {
                config,
                data_dir,
                keep_running,
                short,
            })
            .await
        }
        Command::InspectLog { data_dir, group } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            crate::inspect::run(&data_dir, &group, &mut out).await
        }
        Command::Simhosts {
            endpoint,
            region,
            shape,
            step_ms,
            fail_build,
        } => {
            let client = deploy_client::Client::from_list(&endpoint)?
                .with_timeout(std::time::Duration::from_secs(5));
            let mut opts = deploy_hostsim::SimOptions::new(&region, shape.0, shape.1);
            opts.step = std::time::Duration::from_millis(step_ms.clamp(1, 60_000));
            if !fail_build.is_empty() {
                opts.fails =
                    std::sync::Arc::new(move |_, _, build| fail_build.iter().any(|b| b == build));
            }
            let stop = tokio_util::sync::CancellationToken::new();
            let task = tokio::spawn(deploy_hostsim::run(
                std::sync::Arc::new(client),
                opts,
                stop.clone(),
            ));
            println!(
                "simulating {}x{} hosts in {region}; stop with Ctrl-C",
                shape.0, shape.1
            );
            shutdown_signal().await;
            stop.cancel();
            let _ = task.await;
            Ok(())
        }
    }
}

/// Resolves when the process is asked to stop (Ctrl-C, SIGTERM or SIGHUP).
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
    // A closed terminal (SIGHUP) stops as cleanly: `deployd dev` takes its services down.
    #[cfg(unix)]
    let hangup = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    #[cfg(not(unix))]
    let hangup = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
        _ = hangup => {}
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

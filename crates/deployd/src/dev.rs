//! `deployd dev`: a whole cluster in one process, on loopback.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use deploy_coordinator::server::{launch, RunningNode};
use deploy_coordinator::NodeOptions;
use deploy_raft::network::ChannelPool;
use tracing::info;

/// What `deployd dev` (and `deployd demo`) run.
#[derive(Debug, Clone, Default)]
pub struct DevOptions {
    pub config_path: Option<std::path::PathBuf>,
    pub data_dir: std::path::PathBuf,
    pub simulate_hosts: Option<(u32, u32)>,
    pub exclude: Vec<String>,
    pub fleet: Fleet,
}

/// A running dev cluster.
pub struct DevCluster {
    pub config: Arc<deploy_types::ClusterConfig>,
    /// Every coordinator node's address, global ones first.
    pub endpoints: Vec<String>,
    /// What dev made for a secure cluster (its CA, the admin token).
    pub made: Option<crate::devcerts::Made>,
    written: std::path::PathBuf,
    nodes: Vec<RunningNode>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    relays: Vec<tokio::task::JoinHandle<()>>,
    agents: Vec<Arc<deploy_fanout::agent::Agent>>,
    stop: tokio_util::sync::CancellationToken,
}

pub async fn run(opts: DevOptions) -> anyhow::Result<()> {
    let dev = start(&opts).await?;
    dev.banner(&opts);
    crate::cli::shutdown_signal().await;
    info!("stopping the dev cluster");
    dev.stop().await;
    Ok(())
}

/// Starts every node, worker, relay and agent of the config, and waits for leaders.
pub async fn start(opts: &DevOptions) -> anyhow::Result<DevCluster> {
    let (data_dir, exclude, fleet) = (&opts.data_dir, &opts.exclude, &opts.fleet);
    let mut config = crate::cli::load_config(opts.config_path.as_deref())?;
    if let Some((racks, hosts)) = fleet.shape {
        if !(1..=500).contains(&racks) || !(1..=1000).contains(&hosts) {
            anyhow::bail!("--racks must be 1-500 and --hosts-per-rack 1-1000");
        }
        config.generate_racks(racks, hosts, 7101);
    }
    for id in exclude {
        let node = deploy_types::NodeName::new(id)
            .ok()
            .and_then(|n| config.node(&n).cloned());
        if node.is_none() && config.relay(id).is_none() && config.host(id).is_none() {
            anyhow::bail!("--exclude {id}: no such node, relay or host in the config");
        }
    }
    let made_key = ensure_signing_key(&mut config, data_dir)?;
    let made_certs = crate::devcerts::ensure(&mut config, data_dir)?;
    let written = write_effective_config(
        opts.config_path.as_deref(),
        data_dir,
        made_key.as_ref(),
        made_certs.as_ref(),
    )?;
    let config = Arc::new(config);
    // Bind every listener before starting any node, so a busy port fails fast and cleanly.
    let mut listeners = Vec::new();
    for n in config
        .nodes()
        .iter()
        .filter(|n| !exclude.contains(&n.id.to_string()))
    {
        let what = format!("node {}; is another deployd dev running?", n.id);
        let l = crate::listen::bind(n.listen_addr(), &what).await?;
        listeners.push((n.id.clone(), l));
    }
    let mut nodes: Vec<RunningNode> = Vec::new();
    for (id, listener) in listeners {
        let transport = deploy_tls::Transport::of(&config, id.as_str())
            .with_context(|| format!("node {id} cannot set up TLS"))?;
        let options = NodeOptions {
            data_dir: data_dir.join(id.as_str()),
            store_base: data_dir.to_path_buf(),
            transport: transport.clone(),
            seams: Default::default(),
        };
        let pool = ChannelPool::with_transport(transport, None);
        let running = launch(config.clone(), id.clone(), &options, listener, pool)
            .await
            .with_context(|| format!("cannot start node {id}"))?;
        nodes.push(running);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for w in &config.workers {
        let worker = crate::worker::make(
            &config,
            &w.id,
            data_dir.join("workers").join(&w.id),
            data_dir,
        )
        .with_context(|| format!("cannot start worker {}", w.id))?;
        tasks.push(tokio::spawn(worker.run(stop.clone())));
    }
    // The fan-out tree: every relay, and an agent per host with its root under the data
    // directory, running real service processes (or, with --sim-agents, none).
    let mut relays = Vec::new();
    for rack in config.racks() {
        for relay in &rack.relays {
            if exclude.contains(&relay.id) {
                continue;
            }
            let dir = data_dir.join("relays").join(&relay.id);
            let limits = crate::fleet::Limits::default();
            relays.push(
                crate::fleet::spawn_relay(&config, &relay.id, dir, &limits, stop.clone()).await?,
            );
        }
    }
    let mut agents = Vec::new();
    for rack in config.racks() {
        for host in rack.hosts.iter().filter(|h| !exclude.contains(h)) {
            let root = std::path::absolute(data_dir.join("hosts").join(host))?;
            let transport = deploy_tls::Transport::of(&config, host)
                .with_context(|| format!("host {host} cannot set up TLS"))?;
            let opts = deploy_fanout::config::agent_options(
                &config,
                host,
                root,
                fleet.sim_agents,
                &crate::fleet::Limits::default(),
                &transport,
            )?;
            let agent = deploy_fanout::agent::Agent::new(opts);
            tasks.push(tokio::spawn(agent.clone().run(stop.clone())));
            agents.push(agent);
        }
    }
    // Simulated hosts report to their region's own nodes, like rack relays would.
    if let Some((racks, per)) = opts.simulate_hosts {
        for region in config.regions() {
            let client = api_client(config.region_addrs(region), made_certs.as_ref())?
                .with_timeout(Duration::from_secs(5));
            let sim = deploy_hostsim::SimOptions::new(region, racks, per);
            tasks.push(tokio::spawn(deploy_hostsim::run(
                Arc::new(client),
                sim,
                stop.clone(),
            )));
        }
    }
    let mut endpoints: Vec<String> = config
        .voters(&deploy_types::GroupName::Global)
        .unwrap_or_default()
        .iter()
        .filter_map(|n| config.node(n).map(|n| n.addr.clone()))
        .collect();
    for n in config.nodes() {
        if !endpoints.contains(&n.addr) {
            endpoints.push(n.addr.clone());
        }
    }
    let started = Instant::now();
    wait_for_leaders(&nodes, Duration::from_secs(30)).await;
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "every group has a leader"
    );
    Ok(DevCluster {
        config,
        endpoints,
        made: made_certs,
        written,
        nodes,
        tasks,
        relays,
        agents,
        stop,
    })
}

/// An API client of the dev cluster: over TLS with the admin token when dev made them.
pub fn api_client(
    endpoints: Vec<String>,
    made: Option<&crate::devcerts::Made>,
) -> anyhow::Result<deploy_client::Client> {
    let Some(made) = made else {
        return Ok(deploy_client::Client::new(endpoints)?);
    };
    let ca =
        std::fs::read(&made.ca).with_context(|| format!("cannot read {}", made.ca.display()))?;
    let token = std::fs::read_to_string(&made.token_file)
        .with_context(|| format!("cannot read {}", made.token_file.display()))?;
    Ok(
        deploy_client::Client::secure(endpoints, deploy_client::trusting(&ca))?
            .with_token(&token)?,
    )
}

impl DevCluster {
    /// An API client of this cluster, as its admin.
    pub fn client(&self) -> anyhow::Result<deploy_client::Client> {
        api_client(self.endpoints.clone(), self.made.as_ref())
    }

    /// The shell settings `deployctl` needs for this cluster, also written to `<data>/env`.
    pub fn env(&self, data_dir: &Path) -> Vec<String> {
        let scheme = if self.made.is_some() { "https" } else { "http" };
        let endpoints: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let mut env = vec![format!("export DEPLOY_ENDPOINT={}", endpoints.join(","))];
        if let Some(m) = &self.made {
            env.push(format!("export DEPLOY_CA={}", m.ca.display()));
            env.push(format!(
                "export DEPLOY_TOKEN_FILE={}",
                m.token_file.display()
            ));
        }
        let _ = std::fs::write(data_dir.join("env"), format!("{}\n", env.join("\n")));
        env
    }

    /// What is running, and how to talk to it.
    pub fn banner(&self, opts: &DevOptions) {
        let (config, data_dir) = (&self.config, &opts.data_dir);
        println!("deployd dev: {config}");
        println!("deployd dev: data in {}", data_dir.display());
        println!("deployd dev: config in {}", self.written.display());
        if !opts.exclude.is_empty() {
            println!(
                "deployd dev: not running {}; start one with `deployd node --config {} --id <id> --data-dir {}/<id> --store-base {}`",
                opts.exclude.join(", "),
                self.written.display(),
                data_dir.display(),
                data_dir.display()
            );
        }
        println!("deployd dev: {} build workers", config.workers.len());
        println!(
            "deployd dev: {} racks, {} relays, {} host agents{} (roots under {}/hosts)",
            config.racks().len(),
            self.relays.len(),
            self.agents.len(),
            if opts.fleet.sim_agents {
                " in sim mode"
            } else {
                ""
            },
            data_dir.display()
        );
        if let Some((racks, per)) = opts.simulate_hosts {
            println!("deployd dev: {racks}x{per} simulated hosts in every region");
        }
        if let Some(e) = self.endpoints.first() {
            let scheme = if self.made.is_some() { "https" } else { "http" };
            println!("deployd dev: API endpoint {scheme}://{e}");
        }
        if let Some(m) = &self.made {
            println!(
                "deployd dev: mutual TLS with the CA {}; the admin token is in {}",
                m.ca.display(),
                m.token_file.display()
            );
        }
        let env = self.env(data_dir);
        println!(
            "deployd dev: for deployctl, `source {}/env`:",
            data_dir.display()
        );
        for line in env {
            println!("deployd dev:   {line}");
        }
        println!("deployd dev: try `deployctl cluster status`; stop with Ctrl-C");
    }

    /// Stops everything; the services go down with the cluster, first.
    pub async fn stop(self) {
        self.stop.cancel();
        futures::future::join_all(self.agents.iter().map(|a| a.stop_services())).await;
        for mut w in self.tasks.into_iter().chain(self.relays) {
            // A relay may still be draining a host's long poll: do not wait for it.
            if tokio::time::timeout(Duration::from_secs(2), &mut w)
                .await
                .is_err()
            {
                w.abort();
            }
        }
        for n in self.nodes {
            n.stop().await;
        }
    }
}

/// The fan-out part of the dev cluster.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    /// (racks per region, hosts per rack) replacing the config's racks.
    pub shape: Option<(u32, u32)>,
    pub sim_agents: bool,
}

/// Waits until every hosted group on every node knows a leader (or the time is up).
async fn wait_for_leaders(nodes: &[RunningNode], within: Duration) {
    let deadline = Instant::now() + within;
    for n in nodes {
        for g in n.node.groups() {
            let left = deadline.saturating_duration_since(Instant::now());
            if g.leader(left).await.is_err() {
                tracing::warn!(node = %n.node.me, group = %g.name(), "no leader yet");
            }
        }
    }
}

/// Gives the dev cluster a signing key of its own when its config names none: made on first
/// start under the data directory, trusted by every node. Returns (key file, public key)
/// when it did.
fn ensure_signing_key(
    config: &mut deploy_types::ClusterConfig,
    data_dir: &Path,
) -> anyhow::Result<Option<(String, String)>> {
    if config.signing.key_file.is_some() {
        return Ok(None);
    }
    let path = std::path::absolute(data_dir.join("keys").join("build.key"))?;
    if !path.exists() {
        deploy_artifact::KeyPair::generate()?
            .save(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        info!(path = %path.display(), "made a signing key for the dev cluster");
    }
    let key = deploy_artifact::KeyPair::load(&path)?;
    config.signing.key_file = Some(path.display().to_string());
    if !config.signing.trusted_keys.contains(&key.public_hex()) {
        config.signing.trusted_keys.push(key.public_hex());
    }
    Ok(Some((path.display().to_string(), key.public_hex())))
}

/// Writes the config the dev cluster runs (with the key it made) to
/// `<data_dir>/cluster.toml`, so its nodes can also be run as separate processes.
fn write_effective_config(
    config_path: Option<&Path>,
    data_dir: &Path,
    made_key: Option<&(String, String)>,
    made_certs: Option<&crate::devcerts::Made>,
) -> anyhow::Result<std::path::PathBuf> {
    let mut text = match config_path {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?
        }
        None => deploy_types::config::LOCAL_TOML.to_string(),
    };
    if let Some((key_file, public)) = made_key {
        if text.lines().any(|l| l.trim() == "[signing]") {
            anyhow::bail!(
                "the config has a [signing] table without key_file: name the key file there"
            );
        }
        text.push_str(&format!(
            "\n# Added by deployd dev: the key it made for this data directory.\n[signing]\nkey_file = {key_file:?}\ntrusted_keys = [{public:?}]\n"
        ));
    }
    if let Some(made) = made_certs {
        text.push_str(&made.section());
    }
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join("cluster.toml");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

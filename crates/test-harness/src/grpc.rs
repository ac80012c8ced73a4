//! Nodes of one process, each serving real gRPC on its own loopback port, and optional
//! in-process build workers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use deploy_client::Client;
use deploy_coordinator::server::{launch, RunningNode};
use deploy_coordinator::NodeOptions;
use deploy_raft::network::{channel_factory, ChannelPool};
use deploy_types::{ClusterConfig, NodeName};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Spec;

pub struct GrpcCluster {
    dir: TempDir,
    pub config: Arc<ClusterConfig>,
    nodes: BTreeMap<String, Option<RunningNode>>,
    listeners: BTreeMap<String, TcpListener>,
    workers: BTreeMap<String, (CancellationToken, tokio::task::JoinHandle<()>)>,
    pub addrs: BTreeMap<String, String>,
    /// Each node's channel pool, kept across restarts.
    pools: BTreeMap<String, ChannelPool>,
    /// (from node, to address) pairs that cannot connect: a network cut.
    cut: Arc<Mutex<BTreeSet<(String, String)>>>,
    /// Relays' listeners, bound at start, taken by `start_relay`.
    pub(crate) relay_listeners: BTreeMap<String, TcpListener>,
    pub(crate) relays: BTreeMap<String, crate::fleet::RunningRelay>,
    pub(crate) agents: BTreeMap<String, crate::fleet::RunningAgent>,
}

/// Where a cut connection goes: nothing listens on port 1 of loopback, so it is refused.
const NOWHERE: &str = "127.0.0.1:1";

impl GrpcCluster {
    /// A global group of `global` nodes `g1..`, and per region `(name, n)` nodes `<name>-1..`.
    pub async fn start(global: usize, regions: &[(&str, usize)]) -> anyhow::Result<Self> {
        let mut spec = Spec::new(global);
        for (r, n) in regions {
            spec = spec.region(r, *n);
        }
        Self::start_spec(spec).await
    }

    /// As [`GrpcCluster::start`], plus `spares` nodes `s1..` that host the global group
    /// without being voters: they wait for `add-node`.
    pub async fn start_with_spares(
        global: usize,
        regions: &[(&str, usize)],
        spares: usize,
    ) -> anyhow::Result<Self> {
        let mut spec = Spec::new(global).spares(spares);
        for (r, n) in regions {
            spec = spec.region(r, *n);
        }
        Self::start_spec(spec).await
    }

    /// Starts every node of `spec` and every worker it names.
    pub async fn start_spec(spec: Spec) -> anyhow::Result<Self> {
        crate::init_logging();
        let mut listeners = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        for name in spec.node_names() {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            addrs.insert(name.clone(), l.local_addr()?.to_string());
            listeners.insert(name, l);
        }
        let mut relay_listeners = BTreeMap::new();
        for id in spec.relay_ids() {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            addrs.insert(id.clone(), l.local_addr()?.to_string());
            relay_listeners.insert(id, l);
        }
        let dir = TempDir::new()?;
        let text = spec.toml(&addrs, dir.path())?;
        let config = Arc::new(ClusterConfig::parse(&text, "grpc test")?);
        let mut cluster = Self {
            dir,
            config,
            nodes: spec.node_names().into_iter().map(|k| (k, None)).collect(),
            listeners,
            workers: BTreeMap::new(),
            addrs,
            pools: BTreeMap::new(),
            cut: Arc::default(),
            relay_listeners,
            relays: BTreeMap::new(),
            agents: BTreeMap::new(),
        };
        for n in spec.node_names() {
            cluster.start_node(&n).await?;
        }
        for (id, _) in &spec.workers {
            cluster.start_worker(id)?;
        }
        Ok(cluster)
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Starts a node: on its original listener the first time, on a new bind of its address after.
    pub async fn start_node(&mut self, name: &str) -> anyhow::Result<()> {
        let listener = match self.listeners.remove(name) {
            Some(l) => l,
            None => TcpListener::bind(&self.addrs[name]).await?,
        };
        let options = NodeOptions {
            data_dir: self.dir.path().join(name),
            store_base: self.dir.path().to_path_buf(),
            transport: self.transport(name)?,
            seams: Default::default(),
        };
        let running = launch(
            self.config.clone(),
            NodeName::new(name)?,
            &options,
            listener,
            self.pool(name),
        )
        .await
        .with_context(|| format!("start {name}"))?;
        self.nodes.insert(name.to_string(), Some(running));
        Ok(())
    }

    /// Process `id`'s transport: plain TCP, or TLS with its certificate on a secure spec.
    pub fn transport(&self, id: &str) -> anyhow::Result<deploy_tls::Transport> {
        Ok(deploy_tls::Transport::of(&self.config, id)?)
    }

    /// The node's channel pool: its transport, except to addresses cut off from it.
    fn pool(&mut self, name: &str) -> ChannelPool {
        let cut = self.cut.clone();
        let me = name.to_string();
        let tcp = channel_factory(
            self.transport(name).unwrap_or(deploy_tls::Transport::Plain),
            None,
        );
        self.pools
            .entry(name.to_string())
            .or_insert_with(|| {
                ChannelPool::new(Arc::new(move |addr: &str| {
                    let blocked = cut
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains(&(me.clone(), addr.to_string()));
                    tcp(if blocked { NOWHERE } else { addr })
                }))
            })
            .clone()
    }

    /// Cuts the network from each of `from` to each of `to`: new connections are refused
    /// and cached ones dropped. Requests the other way still pass.
    pub fn cut(&mut self, from: &[&str], to: &[&str]) {
        let mut cut = self.cut.lock().unwrap_or_else(|p| p.into_inner());
        for f in from {
            for t in to {
                if let Some(addr) = self.addrs.get(*t) {
                    cut.insert((f.to_string(), addr.clone()));
                }
            }
        }
        drop(cut);
        for f in from {
            if let Some(p) = self.pools.get(*f) {
                p.forget();
            }
        }
    }

    /// Restores every cut connection.
    pub fn heal(&mut self) {
        self.cut.lock().unwrap_or_else(|p| p.into_inner()).clear();
        for p in self.pools.values() {
            p.forget();
        }
    }

    /// Stops a node: its listener closes and its groups shut down.
    pub async fn stop_node(&mut self, name: &str) -> anyhow::Result<()> {
        let running = self
            .nodes
            .get_mut(name)
            .context("unknown node")?
            .take()
            .context("not running")?;
        running.stop().await;
        Ok(())
    }

    /// Starts an in-process build worker of the config.
    pub fn start_worker(&mut self, id: &str) -> anyhow::Result<()> {
        let w = self.config.worker(id).context("unknown worker")?;
        let location = self
            .config
            .store_location(&w.region, self.dir.path())
            .context("no store")?;
        let opts = deploy_worker::WorkerOptions {
            id: id.to_string(),
            region: w.region.clone(),
            endpoints: self.node_addrs(),
            work_dir: self.dir.path().join("workers").join(id),
            settings: self.config.builds.clone(),
            transport: self.transport(id)?,
        };
        let key = deploy_artifact::KeyPair::load(
            &self
                .config
                .key_file(self.dir.path())
                .context("no signing key")?,
        )?;
        let worker =
            deploy_worker::Worker::new(opts, deploy_artifact::Store::open(&location)?, key)?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker.run(stop.clone()));
        self.workers.insert(id.to_string(), (stop, task));
        Ok(())
    }

    /// Stops an in-process worker (its running build's processes are killed).
    pub async fn stop_worker(&mut self, id: &str) -> anyhow::Result<()> {
        let (stop, task) = self.workers.remove(id).context("worker not running")?;
        stop.cancel();
        let _ = task.await;
        Ok(())
    }

    /// A region's store, as the cluster's nodes see it.
    pub fn store(&self, region: &str) -> anyhow::Result<deploy_artifact::Store> {
        let location = self
            .config
            .store_location(region, self.dir.path())
            .context("no such region")?;
        Ok(deploy_artifact::Store::open(&location)?)
    }

    pub fn node(&self, name: &str) -> anyhow::Result<&RunningNode> {
        self.nodes
            .get(name)
            .context("unknown node")?
            .as_ref()
            .context("node is down")
    }

    /// A client over every node's endpoint.
    pub fn client(&self) -> anyhow::Result<Client> {
        crate::client_for(self.dir.path(), self.node_addrs())
    }

    /// Every coordinator node's address (not the relays').
    pub fn node_addrs(&self) -> Vec<String> {
        self.nodes
            .keys()
            .filter_map(|n| self.addrs.get(n).cloned())
            .collect()
    }

    /// The addresses of a region's nodes.
    pub fn region_addrs(&self, region: &str) -> Vec<String> {
        self.config.region_addrs(region)
    }

    /// A client that talks only to `name`.
    pub fn client_of(&self, name: &str) -> anyhow::Result<Client> {
        let addr = self.addrs.get(name).context("unknown node")?;
        crate::client_for(self.dir.path(), [addr.as_str()])
    }
}

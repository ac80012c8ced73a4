//! Nodes of one process, each serving real gRPC on its own loopback port.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use deploy_client::Client;
use deploy_coordinator::server::{launch, RunningNode};
use deploy_coordinator::NodeOptions;
use deploy_raft::network::ChannelPool;
use deploy_types::{ClusterConfig, NodeName};
use tempfile::TempDir;
use tokio::net::TcpListener;

pub struct GrpcCluster {
    dir: TempDir,
    pub config: Arc<ClusterConfig>,
    nodes: BTreeMap<String, Option<RunningNode>>,
    listeners: BTreeMap<String, TcpListener>,
    pub addrs: BTreeMap<String, String>,
}

impl GrpcCluster {
    /// A global group of `global` nodes `g1..`, and per region `(name, n)` nodes `<name>-1..`.
    pub async fn start(global: usize, regions: &[(&str, usize)]) -> anyhow::Result<Self> {
        Self::start_with_spares(global, regions, 0).await
    }

    /// As [`GrpcCluster::start`], plus `spares` nodes `s1..` that host the global group
    /// without being voters: they wait for `add-node`.
    pub async fn start_with_spares(
        global: usize,
        regions: &[(&str, usize)],
        spares: usize,
    ) -> anyhow::Result<Self> {
        crate::init_logging();
        let mut listeners = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        let bind = |id: String| async move {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            let addr = l.local_addr()?.to_string();
            anyhow::Ok((id, addr, l))
        };
        let mut g = Vec::new();
        for i in 1..=global {
            let (id, addr, l) = bind(format!("g{i}")).await?;
            g.push((id.clone(), addr.clone()));
            addrs.insert(id.clone(), addr);
            listeners.insert(id, l);
        }
        let mut r = Vec::new();
        for (name, n) in regions {
            let mut members = Vec::new();
            for i in 1..=*n {
                let (id, addr, l) = bind(format!("{name}-{i}")).await?;
                members.push((id.clone(), addr.clone()));
                addrs.insert(id.clone(), addr);
                listeners.insert(id, l);
            }
            r.push((*name, members));
        }
        let mut text = crate::config_toml(&g, &r, &crate::test_timing(5000, 1000));
        for i in 1..=spares {
            let (id, addr, l) = bind(format!("s{i}")).await?;
            text.push_str(&format!(
                "\n[[nodes]]\nid = \"{id}\"\naddr = \"{addr}\"\njoin = [\"global\"]\n"
            ));
            addrs.insert(id.clone(), addr);
            listeners.insert(id, l);
        }
        let config = Arc::new(ClusterConfig::parse(&text, "grpc test")?);
        let mut cluster = Self {
            dir: TempDir::new()?,
            config,
            nodes: addrs.keys().map(|k| (k.clone(), None)).collect(),
            listeners,
            addrs,
        };
        let names: Vec<String> = cluster.nodes.keys().cloned().collect();
        for n in names {
            cluster.start_node(&n).await?;
        }
        Ok(cluster)
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
        };
        let running = launch(
            self.config.clone(),
            NodeName::new(name)?,
            &options,
            listener,
            ChannelPool::tcp(),
        )
        .await
        .with_context(|| format!("start {name}"))?;
        self.nodes.insert(name.to_string(), Some(running));
        Ok(())
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

    pub fn node(&self, name: &str) -> anyhow::Result<&RunningNode> {
        self.nodes
            .get(name)
            .context("unknown node")?
            .as_ref()
            .context("node is down")
    }

    /// A client over every node's endpoint.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(self.addrs.values())?)
    }

    /// A client that talks only to `name`.
    pub fn client_of(&self, name: &str) -> anyhow::Result<Client> {
        Ok(Client::new([self
            .addrs
            .get(name)
            .context("unknown node")?])?)
    }
}

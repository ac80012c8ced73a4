//! Nodes of one process wired through the in-process [`Router`], each on its own RocksDB
//! directory. `crash` stops a node's groups and cuts it off; `restart` reopens it from the
//! same directory, as a restarted process would.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use deploy_coordinator::group::AnyGroup;
use deploy_coordinator::group::LeaderIs;
use deploy_coordinator::node::Hosted;
use deploy_coordinator::{GroupHandle, Node, NodeOptions};
use deploy_raft::network::ChannelPool;
use deploy_raft::GlobalTypes;
use deploy_state::{GlobalCommand, Response};
use deploy_types::{ClusterConfig, GroupName, NodeName};
use tempfile::TempDir;

use crate::router::Router;
use crate::wait_until;

pub struct InProcCluster {
    dir: TempDir,
    pub config: Arc<ClusterConfig>,
    routers: HashMap<GroupName, Router>,
    nodes: BTreeMap<NodeName, Option<Arc<Node>>>,
}

impl InProcCluster {
    /// A global group of `n` nodes `g1..gN`, snapshotting every `snapshot_every` logs and
    /// keeping `keep` logs behind each snapshot.
    pub async fn start(n: usize, snapshot_every: u64, keep: u64) -> anyhow::Result<Self> {
        crate::init_logging();
        // Addresses are never dialled: the router carries every message.
        let spec = crate::Spec::new(n).snapshots(snapshot_every, keep);
        let addrs = spec
            .node_names()
            .into_iter()
            .enumerate()
            .map(|(i, name)| (name, format!("127.0.0.1:{}", 1001 + i)))
            .collect();
        let dir = TempDir::new()?;
        let text = spec.toml(&addrs, dir.path())?;
        let config = Arc::new(ClusterConfig::parse(&text, "in-process test")?);
        let mut cluster = Self {
            dir,
            routers: config
                .groups()
                .map(|g| (g.clone(), Router::default()))
                .collect(),
            nodes: config
                .nodes()
                .iter()
                .map(|n| (n.id.clone(), None))
                .collect(),
            config,
        };
        let names: Vec<NodeName> = cluster.nodes.keys().cloned().collect();
        for name in names {
            cluster.restart(name.as_str()).await?;
        }
        Ok(cluster)
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.keys().map(|n| n.to_string()).collect()
    }

    fn name(name: &str) -> anyhow::Result<NodeName> {
        Ok(NodeName::new(name)?)
    }

    pub fn router(&self, group: &GroupName) -> &Router {
        &self.routers[group]
    }

    /// (Re)starts a node from its data directory.
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let me = Self::name(name)?;
        if self.nodes.get(&me).context("unknown node")?.is_some() {
            bail!("node {name} is already running");
        }
        let options = NodeOptions {
            data_dir: self.dir.path().join(name),
            store_base: self.dir.path().to_path_buf(),
            transport: deploy_tls::Transport::Plain,
            seams: Default::default(),
        };
        let routers = self.routers.clone();
        let id = me.raft_id();
        // The previous incarnation's RocksDB lock is released once its tasks have ended.
        let node = wait_until(
            Duration::from_secs(10),
            "the node's store to reopen",
            || {
                let routers = routers.clone();
                let config = self.config.clone();
                let me = me.clone();
                let options = options.clone();
                async move {
                    Node::start(config, me, &options, ChannelPool::tcp(), |g| {
                        routers[g].network(id)
                    })
                    .await
                    .ok()
                }
            },
        )
        .await?;
        for g in node.groups() {
            match g {
                AnyGroup::Global(h) => self.routers[&h.name].add(id, h.raft.clone()),
                AnyGroup::Region(h) => self.routers[&h.name].add(id, h.raft.clone()),
            }
        }
        self.nodes.insert(me, Some(node));
        Ok(())
    }

    /// Stops a node's groups and removes it from the network. Its data stays on disk.
    pub async fn crash(&mut self, name: &str) -> anyhow::Result<()> {
        let me = Self::name(name)?;
        let node = self
            .nodes
            .get_mut(&me)
            .context("unknown node")?
            .take()
            .context("node is not running")?;
        for r in self.routers.values() {
            r.remove(me.raft_id());
        }
        node.shutdown().await;
        Ok(())
    }

    /// A node's handle on `group`, which must be the global group: the only one this cluster
    /// runs.
    pub fn group(&self, name: &str, group: &GroupName) -> anyhow::Result<GroupHandle<GlobalTypes>> {
        let me = Self::name(name)?;
        let node = self
            .nodes
            .get(&me)
            .context("unknown node")?
            .as_ref()
            .context("node is down")?;
        GlobalTypes::hosted(node, group)
            .cloned()
            .context("group not hosted (an in-process cluster runs only the global group)")
    }

    fn running(&self) -> impl Iterator<Item = (&NodeName, &Arc<Node>)> {
        self.nodes
            .iter()
            .filter_map(|(n, node)| node.as_ref().map(|node| (n, node)))
    }

    /// The running node that leads `group`, once a majority of running nodes agree on it.
    pub async fn leader(&self, group: &GroupName, within: Duration) -> anyhow::Result<String> {
        wait_until(within, &format!("a leader of {group}"), || async {
            let mut votes: BTreeMap<u64, (usize, u64)> = BTreeMap::new();
            let mut leader_here = None;
            for (name, node) in self.running() {
                let m = node.group(group)?.metrics();
                if let Some(l) = m.current_leader {
                    let e = votes.entry(l).or_default();
                    e.0 += 1;
                    e.1 = e.1.max(m.current_term);
                }
                if m.state == openraft::ServerState::Leader {
                    leader_here = Some((name.clone(), m.id));
                }
            }
            let (name, id) = leader_here?;
            let agree = votes.get(&id).map(|v| v.0).unwrap_or(0);
            (agree * 2 > self.nodes.len()).then(|| name.to_string())
        })
        .await
    }

    /// Writes through whichever node leads; returns the committed log index.
    pub async fn write(&self, group: &GroupName, key: &str, value: &str) -> anyhow::Result<u64> {
        let leader = self.leader(group, Duration::from_secs(10)).await?;
        self.write_on(&leader, group, key, value).await
    }

    /// Writes on a given node, which must be the leader.
    pub async fn write_on(
        &self,
        name: &str,
        group: &GroupName,
        key: &str,
        value: &str,
    ) -> anyhow::Result<u64> {
        let handle = self.group(name, group)?;
        let cmd = GlobalCommand::SetMeta {
            key: key.into(),
            value: Some(value.into()),
        };
        match handle.write(cmd).await {
            Ok((index, Response::MetaSet { .. })) => Ok(index),
            Ok((_, other)) => bail!("unexpected response {other:?}"),
            Err(Ok(LeaderIs::At { name: l, .. })) => bail!("{name} is not the leader; {l} is"),
            Err(Ok(LeaderIs::Here)) => bail!("{name} refused its own write"),
            Err(Err(e)) => bail!("{e}"),
        }
    }

    /// A node's applied value of `key`, without any leadership check.
    pub fn read_local(
        &self,
        name: &str,
        group: &GroupName,
        key: &str,
    ) -> anyhow::Result<Option<String>> {
        let h = self.group(name, group)?;
        Ok(h.get_meta(key).0)
    }

    /// Waits until `name` has applied at least `index`.
    pub async fn wait_applied(
        &self,
        name: &str,
        group: &GroupName,
        index: u64,
        within: Duration,
    ) -> anyhow::Result<()> {
        let h = self.group(name, group)?;
        h.raft
            .wait(Some(within))
            .applied_index_at_least(Some(index), "applied")
            .await
            .with_context(|| {
                format!("{name} did not apply index {index} of {group} within {within:?}")
            })?;
        Ok(())
    }
}

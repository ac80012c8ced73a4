//! A coordinator node: the set of groups one process hosts, and their bootstrap.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deploy_raft::network::ChannelPool;
use deploy_raft::{
    raft_config, store, DeployNode, GlobalTypes, GroupTypes, NodeId, Raft, RegionTypes,
};
use deploy_types::{ClusterConfig, GroupName, NodeName};
use openraft::error::{InitializeError, RaftError};
use openraft::RaftNetworkFactory;
use tracing::{info, instrument, warn};

use deploy_artifact::{Store, TrustedKeys};

use crate::group::{AnyGroup, GroupHandle};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {0} is not declared in the cluster config")]
    UnknownNode(String),
    #[error("node {0} hosts no group: it is neither a voter of one nor joins one")]
    NoGroups(String),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("group {group}: cannot open its store in {path}: {source}")]
    Store {
        group: GroupName,
        path: String,
        #[source]
        source: Box<openraft::StorageError<NodeId>>,
    },
    #[error("group {group}: invalid raft timing: {source}")]
    RaftConfig {
        group: GroupName,
        #[source]
        source: openraft::ConfigError,
    },
    #[error("group {group}: raft failed: {message}")]
    Raft { group: GroupName, message: String },
    #[error("cannot set up artifacts: {0}")]
    Stores(String),
}

/// Where a node keeps its data.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// One RocksDB directory per group is made under it.
    pub data_dir: PathBuf,
    /// Relative store paths of the config are resolved against it.
    pub store_base: PathBuf,
    /// How it serves and reaches its peers: plain TCP, or mutual TLS with its certificate.
    pub transport: deploy_tls::Transport,
    /// Faults a test binary injects (see [`crate::seams`]); empty in `deployd`.
    pub seams: crate::seams::Seams,
}

/// The groups hosted by one coordinator node.
pub struct Node {
    pub me: NodeName,
    pub config: Arc<ClusterConfig>,
    /// The global group, when this node is one of its members.
    global: Option<GroupHandle<GlobalTypes>>,
    /// The regional groups this node is a member of.
    regions: BTreeMap<GroupName, GroupHandle<RegionTypes>>,
    /// Channels to other nodes, for forwarding requests and asking their status.
    pub pool: ChannelPool,
    /// Every region's artifact store, by region name.
    pub stores: BTreeMap<String, Store>,
    /// The keys whose manifest signatures this cluster accepts.
    pub trusted: TrustedKeys,
    /// Host reports held while this node leads a region (soft state, never persisted).
    pub reports: crate::reports::Reports,
    /// How far each region applied the global decisions, seen from its pulls (soft state).
    pub pulls: crate::pulls::Pulls,
    /// The running builds' leases as this node, leading the global group, watched them.
    pub leases: crate::lease_watch::LeaseWatch,
    /// Chunks this node served from its region's store over HTTP.
    pub chunk_reads: std::sync::atomic::AtomicU64,
    /// Event counts for `/metrics`.
    pub metrics: crate::metrics::NodeMetrics,
    /// Plain TCP, or mutual TLS (then internal calls need a cluster certificate).
    pub transport: deploy_tls::Transport,
    /// Connections its TLS listener refused.
    pub refused: Arc<deploy_tls::listener::Refused>,
    /// Bounds on clients' calls and streams.
    pub limits: crate::limits::Limits,
    stopping: tokio::sync::watch::Sender<bool>,
    /// Faults a test binary injected; none in `deployd`.
    pub seams: crate::seams::Seams,
}

impl Node {
    /// Opens every group this node hosts and starts its `Raft`. `network` makes each group's
    /// Raft network: gRPC in production, an in-process router in some tests.
    #[instrument(skip_all, fields(node = %me))]
    pub async fn start<N>(
        config: Arc<ClusterConfig>,
        me: NodeName,
        options: &NodeOptions,
        pool: ChannelPool,
        network: impl Fn(&GroupName) -> N,
    ) -> Result<Arc<Node>, NodeError>
    where
        N: RaftNetworkFactory<GlobalTypes> + RaftNetworkFactory<RegionTypes>,
    {
        if config.node(&me).is_none() {
            return Err(NodeError::UnknownNode(me.to_string()));
        }
        let hosted = config.groups_of(&me);
        if hosted.is_empty() {
            return Err(NodeError::NoGroups(me.to_string()));
        }
        let trusted = TrustedKeys::parse(&config.signing.trusted_keys)
            .map_err(|e| NodeError::Stores(e.to_string()))?;
        let mut stores = BTreeMap::new();
        for region in config.regions() {
            let location = config
                .store_location(region, &options.store_base)
                .ok_or_else(|| NodeError::UnknownNode(region.to_string()))?;
            let store = Store::open(&location).map_err(|e| NodeError::Stores(e.to_string()))?;
            stores.insert(region.to_string(), store);
        }
        if options.seams.any() {
            tracing::warn!(node = %me, seams = ?options.seams, "this node runs with injected faults: a test binary, never for real use");
        }
        let (mut global, mut regions) = (None, BTreeMap::new());
        for group in hosted {
            let (dir, net) = (&options.data_dir, network(&group));
            if group == GroupName::Global {
                global = Some(start_group(&config, &me, dir, &group, net).await?);
            } else {
                let handle = start_group(&config, &me, dir, &group, net).await?;
                regions.insert(group, handle);
            }
        }
        Ok(Arc::new(Node {
            me,
            config,
            global,
            regions,
            pool,
            stores,
            trusted,
            reports: Default::default(),
            pulls: Default::default(),
            leases: Default::default(),
            chunk_reads: Default::default(),
            metrics: Default::default(),
            transport: options.transport.clone(),
            refused: Default::default(),
            limits: Default::default(),
            stopping: tokio::sync::watch::channel(false).0,
            seams: options.seams.clone(),
        }))
    }

    /// A hosted group of either kind, by name.
    pub fn group(&self, name: &GroupName) -> Option<AnyGroup<'_>> {
        match name {
            GroupName::Global => self.global.as_ref().map(AnyGroup::Global),
            GroupName::Region(_) => self.regions.get(name).map(AnyGroup::Region),
        }
    }

    /// Every hosted group, the global one first.
    pub fn groups(&self) -> impl Iterator<Item = AnyGroup<'_>> {
        let global = self.global.iter().map(AnyGroup::Global);
        global.chain(self.regions.values().map(AnyGroup::Region))
    }

    /// The global group, when this node hosts it.
    pub fn global(&self) -> Option<&GroupHandle<GlobalTypes>> {
        self.global.as_ref()
    }

    /// A hosted regional group, by its group name.
    pub fn region(&self, name: &GroupName) -> Option<&GroupHandle<RegionTypes>> {
        self.regions.get(name)
    }

    /// Every hosted regional group.
    pub fn regions(&self) -> impl Iterator<Item = &GroupHandle<RegionTypes>> {
        self.regions.values()
    }

    /// Resolves once [`Node::shutdown`] has begun; background loops select on it.
    pub async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub fn store(&self, region: &str) -> Option<&Store> {
        self.stores.get(region)
    }

    /// Resolves when a hosted group's `Raft` stops on its own (a storage error: a full or
    /// failing disk), naming the group and why. Such a replica serves nothing until its
    /// process restarts and reopens its store, so `deployd node` exits on it and lets its
    /// supervisor restart it: crash-only, recovering from what is on disk.
    pub async fn failed(&self) -> (GroupName, String) {
        let waits = self.groups().map(|g| {
            let mut rx = g.watch();
            let name = g.name().clone();
            Box::pin(async move {
                loop {
                    if let Err(fatal) = &rx.borrow_and_update().running_state {
                        if !matches!(fatal, openraft::error::Fatal::Stopped) {
                            return (name, fatal.to_string());
                        }
                    }
                    if rx.changed().await.is_err() {
                        // The Raft is gone: it stopped, normally or not.
                        let why = match &rx.borrow().running_state {
                            Err(f) => f.to_string(),
                            Ok(()) => "its raft ended".to_string(),
                        };
                        return (name, why);
                    }
                }
            })
        });
        if self.groups().next().is_none() {
            return std::future::pending().await;
        }
        let stopping = self.stopped();
        tokio::select! {
            (failed, _, _) = futures::future::select_all(waits) => failed,
            _ = stopping => std::future::pending().await,
        }
    }

    /// Stops every group's `Raft`. Data is already durable; this only ends the tasks.
    pub async fn shutdown(&self) {
        self.stopping.send_replace(true);
        for g in self.groups() {
            if let Err(e) = g.shutdown().await {
                warn!(group = %g.name(), error = %e, "raft shutdown failed");
            }
        }
    }
}

async fn start_group<C: GroupTypes, N>(
    config: &ClusterConfig,
    me: &NodeName,
    data_dir: &Path,
    group: &GroupName,
    network: N,
) -> Result<GroupHandle<C>, NodeError>
where
    N: RaftNetworkFactory<C>,
{
    let dir = data_dir.join(group.dir_name());
    std::fs::create_dir_all(&dir).map_err(|source| NodeError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    let (log, sm) = store::open::<C>(&dir).map_err(|source| NodeError::Store {
        group: group.clone(),
        path: dir.display().to_string(),
        source: Box::new(source),
    })?;
    let state = sm.reader();
    let raft_cfg =
        raft_config(&group.to_string(), &config.raft).map_err(|source| NodeError::RaftConfig {
            group: group.clone(),
            source,
        })?;
    let raft = Raft::new(me.raft_id(), raft_cfg, network, log, sm)
        .await
        .map_err(|e| NodeError::Raft {
            group: group.clone(),
            message: e.to_string(),
        })?;
    bootstrap(config, me, group, &raft).await?;
    Ok(GroupHandle::new(group.clone(), me.clone(), raft, state))
}

/// Initializes a group on its very first start. Only the group's designated bootstrapper (its
/// first configured voter) does it, and only while its own store is empty: nodes that start
/// all at once cannot form two clusters, and a restart never re-initializes.
async fn bootstrap<C: GroupTypes>(
    config: &ClusterConfig,
    me: &NodeName,
    group: &GroupName,
    raft: &Raft<C>,
) -> Result<(), NodeError> {
    if config.bootstrapper(group) != Some(me) {
        return Ok(());
    }
    let initialized = raft.is_initialized().await.map_err(|e| NodeError::Raft {
        group: group.clone(),
        message: e.to_string(),
    })?;
    if initialized {
        return Ok(());
    }
    let voters: BTreeMap<NodeId, DeployNode> = config
        .voters(group)
        .unwrap_or_default()
        .iter()
        .filter_map(|name| {
            config.node(name).map(|n| {
                (
                    name.raft_id(),
                    DeployNode {
                        name: name.to_string(),
                        addr: n.addr.clone(),
                    },
                )
            })
        })
        .collect();
    match raft.initialize(voters).await {
        Ok(()) => {
            info!(%group, "bootstrapped group");
            Ok(())
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(NodeError::Raft {
            group: group.clone(),
            message: e.to_string(),
        }),
    }
}

/// A kind of group as this node hosts it: how to find a hosted group of the kind by name.
/// Routing is generic over it, so a handler asking for the global group gets a handle that
/// takes only global commands.
pub trait Hosted: GroupTypes {
    fn hosted<'a>(node: &'a Node, group: &GroupName) -> Option<&'a GroupHandle<Self>>;

    /// The handle as a group of either kind.
    fn any(h: &GroupHandle<Self>) -> AnyGroup<'_>;
}

impl Hosted for GlobalTypes {
    fn hosted<'a>(node: &'a Node, group: &GroupName) -> Option<&'a GroupHandle<Self>> {
        match group {
            GroupName::Global => node.global(),
            GroupName::Region(_) => None,
        }
    }

    fn any(h: &GroupHandle<Self>) -> AnyGroup<'_> {
        AnyGroup::Global(h)
    }
}

impl Hosted for RegionTypes {
    fn hosted<'a>(node: &'a Node, group: &GroupName) -> Option<&'a GroupHandle<Self>> {
        node.region(group)
    }

    fn any(h: &GroupHandle<Self>) -> AnyGroup<'_> {
        AnyGroup::Region(h)
    }
}

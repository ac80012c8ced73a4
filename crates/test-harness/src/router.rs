//! An in-process Raft network: messages are method calls on the target's `Raft`, through a
//! router that can partition nodes, drop messages at random, and delay them.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::any::Any;

use deploy_raft::{DeployNode, GroupTypes, NodeId, Raft};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

#[derive(Default)]
struct State {
    /// Each node's `Raft<C>`, of the group's kind `C` (the router itself is kind-blind, so one
    /// closure can make the network of every group a node hosts).
    nodes: HashMap<NodeId, Arc<dyn Any + Send + Sync>>,
    /// Each node's side; nodes on different sides cannot talk. Absent means side 0.
    sides: HashMap<NodeId, u32>,
    /// Per mille of messages dropped.
    drop_per_mille: u32,
    delay: Duration,
    seq: u64,
}

/// The router of one group.
#[derive(Clone, Default)]
pub struct Router {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct Cut(String);
impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Cut {}

impl Router {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add<C: GroupTypes>(&self, id: NodeId, raft: Raft<C>) {
        self.lock().nodes.insert(id, Arc::new(raft));
    }

    /// Removes a node: messages to it fail as if its process were gone.
    pub fn remove(&self, id: NodeId) {
        self.lock().nodes.remove(&id);
    }

    /// Puts `minority` on one side and everyone else on the other.
    pub fn partition(&self, minority: &BTreeSet<NodeId>) {
        let mut s = self.lock();
        s.sides.clear();
        for id in minority {
            s.sides.insert(*id, 1);
        }
    }

    pub fn heal(&self) {
        let mut s = self.lock();
        s.sides.clear();
        s.drop_per_mille = 0;
        s.delay = Duration::ZERO;
    }

    /// Drops about `per_mille`/1000 of messages (deterministically spread).
    pub fn drop_messages(&self, per_mille: u32) {
        self.lock().drop_per_mille = per_mille.min(1000);
    }

    pub fn delay_messages(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    fn target<C: GroupTypes>(
        &self,
        from: NodeId,
        to: NodeId,
    ) -> Result<(Raft<C>, Duration), Unreachable> {
        let mut s = self.lock();
        let side = |id| s.sides.get(&id).copied().unwrap_or(0);
        if side(from) != side(to) {
            return Err(Unreachable::new(&Cut(format!(
                "partitioned: {from} -> {to}"
            ))));
        }
        s.seq = s.seq.wrapping_add(1);
        // A multiplicative hash spreads drops evenly without a random number generator.
        if s.drop_per_mille > 0
            && (s.seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) % 1000 < s.drop_per_mille as u64
        {
            return Err(Unreachable::new(&Cut(format!("dropped: {from} -> {to}"))));
        }
        match s.nodes.get(&to).and_then(|r| r.downcast_ref::<Raft<C>>()) {
            Some(r) => Ok((r.clone(), s.delay)),
            None => Err(Unreachable::new(&Cut(format!("node {to} is down")))),
        }
    }

    /// The network factory for node `from`.
    pub fn network(&self, from: NodeId) -> RouterNetwork {
        RouterNetwork {
            from,
            router: self.clone(),
        }
    }
}

pub struct RouterNetwork {
    from: NodeId,
    router: Router,
}

impl<C: GroupTypes> RaftNetworkFactory<C> for RouterNetwork {
    type Network = RouterConnection;
    async fn new_client(&mut self, target: NodeId, _node: &DeployNode) -> Self::Network {
        RouterConnection {
            from: self.from,
            to: target,
            router: self.router.clone(),
        }
    }
}

pub struct RouterConnection {
    from: NodeId,
    to: NodeId,
    router: Router,
}

impl RouterConnection {
    async fn target<C: GroupTypes, E: std::error::Error>(
        &self,
    ) -> Result<Raft<C>, RPCError<NodeId, DeployNode, RaftError<NodeId, E>>> {
        let (raft, delay) = self
            .router
            .target(self.from, self.to)
            .map_err(RPCError::Unreachable)?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(raft)
    }

    fn remote<E: std::error::Error>(
        &self,
        e: RaftError<NodeId, E>,
    ) -> RPCError<NodeId, DeployNode, RaftError<NodeId, E>> {
        match e {
            RaftError::Fatal(f) => RPCError::Network(NetworkError::new(&f)),
            e => RPCError::RemoteError(RemoteError::new(self.to, e)),
        }
    }
}

impl<C: GroupTypes> RaftNetwork<C> for RouterConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, DeployNode, RaftError<NodeId>>>
    {
        let raft = self.target::<C, _>().await?;
        raft.append_entries(rpc).await.map_err(|e| self.remote(e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, DeployNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let raft = self.target::<C, _>().await?;
        raft.install_snapshot(rpc).await.map_err(|e| self.remote(e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, DeployNode, RaftError<NodeId>>> {
        let raft = self.target::<C, _>().await?;
        raft.vote(rpc).await.map_err(|e| self.remote(e))
    }
}

//! One hosted Raft group: its `Raft` handle, its applied state, and what it reports.

use std::collections::BTreeMap;
use std::time::Duration;

use deploy_proto::v1::{Member, NodeStatusReply};
use deploy_raft::store::StateReader;
use deploy_raft::{DeployNode, GlobalTypes, GroupTypes, NodeId, Raft, RegionTypes};
use deploy_state::{Response, StateMachine};
use deploy_types::{GroupName, NodeName};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ServerState;

use crate::error::ApiError;

/// A member's role as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl Role {
    /// As the API shows it.
    pub fn to_proto(self) -> deploy_proto::v1::Role {
        use deploy_proto::v1::Role as Pb;
        match self {
            Role::Leader => Pb::Leader,
            Role::Follower => Pb::Follower,
            Role::Candidate => Pb::Candidate,
            Role::Learner => Pb::Learner,
            Role::Shutdown => Pb::Shutdown,
        }
    }
}

impl From<ServerState> for Role {
    fn from(s: ServerState) -> Self {
        match s {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        }
    }
}

/// Where a request for a group's leader must go.
#[derive(Debug, Clone)]
pub enum LeaderIs {
    /// This replica leads the group.
    Here,
    /// Another member leads it, at this address.
    At { name: String, addr: String },
}

/// What a write returns: the log index and the state machine's response, or where the leader
/// is (`Err(Ok)`), or why it failed.
pub type WriteResult = Result<(u64, Response), Result<LeaderIs, ApiError>>;

type PendingWrite<C> = (Cmd<C>, tokio::sync::oneshot::Sender<WriteResult>);

pub use deploy_raft::types::Cmd;

/// Batches proposed by one group at once, at most: while they commit, more writes queue up
/// and go together in the next batch.
const BATCHES_IN_FLIGHT: usize = 4;
/// The most one batch entry holds, encoded (a lone write larger than this goes alone): 256
/// writes of 64 KiB would otherwise make one entry of 16 MiB, which no AppendEntries can
/// split, to be sent, appended and synced within one heartbeat interval.
pub const MAX_BATCH_BYTES: usize = 512 * 1024;

/// A group hosted by this process, of kind `C` (global or regional): it takes only that
/// kind's commands.
pub struct GroupHandle<C: GroupTypes> {
    pub name: GroupName,
    pub me: NodeName,
    pub raft: Raft<C>,
    pub state: StateReader<C::State>,
    /// What failover knows beside openraft's metrics (see [`crate::failover`]).
    pub failover: std::sync::Arc<crate::failover::Failover>,
    writes: tokio::sync::mpsc::Sender<PendingWrite<C>>,
}

impl<C: GroupTypes> Clone for GroupHandle<C> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            me: self.me.clone(),
            raft: self.raft.clone(),
            state: self.state.clone(),
            failover: self.failover.clone(),
            writes: self.writes.clone(),
        }
    }
}

impl<C: GroupTypes> GroupHandle<C> {
    /// A handle on a started group; spawns its write batcher (it ends with the last handle).
    pub fn new(name: GroupName, me: NodeName, raft: Raft<C>, state: StateReader<C::State>) -> Self {
        let (writes, rx) = tokio::sync::mpsc::channel(4 * deploy_state::MAX_BATCH);
        let failover = std::sync::Arc::new(crate::failover::Failover::default());
        tokio::spawn(batch_writes::<C>(
            raft.clone(),
            name.clone(),
            rx,
            failover.clone(),
        ));
        Self {
            name,
            me,
            raft,
            state,
            failover,
            writes,
        }
    }

    pub fn metrics(&self) -> openraft::RaftMetrics<NodeId, DeployNode> {
        self.raft.metrics().borrow().clone()
    }

    /// The membership's nodes by id, and which are voters.
    pub fn members(&self) -> Vec<Member> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| Member {
                id: node.name.clone(),
                addr: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    fn node_of(&self, id: NodeId) -> Option<DeployNode> {
        let m = self.metrics();
        let node = m.membership_config.membership().get_node(&id).cloned();
        node
    }

    /// This replica's view of itself and the group.
    pub fn status(&self) -> NodeStatusReply {
        let m = self.metrics();
        let leader = m
            .current_leader
            .and_then(|id| self.node_of(id))
            .map(|n| n.name)
            .unwrap_or_default();
        NodeStatusReply {
            group: self.name.to_string(),
            node_id: self.me.to_string(),
            role: Role::from(m.state).to_proto() as i32,
            term: m.current_term,
            leader,
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            members: self.members(),
        }
    }

    /// Where the leader is, waiting up to `patience` for one to be elected.
    pub async fn leader(&self, patience: Duration) -> Result<LeaderIs, ApiError> {
        let found = self
            .raft
            .wait(Some(patience))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await;
        let m = match found {
            Ok(m) => m,
            Err(_) => {
                return Err(ApiError::Unavailable(format!(
                    "group {} has no leader (waited {} ms); is a majority of its voters up?",
                    self.name,
                    patience.as_millis()
                )))
            }
        };
        let Some(leader) = m.current_leader else {
            return Err(ApiError::Unavailable(format!(
                "group {} has no leader",
                self.name
            )));
        };
        if leader == m.id && m.state == ServerState::Leader {
            return Ok(LeaderIs::Here);
        }
        match m.membership_config.membership().get_node(&leader) {
            Some(node) => Ok(LeaderIs::At {
                name: node.name.clone(),
                addr: node.addr.clone(),
            }),
            None => Err(ApiError::Unavailable(format!(
                "group {}: the leader is not in this replica's membership yet",
                self.name
            ))),
        }
    }

    /// Proposes a command on this replica, which must lead the group. `Err(Ok(leader))` means
    /// leadership moved and the caller should forward there.
    ///
    /// Writes proposed at the same time share one log entry (see [`batch_writes`]); each
    /// still gets its own response.
    pub async fn write(&self, cmd: Cmd<C>) -> WriteResult {
        if self.failover.handing_over() {
            return Err(Err(ApiError::Unavailable(format!(
                "group {}: this leader is stopping and hands its leadership over; retry",
                self.name
            ))));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gone = || {
            Err(Err(ApiError::Unavailable(format!(
                "group {} is shutting down",
                self.name
            ))))
        };
        if self.writes.send((cmd, tx)).await.is_err() {
            return gone();
        }
        rx.await.unwrap_or_else(|_| gone())
    }

    /// Waits until this replica applies something new or stops leading, or until `until`.
    pub async fn next_change(&self, until: tokio::time::Instant) {
        let mut rx = self.raft.metrics();
        let seen = rx.borrow().last_applied;
        let _ = tokio::time::timeout_at(
            until,
            rx.wait_for(|m| m.last_applied != seen || m.state != ServerState::Leader),
        )
        .await;
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Proposes a command on this replica, which must lead the group. A leadership change in
    /// between is `Unavailable`: the command was not appended, and a retry finds the new leader.
    pub async fn propose(&self, cmd: Cmd<C>) -> Result<(u64, Response), ApiError> {
        match self.write(cmd).await {
            Ok(r) => Ok(r),
            Err(Ok(LeaderIs::At { name, .. })) => Err(ApiError::Unavailable(format!(
                "group {}: leadership moved to {name} before the write was accepted; retry",
                self.name
            ))),
            Err(Ok(LeaderIs::Here)) => {
                Err(ApiError::Internal("write refused by its own leader".into()))
            }
            Err(Err(e)) => Err(e),
        }
    }

    /// Confirms this replica still leads (a quorum acknowledges it) and that the state machine
    /// has applied everything committed before the call: a linearizable read point.
    pub async fn linearizable(&self) -> Result<(), Result<LeaderIs, ApiError>> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => match f.leader_node
            {
                Some(node) => Err(Ok(LeaderIs::At {
                    name: node.name,
                    addr: node.addr,
                })),
                None => Err(Err(ApiError::Unavailable(format!(
                    "group {} is electing a leader; retry",
                    self.name
                )))),
            },
            Err(RaftError::APIError(e)) => Err(Err(ApiError::Unavailable(format!(
                "group {}: {e}",
                self.name
            )))),
            Err(e) => Err(Err(ApiError::Internal(format!("group {}: {e}", self.name)))),
        }
    }

    /// Sets or deletes a metadata key, checked against the state before it is proposed.
    pub async fn set_meta(
        &self,
        key: String,
        value: Option<String>,
        request_id: &str,
    ) -> WriteResult {
        let cmd = crate::request_id::once::<C::State>(request_id, C::State::set_meta(key, value))
            .map_err(Err)?;
        self.state
            .read(|d| d.state.check(&cmd))
            .map_err(|e| Err(ApiError::InvalidArgument(e.to_string())))?;
        self.write(cmd).await
    }

    /// Whether the write named `request_id` applied (and is still remembered).
    pub fn request_seen(&self, request_id: &str) -> bool {
        self.state
            .read(|d| d.state.once_table().get(request_id).is_some())
    }

    /// Records that the change named `request_id`, made outside the state (membership),
    /// is done: a repeat of it then finds it so.
    pub async fn mark_request(&self, request_id: &str) -> WriteResult {
        let marker = crate::request_id::once::<C::State>(request_id, C::State::batch(Vec::new()))
            .map_err(Err)?;
        self.write(marker).await
    }

    /// A metadata key's value and the index it was read at.
    pub fn get_meta(&self, key: &str) -> (Option<String>, u64) {
        self.state.read(|d| {
            (
                d.state.get_meta(key).map(str::to_string),
                d.last_applied.map(|l| l.index).unwrap_or(0),
            )
        })
    }

    /// Voters and learners by id, for membership changes.
    pub fn membership_nodes(&self) -> BTreeMap<NodeId, DeployNode> {
        let m = self.metrics();
        let nodes = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect();
        nodes
    }
}

/// Proposes one command, as openraft answers it.
async fn write_one<C: GroupTypes>(raft: &Raft<C>, group: &GroupName, cmd: Cmd<C>) -> WriteResult {
    match raft.client_write(cmd).await {
        Ok(resp) => Ok((resp.log_id.index, resp.data)),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => match f.leader_node {
            Some(node) => Err(Ok(LeaderIs::At {
                name: node.name,
                addr: node.addr,
            })),
            None => Err(Err(ApiError::Unavailable(format!(
                "group {group} is electing a leader; retry"
            )))),
        },
        Err(e) => Err(Err(ApiError::Internal(format!("group {group}: {e}")))),
    }
}

/// Group commit above Raft: takes the writes waiting, proposes them as one
/// batch entry ([`StateMachine::batch`]) (a lone write goes as itself), and hands each its own response.
/// At most [`BATCHES_IN_FLIGHT`] batches commit at once; under load the queue grows while
/// they do, so each disk sync on each member commits many client writes instead of one.
async fn batch_writes<C: GroupTypes>(
    raft: Raft<C>,
    group: GroupName,
    mut rx: tokio::sync::mpsc::Receiver<PendingWrite<C>>,
    failover: std::sync::Arc<crate::failover::Failover>,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    // A write that would have made the last batch too large: the next batch's first.
    let mut carried: Option<PendingWrite<C>> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = deploy_raft::codec::encoded_len(&first.0);
        let mut batch = vec![first];
        while batch.len() < deploy_state::MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => {
                    let n = deploy_raft::codec::encoded_len(&p.0);
                    if bytes.saturating_add(n) > MAX_BATCH_BYTES {
                        carried = Some(p);
                        break;
                    }
                    bytes += n;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        // Writes queued before a handover began are refused too: the log must stop growing
        // once the successor is chosen, or it would lack an entry and lose the vote.
        if failover.handing_over() {
            let e = ApiError::Unavailable(format!(
                "group {group}: this leader is stopping and hands its leadership over; retry"
            ));
            for (_, tx) in batch {
                let _ = tx.send(Err(Err(e.clone())));
            }
            continue;
        }
        let (raft, group) = (raft.clone(), group.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if batch.len() == 1 {
                let Some((cmd, tx)) = batch.pop() else { return };
                let _ = tx.send(write_one(&raft, &group, cmd).await);
                return;
            }
            let (cmds, waiters): (Vec<Cmd<C>>, Vec<_>) = batch.into_iter().unzip();
            let n = cmds.len();
            match write_one(&raft, &group, C::State::batch(cmds)).await {
                Ok((index, Response::Batch(responses))) if responses.len() == n => {
                    for (tx, r) in waiters.into_iter().zip(responses) {
                        let _ = tx.send(Ok((index, r)));
                    }
                }
                Ok((_, other)) => {
                    let e = ApiError::Internal(format!(
                        "group {group}: a batch of {n} was answered {other:?}"
                    ));
                    for tx in waiters {
                        let _ = tx.send(Err(Err(e.clone())));
                    }
                }
                Err(e) => {
                    for tx in waiters {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// A hosted group of either kind, for what every group answers alike: status, membership,
/// metadata and the Raft RPCs. What only one kind does goes through its typed handle.
#[derive(Clone, Copy)]
pub enum AnyGroup<'a> {
    Global(&'a GroupHandle<GlobalTypes>),
    Region(&'a GroupHandle<RegionTypes>),
}

/// `$e` with `$h` bound to the typed handle of `$g` (an [`AnyGroup`]), for either kind.
macro_rules! each {
    ($g:expr, $h:ident => $e:expr) => {
        match $g {
            $crate::group::AnyGroup::Global($h) => $e,
            $crate::group::AnyGroup::Region($h) => $e,
        }
    };
}
pub(crate) use each;

impl<'a> AnyGroup<'a> {
    pub fn name(&self) -> &'a GroupName {
        each!(*self, h => &h.name)
    }

    pub fn metrics(&self) -> openraft::RaftMetrics<NodeId, DeployNode> {
        each!(self, h => h.metrics())
    }

    /// The group's metrics as they change.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, DeployNode>> {
        each!(self, h => h.raft.metrics())
    }

    pub fn members(&self) -> Vec<Member> {
        each!(self, h => h.members())
    }

    /// What the group's store measures about itself.
    pub fn stats(&self) -> &'a deploy_raft::stats::StoreStats {
        each!(*self, h => h.state.stats())
    }

    pub fn status(&self) -> NodeStatusReply {
        each!(self, h => h.status())
    }

    pub fn is_leader(&self) -> bool {
        each!(self, h => h.is_leader())
    }

    pub fn membership_nodes(&self) -> BTreeMap<NodeId, DeployNode> {
        each!(self, h => h.membership_nodes())
    }

    pub async fn leader(&self, patience: Duration) -> Result<LeaderIs, ApiError> {
        each!(self, h => h.leader(patience).await)
    }

    pub async fn linearizable(&self) -> Result<(), Result<LeaderIs, ApiError>> {
        each!(self, h => h.linearizable().await)
    }

    /// Adds `node` as a learner and waits until it has caught up.
    pub async fn add_learner(&self, id: NodeId, node: DeployNode) -> Result<(), String> {
        each!(self, h => h.raft.add_learner(id, node, true).await.map(|_| ()).map_err(|e| e.to_string()))
    }

    /// Changes the membership and answers the log index of the change.
    pub async fn change_membership(
        &self,
        change: openraft::ChangeMembers<NodeId, DeployNode>,
    ) -> Result<u64, String> {
        each!(self, h => h
            .raft
            .change_membership(change, false)
            .await
            .map(|r| r.log_id.index)
            .map_err(|e| e.to_string()))
    }

    /// Sets or deletes a metadata key, checked against the state before it is proposed.
    pub async fn set_meta(
        &self,
        key: String,
        value: Option<String>,
        request_id: &str,
    ) -> WriteResult {
        each!(self, h => h.set_meta(key, value, request_id).await)
    }

    /// A metadata key's value and the index it was read at.
    pub fn get_meta(&self, key: &str) -> (Option<String>, u64) {
        each!(self, h => h.get_meta(key))
    }

    pub fn request_seen(&self, request_id: &str) -> bool {
        each!(self, h => h.request_seen(request_id))
    }

    pub async fn mark_request(&self, request_id: &str) -> WriteResult {
        each!(self, h => h.mark_request(request_id).await)
    }

    /// Stops the group's `Raft`.
    pub async fn shutdown(&self) -> Result<(), String> {
        each!(self, h => h.raft.shutdown().await.map_err(|e| e.to_string()))
    }
}

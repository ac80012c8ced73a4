//! One hosted Raft group: its `Raft` handle, its applied state, and what it reports.

use std::collections::BTreeMap;
use std::time::Duration;

use deploy_proto::v1::{Member, NodeStatusReply};
use deploy_raft::store::StateReader;
use deploy_raft::{DeployNode, NodeId, Raft};
use deploy_state::{Command, Response};
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
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "LEADER",
            Role::Follower => "FOLLOWER",
            Role::Candidate => "CANDIDATE",
            Role::Learner => "LEARNER",
            Role::Shutdown => "SHUTDOWN",
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

type PendingWrite = (Command, tokio::sync::oneshot::Sender<WriteResult>);

/// Batches proposed by one group at once, at most: while they commit, more writes queue up
/// and go together in the next batch.
const BATCHES_IN_FLIGHT: usize = 4;

/// A group hosted by this process.
#[derive(Clone)]
pub struct GroupHandle {
    pub name: GroupName,
    pub me: NodeName,
    pub raft: Raft,
    pub state: StateReader,
    writes: tokio::sync::mpsc::Sender<PendingWrite>,
}

impl GroupHandle {
    /// A handle on a started group; spawns its write batcher (it ends with the last handle).
    pub fn new(name: GroupName, me: NodeName, raft: Raft, state: StateReader) -> Self {
        let (writes, rx) = tokio::sync::mpsc::channel(4 * deploy_state::MAX_BATCH);
        tokio::spawn(batch_writes(raft.clone(), name.clone(), rx));
        Self {
            name,
            me,
            raft,
            state,
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
            role: Role::from(m.state).as_str().to_string(),
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
    pub async fn write(&self, cmd: Command) -> WriteResult {
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
    pub async fn propose(&self, cmd: Command) -> Result<(u64, Response), ApiError> {
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
async fn write_one(raft: &Raft, group: &GroupName, cmd: Command) -> WriteResult {
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
/// [`Command::Batch`] entry (a lone write goes as itself), and hands each its own response.
/// At most [`BATCHES_IN_FLIGHT`] batches commit at once; under load the queue grows while
/// they do, so each disk sync on each member commits many client writes instead of one.
async fn batch_writes(
    raft: Raft,
    group: GroupName,
    mut rx: tokio::sync::mpsc::Receiver<PendingWrite>,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < deploy_state::MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (raft, group) = (raft.clone(), group.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if batch.len() == 1 {
                let Some((cmd, tx)) = batch.pop() else { return };
                let _ = tx.send(write_one(&raft, &group, cmd).await);
                return;
            }
            let (cmds, waiters): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
            let n = cmds.len();
            match write_one(&raft, &group, Command::Batch(cmds)).await {
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

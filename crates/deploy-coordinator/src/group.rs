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
pub enum LeaderIs {
    /// This replica leads the group.
    Here,
    /// Another member leads it, at this address.
    At { name: String, addr: String },
}

/// A group hosted by this process.
#[derive(Clone)]
pub struct GroupHandle {
    pub name: GroupName,
    pub me: NodeName,
    pub raft: Raft,
    pub state: StateReader,
}

impl GroupHandle {
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
    pub async fn write(&self, cmd: Command) -> Result<(u64, Response), Result<LeaderIs, ApiError>> {
        match self.raft.client_write(cmd).await {
            Ok(resp) => Ok((resp.log_id.index, resp.data)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => match f.leader_node {
                Some(node) => Err(Ok(LeaderIs::At {
                    name: node.name,
                    addr: node.addr,
                })),
                None => Err(Err(ApiError::Unavailable(format!(
                    "group {} is electing a leader; retry",
                    self.name
                )))),
            },
            Err(e) => Err(Err(ApiError::Internal(format!("group {}: {e}", self.name)))),
        }
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

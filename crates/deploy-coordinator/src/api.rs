//! The public cluster API.
//!
//! Any node answers any request. Writes and linearizable reads must run on the leader of the
//! group they name: a node that is not that leader forwards the request to it (at most
//! [`crate::routing::MAX_HOPS`] times, so a confused membership cannot bounce a request forever). Stale reads
//! are answered by whichever replica receives them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use deploy_proto::v1::cluster_service_client::ClusterServiceClient;
use deploy_proto::v1::cluster_service_server::ClusterService;
use deploy_proto::v1::{
    AddNodeRequest, ClusterStatus, ClusterStatusRequest, GetMetaReply, GetMetaRequest, GroupStatus,
    Member, MemberStatus, MembershipReply, RemoveNodeRequest, SetMetaReply, SetMetaRequest,
};
use deploy_raft::DeployNode;
use deploy_state::Response as SmResponse;
use deploy_types::{check_addr, GroupName, NodeName};
use openraft::ChangeMembers;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use crate::error::ApiError;
use crate::group::{AnyGroup, LeaderIs};
use crate::node::Node;
use crate::routing::{forwarded, hops, parse_group, Route, Routing};

/// How long a new node may take to catch up before it is made a voter.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct ClusterApi {
    node: Arc<Node>,
    routing: Routing,
}

impl ClusterApi {
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            routing: Routing::new(node.clone()),
            node,
        }
    }

    fn forward_client(&self, addr: &str) -> Result<ClusterServiceClient<Channel>, ApiError> {
        Ok(ClusterServiceClient::new(self.routing.channel(addr)?))
    }

    /// Status of one group, asking every member for its own view.
    async fn group_status(&self, group: &GroupName) -> GroupStatus {
        let mut members: Vec<Member> = match self.node.group(group) {
            Some(h) => h.members(),
            None => Vec::new(),
        };
        if members.is_empty() {
            for (_, addr) in self.routing.configured_addrs(group) {
                if let Ok(s) = self.routing.peer_status(&addr, group).await {
                    members = s.members;
                    break;
                }
            }
        }
        if members.is_empty() {
            members = self
                .routing
                .configured_addrs(group)
                .into_iter()
                .map(|(id, addr)| Member {
                    id,
                    addr,
                    voter: true,
                })
                .collect();
        }
        let queries = members.iter().map(|m| async move {
            let status = if m.id == self.node.me.as_str() {
                match self.node.group(group) {
                    Some(h) => Ok(h.status()),
                    None => Err(ApiError::NotFound("not hosted".into())),
                }
            } else {
                self.routing.peer_status(&m.addr, group).await
            };
            (m, status)
        });
        let mut results = futures::future::join_all(queries).await;
        results.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let mut out = GroupStatus {
            name: group.to_string(),
            ..Default::default()
        };
        for (m, status) in results {
            match status {
                Ok(s) => {
                    if s.role() == deploy_proto::v1::Role::Leader && s.term >= out.term {
                        out.leader = s.node_id.clone();
                    }
                    out.term = out.term.max(s.term);
                    out.members.push(MemberStatus {
                        id: m.id.clone(),
                        addr: m.addr.clone(),
                        role: s.role,
                        last_applied: s.last_applied,
                        error: String::new(),
                    });
                }
                Err(e) => out.members.push(MemberStatus {
                    id: m.id.clone(),
                    addr: m.addr.clone(),
                    role: deploy_proto::v1::Role::Unreachable as i32,
                    last_applied: 0,
                    error: e.to_string(),
                }),
            }
        }
        out
    }

    async fn set_meta_local(
        &self,
        group: AnyGroup<'_>,
        req: SetMetaRequest,
        hops: u32,
    ) -> Result<SetMetaReply, Status> {
        match group
            .set_meta(req.key.clone(), req.value.clone(), &req.request_id)
            .await
        {
            Ok((log_index, SmResponse::MetaSet { previous })) => Ok(SetMetaReply {
                log_index,
                previous,
                repeated: false,
            }),
            Ok((log_index, SmResponse::Repeated { .. })) => Ok(SetMetaReply {
                log_index,
                previous: None,
                repeated: true,
            }),
            Ok((_, SmResponse::Rejected(why))) => Err(ApiError::InvalidArgument(why).into()),
            Ok((_, other)) => {
                Err(ApiError::Internal(format!("unexpected response {other:?}")).into())
            }
            Err(Ok(LeaderIs::At { addr, .. })) => {
                self.routing.may_forward(hops)?;
                let r = self
                    .forward_client(&addr)?
                    .set_meta(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))?;
                Ok(r.into_inner())
            }
            Err(Ok(LeaderIs::Here)) => {
                Err(ApiError::Internal("write refused by its own leader".into()).into())
            }
            Err(Err(e)) => Err(e.into()),
        }
    }

    /// The group's membership, if the change named `request_id` was already made (a repeat
    /// whose first answer was lost).
    fn repeated(&self, group: AnyGroup<'_>, request_id: &str) -> Option<MembershipReply> {
        (!request_id.is_empty() && group.request_seen(request_id)).then(|| MembershipReply {
            group: group.name().to_string(),
            members: group.members(),
            log_index: group.metrics().last_applied.map_or(0, |l| l.index),
        })
    }

    /// Records a membership change as done under its request id. A failure is only logged:
    /// the change itself stands, and a repeat then finds the node as it asked (and says so).
    async fn mark(&self, group: AnyGroup<'_>, request_id: &str) {
        if request_id.is_empty() {
            return;
        }
        if let Err(e) = group.mark_request(request_id).await {
            tracing::warn!(group = %group.name(), error = ?e.err(), "cannot record the membership change's request id");
        }
    }

    /// Applies a membership change on the leader and reports the result.
    async fn change_membership(
        &self,
        group: AnyGroup<'_>,
        change: ChangeMembers<u64, DeployNode>,
    ) -> Result<MembershipReply, ApiError> {
        let log_index = group
            .change_membership(change)
            .await
            .map_err(|e| ApiError::FailedPrecondition(format!("group {}: {e}", group.name())))?;
        Ok(MembershipReply {
            group: group.name().to_string(),
            members: group.members(),
            log_index,
        })
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    #[instrument(skip_all)]
    async fn status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        let groups: Vec<GroupName> = self.node.config.groups().cloned().collect();
        let statuses = futures::future::join_all(groups.iter().map(|g| self.group_status(g))).await;
        Ok(Response::new(ClusterStatus { groups: statuses }))
    }

    #[instrument(skip_all, fields(group = %request.get_ref().group, node_id = %request.get_ref().node_id))]
    async fn add_node(
        &self,
        request: Request<AddNodeRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let group = parse_group(&req.group)?;
        let name = NodeName::new(req.node_id.clone())
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        check_addr(&req.addr).map_err(|e| {
            let shown: String = req.addr.chars().take(100).collect();
            ApiError::InvalidArgument(format!("addr {shown:?} {e}"))
        })?;
        let handle = match self.routing.route_any(&group, hops).await? {
            Route::Remote(addr) => {
                return self
                    .forward_client(&addr)?
                    .add_node(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s));
            }
            Route::Local(h) => h,
        };
        if let Some(done) = self.repeated(handle, &req.request_id) {
            return Ok(Response::new(done));
        }
        let id = name.raft_id();
        let nodes = handle.membership_nodes();
        let voters: BTreeSet<u64> = handle
            .metrics()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if voters.contains(&id) {
            return Err(ApiError::FailedPrecondition(format!(
                "{name} is already a voter of {group}"
            ))
            .into());
        }
        if let Some(existing) = nodes.get(&id) {
            if existing.addr != req.addr {
                return Err(ApiError::FailedPrecondition(format!(
                    "{name} is already a learner of {group} at {}; remove it first to change its address",
                    existing.addr
                ))
                .into());
            }
        }
        let node = DeployNode {
            name: name.to_string(),
            addr: req.addr.clone(),
        };
        info!(%group, node = %node, "adding learner");
        match tokio::time::timeout(CATCH_UP_TIMEOUT, handle.add_learner(id, node)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ApiError::FailedPrecondition(format!("group {group}: {e}")).into()),
            Err(_) => {
                return Err(ApiError::DeadlineExceeded(format!(
                    "{name} did not catch up with {group} within {CATCH_UP_TIMEOUT:?}; is `deployd node --id {name}` \
                     running with {group} in its `join` list? It stays a learner until add-node is run again"
                ))
                .into())
            }
        }
        info!(%group, node = %name, "promoting learner to voter");
        let reply = self
            .change_membership(handle, ChangeMembers::AddVoterIds(BTreeSet::from([id])))
            .await?;
        self.mark(handle, &req.request_id).await;
        Ok(Response::new(reply))
    }

    #[instrument(skip_all, fields(group = %request.get_ref().group, node_id = %request.get_ref().node_id))]
    async fn remove_node(
        &self,
        request: Request<RemoveNodeRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let group = parse_group(&req.group)?;
        let name = NodeName::new(req.node_id.clone())
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let handle = match self.routing.route_any(&group, hops).await? {
            Route::Remote(addr) => {
                return self
                    .forward_client(&addr)?
                    .remove_node(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s));
            }
            Route::Local(h) => h,
        };
        if let Some(done) = self.repeated(handle, &req.request_id) {
            return Ok(Response::new(done));
        }
        let id = name.raft_id();
        let nodes: BTreeMap<u64, DeployNode> = handle.membership_nodes();
        if !nodes.contains_key(&id) {
            return Err(ApiError::NotFound(format!("{name} is not a member of {group}")).into());
        }
        let voters: BTreeSet<u64> = handle
            .metrics()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(ApiError::FailedPrecondition(format!(
                    "{name} is the last voter of {group}"
                ))
                .into());
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        info!(%group, node = %name, "removing member");
        let reply = self.change_membership(handle, change).await?;
        self.mark(handle, &req.request_id).await;
        Ok(Response::new(reply))
    }

    #[instrument(skip_all, fields(group = %request.get_ref().group, key = %request.get_ref().key))]
    async fn set_meta(
        &self,
        request: Request<SetMetaRequest>,
    ) -> Result<Response<SetMetaReply>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let group = parse_group(&req.group)?;
        match self.routing.route_any(&group, hops).await? {
            Route::Local(h) => Ok(Response::new(self.set_meta_local(h, req, hops).await?)),
            Route::Remote(addr) => self
                .forward_client(&addr)?
                .set_meta(forwarded(req, hops))
                .await
                .map_err(|s| crate::routing::relay_error(&addr, s)),
        }
    }

    #[instrument(skip_all, fields(group = %request.get_ref().group, key = %request.get_ref().key))]
    async fn get_meta(
        &self,
        request: Request<GetMetaRequest>,
    ) -> Result<Response<GetMetaReply>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let group = parse_group(&req.group)?;
        let read = |h: AnyGroup<'_>| {
            let (value, applied_index) = h.get_meta(&req.key);
            GetMetaReply {
                value,
                applied_index,
            }
        };
        if req.stale {
            return match self.routing.any_replica_any(&group)? {
                Route::Local(h) => Ok(Response::new(read(h))),
                Route::Remote(addr) => {
                    self.routing.may_forward(hops)?;
                    self.forward_client(&addr)?
                        .get_meta(forwarded(req, hops))
                        .await
                        .map_err(|s| crate::routing::relay_error(&addr, s))
                }
            };
        }
        let addr = match self.routing.route_any(&group, hops).await? {
            Route::Local(h) => match h.linearizable().await {
                Ok(()) => return Ok(Response::new(read(h))),
                Err(Ok(LeaderIs::At { addr, .. })) => {
                    self.routing.may_forward(hops)?;
                    addr
                }
                Err(Ok(LeaderIs::Here)) => {
                    return Err(ApiError::Internal("leader refused its own read".into()).into())
                }
                Err(Err(e)) => return Err(e.into()),
            },
            Route::Remote(addr) => addr,
        };
        self.forward_client(&addr)?
            .get_meta(forwarded(req, hops))
            .await
            .map_err(|s| crate::routing::relay_error(&addr, s))
    }
}

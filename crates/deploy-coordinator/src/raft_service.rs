//! The internal Raft gRPC service: routes each request to the `Raft` of the group it names.

use std::sync::Arc;

use deploy_proto::v1::raft_service_server::RaftService;
use deploy_proto::v1::{
    NodeStatusReply, NodeStatusRequest, RaftReply, RaftRequest, TimeoutNowReply, TimeoutNowRequest,
};
use deploy_raft::codec;
use deploy_types::GroupName;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::group::{each, AnyGroup};
use crate::node::Node;

pub struct RaftServer {
    node: Arc<Node>,
}

impl RaftServer {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn group(&self, name: &str) -> Result<AnyGroup<'_>, Status> {
        let group: GroupName = name
            .parse()
            .map_err(|e: deploy_types::IdError| Status::invalid_argument(e.to_string()))?;
        self.node.group(&group).ok_or_else(|| {
            Status::not_found(format!("node {} does not host group {group}", self.node.me))
        })
    }
}

fn reply<T: Serialize>(result: &T) -> Result<Response<RaftReply>, Status> {
    let payload =
        codec::encode("raft reply", result).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftReply { payload }))
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Status> {
    codec::decode(what, bytes).map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        crate::peers::require(&self.node, &request, &[crate::peers::PeerKind::Node])?;
        let req = request.into_inner();
        let group = self.group(&req.group)?;
        each!(group, h => {
            h.failover.heard();
            let rpc = decode("append entries request", &req.payload)?;
            reply(&h.raft.append_entries(rpc).await)
        })
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        crate::peers::require(&self.node, &request, &[crate::peers::PeerKind::Node])?;
        let req = request.into_inner();
        let group = self.group(&req.group)?;
        each!(group, h => {
            let rpc = decode("vote request", &req.payload)?;
            reply(&h.raft.vote(rpc).await)
        })
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        crate::peers::require(&self.node, &request, &[crate::peers::PeerKind::Node])?;
        let req = request.into_inner();
        let group = self.group(&req.group)?;
        each!(group, h => {
            let rpc = decode("install snapshot request", &req.payload)?;
            reply(&h.raft.install_snapshot(rpc).await)
        })
    }

    async fn node_status(
        &self,
        request: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusReply>, Status> {
        crate::peers::require(&self.node, &request, &[crate::peers::PeerKind::Node])?;
        let group = self.group(&request.get_ref().group)?;
        Ok(Response::new(group.status()))
    }

    async fn timeout_now(
        &self,
        request: Request<TimeoutNowRequest>,
    ) -> Result<Response<TimeoutNowReply>, Status> {
        crate::peers::require(&self.node, &request, &[crate::peers::PeerKind::Node])?;
        let req = request.into_inner();
        let group = self.group(&req.group)?;
        crate::failover::timeout_now(group, req.term).await?;
        Ok(Response::new(TimeoutNowReply {}))
    }
}

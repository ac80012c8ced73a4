//! openraft's network over tonic.
//!
//! One HTTP/2 channel per peer address is shared by every group the two processes have in
//! common; each request names its group so the receiving process routes it to the right
//! `Raft`. How a channel is made is injected ([`ChannelFactory`]), so tests can run the same
//! code over loopback TCP, in-process, or under a network simulator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use deploy_proto::v1::raft_service_client::RaftServiceClient;
use deploy_proto::v1::RaftRequest;
use deploy_types::GroupName;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use crate::codec::{self, MAX_RECORD_BYTES};
use crate::types::{DeployNode, GroupTypes, NodeId};

/// Makes a gRPC channel to `addr` (`host:port`). Must not block: channels connect lazily.
pub type ChannelFactory =
    Arc<dyn Fn(&str) -> Result<Channel, tonic::transport::Error> + Send + Sync>;

/// Plain TCP channels with bounded connect and request times.
pub fn tcp_channel_factory() -> ChannelFactory {
    channel_factory(deploy_tls::Transport::Plain, None)
}

/// Channels over `transport` (plain TCP, or mutual TLS with this process's certificate),
/// every connection leaving from `source` when given (the node's `source_ip`: one
/// interface for cluster traffic, and what lets a fault-injecting proxy tell which node is
/// calling).
pub fn channel_factory(
    transport: deploy_tls::Transport,
    source: Option<std::net::IpAddr>,
) -> ChannelFactory {
    Arc::new(move |addr: &str| transport.channel(addr, source))
}

/// Channels by peer address, shared by all groups of a process.
#[derive(Clone)]
pub struct ChannelPool {
    factory: ChannelFactory,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl ChannelPool {
    pub fn new(factory: ChannelFactory) -> Self {
        Self {
            factory,
            channels: Arc::default(),
        }
    }

    pub fn tcp() -> Self {
        Self::new(tcp_channel_factory())
    }

    /// Channels over `transport`, leaving from `source` (see [`channel_factory`]).
    pub fn with_transport(
        transport: deploy_tls::Transport,
        source: Option<std::net::IpAddr>,
    ) -> Self {
        Self::new(channel_factory(transport, source))
    }

    /// The channel to `addr`, made on first use.
    pub fn get(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let ch = (self.factory)(addr)?;
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Drops every cached channel, so the next `get` asks the factory again (a test that
    /// changes what its factory connects to uses this).
    pub fn forget(&self) {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// A Raft service client to `addr` with the message size limits raised to the record limit.
    pub fn raft_client(
        &self,
        addr: &str,
    ) -> Result<RaftServiceClient<Channel>, tonic::transport::Error> {
        Ok(RaftServiceClient::new(self.get(addr)?)
            .max_decoding_message_size(MAX_RECORD_BYTES)
            .max_encoding_message_size(MAX_RECORD_BYTES))
    }
}

/// The `RaftNetworkFactory` of one group.
#[derive(Clone)]
pub struct GrpcNetwork {
    group: GroupName,
    pool: ChannelPool,
}

impl GrpcNetwork {
    pub fn new(group: GroupName, pool: ChannelPool) -> Self {
        Self { group, pool }
    }
}

impl<C: GroupTypes> RaftNetworkFactory<C> for GrpcNetwork {
    type Network = GrpcConnection;

    async fn new_client(&mut self, target: NodeId, node: &DeployNode) -> Self::Network {
        GrpcConnection {
            group: self.group.to_string(),
            target,
            addr: node.addr.clone(),
            pool: self.pool.clone(),
        }
    }
}

/// A connection from one group's replica to one peer.
pub struct GrpcConnection {
    group: String,
    target: NodeId,
    addr: String,
    pool: ChannelPool,
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

/// A transport failure as a plain error, for openraft's `AnyError`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl GrpcConnection {
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, DeployNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = codec::encode("raft request", req)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self
            .pool
            .raft_client(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut request = tonic::Request::new(RaftRequest {
            group: self.group.clone(),
            payload,
        });
        request.set_timeout(option.hard_ttl());
        let reply = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|status| {
            let err = TransportError(format!(
                "{} ({}): {}",
                self.addr,
                status.code(),
                status.message()
            ));
            match status.code() {
                // Nothing answered, or the peer does not host this group (yet): back off.
                tonic::Code::Unavailable | tonic::Code::NotFound => {
                    RPCError::Unreachable(Unreachable::new(&err))
                }
                _ => RPCError::Network(NetworkError::new(&err)),
            }
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            codec::decode("raft reply", &reply.into_inner().payload)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl<C: GroupTypes> RaftNetwork<C> for GrpcConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, DeployNode, RaftError<NodeId>>>
    {
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, DeployNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, DeployNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

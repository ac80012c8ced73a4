//! Finding the leader of a group and forwarding requests to it, shared by every service.

use std::sync::Arc;
use std::time::Duration;

use deploy_proto::v1::raft_service_client::RaftServiceClient;
use deploy_proto::v1::{NodeStatusReply, NodeStatusRequest};
use deploy_raft::GlobalTypes;
use deploy_types::GroupName;
use tonic::transport::Channel;
use tonic::Request;

use crate::error::ApiError;
use crate::group::{AnyGroup, GroupHandle, LeaderIs};
use crate::node::{Hosted, Node};

/// Request metadata counting how many times a request was forwarded.
pub const HOPS_HEADER: &str = "x-deploy-hops";
pub const MAX_HOPS: u32 = 3;
/// How long a request waits for a group to elect a leader before answering Unavailable.
pub const LEADER_PATIENCE: Duration = Duration::from_secs(3);
/// How long to wait for one peer's status.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a request must run: on this node's replica `L` (a typed handle, or an
/// [`AnyGroup`]), or at another node's address.
pub enum Route<L> {
    Local(L),
    Remote(String),
}

/// How many times a request was already forwarded. Only nodes set the header (the auth
/// layer drops it from any other caller); a count past the bound is the bound.
pub fn hops<T>(req: &Request<T>) -> u32 {
    req.metadata()
        .get(HOPS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(0, |h| h.min(MAX_HOPS))
}

/// `msg` as a request forwarded one more time, with the caller's token.
pub fn forwarded<T>(msg: T, hops: u32) -> Request<T> {
    let mut req = Request::new(msg);
    if let Ok(v) = hops.saturating_add(1).min(MAX_HOPS).to_string().parse() {
        req.metadata_mut().insert(HOPS_HEADER, v);
    }
    if let Some(bearer) = crate::auth::bearer() {
        req.metadata_mut().insert("authorization", bearer);
    }
    req
}

/// A forwarded call's failure, said plainly. A status the transport made here (it carries a
/// source) becomes one that names the leader and says whether the request may have been
/// applied: not when the leader could not be reached (Unavailable, which clients retry), maybe
/// when the connection broke mid-call. A status the leader sent is passed on as it is.
pub fn relay_error(addr: &str, s: tonic::Status) -> tonic::Status {
    let Some(cause) = std::error::Error::source(&s).map(ToString::to_string) else {
        return s;
    };
    match s.code() {
        tonic::Code::Unavailable => tonic::Status::unavailable(format!(
            "cannot reach the group's leader at {addr} ({cause}); the request was not applied, retry"
        )),
        tonic::Code::DeadlineExceeded => tonic::Status::deadline_exceeded(format!(
            "the group's leader at {addr} did not answer in time; the request may or may not have been applied"
        )),
        code => tonic::Status::new(
            code,
            format!(
                "lost the connection to the group's leader at {addr} mid-request ({cause}); the request may or may not have been applied"
            ),
        ),
    }
}

pub fn parse_group(s: &str) -> Result<GroupName, ApiError> {
    s.parse()
        .map_err(|e: deploy_types::IdError| ApiError::InvalidArgument(format!("group: {e}")))
}

/// Routing for one node's services.
#[derive(Clone)]
pub struct Routing {
    pub node: Arc<Node>,
}

impl Routing {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// The cluster's regions, in config order: what commands stamp for every replica.
    pub fn regions(&self) -> Vec<String> {
        self.node.config.regions().map(str::to_string).collect()
    }

    pub fn channel(&self, addr: &str) -> Result<Channel, ApiError> {
        self.node
            .pool
            .get(addr)
            .map_err(|e| ApiError::Unavailable(format!("cannot reach {addr}: {e}")))
    }

    /// Asks the node at `addr` for its view of `group`.
    pub async fn peer_status(
        &self,
        addr: &str,
        group: &GroupName,
    ) -> Result<NodeStatusReply, ApiError> {
        let mut client = RaftServiceClient::new(self.channel(addr)?);
        let mut req = Request::new(NodeStatusRequest {
            group: group.to_string(),
        });
        req.set_timeout(PEER_TIMEOUT);
        match tokio::time::timeout(PEER_TIMEOUT, client.node_status(req)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(ApiError::Unavailable(format!("{addr}: {}", s.message()))),
            Err(_) => Err(ApiError::Unavailable(format!(
                "{addr}: no answer within {PEER_TIMEOUT:?}"
            ))),
        }
    }

    /// The (name, address) of a group's configured voters.
    pub fn configured_addrs(&self, group: &GroupName) -> Vec<(String, String)> {
        let cfg = &self.node.config;
        cfg.voters(group)
            .unwrap_or_default()
            .iter()
            .filter_map(|v| cfg.node(v).map(|n| (v.to_string(), n.addr.clone())))
            .collect()
    }

    /// Where a leader-only request for `group` must run: a typed handle of kind `C` when this
    /// node leads it.
    pub async fn route<C: Hosted>(
        &self,
        group: &GroupName,
        hops: u32,
    ) -> Result<Route<&GroupHandle<C>>, ApiError> {
        self.route_to(group, C::hosted(&self.node, group), C::any, hops)
            .await
    }

    /// [`Routing::route`] for a group of either kind, for what every group answers alike.
    pub async fn route_any(
        &self,
        group: &GroupName,
        hops: u32,
    ) -> Result<Route<AnyGroup<'_>>, ApiError> {
        self.route_to(group, self.node.group(group), |g| g, hops)
            .await
    }

    async fn route_to<'a, L: Copy>(
        &'a self,
        group: &GroupName,
        local: Option<L>,
        as_any: impl Fn(L) -> AnyGroup<'a>,
        hops: u32,
    ) -> Result<Route<L>, ApiError> {
        if let Some(handle) = local {
            return match as_any(handle).leader(LEADER_PATIENCE).await? {
                LeaderIs::Here => Ok(Route::Local(handle)),
                LeaderIs::At { addr, .. } => self.remote(addr, hops),
            };
        }
        if self.node.config.voters(group).is_none() {
            return Err(ApiError::NotFound(format!(
                "group {group} is not in the cluster config"
            )));
        }
        // Not hosted here: ask the group's members who leads.
        for (_, addr) in self.configured_addrs(group) {
            let Ok(status) = self.peer_status(&addr, group).await else {
                continue;
            };
            if status.role() == deploy_proto::v1::Role::Leader {
                return self.remote(addr, hops);
            }
            if let Some(m) = status.members.iter().find(|m| m.id == status.leader) {
                return self.remote(m.addr.clone(), hops);
            }
        }
        Err(ApiError::Unavailable(format!(
            "group {group}: no member answered with a leader; is a majority of its voters up?"
        )))
    }

    /// The replica to read `group` from: the leader after a linearizable check, or (with
    /// `stale`) any replica, this node's first.
    pub async fn reader<C: Hosted>(
        &self,
        group: &GroupName,
        stale: bool,
        hops: u32,
    ) -> Result<Route<&GroupHandle<C>>, ApiError> {
        if stale {
            return self.any_replica(group);
        }
        match self.route::<C>(group, hops).await? {
            Route::Local(h) => {
                h.linearizable().await.map_err(|e| match e {
                    Ok(_) => ApiError::Unavailable("leadership moved during a read; retry".into()),
                    Err(e) => e,
                })?;
                Ok(Route::Local(h))
            }
            remote => Ok(remote),
        }
    }

    /// [`Routing::route`] for the global group.
    pub async fn global(&self, hops: u32) -> Result<Route<&GroupHandle<GlobalTypes>>, ApiError> {
        self.route::<GlobalTypes>(&GroupName::Global, hops).await
    }

    /// [`Routing::reader`] for the global group.
    pub async fn global_reader(
        &self,
        stale: bool,
        hops: u32,
    ) -> Result<Route<&GroupHandle<GlobalTypes>>, ApiError> {
        self.reader::<GlobalTypes>(&GroupName::Global, stale, hops)
            .await
    }

    /// A remote route to `addr`, unless the request has been forwarded too often.
    pub fn remote<L>(&self, addr: String, hops: u32) -> Result<Route<L>, ApiError> {
        self.may_forward(hops)?;
        Ok(Route::Remote(addr))
    }

    /// Refuses to forward a request that has been forwarded too often already.
    pub fn may_forward(&self, hops: u32) -> Result<(), ApiError> {
        if hops >= MAX_HOPS {
            return Err(ApiError::Unavailable(format!(
                "request forwarded {hops} times without reaching a leader; the group is changing leaders, retry"
            )));
        }
        Ok(())
    }

    /// Some node that hosts `group`: this one if it does, else a configured voter.
    pub fn any_replica<C: Hosted>(
        &self,
        group: &GroupName,
    ) -> Result<Route<&GroupHandle<C>>, ApiError> {
        self.replica_of(group, C::hosted(&self.node, group))
    }

    /// [`Routing::any_replica`] for a group of either kind.
    pub fn any_replica_any(&self, group: &GroupName) -> Result<Route<AnyGroup<'_>>, ApiError> {
        self.replica_of(group, self.node.group(group))
    }

    fn replica_of<L>(&self, group: &GroupName, local: Option<L>) -> Result<Route<L>, ApiError> {
        if let Some(h) = local {
            return Ok(Route::Local(h));
        }
        self.configured_addrs(group)
            .into_iter()
            .next()
            .map(|(_, addr)| Route::Remote(addr))
            .ok_or_else(|| {
                ApiError::NotFound(format!("group {group} is not in the cluster config"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transport_failure_while_forwarding_says_what_may_have_happened() {
        let broke = tonic::Status::from_error(Box::new(std::io::Error::other("connection reset")));
        let s = relay_error("10.0.0.1:7001", broke);
        assert_eq!(s.code(), tonic::Code::Unknown);
        assert!(s.message().contains("10.0.0.1:7001"), "{}", s.message());
        assert!(s.message().contains("may or may not have been applied"));
        // What the leader itself answered is passed on unchanged.
        let refused = tonic::Status::failed_precondition("release r-1 is PAUSED");
        let s = relay_error("10.0.0.1:7001", refused);
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert_eq!(s.message(), "release r-1 is PAUSED");
    }

    #[test]
    fn a_hop_count_at_the_edge_of_u32_neither_panics_nor_wraps() {
        let mut req = Request::new(());
        req.metadata_mut()
            .insert(HOPS_HEADER, u32::MAX.to_string().parse().unwrap());
        assert_eq!(hops(&req), MAX_HOPS);
        let next = forwarded((), hops(&req));
        assert_eq!(hops(&next), MAX_HOPS);
        let next = forwarded((), u32::MAX);
        assert_eq!(hops(&next), MAX_HOPS, "the count never wraps back to 0");
        req.metadata_mut()
            .insert(HOPS_HEADER, "-1".parse().unwrap());
        assert_eq!(hops(&req), 0);
    }
}

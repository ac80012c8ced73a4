//! Who is calling, on a secure cluster: the process a verified client certificate names,
//! and what kind of process the config says it is. Internal calls (Raft, workers' leases,
//! relays' reports and watches, regions' pulls, artifact downloads) are refused unless the
//! caller is a process of the cluster of a kind allowed to make them. On an insecure
//! cluster nothing is checked.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use deploy_types::{ClusterConfig, NodeName};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Status};

use crate::node::Node;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    Node,
    Worker,
    Relay,
    Agent,
}

impl PeerKind {
    fn as_str(self) -> &'static str {
        match self {
            PeerKind::Node => "a coordinator node",
            PeerKind::Worker => "a build worker",
            PeerKind::Relay => "a relay",
            PeerKind::Agent => "a host agent",
        }
    }
}

/// Every kind of process of the cluster.
pub const MEMBERS: &[PeerKind] = &[
    PeerKind::Node,
    PeerKind::Worker,
    PeerKind::Relay,
    PeerKind::Agent,
];

/// What the config says process `id` is.
pub fn kind_of(config: &ClusterConfig, id: &str) -> Option<PeerKind> {
    if NodeName::new(id).is_ok_and(|n| config.node(&n).is_some()) {
        return Some(PeerKind::Node);
    }
    if config.worker(id).is_some() {
        return Some(PeerKind::Worker);
    }
    if config.relay(id).is_some() {
        return Some(PeerKind::Relay);
    }
    config.host(id).map(|_| PeerKind::Agent)
}

fn check(
    config: &ClusterConfig,
    peer: Option<String>,
    allowed: &[PeerKind],
) -> Result<String, String> {
    let Some(id) = peer else {
        return Err(
            "this call is for the cluster's own processes: present a certificate of the cluster CA"
                .into(),
        );
    };
    match kind_of(config, &id) {
        Some(k) if allowed.contains(&k) => Ok(id),
        Some(k) => Err(format!(
            "this call is not for {} ({id}); it is for {}",
            k.as_str(),
            allowed
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        )),
        None => Err(format!(
            "the caller's certificate names {id:?}, which is no process of this cluster"
        )),
    }
}

/// On a secure cluster, the id of the calling process, if it is of an `allowed` kind;
/// `PermissionDenied` otherwise. On an insecure cluster, always `Ok("")`.
pub fn require<T>(node: &Node, req: &Request<T>, allowed: &[PeerKind]) -> Result<String, Status> {
    if !node.transport.is_tls() {
        return Ok(String::new());
    }
    let peer = deploy_tls::listener::request_peer(req);
    check(&node.config, peer, allowed).map_err(Status::permission_denied)
}

/// A worker may act only as itself (a node forwarding for one may act for any).
pub fn acting_as(node: &Node, peer: &str, worker: &str) -> Result<(), Status> {
    if peer.is_empty() || peer == worker || kind_of(&node.config, peer) == Some(PeerKind::Node) {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "worker {peer} cannot act as worker {:?}",
        worker.chars().take(64).collect::<String>()
    )))
}

/// A relay reports only as itself and for its own rack, an agent only for its own host.
pub fn reports_for(
    node: &Node,
    peer: &str,
    req: &deploy_proto::v1::ReportRackRequest,
) -> Result<(), Status> {
    if peer.is_empty() {
        return Ok(());
    }
    let config = &node.config;
    let deny = |why: String| Err(Status::permission_denied(why));
    match kind_of(config, peer) {
        Some(PeerKind::Node) => Ok(()),
        Some(PeerKind::Relay) => {
            let rack_ok = config
                .relay(peer)
                .is_some_and(|(rack, _)| rack.name == req.rack && rack.region == req.region);
            if req.relay != peer || !rack_ok {
                return deny(format!(
                    "relay {peer} reports only as itself, for its own rack"
                ));
            }
            Ok(())
        }
        Some(PeerKind::Agent) => {
            if !req.relay.is_empty() || req.hosts.iter().any(|h| h.host != peer) {
                return deny(format!("host {peer} reports only for itself"));
            }
            Ok(())
        }
        _ => deny(format!("{peer} sends no rack reports")),
    }
}

/// The same for the node's HTTP routes (artifact downloads): members only.
pub async fn require_member_http(
    State(node): State<Arc<Node>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if node.transport.is_tls() {
        let peer = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .and_then(|c| c.first().and_then(|c| deploy_tls::peer_id(c.as_ref())));
        if let Err(why) = check(&node.config, peer, MEMBERS) {
            return (StatusCode::FORBIDDEN, format!("{why}\n")).into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_known_by_the_kind_the_config_gives_them() {
        let c = ClusterConfig::local();
        assert_eq!(kind_of(&c, "g1"), Some(PeerKind::Node));
        assert_eq!(kind_of(&c, "worker-1"), Some(PeerKind::Worker));
        assert_eq!(kind_of(&c, "us-east-rack-1-relay"), Some(PeerKind::Relay));
        assert_eq!(kind_of(&c, "us-east-1-h1"), Some(PeerKind::Agent));
        assert_eq!(kind_of(&c, "mallory"), None);
        assert!(check(&c, Some("g2".into()), &[PeerKind::Node]).is_ok());
        let e = check(&c, Some("us-east-1-h1".into()), &[PeerKind::Node]).unwrap_err();
        assert!(e.contains("a host agent"), "{e}");
        let e = check(&c, None, MEMBERS).unwrap_err();
        assert!(e.contains("certificate"), "{e}");
        let e = check(&c, Some("mallory".into()), MEMBERS).unwrap_err();
        assert!(e.contains("no process"), "{e}");
    }
}

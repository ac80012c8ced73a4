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

/// What a relay or an agent may speak for: a relay for its own rack and that rack's hosts
/// (naming itself as `relay`, or no relay), an agent for its own host in its own rack (naming
/// no relay). Nodes (forwarding) may speak for any.
fn rack_caller<'a>(
    config: &ClusterConfig,
    peer: &str,
    relay: &str,
    region: &str,
    rack: &str,
    mut hosts: impl Iterator<Item = &'a str>,
) -> Result<(), String> {
    match kind_of(config, peer) {
        Some(PeerKind::Node) => Ok(()),
        Some(PeerKind::Relay) => {
            let own = config
                .relay(peer)
                .filter(|(r, _)| r.name == rack && r.region == region)
                .map(|(r, _)| r);
            match own {
                Some(r) if relay == peer || relay.is_empty() => {
                    match hosts.find(|h| !r.hosts.iter().any(|x| x.as_str() == *h)) {
                        None => Ok(()),
                        Some(h) => Err(format!(
                            "relay {peer} speaks only for the hosts of its rack, not {:?}",
                            h.chars().take(64).collect::<String>()
                        )),
                    }
                }
                _ => Err(format!(
                    "relay {peer} speaks only as itself, for its own rack"
                )),
            }
        }
        Some(PeerKind::Agent) => {
            let own_rack = config
                .host(peer)
                .is_some_and(|p| p.region == region && p.rack.name == rack);
            if !relay.is_empty() || !own_rack || hosts.any(|h| h != peer) {
                return Err(format!(
                    "host {peer} speaks only for itself, in its own rack"
                ));
            }
            Ok(())
        }
        _ => Err(format!("{peer} speaks for no rack")),
    }
}

/// A relay reports only as itself, for its own rack and its hosts; an agent only for its own
/// host. On an insecure cluster (`peer` empty) nothing is checked.
pub fn reports_for(
    node: &Node,
    peer: &str,
    req: &deploy_proto::v1::ReportRackRequest,
) -> Result<(), Status> {
    if peer.is_empty() {
        return Ok(());
    }
    let hosts = req.hosts.iter().map(|h| h.host.as_str());
    rack_caller(
        &node.config,
        peer,
        &req.relay,
        &req.region,
        &req.rack,
        hosts,
    )
    .map_err(Status::permission_denied)
}

/// A relay watches only its own rack's hosts' goals, an agent only its own.
pub fn watches_for(
    node: &Node,
    peer: &str,
    req: &deploy_proto::v1::WatchRackRequest,
) -> Result<(), Status> {
    if peer.is_empty() {
        return Ok(());
    }
    // A watch names no relay: the caller's certificate says who it is.
    let hosts = req.hosts.iter().map(String::as_str);
    rack_caller(&node.config, peer, "", &req.region, &req.rack, hosts)
        .map_err(Status::permission_denied)
}

/// The process id a verified client certificate of an HTTP request names, if any.
pub fn http_peer<B>(req: &axum::http::Request<B>) -> Option<String> {
    req.extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.peer_certs())
        .and_then(|c| c.first().and_then(|c| deploy_tls::peer_id(c.as_ref())))
}

/// Whether an HTTP request comes from another coordinator node (by its certificate). On an
/// insecure cluster nothing can tell, and every caller is trusted alike.
pub fn from_node<B>(node: &Node, req: &axum::http::Request<B>) -> bool {
    !node.transport.is_tls()
        || http_peer(req).is_some_and(|p| kind_of(&node.config, &p) == Some(PeerKind::Node))
}

/// The same for the node's HTTP routes (artifact downloads): members only.
pub async fn require_member_http(
    State(node): State<Arc<Node>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if node.transport.is_tls() {
        if let Err(why) = check(&node.config, http_peer(&req), MEMBERS) {
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

    #[test]
    fn relays_and_hosts_speak_only_for_their_own_rack_and_host() {
        let c = ClusterConfig::local();
        let call = |peer: &str, relay: &str, rack: &str, hosts: &[&str]| {
            rack_caller(&c, peer, relay, "us-east", rack, hosts.iter().copied())
        };
        let relay = "us-east-rack-1-relay";
        assert!(call(relay, relay, "rack-1", &["us-east-1-h1", "us-east-1-h2"]).is_ok());
        assert!(
            call(relay, relay, "rack-2", &["us-east-2-h1"]).is_err(),
            "another rack"
        );
        assert!(
            call(relay, "us-east-rack-2-relay", "rack-1", &[]).is_err(),
            "as another relay"
        );
        let e = call(relay, relay, "rack-1", &["us-east-2-h1"]).unwrap_err();
        assert!(e.contains("hosts of its rack"), "{e}");
        assert!(call("us-east-1-h1", "", "rack-1", &["us-east-1-h1"]).is_ok());
        assert!(
            call("us-east-1-h1", "", "rack-1", &["us-east-1-h2"]).is_err(),
            "another host"
        );
        assert!(
            call("us-east-1-h1", "", "rack-2", &["us-east-1-h1"]).is_err(),
            "another rack"
        );
        assert!(
            call("us-east-1-h1", relay, "rack-1", &["us-east-1-h1"]).is_err(),
            "as a relay"
        );
        assert!(
            call("g1", "", "rack-2", &["anything"]).is_ok(),
            "a node forwards"
        );
        assert!(call("worker-1", "", "rack-1", &[]).is_err());
    }
}

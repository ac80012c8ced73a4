//! Who calls the public API, and whether they may: bearer tokens and their roles.
//!
//! On a secure cluster every public call carries `authorization: Bearer <token>`. The token's
//! SHA-256 is looked up in the replicated token table (the global group's, or a region's
//! copy on a region node, so a region checks tokens while the global group is down) or
//! matched against the config's bootstrap admin. A missing or unknown token is
//! `Unauthenticated`; a role too small for the call is `PermissionDenied`; either way the
//! call does nothing. Internal calls are checked by certificate instead (see `peers`), and
//! health, reflection and metrics are open.
//!
//! The caller is kept in a task-local for the call's handler: decisions record its name,
//! a releaser limited to some services is held to them, and a forwarded call carries the
//! same token to the leader, which checks it again.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use deploy_state::tokens::{Role, Token, BOOTSTRAP_ADMIN};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::Status;

use crate::node::Node;

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Health, reflection, metrics: anyone.
    Open,
    /// The cluster's own traffic: checked by certificate, in the handler.
    Internal,
    /// A token of this role or above.
    Role(Role),
}

/// What the call at `path` (`/package.Service/Method`, or an HTTP route) needs. A call this
/// table does not know needs an admin.
pub fn need(path: &str) -> Need {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let (service, method) = rest.split_once('/').unwrap_or((rest, ""));
    let read = Need::Role(Role::Reader);
    let release = Need::Role(Role::Releaser);
    let admin = Need::Role(Role::Admin);
    match (service, method) {
        ("grpc.health.v1.Health", _)
        | ("grpc.reflection.v1.ServerReflection", _)
        | ("grpc.reflection.v1alpha.ServerReflection", _)
        | ("healthz", "")
        | ("readyz", "")
        | ("metrics", "") => Need::Open,
        ("v1", _) | ("deploy.v1.RaftService", _) | ("deploy.v1.WorkerService", _) => Need::Internal,
        (
            "deploy.v1.RegionService",
            "ReportRack" | "WatchRack" | "PullDecisions" | "ReportRegion",
        ) => Need::Internal,
        ("deploy.v1.RegionService", "RegionStatus" | "ListHosts" | "GetHost") => read,
        ("deploy.v1.ClusterService", "Status" | "GetMeta") => read,
        ("deploy.v1.BuildService", "GetBuild" | "ListBuilds" | "BuildLogs") => read,
        ("deploy.v1.BuildService", "SubmitBuild" | "CancelBuild") => release,
        ("deploy.v1.ReleaseService", "GetRelease" | "ListReleases") => read,
        ("deploy.v1.ReleaseService", "CreateRelease" | "ReleaseAction") => release,
        _ => admin,
    }
}

/// The caller of the call being served.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its token's name (on an insecure cluster: empty, the request's own actor counts).
    pub name: String,
    pub role: Role,
    pub services: Vec<String>,
    /// The header it came with, passed on when the call is forwarded.
    pub bearer: Option<MetadataValue<Ascii>>,
}

impl Caller {
    fn anyone(bearer: Option<MetadataValue<Ascii>>) -> Self {
        Self {
            name: String::new(),
            role: Role::Admin,
            services: Vec::new(),
            bearer,
        }
    }
}

tokio::task_local! {
    static CALLER: Caller;
}

/// The caller of the call this task serves, if it is one.
pub fn caller() -> Option<Caller> {
    CALLER.try_with(Caller::clone).ok()
}

/// The token header to pass on with a forwarded call.
pub fn bearer() -> Option<MetadataValue<Ascii>> {
    caller().and_then(|c| c.bearer)
}

/// Who decides, for the log: the token's name (with the actor the request claims, when it
/// names another), or on an insecure cluster the claimed actor.
pub fn decided_by(claimed: &str) -> String {
    match caller() {
        Some(c) if !c.name.is_empty() => {
            if claimed.is_empty() || claimed == c.name {
                c.name
            } else {
                let both = format!("{} ({claimed})", c.name);
                both.chars().take(64).collect()
            }
        }
        _ => claimed.to_string(),
    }
}

/// `PermissionDenied` unless the caller may build and release `service`.
pub fn may_touch(service: &str) -> Result<(), Status> {
    let Some(c) = caller() else { return Ok(()) };
    let scoped = Token {
        name: c.name.clone(),
        sha256: String::new(),
        role: c.role,
        services: c.services.clone(),
        created_by: String::new(),
        created_at_ms: 0,
    };
    if scoped.may_touch(service) {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "token {} may build and release only {}, not {:?}",
        c.name,
        c.services.join(", "),
        service.chars().take(64).collect::<String>()
    )))
}

/// The token whose SHA-256 is `hash`, as this node knows it: the config's bootstrap admin,
/// else the global group's table, else its region's copy.
fn lookup(node: &Node, hash: &str) -> Option<(String, Role, Vec<String>)> {
    if node.config.security.admin_token_sha256.as_deref() == Some(hash) {
        return Some((BOOTSTRAP_ADMIN.into(), Role::Admin, Vec::new()));
    }
    let found = |t: &deploy_state::tokens::Token| (t.name.clone(), t.role, t.services.clone());
    if let Some(hit) = node
        .global()
        .and_then(|g| g.state.read(|d| d.state.tokens.by_sha256(hash).map(found)))
    {
        return Some(hit);
    }
    node.regions().find_map(|g| {
        g.state
            .read(|d| d.state.region.tokens.by_sha256(hash).map(found))
    })
}

/// Who calls `path` with `headers`, or why they may not.
pub fn admit(node: &Node, path: &str, headers: &HeaderMap) -> Result<Caller, Status> {
    // One credential a call: with two, which one decides would be up to whoever reads first.
    if headers.get_all("authorization").iter().nth(1).is_some() {
        return Err(Status::unauthenticated(
            "more than one authorization header: send exactly one bearer token",
        ));
    }
    let bearer: Option<MetadataValue<Ascii>> = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let needed = match need(path) {
        Need::Open | Need::Internal => return Ok(Caller::anyone(None)),
        Need::Role(r) => r,
    };
    if !node.transport.is_tls() {
        return Ok(Caller::anyone(bearer));
    }
    let method = path.trim_start_matches('/');
    let Some(text) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.trim().is_empty() && t.len() <= 512)
    else {
        return Err(Status::unauthenticated(format!(
            "{method} needs a token: pass one with --token-file or DEPLOY_TOKEN_FILE"
        )));
    };
    let hash = deploy_types::security::token_sha256(text);
    let Some((name, role, services)) = lookup(node, &hash) else {
        return Err(Status::unauthenticated(
            "the token is not valid: unknown, revoked or mistyped",
        ));
    };
    if role < needed {
        return Err(Status::permission_denied(format!(
            "token {name} ({}) may not call {method}: it needs {}",
            role.as_str(),
            needed.as_str()
        )));
    }
    Ok(Caller {
        name,
        role,
        services,
        bearer,
    })
}

/// The middleware over the node's whole router.
pub async fn layer(
    State(node): State<Arc<Node>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // How often a call was forwarded is for nodes to say: from anyone else it is dropped, so
    // a client can neither use up the hop bound nor break the count.
    if req.headers().contains_key(crate::routing::HOPS_HEADER)
        && !crate::peers::from_node(&node, &req)
    {
        req.headers_mut().remove(crate::routing::HOPS_HEADER);
    }
    let path = req.uri().path();
    let limited = matches!(need(path), Need::Role(_));
    let caller = match admit(&node, path, req.headers()) {
        Ok(caller) => caller,
        Err(status) => return status.into_http::<axum::body::Body>().into_response(),
    };
    if !limited {
        return CALLER.scope(caller, next.run(req)).await;
    }
    let client = client_of(&caller, &req);
    match node.limits.call(client.as_deref()).await {
        Ok(_permit) => CALLER.scope(caller, next.run(req)).await,
        Err(status) => status.into_http::<axum::body::Body>().into_response(),
    }
}

/// Who a caller is for the per-client limits: its token's name, else (an insecure cluster
/// knows no names) its connection. None for a call another node forwarded on an insecure
/// cluster: that connection carries every client of the node, which counted them already.
pub fn client_of<B>(caller: &Caller, req: &axum::http::Request<B>) -> Option<String> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    if !caller.name.is_empty() {
        return Some(format!("token {}", caller.name));
    }
    if req.headers().contains_key(crate::routing::HOPS_HEADER) {
        return None;
    }
    let e = req.extensions();
    let addr = e
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            e.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|t| t.get_ref().remote_addr())
        });
    Some(match addr {
        Some(a) => format!("client {a}"),
        None => "an anonymous client".into(),
    })
}

/// The client a handler's caller counts as, for stream limits (see [`client_of`]).
pub fn client_of_request<T>(req: &tonic::Request<T>) -> String {
    if let Some(c) = caller().filter(|c| !c.name.is_empty()) {
        return format!("token {}", c.name);
    }
    if let Some(peer) = deploy_tls::listener::request_peer(req) {
        return peer;
    }
    match req.remote_addr() {
        Some(a) => format!("client {a}"),
        None => "an anonymous client".into(),
    }
}

/// A stream's place among its client's (see [`crate::limits::Limits::watch`]); none for a
/// stream a node forwards, which the node it came through counted already.
pub fn watch_slot<T>(
    node: &Node,
    req: &tonic::Request<T>,
) -> Result<Option<crate::limits::Slot>, Status> {
    let from_node = if node.transport.is_tls() {
        deploy_tls::listener::request_peer(req)
            .and_then(|p| crate::peers::kind_of(&node.config, &p))
            == Some(crate::peers::PeerKind::Node)
    } else {
        // No certificates to tell by: a call says it was forwarded.
        crate::routing::hops(req) > 0
    };
    if from_node {
        return Ok(None);
    }
    node.limits.watch(&client_of_request(req)).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_needs_what_the_table_says_and_unknown_ones_an_admin() {
        let r = |role| Need::Role(role);
        for (path, want) in [
            ("/grpc.health.v1.Health/Check", Need::Open),
            ("/healthz", Need::Open),
            ("/metrics", Need::Open),
            ("/v1/chunks/abc", Need::Internal),
            ("/deploy.v1.RaftService/AppendEntries", Need::Internal),
            ("/deploy.v1.WorkerService/AcquireBuild", Need::Internal),
            ("/deploy.v1.RegionService/WatchRack", Need::Internal),
            ("/deploy.v1.RegionService/GetHost", r(Role::Reader)),
            ("/deploy.v1.ClusterService/Status", r(Role::Reader)),
            ("/deploy.v1.ClusterService/SetMeta", r(Role::Admin)),
            ("/deploy.v1.ClusterService/AddNode", r(Role::Admin)),
            ("/deploy.v1.BuildService/SubmitBuild", r(Role::Releaser)),
            ("/deploy.v1.BuildService/BuildLogs", r(Role::Reader)),
            ("/deploy.v1.ReleaseService/ReleaseAction", r(Role::Releaser)),
            ("/deploy.v1.ArtifactService/CollectGarbage", r(Role::Admin)),
            ("/deploy.v1.TokenService/ListTokens", r(Role::Admin)),
            ("/deploy.v1.Nope/Nothing", r(Role::Admin)),
            ("/", r(Role::Admin)),
        ] {
            assert_eq!(need(path), want, "{path}");
        }
    }
}

//! Plain HTTP on the node's port (beside gRPC): `/healthz`, and the artifact endpoints that
//! are the root of the fan-out tree: `/v1/manifests/{digest}` and `/v1/chunks/{digest}`
//! (with `Range`), served from the store of the region this node belongs to.
//!
//! A digest is `sha256:<hex>` or bare `<hex>` (lowercase, parsed as a `Digest`); anything
//! else is a 400 before any store is touched, so a path can never name something outside
//! the store. Chunks are verified
//! against their digest and manifests against the trusted keys before a byte is sent.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use deploy_artifact::serve::{self, refusal, text, Refusal};
use deploy_artifact::{Store, StoreError};
use deploy_types::{Digest, GroupName};

use crate::node::Node;

/// The HTTP routes of a node.
pub fn router(node: Arc<Node>) -> Router {
    // Artifacts go to the cluster's own processes only (on a secure cluster).
    let artifacts = Router::new()
        .route("/v1/manifests/{digest}", get(manifest))
        .route("/v1/chunks/{digest}", get(chunk))
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            crate::peers::require_member_http,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(artifacts)
        .with_state(node)
}

/// Ready once every hosted group knows a leader.
async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let waiting: Vec<String> = node
        .groups()
        .filter(|g| g.metrics().current_leader.is_none())
        .map(|g| g.name().to_string())
        .collect();
    if waiting.is_empty() {
        return text(StatusCode::OK, "ready");
    }
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("no leader yet for {}", waiting.join(", ")),
    )
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::render(&node),
    )
        .into_response()
}

/// The store this node serves: that of the (first) region whose group it hosts.
fn serving_store(node: &Node) -> Result<&Store, Refusal> {
    node.regions()
        .find_map(|g| match &g.name {
            GroupName::Region(r) => node.store(r),
            GroupName::Global => None,
        })
        .ok_or_else(|| {
            refusal(
                StatusCode::NOT_FOUND,
                "this node belongs to no region and serves no store",
            )
        })
}

/// The digest a request names and the store that serves it.
fn target<'a>(node: &'a Node, raw: &str) -> Result<(Digest, &'a Store), Refusal> {
    Ok((serve::path_digest(raw)?, serving_store(node)?))
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::Missing { .. } => text(StatusCode::NOT_FOUND, e.to_string()),
        // Corrupt or unverifiable bytes are never served.
        StoreError::Corrupt { .. } => text(StatusCode::BAD_GATEWAY, e.to_string()),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn manifest(State(node): State<Arc<Node>>, Path(raw): Path<String>) -> Response {
    let (digest, store) = match target(&node, &raw) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    match store.get_trusted_manifest(&digest, &node.trusted).await {
        Ok(m) => serve::manifest_answer(&m),
        Err(e) => store_error(e),
    }
}

async fn chunk(
    State(node): State<Arc<Node>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (digest, store) = match target(&node, &raw) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let max = node.config.builds.chunk_bytes.max(64 * 1024 * 1024);
    let data = match store.get_chunk(&digest, max).await {
        Ok(d) => d,
        Err(e) => return store_error(e),
    };
    node.chunk_reads
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    serve::chunk_answer(data, &headers, Body::from)
}

//! Serving a node over gRPC on a listener the caller bound.

use std::future::Future;
use std::sync::Arc;

use deploy_proto::v1::build_service_server::BuildServiceServer;
use deploy_proto::v1::cluster_service_server::ClusterServiceServer;
use deploy_proto::v1::raft_service_server::RaftServiceServer;
use deploy_proto::v1::region_service_server::RegionServiceServer;
use deploy_proto::v1::release_service_server::ReleaseServiceServer;
use deploy_proto::v1::worker_service_server::WorkerServiceServer;
use deploy_proto::v1::FILE_DESCRIPTOR_SET;
use deploy_raft::codec::MAX_RECORD_BYTES;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::api::ClusterApi;
use crate::node::Node;
use crate::raft_service::RaftServer;

/// Largest public API request accepted. Every API message is small; this leaves room for
/// later ones while refusing floods.
pub const MAX_API_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("grpc server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] deploy_tls::TlsError),
}

/// Serves the Raft service, the cluster API, gRPC health and reflection on `listener` until
/// `shutdown` resolves.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ClusterServiceServer<ClusterApi>>()
        .await;
    health.set_serving::<RaftServiceServer<RaftServer>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let raft = RaftServiceServer::new(RaftServer::new(node.clone()))
        .max_decoding_message_size(MAX_RECORD_BYTES)
        .max_encoding_message_size(MAX_RECORD_BYTES);
    let routing = crate::routing::Routing::new(node.clone());
    let http_node = node.clone();
    let builds = BuildServiceServer::new(crate::build_api::BuildApi::new(routing.clone()))
        .max_decoding_message_size(MAX_API_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_API_MESSAGE_BYTES);
    let artifacts = deploy_proto::v1::artifact_service_server::ArtifactServiceServer::new(
        crate::artifact_api::ArtifactApi::new(routing.clone()),
    )
    .max_decoding_message_size(MAX_API_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_API_MESSAGE_BYTES);
    let releases = ReleaseServiceServer::new(crate::release_api::ReleaseApi::new(routing.clone()))
        .max_decoding_message_size(MAX_API_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_API_MESSAGE_BYTES);
    let regions = RegionServiceServer::new(crate::region_api::RegionApi::new(routing.clone()))
        .max_decoding_message_size(MAX_API_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_API_MESSAGE_BYTES);
    let tokens = deploy_proto::v1::token_service_server::TokenServiceServer::new(
        crate::token_api::TokenApi::new(routing.clone()),
    )
    .max_decoding_message_size(MAX_API_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_API_MESSAGE_BYTES);
    let workers = WorkerServiceServer::new(crate::worker_api::WorkerApi::new(routing))
        .max_decoding_message_size(MAX_API_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_API_MESSAGE_BYTES);
    health
        .set_serving::<BuildServiceServer<crate::build_api::BuildApi>>()
        .await;
    health
        .set_serving::<ReleaseServiceServer<crate::release_api::ReleaseApi>>()
        .await;
    health
        .set_serving::<RegionServiceServer<crate::region_api::RegionApi>>()
        .await;
    let tls = match &node.transport {
        deploy_tls::Transport::Plain => None,
        deploy_tls::Transport::Tls(m) => Some((m.server_config(false)?, node.refused.clone())),
    };
    let me = node.me.to_string();
    let api = ClusterServiceServer::new(ClusterApi::new(node))
        .max_decoding_message_size(MAX_API_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_API_MESSAGE_BYTES);
    // gRPC and plain HTTP share the port: gRPC by its paths, the rest by the HTTP router.
    let grpc = tonic::service::Routes::new(raft)
        .add_service(api)
        .add_service(builds)
        .add_service(workers)
        .add_service(artifacts)
        .add_service(releases)
        .add_service(regions)
        .add_service(tokens)
        .add_service(health_service)
        .add_service(reflection);
    let routes = grpc
        .into_axum_router()
        .merge(crate::http::router(http_node.clone()))
        .layer(axum::middleware::from_fn_with_state(
            http_node.clone(),
            crate::auth::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            http_node,
            crate::metrics::track,
        ));
    // Bounds for every connection, whoever it is from (see `limits`): a call that takes too
    // long ends, a connection opens only so many streams and sends only so much header, and
    // a peer that vanished without closing is noticed.
    let router = Server::builder()
        .accept_http1(true)
        .timeout(crate::limits::CALL_TIMEOUT)
        .max_concurrent_streams(Some(crate::limits::MAX_STREAMS_PER_CONNECTION))
        .http2_max_header_list_size(crate::limits::MAX_HEADER_BYTES)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .tcp_keepalive(Some(std::time::Duration::from_secs(60)))
        .add_routes(tonic::service::Routes::from(routes));
    match tls {
        None => {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await?
        }
        Some((config, refused)) => {
            // Client certificates are optional here (API clients carry tokens); internal
            // calls check theirs (see `peers`).
            let incoming =
                deploy_tls::listener::accept(listener, config, format!("node {me}"), refused);
            router
                .serve_with_incoming_shutdown(deploy_tls::listener::Incoming(incoming), shutdown)
                .await?
        }
    }
    Ok(())
}

/// A node serving on its listener in this process.
pub struct RunningNode {
    pub node: Arc<Node>,
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
    #[error("cannot read the listener's address: {0}")]
    Listener(std::io::Error),
}

/// Starts node `me` with gRPC Raft networking and serves it on `listener`.
pub async fn launch(
    config: Arc<deploy_types::ClusterConfig>,
    me: deploy_types::NodeName,
    options: &crate::node::NodeOptions,
    listener: TcpListener,
    pool: deploy_raft::network::ChannelPool,
) -> Result<RunningNode, LaunchError> {
    let addr = listener.local_addr().map_err(LaunchError::Listener)?;
    let net_pool = pool.clone();
    let node = Node::start(config, me, options, pool, move |g| {
        deploy_raft::network::GrpcNetwork::new(g.clone(), net_pool.clone())
    })
    .await?;
    crate::build_tasks::spawn(node.clone());
    crate::rollout_tasks::spawn(node.clone());
    crate::metrics::spawn_leader_watch(node.clone());
    crate::failover::spawn_leader_watch(node.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(node.clone(), listener, async {
        let _ = stopped.await;
    }));
    Ok(RunningNode {
        node,
        addr,
        stop: Some(stop),
        task: Some(task),
    })
}

impl RunningNode {
    /// Stops on purpose: hands the leadership of every group this node leads to an
    /// up-to-date voter ([`crate::failover::hand_over`]), then stops.
    pub async fn stop_gracefully(self) {
        crate::failover::hand_over(&self.node).await;
        self.stop().await;
    }

    /// Stops serving and shuts every group down.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.node.shutdown().await;
        if let Err(e) = self.serving().await {
            tracing::warn!(node = %self.node.me, error = %e, "server ended with an error");
        }
    }

    /// Resolves when the server ends: after [`RunningNode::stop`], or on its own when the
    /// transport fails. Resolves at once if it already ended.
    pub async fn serving(&mut self) -> Result<(), String> {
        match self.task.take() {
            None => Ok(()),
            Some(task) => match task.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("server task failed: {e}")),
            },
        }
    }
}

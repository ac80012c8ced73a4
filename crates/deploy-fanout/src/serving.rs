//! Serving an axum app to the cluster's processes: plain HTTP, or mutual TLS wanting a
//! certificate of the cluster at the handshake (the relay's HTTP, a host's chunk server).

use axum::Router;
use deploy_tls::listener::Peer;
use tokio_util::sync::CancellationToken;

/// Serves `app` on `listener` over `transport` until `stop`; `what` names the listener in
/// the TLS layer's logs. Returns why it could not serve, or why serving ended.
pub async fn serve(
    listener: tokio::net::TcpListener,
    transport: &deploy_tls::Transport,
    what: String,
    app: Router,
    stop: CancellationToken,
) -> Result<(), String> {
    let app = app.into_make_service_with_connect_info::<Peer>();
    let stopped = async move { stop.cancelled().await };
    match transport {
        deploy_tls::Transport::Plain => axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
            .map_err(|e| e.to_string()),
        deploy_tls::Transport::Tls(m) => {
            let config = m
                .server_config(true)
                .map_err(|e| format!("cannot serve TLS: {e}"))?;
            let tls =
                deploy_tls::listener::AxumListener::new(listener, config, what, Default::default())
                    .map_err(|e| format!("cannot serve TLS: {e}"))?;
            axum::serve(tls, app)
                .with_graceful_shutdown(stopped)
                .await
                .map_err(|e| e.to_string())
        }
    }
}

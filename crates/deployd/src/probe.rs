//! `/healthz`, `/readyz` and `/metrics` for the processes that serve no other HTTP (build
//! workers and host agents), on the address given with `--http`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

type Ready = Arc<dyn Fn() -> bool + Send + Sync>;
type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves the probes on `addr` until `stop`.
pub async fn serve(
    addr: &str,
    ready: Ready,
    render: Render,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let listener = crate::listen::bind(addr, "/metrics").await?;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        render(),
                    )
                        .into_response()
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
    Ok(())
}

fn text(reg: &Registry) -> String {
    let mut out = String::new();
    let _ = encode(&mut out, reg);
    out
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

/// A build worker's metrics.
pub fn worker(stats: Arc<deploy_worker::WorkerStats>) -> (Ready, Render) {
    let s = stats.clone();
    let ready: Ready = Arc::new(move || s.registered.load(Ordering::Relaxed));
    let render: Render = Arc::new(move || {
        let mut reg = Registry::default();
        counter(
            &mut reg,
            "deploy_worker_attempts",
            "Build attempts started",
            stats.attempts.load(Ordering::Relaxed),
        );
        counter(
            &mut reg,
            "deploy_worker_built",
            "Attempts that produced an artifact",
            stats.built.load(Ordering::Relaxed),
        );
        counter(
            &mut reg,
            "deploy_worker_failed",
            "Attempts that failed or were stopped",
            stats.failed.load(Ordering::Relaxed),
        );
        let busy: Gauge = Gauge::default();
        busy.set(stats.busy.load(Ordering::Relaxed) as i64);
        reg.register("deploy_worker_busy", "1 while an attempt runs", busy);
        text(&reg)
    });
    (ready, render)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
    build: String,
    state: String,
}

/// A host agent's metrics.
pub fn agent(agent: Arc<deploy_fanout::agent::Agent>) -> (Ready, Render) {
    let a = agent.clone();
    let ready: Ready = Arc::new(move || a.heard.load(Ordering::Relaxed));
    let render: Render = Arc::new(move || {
        let mut reg = Registry::default();
        counter(
            &mut reg,
            "deploy_agent_installs",
            "Installs started",
            agent.installs.load(Ordering::Relaxed),
        );
        counter(
            &mut reg,
            "deploy_agent_install_failures",
            "Installs that failed",
            agent.install_failures.load(Ordering::Relaxed),
        );
        let p = &agent.peers;
        for (name, help, v) in [
            (
                "deploy_agent_chunks_from_peers",
                "Chunks taken from peers of the rack",
                &p.chunks_from_peers,
            ),
            (
                "deploy_agent_chunks_from_relays",
                "Chunks taken from the relays or the store during an exchange",
                &p.chunks_from_relays,
            ),
            (
                "deploy_agent_peer_served_bytes",
                "Bytes served to peers of the rack",
                &p.served_bytes,
            ),
            (
                "deploy_agent_peer_troubles",
                "Peers reported to the relay as failed (down, slow or bad bytes)",
                &p.peer_troubles,
            ),
        ] {
            counter(&mut reg, name, help, v.load(Ordering::Relaxed));
        }
        let services: Family<ServiceLabel, Gauge> = Family::default();
        for s in agent.report().services {
            services
                .get_or_create(&ServiceLabel {
                    service: s.service,
                    build: s.build_id,
                    state: s.state.name().to_string(),
                })
                .set(1);
        }
        reg.register(
            "deploy_agent_service",
            "Each service's build and state on this host",
            services,
        );
        text(&reg)
    });
    (ready, render)
}

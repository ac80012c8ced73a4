//! `deployd dev`: a whole cluster in one process, on loopback.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use deploy_coordinator::server::{launch, RunningNode};
use deploy_coordinator::NodeOptions;
use deploy_raft::network::ChannelPool;
use tokio::net::TcpListener;
use tracing::info;

pub async fn run(config_path: Option<&Path>, data_dir: &Path) -> anyhow::Result<()> {
    let mut config = crate::cli::load_config(config_path)?;
    ensure_signing_key(&mut config, data_dir)?;
    let config = Arc::new(config);
    let pool = ChannelPool::tcp();
    // Bind every listener before starting any node, so a busy port fails fast and cleanly.
    let mut listeners = Vec::new();
    for n in config.nodes() {
        let l = TcpListener::bind(&n.addr).await.with_context(|| {
            format!(
                "cannot listen on {} for node {}; is another deployd dev running?",
                n.addr, n.id
            )
        })?;
        listeners.push((n.id.clone(), l));
    }
    let mut nodes: Vec<RunningNode> = Vec::new();
    for (id, listener) in listeners {
        let options = NodeOptions {
            data_dir: data_dir.join(id.as_str()),
            store_base: data_dir.to_path_buf(),
        };
        let running = launch(config.clone(), id.clone(), &options, listener, pool.clone())
            .await
            .with_context(|| format!("cannot start node {id}"))?;
        nodes.push(running);
    }
    let stop_workers = tokio_util::sync::CancellationToken::new();
    let mut workers = Vec::new();
    for w in &config.workers {
        let worker = crate::worker::make(
            &config,
            &w.id,
            data_dir.join("workers").join(&w.id),
            data_dir,
        )
        .with_context(|| format!("cannot start worker {}", w.id))?;
        workers.push(tokio::spawn(worker.run(stop_workers.clone())));
    }
    let endpoint = config
        .voters(&deploy_types::GroupName::Global)
        .and_then(|v| v.first())
        .and_then(|n| config.node(n))
        .map(|n| format!("http://{}", n.addr))
        .unwrap_or_default();
    let started = Instant::now();
    wait_for_leaders(&nodes, Duration::from_secs(30)).await;
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "every group has a leader"
    );
    println!("deployd dev: {config}");
    println!("deployd dev: data in {}", data_dir.display());
    println!("deployd dev: {} build workers", config.workers.len());
    println!("deployd dev: API endpoint {endpoint}");
    println!("deployd dev: try `deployctl cluster status`; stop with Ctrl-C");
    crate::cli::shutdown_signal().await;
    info!("stopping the dev cluster");
    stop_workers.cancel();
    for w in workers {
        let _ = w.await;
    }
    for n in nodes {
        n.stop().await;
    }
    Ok(())
}

/// Waits until every hosted group on every node knows a leader (or the time is up).
async fn wait_for_leaders(nodes: &[RunningNode], within: Duration) {
    let deadline = Instant::now() + within;
    for n in nodes {
        for g in n.node.groups() {
            let left = deadline.saturating_duration_since(Instant::now());
            let waited = g
                .raft
                .wait(Some(left))
                .metrics(|m| m.current_leader.is_some(), "leader known")
                .await;
            if waited.is_err() {
                tracing::warn!(node = %n.node.me, group = %g.name, "no leader yet");
            }
        }
    }
}

/// Gives the dev cluster a signing key of its own when its config names none: made on first
/// start under the data directory, trusted by every node.
fn ensure_signing_key(
    config: &mut deploy_types::ClusterConfig,
    data_dir: &Path,
) -> anyhow::Result<()> {
    if config.signing.key_file.is_some() {
        return Ok(());
    }
    let path = std::path::absolute(data_dir.join("keys").join("build.key"))?;
    if !path.exists() {
        deploy_artifact::KeyPair::generate()?
            .save(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        info!(path = %path.display(), "made a signing key for the dev cluster");
    }
    let key = deploy_artifact::KeyPair::load(&path)?;
    config.signing.key_file = Some(path.display().to_string());
    if !config.signing.trusted_keys.contains(&key.public_hex()) {
        config.signing.trusted_keys.push(key.public_hex());
    }
    Ok(())
}

//! `deployd relay` and `deployd agent`: the fan-out tree's processes, configured from the
//! cluster config's racks.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use deploy_fanout::agent::Agent;
pub use deploy_fanout::config::Limits;
use deploy_fanout::config::{agent_options, relay_options};
use deploy_fanout::relay::Relay;
use deploy_types::ClusterConfig;
use tokio_util::sync::CancellationToken;

/// Starts relay `id` on its configured address.
pub async fn spawn_relay(
    config: &ClusterConfig,
    id: &str,
    dir: PathBuf,
    limits: &Limits,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let transport = deploy_tls::Transport::of(config, id)
        .with_context(|| format!("relay {id} cannot set up TLS"))?;
    let (opts, addr) = relay_options(config, id, dir, limits, &transport)?;
    let listener = crate::listen::bind(&addr.to_string(), &format!("relay {id}")).await?;
    let relay = Relay::new(opts)?;
    Ok(tokio::spawn(relay.run(listener, stop)))
}

pub async fn run_relay(
    config: PathBuf,
    id: &str,
    dir: Option<PathBuf>,
    limits: Limits,
) -> anyhow::Result<()> {
    let config = crate::cli::load_config(Some(&config))?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(".deploy").join(id));
    let stop = CancellationToken::new();
    let task = spawn_relay(&config, id, dir, &limits, stop.clone()).await?;
    crate::cli::shutdown_signal().await;
    stop.cancel();
    let _ = task.await;
    Ok(())
}

pub async fn run_agent(
    config: PathBuf,
    id: &str,
    root: Option<PathBuf>,
    sim: bool,
    limits: Limits,
    http: Option<&str>,
) -> anyhow::Result<()> {
    let config = crate::cli::load_config(Some(&config))?;
    let root = root.unwrap_or_else(|| PathBuf::from(".deploy").join(id));
    let transport = deploy_tls::Transport::of(&config, id)
        .with_context(|| format!("host {id} cannot set up TLS"))?;
    let agent = Agent::new(agent_options(&config, id, root, sim, &limits, &transport)?);
    let stop = CancellationToken::new();
    if let Some(addr) = http {
        let (ready, render) = crate::probe::agent(agent.clone());
        crate::probe::serve(addr, ready, render, stop.clone()).await?;
    }
    let task = tokio::spawn(Arc::clone(&agent).run(stop.clone()));
    tracing::info!(host = %id, "agent started");
    crate::cli::shutdown_signal().await;
    // The services keep running: an agent restart (or upgrade) does not take them down.
    stop.cancel();
    let _ = task.await;
    Ok(())
}

//! `deployd relay` and `deployd agent`: the fan-out tree's processes, configured from the
//! cluster config's racks.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use deploy_artifact::TrustedKeys;
use deploy_fanout::agent::{Agent, AgentOptions};
use deploy_fanout::relay::{Relay, RelayOptions};
use deploy_types::ClusterConfig;
use tokio_util::sync::CancellationToken;

/// Bandwidth and cache settings shared by the relay and agent commands.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub up: Option<u64>,
    pub down: Option<u64>,
    pub cache_bytes: Option<u64>,
}

fn trusted(config: &ClusterConfig) -> anyhow::Result<TrustedKeys> {
    TrustedKeys::parse(&config.signing.trusted_keys).context("signing.trusted_keys")
}

/// Relay `id` of the config, caching under `dir`.
pub fn relay_options(
    config: &ClusterConfig,
    id: &str,
    dir: PathBuf,
    limits: &Limits,
) -> anyhow::Result<(RelayOptions, String)> {
    let (rack, relay) = config
        .relay(id)
        .with_context(|| format!("relay {id} is not declared in the cluster config"))?;
    let parent = relay
        .parent
        .as_ref()
        .and_then(|p| config.relay(p))
        .map(|(_, r)| r.addr.clone());
    Ok((
        RelayOptions {
            id: id.to_string(),
            region: rack.region.clone(),
            rack: rack.name.clone(),
            hosts: rack.hosts.clone(),
            coordinators: config.region_addrs(&rack.region),
            parent,
            cache_dir: dir.join("cache"),
            cache_max_bytes: limits.cache_bytes.unwrap_or(2 << 30),
            up_limit: limits.up,
            down_limit: limits.down,
            trusted: trusted(config)?,
            max_chunk_bytes: config.builds.chunk_bytes as usize,
        },
        relay.addr.clone(),
    ))
}

/// Agent `id` of the config, with its root at `root`.
pub fn agent_options(
    config: &ClusterConfig,
    id: &str,
    root: PathBuf,
    sim: bool,
    limits: &Limits,
) -> anyhow::Result<AgentOptions> {
    let place = config
        .host(id)
        .with_context(|| format!("host {id} is not declared in the cluster config"))?;
    // Its rack's relays first, then the region's others.
    let mut relays: Vec<String> = place.rack.relays.iter().map(|r| r.addr.clone()).collect();
    relays.extend(
        config
            .racks()
            .iter()
            .filter(|r| r.region == place.region && r.name != place.rack.name)
            .flat_map(|r| r.relays.iter().map(|x| x.addr.clone())),
    );
    Ok(AgentOptions {
        id: id.to_string(),
        root,
        relays,
        stores: config.region_addrs(place.region),
        trusted: trusted(config)?,
        sim,
        down_limit: limits.down,
        max_chunk_bytes: config.builds.chunk_bytes as usize,
        failpoint: std::env::var("DEPLOY_AGENT_FAILPOINT").ok(),
    })
}

/// Starts relay `id` on its configured address.
pub async fn spawn_relay(
    config: &ClusterConfig,
    id: &str,
    dir: PathBuf,
    limits: &Limits,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (opts, addr) = relay_options(config, id, dir, limits)?;
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("relay {id} cannot listen on {addr}"))?;
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
) -> anyhow::Result<()> {
    let config = crate::cli::load_config(Some(&config))?;
    let root = root.unwrap_or_else(|| PathBuf::from(".deploy").join(id));
    let agent = Agent::new(agent_options(&config, id, root, sim, &limits)?);
    let stop = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&agent).run(stop.clone()));
    tracing::info!(host = %id, "agent started");
    crate::cli::shutdown_signal().await;
    // The services keep running: an agent restart (or upgrade) does not take them down.
    stop.cancel();
    let _ = task.await;
    Ok(())
}

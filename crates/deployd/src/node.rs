//! `deployd node`: one coordinator node process.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use deploy_coordinator::server::launch;
use deploy_coordinator::NodeOptions;
use deploy_raft::network::ChannelPool;
use deploy_types::NodeName;
use tracing::{error, info};

pub async fn run(
    config_path: &Path,
    id: &str,
    data_dir: Option<PathBuf>,
    store_base: PathBuf,
    seams: deploy_coordinator::seams::Seams,
) -> anyhow::Result<()> {
    let config = Arc::new(crate::cli::load_config(Some(config_path))?);
    let me = NodeName::new(id).with_context(|| "--id")?;
    let node_cfg = config
        .node(&me)
        .with_context(|| format!("node {me} is not declared in {}", config_path.display()))?;
    let data_dir = data_dir.unwrap_or_else(|| PathBuf::from(".deploy").join(me.as_str()));
    let transport = deploy_tls::Transport::of(&config, me.as_str())
        .with_context(|| format!("node {me} cannot set up TLS"))?;
    let listener = crate::listen::bind(node_cfg.listen_addr(), &format!("node {me}")).await?;
    let mut running = launch(
        config.clone(),
        me.clone(),
        &NodeOptions {
            data_dir: data_dir.clone(),
            store_base,
            transport: transport.clone(),
            seams,
        },
        listener,
        ChannelPool::with_transport(transport, node_cfg.source_ip),
    )
    .await
    .with_context(|| format!("cannot start node {me}"))?;
    info!(node = %me, addr = %running.addr, data_dir = %data_dir.display(), groups = ?config.groups_of(&me).iter().map(ToString::to_string).collect::<Vec<_>>(), "node serving");
    let node = running.node.clone();
    let ended = tokio::select! {
        _ = crate::cli::shutdown_signal() => None,
        r = running.serving() => Some(format!("the server stopped unexpectedly: {}", r.err().unwrap_or_default())),
        (group, why) = node.failed() => {
            error!(node = %me, %group, error = %why, "a group stopped; exiting so the node restarts from its disk");
            Some(format!("group {group} stopped: {why}"))
        }
    };
    info!(node = %me, "stopping");
    if ended.is_none() {
        running.stop_gracefully().await;
    } else {
        running.stop().await;
    }
    match ended {
        None => Ok(()),
        Some(why) => anyhow::bail!("node {me}: {why}"),
    }
}

//! `deployd worker`: one build worker.

use std::path::{Path, PathBuf};

use anyhow::Context;
use deploy_artifact::{KeyPair, Store};
use deploy_types::ClusterConfig;
use deploy_worker::{Worker, WorkerOptions};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// A worker of `config`, ready to run.
pub fn make(
    config: &ClusterConfig,
    id: &str,
    work_dir: PathBuf,
    store_base: &Path,
) -> anyhow::Result<Worker> {
    let w = config
        .worker(id)
        .with_context(|| format!("worker {id} is not declared in the cluster config"))?;
    let location = config
        .store_location(&w.region, store_base)
        .with_context(|| format!("region {} has no store", w.region))?;
    let mut store = Store::open(&location)?;
    // A test's failpoint: the first chunk write stops half done (see the store).
    if let Some(marker) = std::env::var("DEPLOY_WORKER_FAILPOINT")
        .ok()
        .and_then(|f| f.strip_prefix("mid-chunk:").map(PathBuf::from))
    {
        store = store.with_pause_mid_chunk(marker);
    }
    let key_file = config.key_file(store_base).context(
        "signing.key_file is not set: workers sign every manifest (make a key with `deployd keys generate`)",
    )?;
    let key = KeyPair::load(&key_file)?;
    let extra: Vec<PathBuf> = config
        .builds
        .sandbox_read_paths
        .iter()
        .map(PathBuf::from)
        .collect();
    let key_at = std::fs::canonicalize(&key_file).unwrap_or_else(|_| key_file.clone());
    if deploy_worker::sandbox::exposed(&key_at, &extra) {
        tracing::warn!(key = %key_at.display(), "the signing key lies where builds may read it; keep it outside the system directories and builds.sandbox_read_paths");
    }
    if !deploy_worker::sandbox::available() {
        tracing::warn!("this kernel has no Landlock: build commands will run unfenced (their environment is still clean)");
    }
    let opts = WorkerOptions {
        id: id.to_string(),
        region: w.region.clone(),
        endpoints: config.nodes().iter().map(|n| n.addr.clone()).collect(),
        work_dir,
        settings: config.builds.clone(),
        transport: deploy_tls::Transport::of(config, id)
            .with_context(|| format!("worker {id} cannot set up TLS"))?,
    };
    Ok(Worker::new(opts, store, key)?)
}

pub async fn run(
    config_path: &Path,
    id: &str,
    work_dir: Option<PathBuf>,
    store_base: &Path,
    http: Option<&str>,
) -> anyhow::Result<()> {
    let config = crate::cli::load_config(Some(config_path))?;
    let work_dir = work_dir.unwrap_or_else(|| PathBuf::from(".deploy").join(id));
    let worker = make(&config, id, work_dir, store_base)?;
    let stop = CancellationToken::new();
    if let Some(addr) = http {
        let (ready, render) = crate::probe::worker(worker.stats());
        crate::probe::serve(addr, ready, render, stop.clone()).await?;
    }
    let task = tokio::spawn(worker.run(stop.clone()));
    info!(worker = %id, "worker started");
    crate::cli::shutdown_signal().await;
    info!(worker = %id, "stopping");
    stop.cancel();
    let _ = task.await;
    Ok(())
}

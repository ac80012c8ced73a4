//! A secure dev cluster out of the box: on first start `deployd dev` (and `demo`) makes a
//! cluster CA, a certificate for every process of the config and an admin token under its
//! data directory, and runs with them, unless the config says `insecure = true` or names its
//! own files.

use std::path::{Path, PathBuf};

use anyhow::Context;
use deploy_types::ClusterConfig;
use tracing::info;

/// What dev made, to add to the config it writes and to tell the user.
#[derive(Debug, Clone)]
pub struct Made {
    pub ca: PathBuf,
    pub certs: PathBuf,
    /// The admin token's file (mode 0600), and its hash.
    pub token_file: PathBuf,
    pub token_sha256: String,
}

impl Made {
    /// The `[security]` section the effective config gets.
    pub fn section(&self) -> String {
        format!(
            "\n# Added by deployd dev: the certificates and the admin token it made.\n[security]\nca = {:?}\ncerts = {:?}\nadmin_token_sha256 = {:?}\n",
            self.ca.display().to_string(),
            self.certs.display().to_string(),
            self.token_sha256
        )
    }
}

/// `deployd certs init|issue`.
pub fn command(c: crate::cli::CertsCommand) -> anyhow::Result<()> {
    match c {
        crate::cli::CertsCommand::Init { dir, name } => {
            let (cert, key) = deploy_tls::certs::init_ca(&dir, &name)?;
            let token_file = dir.join("admin.token");
            let token =
                deploy_client::request_id().context("no randomness to make an admin token from")?;
            write_secret(&token_file, &format!("{token}\n"))?;
            let cert = std::path::absolute(cert)?;
            let certs = cert.parent().map(Path::to_path_buf).unwrap_or_default();
            println!(
                "CA certificate: {} (give it to every process and client)",
                cert.display()
            );
            println!(
                "CA key:         {} (keep it where certificates are issued, nowhere else)",
                key.display()
            );
            println!(
                "admin token:    {} (shown once; its hash goes in the config)",
                token_file.display()
            );
            println!(
                "\nadd to the cluster config:\n[security]\nca = {:?}\ncerts = {:?}\nadmin_token_sha256 = {:?}",
                cert.display().to_string(),
                certs.display().to_string(),
                deploy_types::security::token_sha256(&token)
            );
            Ok(())
        }
        crate::cli::CertsCommand::Issue {
            dir,
            id,
            config,
            host,
        } => {
            let mut names = host;
            if let Some(path) = config {
                let config = deploy_types::ClusterConfig::load(&path)?;
                if crate::node_kind(&config, &id).is_none() {
                    anyhow::bail!(
                        "{id} is no node, worker, relay or host of {}",
                        path.display()
                    );
                }
                names.extend(hosts(&config, &id));
            }
            let (cert, key) = deploy_tls::certs::issue(&dir, &id, &names)?;
            println!("certificate: {}", cert.display());
            println!(
                "key:         {} (mode 0600: copy it to {id} only)",
                key.display()
            );
            Ok(())
        }
    }
}

/// The hosts a process is reached at, for its certificate's names.
fn hosts(config: &ClusterConfig, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(n) = deploy_types::NodeName::new(id)
        .ok()
        .and_then(|n| config.node(&n).cloned())
    {
        out.extend(deploy_tls::certs::host_of(&n.addr));
        out.extend(deploy_tls::certs::host_of(n.listen_addr()));
    }
    if let Some((_, r)) = config.relay(id) {
        out.extend(deploy_tls::certs::host_of(&r.addr));
        out.extend(deploy_tls::certs::host_of(r.listen_addr()));
    }
    out.push("127.0.0.1".into());
    out.sort();
    out.dedup();
    out
}

/// Every process id of the config: nodes, workers, relays, hosts.
pub fn process_ids(config: &ClusterConfig) -> Vec<String> {
    let mut ids: Vec<String> = config.nodes().iter().map(|n| n.id.to_string()).collect();
    ids.extend(config.workers.iter().map(|w| w.id.clone()));
    for rack in config.racks() {
        ids.extend(rack.relays.iter().map(|r| r.id.clone()));
        ids.extend(rack.hosts.iter().cloned());
    }
    ids
}

/// Makes what a secure dev cluster lacks under `data_dir` and points `config` at it.
/// Nothing is made for an insecure config, or one that names its own files; what exists is
/// kept (a restart reuses it).
pub fn ensure(config: &mut ClusterConfig, data_dir: &Path) -> anyhow::Result<Option<Made>> {
    if config.security.insecure || config.security.complete().is_ok() {
        return Ok(None);
    }
    if config.security != Default::default() {
        anyhow::bail!(
            "the config's [security] is incomplete ({}); give every file, or none and let deployd dev make them",
            config.security.complete().err().unwrap_or_default()
        );
    }
    let dir = std::path::absolute(data_dir.join("certs"))?;
    let ca = dir.join(deploy_tls::certs::CA_CERT);
    if !ca.exists() {
        deploy_tls::certs::init_ca(&dir, &config.name)?;
        info!(dir = %dir.display(), "made a cluster CA for the dev cluster");
    }
    for id in process_ids(config) {
        let (cert, _) = deploy_tls::certs::cert_path(&dir, &id);
        if !cert.exists() {
            deploy_tls::certs::issue(&dir, &id, &hosts(config, &id))
                .with_context(|| format!("cannot issue a certificate to {id}"))?;
        }
    }
    let token_file = std::path::absolute(data_dir.join("admin.token"))?;
    if !token_file.exists() {
        let token =
            deploy_client::request_id().context("no randomness to make an admin token from")?;
        write_secret(&token_file, &format!("{token}\n"))?;
    }
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("cannot read {}", token_file.display()))?;
    let made = Made {
        token_sha256: deploy_types::security::token_sha256(&token),
        ca,
        certs: dir,
        token_file,
    };
    config.security.ca = Some(made.ca.display().to_string());
    config.security.certs = Some(made.certs.display().to_string());
    config.security.admin_token_sha256 = Some(made.token_sha256.clone());
    Ok(Some(made))
}

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

//! Transport security for every process of the cluster: mutual TLS with one cluster CA.
//!
//! - [`certs`]: making the CA and issuing each process its certificate (rcgen);
//! - [`Material`]: a process's CA, certificate and key, loaded once, giving the rustls
//!   configs of its servers and clients, and tonic's client settings;
//! - [`listener`]: a TLS listener that hands established connections to tonic or axum and
//!   logs, plainly, every peer it refused and why (a certificate from another CA, none at
//!   all, a plain-TCP client);
//! - [`peer_id`]: the process id a verified peer certificate names.
//!
//! Crypto is rustls on aws-lc-rs. This crate knows nothing of the cluster config's layout or
//! of the API: callers say which files to load and which peers to require.

pub mod certs;
pub mod listener;
pub mod transport;

pub use transport::Transport;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} already exists; it is never overwritten")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Where a process's TLS files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// The cluster CA's certificate.
    pub ca: PathBuf,
    /// This process's certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Files {
    /// The files of process `id`: the CA at `ca`, its own as `<dir>/<id>.pem` and `.key`.
    pub fn of(ca: &Path, dir: &Path, id: &str) -> Self {
        let (cert, key) = certs::cert_path(dir, id);
        Self {
            ca: ca.to_path_buf(),
            cert,
            key,
        }
    }
}

/// Largest PEM file read: certificates and keys are a few KiB.
const MAX_PEM_BYTES: u64 = 1 << 20;

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let io = |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_PEM_BYTES {
        return Err(TlsError::Invalid(format!(
            "{} is {size} bytes: not a certificate or key",
            path.display()
        )));
    }
    std::fs::read(path).map_err(io)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A process's TLS material: the CA it trusts and the identity it presents.
#[derive(Clone)]
pub struct Material {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material").finish_non_exhaustive()
    }
}

impl Material {
    /// Loads and checks the files: every PEM parses, the key is a key, the CA is usable.
    pub fn load(files: &Files) -> Result<Self, TlsError> {
        let ca_pem = read_pem(&files.ca)?;
        let cert_pem = read_pem(&files.cert)?;
        let key_pem = read_pem(&files.key)?;
        let bad = |path: &Path, what: &str| {
            TlsError::Invalid(format!("{} holds no {what}", path.display()))
        };
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca_pem) {
            let c = c.map_err(|_| bad(&files.ca, "readable certificate"))?;
            roots
                .add(c)
                .map_err(|e| TlsError::Invalid(format!("{}: {e}", files.ca.display())))?;
        }
        if roots.is_empty() {
            return Err(bad(&files.ca, "certificate"));
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|_| bad(&files.cert, "readable certificate"))?;
        if chain.is_empty() {
            return Err(bad(&files.cert, "certificate"));
        }
        let key =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| bad(&files.key, "private key"))?;
        Ok(Self {
            ca_pem,
            cert_pem,
            key_pem,
            roots: Arc::new(roots),
            chain,
            key: Arc::new(key),
        })
    }

    /// The config of a server whose clients must present a certificate of the cluster CA
    /// (`require_client`), or may (the public API, where tokens say who calls).
    pub fn server_config(&self, require_client: bool) -> Result<Arc<ServerConfig>, TlsError> {
        let builder = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider());
        let verifier = if require_client {
            builder.build()
        } else {
            builder.allow_unauthenticated().build()
        }
        .map_err(|e| TlsError::Invalid(format!("client verifier: {e}")))?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The config of a client that trusts only the cluster CA and presents this process's
    /// certificate (for HTTP clients; tonic has its own, [`Material::tonic_client`]).
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// tonic's client settings: the cluster CA, and this process's identity.
    pub fn tonic_client(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
    }
}

/// The process id a peer certificate names: its subject's common name. Only call it on a
/// certificate the TLS layer already verified against the cluster CA.
pub fn peer_id(cert: &[u8]) -> Option<String> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = x509.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_certificates_that_load_and_name_their_process() {
        let dir = tempfile::tempdir().unwrap();
        certs::init_ca(dir.path(), "test").unwrap();
        assert!(matches!(
            certs::init_ca(dir.path(), "test"),
            Err(TlsError::Exists(_))
        ));
        certs::issue(
            dir.path(),
            "g1",
            &["127.0.0.1".into(), "node-1.example".into()],
        )
        .unwrap();
        assert!(matches!(
            certs::issue(dir.path(), "g1", &[]),
            Err(TlsError::Exists(_))
        ));
        assert!(certs::issue(dir.path(), "../evil", &[]).is_err());
        let m = Material::load(&Files::of(
            &dir.path().join(certs::CA_CERT),
            dir.path(),
            "g1",
        ))
        .unwrap();
        assert!(m.server_config(true).is_ok());
        assert!(m.client_config().is_ok());
        assert_eq!(peer_id(m.chain[0].as_ref()).as_deref(), Some("g1"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("g1.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "keys are private");
    }

    #[test]
    fn broken_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        certs::init_ca(dir.path(), "test").unwrap();
        certs::issue(dir.path(), "w1", &[]).unwrap();
        std::fs::write(dir.path().join("w1.key"), b"not a key").unwrap();
        let e = Material::load(&Files::of(
            &dir.path().join(certs::CA_CERT),
            dir.path(),
            "w1",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("w1.key") && e.contains("private key"), "{e}");
        let e = Material::load(&Files::of(&dir.path().join("nope.pem"), dir.path(), "w1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.pem"), "{e}");
    }
}

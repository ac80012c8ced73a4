//! How a process reaches its peers and serves them: plain TCP (an insecure, local cluster),
//! or mutual TLS with its [`Material`].

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::{Material, TlsError};

#[derive(Clone, Debug)]
pub enum Transport {
    /// Plain TCP: `insecure = true` in the config, for local use only.
    Plain,
    /// Mutual TLS: this process's certificate, the cluster CA.
    Tls(Arc<Material>),
}

impl Transport {
    /// The transport of process `id` of `config`: plain TCP on an insecure cluster, else
    /// mutual TLS with its certificate; an error names what is missing or broken.
    pub fn of(config: &deploy_types::ClusterConfig, id: &str) -> Result<Self, TlsError> {
        match config.tls_paths(id).map_err(TlsError::Invalid)? {
            None => Ok(Transport::Plain),
            Some(p) => {
                let files = crate::Files {
                    ca: p.ca,
                    cert: p.cert,
                    key: p.key,
                };
                Ok(Transport::Tls(Arc::new(Material::load(&files)?)))
            }
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    pub fn scheme(&self) -> &'static str {
        match self {
            Transport::Plain => "http",
            Transport::Tls(_) => "https",
        }
    }

    /// `addr` (`host:port`, or already a URL) as a URL of this transport's scheme.
    pub fn url(&self, addr: &str) -> String {
        if addr.contains("://") {
            return addr.to_string();
        }
        format!("{}://{addr}", self.scheme())
    }

    /// A lazily connecting gRPC channel to `addr` with bounded connect times, over TLS when
    /// this transport is; its connections leave from `source` when given.
    pub fn channel(
        &self,
        addr: &str,
        source: Option<std::net::IpAddr>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut e = Endpoint::from_shared(self.url(addr))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .local_address(source);
        if let Transport::Tls(m) = self {
            e = e.tls_config(m.tonic_client())?;
        }
        Ok(e.connect_lazy())
    }

    /// The rustls config of this process's HTTP clients (`None` over plain TCP).
    pub fn http_client_config(&self) -> Result<Option<rustls::ClientConfig>, TlsError> {
        match self {
            Transport::Plain => Ok(None),
            Transport::Tls(m) => m.client_config().map(Some),
        }
    }
}

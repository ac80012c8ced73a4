//! Fetching manifests and chunks over HTTP from a list of sources, in order, verifying
//! everything: a source that is down, slow to connect, or serves bytes that do not match
//! their digest is skipped for the next.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use deploy_artifact::{Manifest, TrustedKeys};
use deploy_types::Digest;
use futures::StreamExt;
use tracing::warn;

use crate::bucket::Bucket;

/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no source could serve {what}: {tried}")]
    Exhausted { what: String, tried: String },
}

/// An HTTP client with bounded connect and idle times, over TLS with this process's
/// certificate when `transport` is. If its TLS settings cannot be made, the client has none,
/// so every TLS connection fails: it never falls back to trusting anyone.
pub fn client(transport: &deploy_tls::Transport) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .read_timeout(Duration::from_secs(15))
        .pool_idle_timeout(Duration::from_secs(30));
    match transport.http_client_config() {
        Ok(Some(config)) => b = b.tls_backend_preconfigured(config),
        Ok(None) => {}
        Err(e) => {
            warn!(error = %e, "cannot set up TLS for HTTP; no TLS connection will be made");
            b = b.tls_certs_only(Vec::new());
        }
    }
    b.build().unwrap_or_default()
}

/// `http://addr` for a `host:port`, unchanged if it already has a scheme.
pub fn base(addr: &str) -> String {
    if addr.contains("://") {
        addr.trim_end_matches('/').to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Checks a manifest's coherence, its signature, and that it is the one asked for.
pub fn verify_manifest(m: &Manifest, digest: &Digest, trusted: &TrustedKeys) -> Result<(), String> {
    m.check().map_err(|e| e.to_string())?;
    trusted.verify(m).map_err(|e| e.to_string())?;
    if m.artifact_digest != *digest {
        return Err(format!("it describes {}, not {digest}", m.artifact_digest));
    }
    Ok(())
}

/// The manifest of `digest` from the first source that serves a valid, trusted one.
pub async fn manifest(
    http: &reqwest::Client,
    sources: &[String],
    digest: &Digest,
    trusted: &TrustedKeys,
) -> Result<Manifest, FetchError> {
    let mut tried = Vec::new();
    for src in sources {
        let url = format!("{src}/v1/manifests/{}", digest.hex());
        let result: Result<Manifest, String> = async {
            let body = get_bounded(http, &url, MAX_MANIFEST_BYTES, None).await?;
            let m = Manifest::decode(&body).map_err(|e| e.to_string())?;
            verify_manifest(&m, digest, trusted)?;
            Ok(m)
        }
        .await;
        match result {
            Ok(m) => return Ok(m),
            Err(e) => {
                warn!(source = %src, %digest, error = %e, "manifest source skipped");
                tried.push(format!("{src}: {e}"));
            }
        }
    }
    Err(FetchError::Exhausted {
        what: format!("manifest {digest}"),
        tried: tried.join("; "),
    })
}

/// The chunk `digest` (at most `max` bytes) from the first source whose bytes match it.
pub async fn chunk(
    http: &reqwest::Client,
    sources: &[String],
    digest: &Digest,
    max: usize,
    limit: &Bucket,
) -> Result<Bytes, FetchError> {
    let mut tried = Vec::new();
    for src in sources {
        let url = format!("{src}/v1/chunks/{}", digest.hex());
        let result = async {
            let body = get_bounded(http, &url, max, Some(limit)).await?;
            let got = Digest::of(&body);
            if got != *digest {
                return Err(format!("served bytes with digest {got}"));
            }
            Ok(body)
        }
        .await;
        match result {
            Ok(b) => return Ok(b),
            Err(e) => {
                warn!(source = %src, chunk = %digest, error = %e, "chunk source skipped");
                tried.push(format!("{src}: {e}"));
            }
        }
    }
    Err(FetchError::Exhausted {
        what: format!("chunk {digest}"),
        tried: tried.join("; "),
    })
}

/// A GET whose body may not exceed `max` bytes, paced by `limit`.
pub async fn get_bounded(
    http: &reqwest::Client,
    url: &str,
    max: usize,
    limit: Option<&Bucket>,
) -> Result<Bytes, String> {
    let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(format!("{status}: {}", text.trim()));
    }
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(format!("larger than {max} bytes"));
    }
    let mut buf = BytesMut::new();
    let mut body = resp.bytes_stream();
    while let Some(part) = body.next().await {
        let part = part.map_err(|e| format!("body broke off: {e}"))?;
        if buf.len() + part.len() > max {
            return Err(format!("larger than {max} bytes"));
        }
        if let Some(l) = limit {
            l.take(part.len()).await;
        }
        buf.extend_from_slice(&part);
    }
    Ok(buf.freeze())
}

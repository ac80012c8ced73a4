//! `[security]` in the cluster config: where each process finds its TLS files and the
//! bootstrap admin token, or `insecure = true` for a local cluster.
//!
//! ```toml
//! [security]
//! ca = "/etc/deploy/certs/ca.pem"      # the cluster CA (deployd certs init)
//! certs = "/etc/deploy/certs"          # <id>.pem and <id>.key of each process (deployd certs issue)
//! admin_token_sha256 = "<64 hex>"      # the first admin's token, hashed (deployd certs init)
//! ```
//!
//! Without `insecure = true` every connection is mutual TLS and every API call needs a
//! token; a process whose files are missing refuses to start, saying which.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Plain TCP, no certificates, no tokens: every caller may do everything. For a local
    /// cluster only.
    pub insecure: bool,
    /// The cluster CA's certificate (PEM). Relative paths: against the config's directory.
    pub ca: Option<String>,
    /// The directory of each process's certificate and key, `<id>.pem` and `<id>.key`.
    pub certs: Option<String>,
    /// SHA-256 (64 hex characters) of the bootstrap admin token: an admin that the API cannot
    /// revoke (rotate it here).
    pub admin_token_sha256: Option<String>,
}

/// How a bearer token is kept: the hex SHA-256 of its text (the text itself is shown once,
/// when the token is made, and kept nowhere).
pub fn token_sha256(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The TLS files of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn resolve(base: Option<&Path>, p: &str) -> PathBuf {
    let path = Path::new(p);
    match base {
        Some(b) if path.is_relative() => b.join(path),
        _ => path.to_path_buf(),
    }
}

impl SecurityConfig {
    /// Problems with the section's values (the files themselves are checked by whoever
    /// loads them).
    pub(crate) fn check(&self, problems: &mut Vec<String>, warnings: &mut Vec<String>) {
        if let Some(h) = &self.admin_token_sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                problems.push("security.admin_token_sha256 must be 64 hex characters".into());
            }
        }
        for (name, v) in [("ca", &self.ca), ("certs", &self.certs)] {
            if v.as_ref()
                .is_some_and(|p| p.is_empty() || p.chars().any(char::is_control))
            {
                problems.push(format!(
                    "security.{name} is empty or has control characters"
                ));
            }
        }
        if self.insecure && (self.ca.is_some() || self.certs.is_some()) {
            warnings.push(
                "security.insecure = true: ca and certs are ignored, every connection is plain TCP"
                    .into(),
            );
        }
    }

    /// Whether the config gives everything a secure cluster needs (else a process of it
    /// refuses to start).
    pub fn complete(&self) -> Result<(), String> {
        if self.insecure {
            return Ok(());
        }
        let mut missing = Vec::new();
        if self.ca.is_none() {
            missing.push("ca");
        }
        if self.certs.is_none() {
            missing.push("certs");
        }
        if self.admin_token_sha256.is_none() {
            missing.push("admin_token_sha256");
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(format!(
            "[security] has no {}: run `deployd certs init` and `deployd certs issue`, or set insecure = true for a local cluster (plain TCP, no tokens)",
            missing.join(", ")
        ))
    }

    /// The TLS files of process `id` (`None` when insecure), relative paths resolved
    /// against `base` (the config's directory).
    pub fn tls_paths(&self, id: &str, base: Option<&Path>) -> Result<Option<TlsPaths>, String> {
        if self.insecure {
            return Ok(None);
        }
        self.complete()?;
        let (Some(ca), Some(certs)) = (&self.ca, &self.certs) else {
            return Err("[security] names no ca or certs".into());
        };
        let dir = resolve(base, certs);
        Ok(Some(TlsPaths {
            ca: resolve(base, ca),
            cert: dir.join(format!("{id}.pem")),
            key: dir.join(format!("{id}.key")),
        }))
    }

    /// The CA certificate's path, for a client that has no certificate of its own.
    pub fn ca_path(&self, base: Option<&Path>) -> Option<PathBuf> {
        (!self.insecure).then(|| self.ca.as_deref().map(|c| resolve(base, c)))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secure_config_needs_its_files_and_an_insecure_one_none() {
        let none = SecurityConfig::default();
        let e = none.complete().unwrap_err();
        assert!(e.contains("insecure = true") && e.contains("ca"), "{e}");
        let insecure = SecurityConfig {
            insecure: true,
            ..Default::default()
        };
        assert_eq!(insecure.tls_paths("g1", None), Ok(None));
        let secure = SecurityConfig {
            ca: Some("certs/ca.pem".into()),
            certs: Some("certs".into()),
            admin_token_sha256: Some("a".repeat(64)),
            ..Default::default()
        };
        let p = secure
            .tls_paths("g1", Some(Path::new("/etc/deploy")))
            .unwrap()
            .unwrap();
        assert_eq!(p.ca, PathBuf::from("/etc/deploy/certs/ca.pem"));
        assert_eq!(p.cert, PathBuf::from("/etc/deploy/certs/g1.pem"));
        assert_eq!(p.key, PathBuf::from("/etc/deploy/certs/g1.key"));
        let mut problems = Vec::new();
        SecurityConfig {
            admin_token_sha256: Some("xyz".into()),
            ..Default::default()
        }
        .check(&mut problems, &mut Vec::new());
        assert_eq!(problems.len(), 1);
    }
}

//! The manifest: what an artifact is made of.

use serde::{Deserialize, Serialize};

use crate::Digest;

/// Largest manifest accepted: a 10 GiB artifact in 4 MiB chunks lists ~2,600 chunks.
pub const MAX_MANIFEST_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    /// The chunk's bytes' digest.
    pub digest: Digest,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    /// The whole tar stream's digest: the artifact's name.
    pub artifact_digest: Digest,
    pub size: u64,
    pub chunk_size: u64,
    pub chunks: Vec<ChunkRef>,
    pub service: String,
    pub build_id: String,
    pub commit: String,
    /// The build system's signature over the rest (see `signing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ManifestSignature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSignature {
    /// The signer's public key, hex.
    pub key: String,
    /// The ed25519 signature, hex.
    pub sig: String,
}

#[derive(Debug, thiserror::Error)]
#[error("manifest is inconsistent: {0}")]
pub struct ManifestError(pub String);

impl Manifest {
    /// Decodes a manifest read off a disk or a wire: bounded in size, then checked for
    /// coherence (see [`Manifest::check`]). Its signature is the caller's to check.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError(format!(
                "{} bytes is over the {MAX_MANIFEST_BYTES}-byte limit",
                bytes.len()
            )));
        }
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| ManifestError(format!("not a manifest: {e}")))?;
        m.check()?;
        Ok(m)
    }

    /// The bytes a signature covers: the JSON of the manifest as it is, which signers and
    /// verifiers call with `signature` cleared.
    pub fn signing_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks that the manifest describes itself coherently: chunk sizes add up, every chunk
    /// but the last is full size. (Its digests were parsed as it was decoded.)
    pub fn check(&self) -> Result<(), ManifestError> {
        let bad = |m: String| Err(ManifestError(m));
        if self.version != 1 {
            return bad(format!("unknown version {}", self.version));
        }
        if self.chunk_size == 0 {
            return bad("chunk size is 0".into());
        }
        let mut total = 0u64;
        for (i, c) in self.chunks.iter().enumerate() {
            let last = i + 1 == self.chunks.len();
            if c.size == 0 || c.size > self.chunk_size || (!last && c.size != self.chunk_size) {
                return bad(format!("chunk {i} has size {}", c.size));
            }
            total = total.saturating_add(c.size);
        }
        if total != self.size {
            return bad(format!("chunks add up to {total} bytes, not {}", self.size));
        }
        Ok(())
    }
}

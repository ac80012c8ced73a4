//! Copying an artifact from one store to another (replication between regions).

use crate::store::{Store, StoreError};

/// What a copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    pub chunks: u64,
    /// Chunks already present and intact at the destination.
    pub chunks_skipped: u64,
    pub bytes_copied: u64,
}

/// Copies the manifest and every chunk of `artifact_digest` from `from` to `to`. A chunk the
/// destination already holds and that verifies is skipped, so an interrupted copy resumes
/// where it stopped; a corrupt destination chunk is copied again. The manifest is written
/// last: its presence means the artifact is whole.
pub async fn copy_artifact(
    from: &Store,
    to: &Store,
    artifact_digest: &str,
) -> Result<CopyStats, StoreError> {
    let manifest = from.get_manifest(artifact_digest).await?;
    let mut stats = CopyStats::default();
    for c in &manifest.chunks {
        stats.chunks += 1;
        match to.get_chunk(&c.digest, manifest.chunk_size).await {
            Ok(_) => {
                stats.chunks_skipped += 1;
                continue;
            }
            Err(StoreError::Missing { .. }) => {
                let data = from.get_chunk(&c.digest, manifest.chunk_size).await?;
                stats.bytes_copied += data.len() as u64;
                to.put_chunk(&c.digest, data).await?;
            }
            Err(StoreError::Corrupt { .. }) => {
                tracing::warn!(store = to.name(), chunk = %c.digest, "corrupt chunk at the destination; copying it again");
                let data = from.get_chunk(&c.digest, manifest.chunk_size).await?;
                stats.bytes_copied += data.len() as u64;
                to.overwrite_chunk(&c.digest, data).await?;
            }
            Err(e) => return Err(e),
        }
    }
    to.put_manifest(&manifest).await?;
    Ok(stats)
}

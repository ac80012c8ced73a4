//! Copying an artifact from one store to another (replication between regions).

use crate::store::{Store, StoreError};
use crate::TrustedKeys;

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
/// last: its presence means the artifact is whole. A manifest whose signature `keys` do not
/// accept is refused, and nothing is copied.
pub async fn copy_artifact(
    from: &Store,
    to: &Store,
    artifact_digest: &crate::Digest,
    keys: &TrustedKeys,
) -> Result<CopyStats, StoreError> {
    let manifest = from.get_trusted_manifest(artifact_digest, keys).await?;
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::manifest::{ChunkRef, Manifest};
    use crate::KeyPair;

    /// A signed artifact of `n` chunks of `size` bytes in a new store.
    async fn artifact(key: &KeyPair, n: u8, size: usize) -> (tempfile::TempDir, Store, Manifest) {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::local(dir.path()).unwrap();
        let mut chunks = Vec::new();
        let mut whole = Vec::new();
        for i in 0..n {
            let data = vec![i; size];
            whole.extend_from_slice(&data);
            let digest = crate::digest_of(&data);
            store.put_chunk(&digest, Bytes::from(data)).await.unwrap();
            chunks.push(ChunkRef {
                digest,
                size: size as u64,
            });
        }
        let mut m = Manifest {
            version: 1,
            artifact_digest: crate::digest_of(&whole),
            size: whole.len() as u64,
            chunk_size: size as u64,
            chunks,
            service: "svc".into(),
            build_id: "b-1".into(),
            commit: "c".into(),
            signature: None,
        };
        key.sign(&mut m);
        store.put_manifest(&m).await.unwrap();
        (dir, store, m)
    }

    fn empty() -> (tempfile::TempDir, Store) {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::local(dir.path()).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn resumes_without_recopying_and_repairs_corrupt_chunks() {
        let key = KeyPair::generate().unwrap();
        let keys = TrustedKeys::parse(&[key.public_hex()]).unwrap();
        let (_a, from, m) = artifact(&key, 4, 1000).await;
        let (b, to) = empty();
        // A copy interrupted after two chunks.
        for c in &m.chunks[..2] {
            to.put_chunk(&c.digest, from.get_chunk(&c.digest, 1000).await.unwrap())
                .await
                .unwrap();
        }
        let stats = copy_artifact(&from, &to, &m.artifact_digest, &keys)
            .await
            .unwrap();
        assert_eq!(
            (stats.chunks, stats.chunks_skipped, stats.bytes_copied),
            (4, 2, 2000)
        );
        assert_eq!(
            to.get_trusted_manifest(&m.artifact_digest, &keys)
                .await
                .unwrap(),
            m
        );
        // Again: nothing to copy.
        let stats = copy_artifact(&from, &to, &m.artifact_digest, &keys)
            .await
            .unwrap();
        assert_eq!(stats.bytes_copied, 0);
        // A corrupted destination chunk is detected and copied again.
        std::fs::write(
            b.path().join("chunks").join(m.chunks[3].digest.hex()),
            b"garbage",
        )
        .unwrap();
        let stats = copy_artifact(&from, &to, &m.artifact_digest, &keys)
            .await
            .unwrap();
        assert_eq!(stats.bytes_copied, 1000);
        to.get_chunk(&m.chunks[3].digest, 1000).await.unwrap();
    }

    #[tokio::test]
    async fn tampered_or_foreign_manifests_are_refused_and_nothing_is_copied() {
        let key = KeyPair::generate().unwrap();
        let keys = TrustedKeys::parse(&[key.public_hex()]).unwrap();
        // Signed by a key this cluster does not trust.
        let stranger = KeyPair::generate().unwrap();
        let (_a, from, m) = artifact(&stranger, 2, 100).await;
        let (dst, to) = empty();
        let err = copy_artifact(&from, &to, &m.artifact_digest, &keys)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not trust"), "{err}");
        // A trusted manifest whose chunk list was changed after signing.
        let (a2, from2, m2) = artifact(&key, 2, 100).await;
        let mut tampered = m2.clone();
        tampered.chunks.swap(0, 1);
        let path = a2
            .path()
            .join("manifests")
            .join(format!("{}.json", m2.artifact_digest.hex()));
        std::fs::write(&path, serde_json::to_vec(&tampered).unwrap()).unwrap();
        let err = copy_artifact(&from2, &to, &m2.artifact_digest, &keys)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("invalid signature"), "{err}");
        // Nothing reached the destination.
        assert!(
            !dst.path().join("chunks").exists()
                || std::fs::read_dir(dst.path().join("chunks"))
                    .unwrap()
                    .next()
                    .is_none()
        );
        assert!(!dst.path().join("manifests").exists());
    }
}

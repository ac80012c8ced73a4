//! Packing a build's outputs: a deterministic tar stream cut into chunks as it is written.
//!
//! The tar is written on a blocking thread into a [`ChunkWriter`], which hands each full
//! chunk to an async uploader over a channel of two slots: at most a few chunks are in memory
//! at once, whatever the artifact's size.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::manifest::{ChunkRef, Manifest};
use crate::recipe::{is_contained, Recipe};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("output {0:?} does not exist after the build")]
    MissingOutput(String),
    #[error("output {0:?} leaves the repository (a symlink or `..`)")]
    Escapes(String),
    #[error("packaging failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the artifact is of, and the key that signs its manifest.
pub struct PackInfo<'a> {
    pub service: &'a str,
    pub build_id: &'a str,
    pub commit: &'a str,
    pub chunk_size: u64,
    pub key: &'a crate::KeyPair,
}

/// Cuts a byte stream into chunks, hashing each and the whole.
struct ChunkWriter {
    buf: Vec<u8>,
    chunk_size: usize,
    whole: Sha256,
    total: u64,
    chunks: Vec<ChunkRef>,
    tx: mpsc::Sender<(crate::Digest, Bytes)>,
}

impl ChunkWriter {
    fn emit(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(self.chunk_size),
        ));
        let digest = crate::digest_of(&data);
        self.chunks.push(ChunkRef {
            digest,
            size: data.len() as u64,
        });
        self.tx
            .blocking_send((digest, data))
            .map_err(|_| std::io::Error::other("the chunk uploader stopped"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        let n = data.len();
        self.whole.update(data);
        self.total += n as u64;
        while !data.is_empty() {
            let room = self.chunk_size - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.chunk_size {
                self.emit()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Checks an output path resolves inside `root` (no symlinked parent leads out).
fn resolve(root: &Path, output: &str) -> Result<PathBuf, PackError> {
    if !is_contained(output) {
        return Err(PackError::Escapes(output.to_string()));
    }
    let path = root.join(output);
    let meta = std::fs::symlink_metadata(&path)
        .map_err(|_| PackError::MissingOutput(output.to_string()))?;
    let canonical_root = root.canonicalize()?;
    let parent = path.parent().unwrap_or(root).canonicalize()?;
    if !parent.starts_with(&canonical_root) || meta.file_type().is_symlink() {
        return Err(PackError::Escapes(output.to_string()));
    }
    Ok(path)
}

fn write_tar(root: &Path, recipe: &Recipe, w: &mut ChunkWriter) -> Result<(), PackError> {
    let mut tar = tar::Builder::new(w);
    // Same inputs, same bytes: a retried build yields the same artifact digest.
    tar.mode(tar::HeaderMode::Deterministic);
    // Symlinks inside outputs are stored as links, never followed out of the checkout.
    tar.follow_symlinks(false);
    let run = recipe.run_toml();
    let mut header = tar::Header::new_gnu();
    header.set_size(run.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, ".deploy/run.toml", run.as_bytes())?;
    let mut outputs = recipe.build.outputs.clone();
    outputs.sort();
    outputs.dedup();
    for o in &outputs {
        let path = resolve(root, o)?;
        if path.is_dir() {
            tar.append_dir_all(o, &path)?;
        } else {
            tar.append_path_with_name(&path, o)?;
        }
    }
    tar.finish()?;
    Ok(())
}

/// Packs `recipe`'s outputs under `root` and uploads chunks and manifest to `store`.
pub async fn pack(
    root: &Path,
    recipe: &Recipe,
    info: PackInfo<'_>,
    store: &Store,
) -> Result<Manifest, PackError> {
    let (tx, mut rx) = mpsc::channel::<(crate::Digest, Bytes)>(2);
    let chunk_size = info.chunk_size.max(1) as usize;
    let root = root.to_path_buf();
    let recipe = recipe.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut w = ChunkWriter {
            buf: Vec::with_capacity(chunk_size),
            chunk_size,
            whole: Sha256::new(),
            total: 0,
            chunks: Vec::new(),
            tx,
        };
        write_tar(&root, &recipe, &mut w)?;
        w.emit()?;
        let digest = crate::Digest::from_bytes(w.whole.finalize_reset().into());
        Ok::<_, PackError>((digest, w.total, w.chunks))
    });
    let mut upload_error = None;
    while let Some((digest, data)) = rx.recv().await {
        if upload_error.is_none() {
            if let Err(e) = store.put_chunk(&digest, data).await {
                upload_error = Some(e);
                // Dropping the receiver stops the writer at its next chunk.
                break;
            }
        }
    }
    drop(rx);
    let joined = writer
        .await
        .map_err(|e| PackError::Io(std::io::Error::other(e.to_string())))?;
    if let Some(e) = upload_error {
        return Err(e.into());
    }
    let (artifact_digest, size, chunks) = joined?;
    let mut manifest = Manifest {
        version: 1,
        artifact_digest,
        size,
        chunk_size: info.chunk_size,
        chunks,
        service: info.service.to_string(),
        build_id: info.build_id.to_string(),
        commit: info.commit.to_string(),
        signature: None,
    };
    info.key.sign(&mut manifest);
    store.put_manifest(&manifest).await?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str =
        "[build]\ncommand = \"true\"\noutputs = [\"out\"]\n[run]\ncommand = \"./out/app\"\n";

    async fn pack_dir(root: &Path, store: &Store, chunk: u64) -> Result<Manifest, PackError> {
        let key = crate::KeyPair::generate().unwrap();
        let info = PackInfo {
            service: "svc",
            build_id: "b-1",
            commit: "c",
            chunk_size: chunk,
            key: &key,
        };
        pack(root, &Recipe::parse(RECIPE).unwrap(), info, store).await
    }

    #[tokio::test]
    async fn packs_deterministically_into_verified_chunks() {
        let src = tempfile::TempDir::new().unwrap();
        std::fs::create_dir_all(src.path().join("out/sub")).unwrap();
        let big: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        std::fs::write(src.path().join("out/app"), &big).unwrap();
        std::fs::write(src.path().join("out/sub/x"), b"x").unwrap();
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::local(dir.path()).unwrap();
        let m = pack_dir(src.path(), &store, 64 * 1024).await.unwrap();
        m.check().unwrap();
        assert!(m.signature.is_some());
        assert!(m.chunks.len() >= 6, "{} chunks", m.chunks.len());
        // Same inputs, same artifact.
        let again = pack_dir(src.path(), &store, 64 * 1024).await.unwrap();
        assert_eq!(again.artifact_digest, m.artifact_digest);
        // The chunks reassemble into a tar holding the outputs and the run section.
        let mut whole = Vec::new();
        for c in &m.chunks {
            whole.extend_from_slice(&store.get_chunk(&c.digest, m.chunk_size).await.unwrap());
        }
        assert_eq!(crate::digest_of(&whole), m.artifact_digest);
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(&whole[..]);
        for e in ar.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        for want in [".deploy/run.toml", "out/app", "out/sub/x"] {
            assert!(
                names.iter().any(|n| n.trim_end_matches('/') == want),
                "{want} in {names:?}"
            );
        }
        assert_eq!(store.get_manifest(&m.artifact_digest).await.unwrap(), m);
    }

    #[tokio::test]
    async fn missing_or_escaping_outputs_are_refused() {
        let src = tempfile::TempDir::new().unwrap();
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::local(dir.path()).unwrap();
        assert!(matches!(
            pack_dir(src.path(), &store, 4096).await,
            Err(PackError::MissingOutput(_))
        ));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc", src.path().join("out")).unwrap();
            assert!(matches!(
                pack_dir(src.path(), &store, 4096).await,
                Err(PackError::Escapes(_))
            ));
        }
    }

    #[tokio::test]
    async fn a_corrupt_chunk_is_detected_on_read() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::local(dir.path()).unwrap();
        let data = Bytes::from_static(b"hello chunk");
        let d = crate::digest_of(&data);
        store.put_chunk(&d, data.clone()).await.unwrap();
        std::fs::write(dir.path().join("chunks").join(d.hex()), b"tampered").unwrap();
        assert!(matches!(
            store.get_chunk(&d, 1024).await,
            Err(StoreError::Corrupt { .. })
        ));
        // Refuses to write bytes under the wrong name.
        assert!(store
            .put_chunk(&d, Bytes::from_static(b"other"))
            .await
            .is_err());
    }
}

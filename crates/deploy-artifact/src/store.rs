//! A region's artifact store, through `object_store`.
//!
//! Layout: `chunks/<hex>`, `manifests/<hex>.json`, `logs/<build>/<attempt>/<seq>`. Chunks and
//! manifests are immutable: named by their content, written only when absent (a put is
//! atomic: temp-and-rename on a local directory, a single PUT on S3), and verified against
//! their digest on every read, so no reader ever acts on partial or corrupt bytes.

use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::manifest::{Manifest, MAX_MANIFEST_BYTES};
use crate::{digest_of, Digest, TrustedKeys};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {store}: {what} is missing")]
    Missing { store: String, what: String },
    #[error("store {store}: {what} is corrupt: {why}")]
    Corrupt {
        store: String,
        what: String,
        why: String,
    },
    #[error("store {store}: {what}: {source}")]
    Io {
        store: String,
        what: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot open store {path}: {why}")]
    Open { path: String, why: String },
}

/// One region's store.
#[derive(Debug, Clone)]
pub struct Store {
    name: String,
    inner: Arc<dyn ObjectStore>,
    /// The directory of a local store: where a killed writer's staged files may linger.
    local_dir: Option<std::path::PathBuf>,
    /// A test's failpoint (`deployd worker`'s `DEPLOY_WORKER_FAILPOINT=mid-chunk:PATH`): the
    /// first chunk write of any process given the same PATH stops half written, forever.
    pause_mid_chunk: Option<std::path::PathBuf>,
}

fn chunk_path(digest: &Digest) -> Path {
    Path::from(format!("chunks/{}", digest.hex()))
}

fn manifest_path(digest: &Digest) -> Path {
    Path::from(format!("manifests/{}.json", digest.hex()))
}

fn log_prefix(build: &str, attempt: u32) -> Path {
    Path::from(format!("logs/{build}/{attempt}"))
}

impl Store {
    /// A store in a local directory, created if missing.
    pub fn local(dir: &FsPath) -> Result<Self, StoreError> {
        let open = |why: String| StoreError::Open {
            path: dir.display().to_string(),
            why,
        };
        std::fs::create_dir_all(dir).map_err(|e| open(e.to_string()))?;
        let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| open(e.to_string()))?;
        Ok(Self {
            name: dir.display().to_string(),
            inner: Arc::new(fs),
            local_dir: Some(dir.to_path_buf()),
            pause_mid_chunk: None,
        })
    }

    /// The store at `location`: a local directory or an object store URL (`s3://...`).
    pub fn open(location: &deploy_types::StoreLocation) -> Result<Self, StoreError> {
        match location {
            deploy_types::StoreLocation::Dir(dir) => Self::local(dir),
            deploy_types::StoreLocation::Url { url, options } => {
                let open = |why: String| StoreError::Open {
                    path: url.clone(),
                    why,
                };
                let parsed = url::Url::parse(url).map_err(|e| open(e.to_string()))?;
                let (store, prefix) = object_store::parse_url_opts(&parsed, options.iter())
                    .map_err(|e| open(e.to_string()))?;
                let store: Arc<dyn ObjectStore> = Arc::from(store);
                let inner: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
                    store
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
                };
                Ok(Self {
                    name: url.clone(),
                    inner,
                    local_dir: None,
                    pause_mid_chunk: None,
                })
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Arms the failpoint that stops a chunk write half done (for tests of a writer killed
    /// mid-write): the first writer to create `marker` writes half of its chunk to the
    /// store's staging file, writes its pid into `marker`, and waits forever; every later
    /// writer, finding `marker`, writes as usual. Only a local store has it.
    pub fn with_pause_mid_chunk(mut self, marker: std::path::PathBuf) -> Self {
        self.pause_mid_chunk = Some(marker);
        self
    }

    /// The failpoint of [`Store::with_pause_mid_chunk`], if armed and not yet taken.
    async fn maybe_pause(&self, path: &Path, data: &Bytes) -> Result<(), StoreError> {
        let Some(marker) = &self.pause_mid_chunk else {
            return Ok(());
        };
        let claimed = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(marker);
        let Ok(mut file) = claimed else {
            return Ok(());
        };
        let what = format!("chunk {path} (failpoint)");
        let mut upload = self
            .inner
            .put_multipart(path)
            .await
            .map_err(self.io(&what))?;
        upload
            .put_part(PutPayload::from_bytes(data.slice(..data.len() / 2)))
            .await
            .map_err(self.io(&what))?;
        use std::io::Write;
        let _ = writeln!(file, "{}", std::process::id());
        let _ = file.sync_all();
        drop(file);
        tracing::warn!(marker = %marker.display(), "failpoint: stopped half way through a chunk write");
        std::future::pending::<()>().await;
        drop(upload);
        Ok(())
    }

    fn io(&self, what: impl Into<String>) -> impl FnOnce(object_store::Error) -> StoreError + '_ {
        let what = what.into();
        move |source| match source {
            object_store::Error::NotFound { .. } => StoreError::Missing {
                store: self.name.clone(),
                what,
            },
            source => StoreError::Io {
                store: self.name.clone(),
                what,
                source,
            },
        }
    }

    /// Writes an immutable object unless it is already there. Names are content digests, so
    /// two writers racing on one name write the same bytes: no conditional put is needed,
    /// which keeps every S3-compatible store usable.
    async fn put_once(&self, path: &Path, data: Bytes, what: &str) -> Result<(), StoreError> {
        match self.inner.head(path).await {
            Ok(_) => return Ok(()),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.io(what)(e)),
        }
        self.inner
            .put(path, PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(self.io(what))
    }

    async fn read(&self, path: &Path, what: &str, limit: usize) -> Result<Bytes, StoreError> {
        let got = self.inner.get(path).await.map_err(self.io(what))?;
        if got.meta.size as usize > limit {
            return Err(StoreError::Corrupt {
                store: self.name.clone(),
                what: what.to_string(),
                why: format!("{} bytes is over the {limit}-byte limit", got.meta.size),
            });
        }
        got.bytes().await.map_err(self.io(what))
    }

    /// Stores a chunk under its digest, after checking the bytes match it.
    pub async fn put_chunk(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError> {
        let actual = digest_of(&data);
        if actual != *digest {
            return Err(StoreError::Corrupt {
                store: self.name.clone(),
                what: format!("chunk {digest}"),
                why: format!("the bytes to write hash to {actual}"),
            });
        }
        self.maybe_pause(&chunk_path(digest), &data).await?;
        self.put_once(&chunk_path(digest), data, &format!("chunk {digest}"))
            .await
    }

    /// Replaces a chunk whose stored bytes are corrupt (replication repair).
    pub async fn overwrite_chunk(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError> {
        if digest_of(&data) != *digest {
            return Err(StoreError::Corrupt {
                store: self.name.clone(),
                what: format!("chunk {digest}"),
                why: "the bytes to write do not match".into(),
            });
        }
        self.inner
            .put(&chunk_path(digest), PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(self.io(format!("chunk {digest}")))
    }

    /// Reads a chunk and verifies it against its digest.
    pub async fn get_chunk(&self, digest: &Digest, max: u64) -> Result<Bytes, StoreError> {
        let what = format!("chunk {digest}");
        let data = self.read(&chunk_path(digest), &what, max as usize).await?;
        let actual = digest_of(&data);
        if actual != *digest {
            return Err(StoreError::Corrupt {
                store: self.name.clone(),
                what,
                why: format!("its bytes hash to {actual}"),
            });
        }
        Ok(data)
    }

    pub async fn put_manifest(&self, m: &Manifest) -> Result<(), StoreError> {
        let data = serde_json::to_vec_pretty(m).map_err(|e| StoreError::Corrupt {
            store: self.name.clone(),
            what: "manifest".into(),
            why: e.to_string(),
        })?;
        self.put_once(
            &manifest_path(&m.artifact_digest),
            Bytes::from(data),
            "manifest",
        )
        .await
    }

    /// Reads a manifest, checks it is coherent and that it names the digest it is stored under.
    pub async fn get_manifest(&self, artifact_digest: &Digest) -> Result<Manifest, StoreError> {
        let what = format!("manifest {artifact_digest}");
        let data = self
            .read(&manifest_path(artifact_digest), &what, MAX_MANIFEST_BYTES)
            .await?;
        let corrupt = |why: String| StoreError::Corrupt {
            store: self.name.clone(),
            what: what.clone(),
            why,
        };
        let m = Manifest::decode(&data).map_err(|e| corrupt(e.to_string()))?;
        if m.artifact_digest != *artifact_digest {
            return Err(corrupt(format!("it names {}", m.artifact_digest)));
        }
        Ok(m)
    }

    /// Reads a manifest and checks its signature against `keys`: what every consumer of an
    /// artifact must use.
    pub async fn get_trusted_manifest(
        &self,
        artifact_digest: &Digest,
        keys: &TrustedKeys,
    ) -> Result<Manifest, StoreError> {
        let m = self.get_manifest(artifact_digest).await?;
        keys.verify(&m).map_err(|e| StoreError::Corrupt {
            store: self.name.clone(),
            what: format!("manifest {artifact_digest}"),
            why: e.to_string(),
        })?;
        Ok(m)
    }

    /// What the store holds, for garbage collection; objects modified less than `grace_ms`
    /// ago are marked recent.
    pub async fn contents(&self, grace_ms: u64) -> Result<crate::gc::StoreContents, StoreError> {
        use crate::gc::StoredObject;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let recent = |m: &object_store::ObjectMeta| {
            now - m.last_modified.timestamp_millis() < grace_ms as i64
        };
        let list = |prefix: &'static str| async move {
            self.inner
                .list(Some(&Path::from(prefix)))
                .try_collect::<Vec<object_store::ObjectMeta>>()
                .await
                .map_err(self.io(format!("{prefix} listing")))
        };
        let mut out = crate::gc::StoreContents::default();
        for m in list("manifests").await? {
            let Some(hex) = m.location.filename().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            let Ok(digest) = Digest::from_hex(hex) else {
                continue;
            };
            if let Ok(manifest) = self.get_manifest(&digest).await {
                out.manifest_chunks.insert(
                    digest,
                    manifest.chunks.into_iter().map(|c| c.digest).collect(),
                );
            }
            out.manifests.push(StoredObject {
                digest,
                size: m.size,
                recent: recent(&m),
            });
        }
        for m in list("chunks").await? {
            let Some(hex) = m.location.filename() else {
                continue;
            };
            if let Ok(digest) = Digest::from_hex(hex) {
                out.chunks.push(StoredObject {
                    digest,
                    size: m.size,
                    recent: recent(&m),
                });
            }
        }
        Ok(out)
    }

    /// Deletes what a plan says: manifests first, so no manifest ever names a missing chunk.
    pub async fn apply_gc(&self, plan: &crate::gc::GcPlan) -> Result<(), StoreError> {
        for d in &plan.delete_manifests {
            self.delete_quietly(&manifest_path(d), "manifest").await?;
        }
        for d in &plan.delete_chunks {
            self.delete_quietly(&chunk_path(d), "chunk").await?;
        }
        Ok(())
    }

    /// Files a killed writer left half written in a local store (`<name>#<n>`, never visible
    /// to readers), older than `grace_ms`: (path, size). Deleted unless `dry_run`.
    pub fn stale_staging(
        &self,
        grace_ms: u64,
        dry_run: bool,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let Some(dir) = &self.local_dir else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for sub in ["chunks", "manifests"] {
            let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(meta) = e.metadata() else { continue };
                let age_ms = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .map(|d| d.as_millis() as u64);
                if name.contains('#') && meta.is_file() && age_ms.is_some_and(|a| a >= grace_ms) {
                    if !dry_run {
                        std::fs::remove_file(e.path()).map_err(|err| StoreError::Open {
                            path: e.path().display().to_string(),
                            why: err.to_string(),
                        })?;
                    }
                    out.push((format!("{sub}/{name}"), meta.len()));
                }
            }
        }
        Ok(out)
    }

    async fn delete_quietly(&self, path: &Path, what: &str) -> Result<(), StoreError> {
        match self.inner.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.io(what)(e)),
        }
    }

    /// Appends one segment of a build attempt's log.
    pub async fn put_log_segment(
        &self,
        build: &str,
        attempt: u32,
        seq: u32,
        data: Bytes,
    ) -> Result<(), StoreError> {
        let path = Path::from(format!("logs/{build}/{attempt}/{seq:08}"));
        self.put_once(&path, data, "log segment").await
    }

    /// The log segments of a build attempt, in order, from `from_seq` on.
    pub async fn log_segments(
        &self,
        build: &str,
        attempt: u32,
        from_seq: u32,
    ) -> Result<Vec<(u32, Bytes)>, StoreError> {
        let prefix = log_prefix(build, attempt);
        let metas: Vec<object_store::ObjectMeta> = self
            .inner
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(self.io("log listing"))?;
        let mut seqs: Vec<(u32, Path)> = metas
            .into_iter()
            .filter_map(|m| {
                m.location
                    .filename()
                    .and_then(|f| f.parse().ok())
                    .map(|s| (s, m.location.clone()))
            })
            .filter(|(s, _)| *s >= from_seq)
            .collect();
        seqs.sort_by_key(|(s, _)| *s);
        let mut out = Vec::new();
        for (seq, path) in seqs {
            out.push((
                seq,
                self.read(&path, "log segment", 16 * 1024 * 1024).await?,
            ));
        }
        Ok(out)
    }
}

//! A relay's chunk cache on disk: verified chunks only, bounded by bytes, least recently used
//! evicted first, except pinned chunks (those of its rack's live and previous builds).
//!
//! What a previous run left on disk is not trusted: a crash, a full disk or another process
//! may have left a file that no longer matches its name. Such files are indexed as
//! *unverified* when the cache opens (hashing gigabytes would hold the relay's start for
//! seconds), and each is hashed on its first read, so no byte is served that has not been
//! checked against its digest. A chunk is written to a temporary name, fsynced, renamed into
//! place, and the directory fsynced: after a crash a chunk is either whole or absent.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use deploy_types::Digest;
use lru::LruCache;
use tracing::warn;

#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    /// Hashed since this process indexed it (always, for what it wrote itself).
    verified: bool,
}

#[derive(Debug)]
struct Index {
    /// Most recently used first.
    entries: LruCache<Digest, Entry>,
    total: u64,
    pinned: BTreeSet<Digest>,
}

#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
}

/// Writes `data` to `path` durably: a temporary file, fsynced, renamed over `path`, and the
/// directory fsynced so the rename itself survives a crash.
pub(crate) fn write_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per write: two writers of one chunk must never share a temporary file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The digest of `data`, hashed on a blocking thread (a chunk is megabytes).
pub(crate) async fn digest_off_thread(
    data: impl AsRef<[u8]> + Send + 'static,
) -> Result<Digest, tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || Digest::of(data.as_ref())).await
}

impl Cache {
    /// Opens (or creates) the cache in `dir`, indexing what a previous run left as unverified,
    /// oldest first; temporary files of an interrupted write and files not named by a digest
    /// are removed.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut found: Vec<(std::time::SystemTime, Digest, u64)> = Vec::new();
        for e in std::fs::read_dir(dir)?.flatten() {
            let meta = e.metadata()?;
            let name = e.file_name();
            match Digest::from_hex(&name.to_string_lossy()) {
                Ok(d) if meta.is_file() => found.push((meta.modified()?, d, meta.len())),
                _ => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        found.sort();
        let mut index = Index {
            entries: LruCache::unbounded(),
            total: 0,
            pinned: BTreeSet::new(),
        };
        for (_, d, size) in found {
            index.total += size;
            index.entries.push(
                d,
                Entry {
                    size,
                    verified: false,
                },
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            index: Mutex::new(index),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn file(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.lock().entries.contains(d)
    }

    /// The cached chunk's bytes, marking it used; `None` if it is not cached. A chunk not yet
    /// verified since this process opened the cache is hashed first: one that does not match
    /// its name is removed (and `None` returned, so the caller fetches it again).
    pub async fn read(&self, d: &Digest) -> std::io::Result<Option<Bytes>> {
        let verified = match self.lock().entries.get(d) {
            None => return Ok(None),
            Some(e) => e.verified,
        };
        let data = match tokio::fs::read(self.file(d)).await {
            Ok(data) => Bytes::from(data),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget(d);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if !verified {
            let digest = digest_off_thread(data.clone())
                .await
                .map_err(std::io::Error::other)?;
            if digest != *d {
                warn!(chunk = %d, hashes_to = %digest, "cached chunk does not match its name; removing it");
                self.forget(d);
                let _ = tokio::fs::remove_file(self.file(d)).await;
                return Ok(None);
            }
            let mut g = self.lock();
            let size = data.len() as u64;
            if let Some(e) = g.entries.peek_mut(d) {
                let was = e.size;
                *e = Entry {
                    size,
                    verified: true,
                };
                g.total = g.total - was + size;
            }
        }
        Ok(Some(data))
    }

    fn forget(&self, d: &Digest) {
        let mut g = self.lock();
        if let Some(e) = g.entries.pop(d) {
            g.total -= e.size;
        }
    }

    /// Stores a chunk whose digest the caller verified (see [`write_durably`]), then evicts
    /// least recently used unpinned chunks until the cache fits. A chunk already cached is
    /// only marked used.
    pub async fn insert(&self, d: &Digest, data: &Bytes) -> std::io::Result<()> {
        if self.lock().entries.get(d).is_some_and(|e| e.verified) {
            return Ok(());
        }
        let path = self.file(d);
        let bytes = data.clone();
        tokio::task::spawn_blocking(move || write_durably(&path, &bytes))
            .await
            .map_err(std::io::Error::other)??;
        let evict = {
            let mut g = self.lock();
            let size = data.len() as u64;
            let entry = Entry {
                size,
                verified: true,
            };
            // `push` hands back what it replaced: a racing insert of the same chunk, or an
            // unverified file of the same name, is counted once.
            if let Some((_, old)) = g.entries.push(*d, entry) {
                g.total -= old.size;
            }
            g.total += size;
            self.evictions(&mut g, d)
        };
        for k in evict {
            let _ = tokio::fs::remove_file(self.file(&k)).await;
        }
        Ok(())
    }

    /// Takes least recently used, unpinned chunks other than `keep` out of the index until
    /// the total fits; their files are the caller's to remove. Walks from the old end only as
    /// far as it must.
    fn evictions(&self, g: &mut Index, keep: &Digest) -> Vec<Digest> {
        let mut out = Vec::new();
        if g.total <= self.max_bytes {
            return out;
        }
        let mut excess = g.total - self.max_bytes;
        for (k, e) in g.entries.iter().rev() {
            if excess == 0 {
                break;
            }
            if k == keep || g.pinned.contains(k) {
                continue;
            }
            excess = excess.saturating_sub(e.size);
            out.push(*k);
        }
        for k in &out {
            if let Some(e) = g.entries.pop(k) {
                g.total -= e.size;
            }
        }
        out
    }

    /// The chunks that must stay whatever the bound (live and previous builds).
    pub fn pin(&self, chunks: BTreeSet<Digest>) {
        self.lock().pinned = chunks;
    }

    pub fn total_bytes(&self) -> u64 {
        self.lock().total
    }

    /// How many chunks are cached.
    pub fn chunks(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: u8) -> (Digest, Bytes) {
        let data = Bytes::from(vec![i; 1000]);
        (Digest::of(&data), data)
    }

    #[tokio::test]
    async fn least_recently_used_unpinned_chunks_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path(), 3000).unwrap();
        let [(d1, b1), (d2, b2), (d3, b3), (d4, b4)] = [1, 2, 3, 4].map(chunk);
        c.insert(&d1, &b1).await.unwrap();
        c.insert(&d2, &b2).await.unwrap();
        c.insert(&d3, &b3).await.unwrap();
        c.pin([d1].into_iter().collect());
        assert!(
            c.read(&d2).await.unwrap().is_some(),
            "2 is now more recent than 3"
        );
        c.insert(&d4, &b4).await.unwrap();
        assert!(c.contains(&d1), "pinned");
        assert!(c.contains(&d2) && c.contains(&d4));
        assert!(
            !c.contains(&d3),
            "the least recently used unpinned one went"
        );
        assert!(!dir.path().join(d3.hex()).exists());
        assert_eq!(c.total_bytes(), 3000);
        // A reopened cache finds what is on disk and drops junk.
        std::fs::write(dir.path().join(".partial"), b"x").unwrap();
        let again = Cache::open(dir.path(), 3000).unwrap();
        assert!(again.contains(&d4) && !dir.path().join(".partial").exists());
        assert_eq!(again.read(&d4).await.unwrap(), Some(b4));
    }

    #[tokio::test]
    async fn a_chunk_inserted_twice_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path(), 10_000).unwrap();
        let (d, b) = chunk(7);
        let (x, y) = tokio::join!(c.insert(&d, &b), c.insert(&d, &b));
        x.unwrap();
        y.unwrap();
        c.insert(&d, &b).await.unwrap();
        assert_eq!((c.chunks(), c.total_bytes()), (1, 1000));
    }

    #[tokio::test]
    async fn a_file_that_no_longer_matches_its_name_is_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let (d1, b1) = chunk(1);
        let (d2, b2) = chunk(2);
        {
            let c = Cache::open(dir.path(), 10_000).unwrap();
            c.insert(&d1, &b1).await.unwrap();
            c.insert(&d2, &b2).await.unwrap();
        }
        // As a crash or a bad disk might leave it: a torn file and a changed one.
        std::fs::write(dir.path().join(d1.hex()), &b1[..10]).unwrap();
        std::fs::write(dir.path().join(d2.hex()), vec![9u8; 1000]).unwrap();
        let c = Cache::open(dir.path(), 10_000).unwrap();
        assert!(c.contains(&d1) && c.contains(&d2), "indexed, not yet read");
        assert_eq!(c.read(&d1).await.unwrap(), None);
        assert_eq!(c.read(&d2).await.unwrap(), None);
        assert!(!c.contains(&d1) && !c.contains(&d2));
        assert!(!dir.path().join(d1.hex()).exists() && !dir.path().join(d2.hex()).exists());
        assert_eq!(c.total_bytes(), 0);
        // Fetched again, the chunk is cached and served.
        c.insert(&d1, &b1).await.unwrap();
        assert_eq!(c.read(&d1).await.unwrap(), Some(b1));
    }

    #[test]
    fn a_durable_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        write_durably(&path, b"one").unwrap();
        write_durably(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
    }
}

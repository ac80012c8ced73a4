//! A relay's chunk cache on disk: verified chunks only, bounded by bytes, least recently used
//! evicted first, except pinned chunks (those of its rack's live and previous builds).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;

#[derive(Debug, Default)]
struct Index {
    /// digest hex -> (size, last use)
    entries: HashMap<String, (u64, u64)>,
    total: u64,
    tick: u64,
    pinned: BTreeSet<String>,
}

#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
}

fn is_hex_digest(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Cache {
    /// Opens (or creates) the cache in `dir`, indexing what a previous run left; partial
    /// files of an interrupted write are removed.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut index = Index::default();
        let mut found: Vec<(std::time::SystemTime, String, u64)> = Vec::new();
        for e in std::fs::read_dir(dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = e.metadata()?;
            if !is_hex_digest(&name) || !meta.is_file() {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            found.push((meta.modified()?, name, meta.len()));
        }
        found.sort();
        for (_, name, size) in found {
            index.tick += 1;
            index.total += size;
            index.entries.insert(name, (size, index.tick));
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

    /// The cached chunk's file, marking it used.
    pub fn path(&self, hex: &str) -> Option<PathBuf> {
        let mut g = self.lock();
        g.tick += 1;
        let tick = g.tick;
        let e = g.entries.get_mut(hex)?;
        e.1 = tick;
        Some(self.dir.join(hex))
    }

    pub fn contains(&self, hex: &str) -> bool {
        self.lock().entries.contains_key(hex)
    }

    /// Stores a chunk whose digest the caller verified (temp file, then rename), then evicts
    /// least recently used unpinned chunks until the cache fits.
    pub async fn insert(&self, hex: &str, data: &Bytes) -> std::io::Result<()> {
        if !is_hex_digest(hex) || self.contains(hex) {
            return Ok(());
        }
        let tmp = self.dir.join(format!(".{hex}.{}", std::process::id()));
        tokio::fs::write(&tmp, data).await?;
        tokio::fs::rename(&tmp, self.dir.join(hex)).await?;
        let evict = {
            let mut g = self.lock();
            g.tick += 1;
            let tick = g.tick;
            g.total += data.len() as u64;
            g.entries.insert(hex.to_string(), (data.len() as u64, tick));
            let mut evict = Vec::new();
            if g.total > self.max_bytes {
                let mut by_age: Vec<(u64, String, u64)> = g
                    .entries
                    .iter()
                    .filter(|(k, _)| !g.pinned.contains(*k) && k.as_str() != hex)
                    .map(|(k, (size, used))| (*used, k.clone(), *size))
                    .collect();
                by_age.sort();
                for (_, k, size) in by_age {
                    if g.total <= self.max_bytes {
                        break;
                    }
                    g.entries.remove(&k);
                    g.total -= size;
                    evict.push(k);
                }
            }
            evict
        };
        for k in evict {
            let _ = tokio::fs::remove_file(self.dir.join(k)).await;
        }
        Ok(())
    }

    /// The chunks that must stay whatever the bound (live and previous builds).
    pub fn pin(&self, chunks: BTreeSet<String>) {
        self.lock().pinned = chunks;
    }

    pub fn total_bytes(&self) -> u64 {
        self.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(i: u8) -> String {
        format!("{i:02x}").repeat(32)
    }

    #[tokio::test]
    async fn least_recently_used_unpinned_chunks_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path(), 3000).unwrap();
        let kb = Bytes::from(vec![0u8; 1000]);
        c.insert(&hex(1), &kb).await.unwrap();
        c.insert(&hex(2), &kb).await.unwrap();
        c.insert(&hex(3), &kb).await.unwrap();
        c.pin([hex(1)].into_iter().collect());
        assert!(c.path(&hex(2)).is_some(), "2 is now more recent than 3");
        c.insert(&hex(4), &kb).await.unwrap();
        assert!(c.contains(&hex(1)), "pinned");
        assert!(c.contains(&hex(2)) && c.contains(&hex(4)));
        assert!(
            !c.contains(&hex(3)),
            "the least recently used unpinned one went"
        );
        assert!(!dir.path().join(hex(3)).exists());
        assert_eq!(c.total_bytes(), 3000);
        // A reopened cache finds what is on disk and drops junk.
        std::fs::write(dir.path().join(".partial"), b"x").unwrap();
        let again = Cache::open(dir.path(), 3000).unwrap();
        assert!(again.contains(&hex(4)) && !dir.path().join(".partial").exists());
    }
}

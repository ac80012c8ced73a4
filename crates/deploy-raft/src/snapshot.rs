//! Snapshot files: what a snapshot is on disk, and the handle openraft reads and writes.
//!
//! A snapshot is never one buffer. It is built by streaming the state into a temporary file,
//! made durable (file and directory synced) and renamed into place; the leader sends it by
//! reading bounded chunks from the file, and a follower receives it by writing chunks into a
//! temporary file of its own, then decodes it from there as a stream.
//!
//! Files live in `<group dir>/snapshots/`: `<id>.snap` for a finished snapshot, `*.tmp` for
//! one being built or received (removed when the store opens, since no one can finish it).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// openraft's `SnapshotData`: an open snapshot file and where it is.
///
/// The path lets installing a received snapshot rename the file into place instead of copying
/// it; a handle on a file elsewhere (another store's, in openraft's storage suite) is copied.
#[derive(Debug)]
pub struct SnapshotFile {
    file: tokio::fs::File,
    path: PathBuf,
}

impl SnapshotFile {
    pub(crate) fn new(file: std::fs::File, path: PathBuf) -> Self {
        Self {
            file: tokio::fs::File::from_std(file),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) async fn into_std(self) -> (std::fs::File, PathBuf) {
        (self.file.into_std().await, self.path)
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().file).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.get_mut().file).start_seek(position)
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.get_mut().file).poll_complete(cx)
    }
}

/// The snapshot directory of one group.
#[derive(Debug)]
pub(crate) struct SnapshotDir {
    dir: PathBuf,
    next_temp: AtomicU64,
}

impl SnapshotDir {
    /// Opens (creating) the directory and removes the temporary files a crash left.
    pub(crate) fn open(group_dir: &Path) -> io::Result<Self> {
        let dir = group_dir.join("snapshots");
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(Self {
            dir,
            next_temp: AtomicU64::new(0),
        })
    }

    /// A new temporary file, open for reading and writing.
    pub(crate) fn temp(&self, what: &str) -> io::Result<(std::fs::File, PathBuf)> {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("{what}-{}-{n}.tmp", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((file, path))
    }

    /// The file name a finished snapshot is kept under. Snapshot ids are built by this crate
    /// or arrive from the group's leader, so anything but a plain name is refused.
    pub(crate) fn final_name(snapshot_id: &str) -> io::Result<String> {
        let plain = !snapshot_id.is_empty()
            && snapshot_id.len() <= 128
            && snapshot_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !plain {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a snapshot id must be 1-128 letters, digits, '-' or '_'",
            ));
        }
        Ok(format!("{snapshot_id}.snap"))
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether `path` is a file of this directory (so it can be renamed, not copied).
    pub(crate) fn holds(&self, path: &Path) -> bool {
        path.parent() == Some(self.dir.as_path())
    }

    /// Makes a written temporary file the snapshot `name`: syncs it, renames it, syncs the
    /// directory, so after a crash it is either wholly there or not at all.
    pub(crate) fn finish(&self, file: &std::fs::File, temp: &Path, name: &str) -> io::Result<()> {
        file.sync_all()?;
        std::fs::rename(temp, self.path_of(name))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Opens the snapshot `name` for reading, with its length.
    pub(crate) fn open_file(&self, name: &str) -> io::Result<(std::fs::File, PathBuf, u64)> {
        let path = self.path_of(name);
        let file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        Ok((file, path, len))
    }

    /// Removes every finished snapshot but `keep`. Readers that still have one open (a
    /// snapshot being sent) keep reading it: the file goes when they close it.
    pub(crate) fn remove_all_but(&self, keep: &str) -> io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_snap = path.extension().is_some_and(|e| e == "snap");
            if is_snap && path.file_name().is_some_and(|n| n != keep) {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
}

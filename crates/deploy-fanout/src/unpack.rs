//! Unpacking an artifact's tar stream into a release directory, refusing anything that could
//! write outside it: absolute paths, `..`, links that leave the directory, hard links and
//! special files. The whole stream's digest and size are checked against the manifest; on
//! any refusal the partial directory is removed and nothing else was written.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("refused entry {path:?}: {why}")]
    Hostile { path: String, why: String },
    #[error("the artifact's bytes do not match the manifest: {0}")]
    Mismatch(String),
    #[error("unpacking failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// The relative path an entry names, if it stays inside the directory.
fn contained(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Whether a symlink at `link` (relative to the root) pointing at `target` stays inside.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = link.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Unpacks `stream` (the artifact's tar) into `dest`, which must not exist yet, checking the
/// stream's sha256 against `digest` (`sha256:<hex>`) and its length against `size`.
pub fn unpack(stream: impl Read, dest: &Path, digest: &str, size: u64) -> Result<(), UnpackError> {
    let result = unpack_inner(stream, dest, digest, size);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    result
}

fn unpack_inner(
    stream: impl Read,
    dest: &Path,
    digest: &str,
    size: u64,
) -> Result<(), UnpackError> {
    std::fs::create_dir(dest)?;
    let mut hashing = Hashing {
        inner: stream,
        hasher: Sha256::new(),
        count: 0,
    };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let raw = entry.path()?.into_owned();
            let shown = raw.display().to_string();
            let hostile = |why: &str| UnpackError::Hostile {
                path: shown.clone(),
                why: why.to_string(),
            };
            let rel = contained(&raw).ok_or_else(|| hostile("absolute or leaves the directory"))?;
            let out = dest.join(&rel);
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                std::fs::create_dir_all(&out)?;
            } else if kind.is_file() {
                let mode = entry.header().mode().unwrap_or(0o644) & 0o755;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&out)
                    .map_err(|e| hostile(&format!("cannot create: {e}")))?;
                std::io::copy(&mut entry, &mut f)?;
                f.flush()?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(mode | 0o600))?;
                }
            } else if kind.is_symlink() {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| hostile("a symlink without a target"))?
                    .into_owned();
                if !link_stays_inside(&rel, &target) {
                    return Err(hostile(&format!(
                        "a link to {} leaves the directory",
                        target.display()
                    )));
                }
                #[cfg(unix)]
                std::os::unix::fs::symlink(&target, &out)?;
            } else {
                return Err(hostile("hard links and special files are not allowed"));
            }
        }
    }
    // The tar reader may stop before the padding at the end: the digest covers every byte.
    std::io::copy(&mut hashing, &mut std::io::sink())?;
    let got = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
    if got != digest || hashing.count != size {
        return Err(UnpackError::Mismatch(format!(
            "{} bytes with digest {got}, expected {size} bytes with {digest}",
            hashing.count
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, content) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            if *kind == tar::EntryType::Symlink {
                h.set_size(0);
                h.set_link_name(content).unwrap();
                // Bypass the builder's own path checks: write the raw name.
                let name = h.as_old_mut().name.as_mut();
                name[..path.len()].copy_from_slice(path.as_bytes());
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            } else {
                h.set_size(content.len() as u64);
                let name = h.as_old_mut().name.as_mut();
                name[..path.len()].copy_from_slice(path.as_bytes());
                h.set_cksum();
                b.append(&h, content.as_bytes()).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    fn digest(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    #[test]
    fn a_good_artifact_unpacks_with_its_files_and_inner_links() {
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_with(&[
            ("out/app", tar::EntryType::Regular, "hello"),
            ("out/link", tar::EntryType::Symlink, "app"),
            ("top", tar::EntryType::Symlink, "out/../out/app"),
        ]);
        let dest = dir.path().join("r");
        unpack(&tar[..], &dest, &digest(&tar), tar.len() as u64).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("out/link")).unwrap(),
            "hello"
        );
        assert_eq!(std::fs::read_to_string(dest.join("top")).unwrap(), "hello");
    }

    #[test]
    fn hostile_entries_are_refused_and_nothing_is_written_outside() {
        let cases: Vec<Vec<u8>> = vec![
            tar_with(&[("../x", tar::EntryType::Regular, "evil")]),
            tar_with(&[("ok/../../x", tar::EntryType::Regular, "evil")]),
            tar_with(&[("/tmp/deploy-evil-abs", tar::EntryType::Regular, "evil")]),
            tar_with(&[("root", tar::EntryType::Symlink, "/")]),
            tar_with(&[("up", tar::EntryType::Symlink, "../../etc")]),
            tar_with(&[("hard", tar::EntryType::Link, "/etc/passwd")]),
            tar_with(&[("fifo", tar::EntryType::Fifo, "")]),
        ];
        for (i, tar) in cases.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("releases").join("b-1");
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            let e = unpack(&tar[..], &dest, &digest(tar), tar.len() as u64).unwrap_err();
            assert!(matches!(e, UnpackError::Hostile { .. }), "case {i}: {e}");
            assert!(!dest.exists(), "case {i}: the partial release is removed");
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert_eq!(left, vec![std::ffi::OsString::from("releases")], "case {i}");
            assert!(!dir.path().join("x").exists());
        }
        assert!(!Path::new("/tmp/deploy-evil-abs").exists());
    }

    #[test]
    fn bytes_that_do_not_match_the_manifest_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_with(&[("a", tar::EntryType::Regular, "1")]);
        let dest = dir.path().join("r");
        let e = unpack(&tar[..], &dest, &digest(b"other"), tar.len() as u64).unwrap_err();
        assert!(matches!(e, UnpackError::Mismatch(_)), "{e}");
        assert!(!dest.exists());
    }
}

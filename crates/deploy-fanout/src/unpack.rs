//! Unpacking an artifact's tar stream into a release directory, refusing anything that could
//! write outside it: absolute paths, `..`, an entry whose path passes through a symlink the
//! archive made (each link may look harmless alone, yet a chain of them climbs out), links
//! that lead out once every link is followed, hard links and special files. The whole
//! stream's digest and size are checked against the manifest; on any refusal the partial
//! directory is removed and nothing else was written.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use deploy_types::Digest;
use sha2::{Digest as _, Sha256};

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

/// Links followed while resolving one link's target, at most (the kernel's own bound).
const MAX_LINK_HOPS: usize = 40;
/// Path components walked while resolving one link's target, at most.
const MAX_RESOLVE_STEPS: usize = 4096;

/// The first proper ancestor of `rel` that is one of the archive's symlinks, if any: an
/// entry beneath it would be written wherever the link leads.
fn through_link<'a>(links: &HashMap<PathBuf, PathBuf>, rel: &'a Path) -> Option<&'a Path> {
    rel.ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .find(|a| links.contains_key(*a))
}

/// Where the link at `link` (relative to the root) leads once every link of the archive on
/// the way is followed; an error when it climbs out of the root, or loops.
fn resolve(links: &HashMap<PathBuf, PathBuf>, link: &Path) -> Result<PathBuf, String> {
    let mut at: Vec<std::ffi::OsString> = link
        .parent()
        .map(|p| p.iter().map(|c| c.to_os_string()).collect())
        .unwrap_or_default();
    let mut pending: std::collections::VecDeque<Component<'_>> = links
        .get(link)
        .map(|t| t.components().collect())
        .unwrap_or_default();
    let (mut hops, mut steps) = (0usize, 0usize);
    while let Some(c) = pending.pop_front() {
        steps += 1;
        if steps > MAX_RESOLVE_STEPS {
            return Err("its target is too long to follow".into());
        }
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if at.pop().is_none() {
                    return Err("it leads outside the directory".into());
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("it leads to an absolute path".into())
            }
            Component::Normal(p) => {
                at.push(p.to_os_string());
                let here: PathBuf = at.iter().collect();
                if let Some(target) = links.get(&here) {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err("it is a loop of links".into());
                    }
                    at.pop();
                    for c in target.components().rev() {
                        pending.push_front(c);
                    }
                }
            }
        }
    }
    Ok(at.iter().collect())
}

/// Unpacks `stream` (the artifact's tar) into `dest`, which must not exist yet, checking the
/// stream's sha256 against `digest` and its length against `size`.
pub fn unpack(
    stream: impl Read,
    dest: &Path,
    digest: &Digest,
    size: u64,
) -> Result<(), UnpackError> {
    let result = unpack_inner(stream, dest, digest, size);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    result
}

fn unpack_inner(
    stream: impl Read,
    dest: &Path,
    digest: &Digest,
    size: u64,
) -> Result<(), UnpackError> {
    std::fs::create_dir(dest)?;
    let mut hashing = Hashing {
        inner: stream,
        hasher: Sha256::new(),
        count: 0,
    };
    // The archive's symlinks, by their path under `dest`: nothing else there is a link. One
    // entry per symlink entry, so it is bounded by the artifact's size (512 bytes an entry).
    let mut links: HashMap<PathBuf, PathBuf> = HashMap::new();
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
            if let Some(link) = through_link(&links, &rel) {
                return Err(hostile(&format!(
                    "it passes through the symlink {}",
                    link.display()
                )));
            }
            if links.contains_key(&rel) {
                return Err(hostile("a symlink of the archive is already there"));
            }
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
                links.insert(rel, target);
            } else {
                return Err(hostile("hard links and special files are not allowed"));
            }
        }
    }
    // Each link alone stays inside; followed through the others, it must too.
    for link in links.keys() {
        resolve(&links, link).map_err(|why| UnpackError::Hostile {
            path: link.display().to_string(),
            why: format!("a link that {why}"),
        })?;
    }
    // The tar reader may stop before the padding at the end: the digest covers every byte.
    std::io::copy(&mut hashing, &mut std::io::sink())?;
    let got = Digest::from_bytes(hashing.hasher.finalize().into());
    if got != *digest || hashing.count != size {
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

    fn digest(data: &[u8]) -> Digest {
        Digest::of(data)
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

    /// Unpacks `tar` at `<tmp>/a/b/releases/b-1`, expecting a refusal that names `words`,
    /// and checks that nothing was left anywhere up to `<tmp>`.
    fn refused_with_nothing_outside(tar: &[u8], words: &str) {
        let dir = tempfile::tempdir().unwrap();
        let releases = dir.path().join("a/b/releases");
        std::fs::create_dir_all(&releases).unwrap();
        let dest = releases.join("b-1");
        let e = unpack(tar, &dest, &digest(tar), tar.len() as u64).unwrap_err();
        assert!(matches!(e, UnpackError::Hostile { .. }), "{e}");
        assert!(e.to_string().contains(words), "{e}");
        for (level, only) in [
            (dir.path().to_path_buf(), "a"),
            (dir.path().join("a"), "b"),
            (dir.path().join("a/b"), "releases"),
        ] {
            let names: Vec<_> = std::fs::read_dir(&level)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert_eq!(names, vec![std::ffi::OsString::from(only)], "{level:?}");
        }
        assert_eq!(std::fs::read_dir(&releases).unwrap().count(), 0);
    }

    #[test]
    fn a_chain_of_links_that_each_look_inside_cannot_write_outside() {
        // d/l leads to the root, d/l/x (made through it) one level up, evil beside it.
        let tar = tar_with(&[
            ("d/l", tar::EntryType::Symlink, ".."),
            ("d/l/x", tar::EntryType::Symlink, ".."),
            ("d/l/x/evil", tar::EntryType::Regular, "evil"),
        ]);
        refused_with_nothing_outside(&tar, "passes through the symlink d/l");
        // A directory or a file beneath a link is refused the same way.
        let tar = tar_with(&[
            ("d", tar::EntryType::Symlink, "."),
            ("d/sub", tar::EntryType::Directory, ""),
        ]);
        refused_with_nothing_outside(&tar, "passes through the symlink d");
        let tar = tar_with(&[
            ("d", tar::EntryType::Symlink, "."),
            ("d", tar::EntryType::Directory, ""),
        ]);
        refused_with_nothing_outside(&tar, "already there");
    }

    #[test]
    fn a_link_that_leads_out_through_another_link_is_refused() {
        // Alone, x stays inside (d/l/.. is d); followed through d/l it is the parent.
        let tar = tar_with(&[
            ("d/l", tar::EntryType::Symlink, ".."),
            ("x", tar::EntryType::Symlink, "d/l/.."),
        ]);
        refused_with_nothing_outside(&tar, "leads outside");
        // The same with the links in the other order.
        let tar = tar_with(&[
            ("x", tar::EntryType::Symlink, "d/l/.."),
            ("d/l", tar::EntryType::Symlink, ".."),
        ]);
        refused_with_nothing_outside(&tar, "leads outside");
        let tar = tar_with(&[
            ("a", tar::EntryType::Symlink, "b"),
            ("b", tar::EntryType::Symlink, "a"),
        ]);
        refused_with_nothing_outside(&tar, "loop");
    }

    #[test]
    fn links_to_links_inside_resolve() {
        let links: HashMap<PathBuf, PathBuf> = [
            ("out/cur", "v2"),
            ("top", "out/cur/app"),
            ("up", "out/cur/.."),
        ]
        .into_iter()
        .map(|(a, b)| (PathBuf::from(a), PathBuf::from(b)))
        .collect();
        assert_eq!(
            resolve(&links, Path::new("top")).unwrap(),
            Path::new("out/v2/app")
        );
        assert_eq!(resolve(&links, Path::new("up")).unwrap(), Path::new("out"));
        assert_eq!(
            through_link(&links, Path::new("out/cur/x")),
            Some(Path::new("out/cur"))
        );
        assert_eq!(through_link(&links, Path::new("out/cur")), None);
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

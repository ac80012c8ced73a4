//! Every host runs its region's goal, and the files it runs are the signed artifact's.
//!
//! The goal comes from the region's leader; what runs is what `current` points at on the
//! host's disk, with a live service process; and the release directory must hold exactly the
//! files of the artifact, unpacked here from the region's store after checking the manifest's
//! signature, byte for byte.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use deploy_artifact::{Store, TrustedKeys};
use deploy_proto::v1 as pb;
use sha2::{Digest, Sha256};

use crate::layout::SERVICE;

/// A file tree: relative path -> what is there (a file's mode and digest, a link's target,
/// a directory).
pub type Tree = BTreeMap<String, String>;

/// Reads `root` into a [`Tree`].
pub fn tree(root: &Path) -> std::io::Result<Tree> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Tree::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let meta = std::fs::symlink_metadata(&path)?;
            let what = if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&path)?.display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else {
                let mut h = Sha256::new();
                let mut f = std::fs::File::open(&path)?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                format!(
                    "file {:o} {}",
                    meta.permissions().mode() & 0o111,
                    hex::encode(h.finalize())
                )
            };
            out.insert(rel, what);
        }
    }
    Ok(out)
}

/// The artifact `digest` of `region`'s store, its signature checked, unpacked under `dest`.
pub async fn unpack_artifact(
    store_dir: &Path,
    digest: &str,
    trusted: &TrustedKeys,
    max_chunk: u64,
    dest: &Path,
) -> anyhow::Result<()> {
    let store = Store::local(store_dir)?;
    let m = store
        .get_trusted_manifest(&deploy_types::Digest::parse(digest)?, trusted)
        .await?;
    let mut data = Vec::with_capacity(m.size as usize);
    for c in &m.chunks {
        data.extend_from_slice(&store.get_chunk(&c.digest, max_chunk).await?);
    }
    let (dest, digest, size) = (dest.to_path_buf(), m.artifact_digest, m.size);
    let _ = std::fs::remove_dir_all(&dest);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    tokio::task::spawn_blocking(move || {
        deploy_fanout::unpack::unpack(std::io::Cursor::new(data), &dest, &digest, size)
    })
    .await??;
    Ok(())
}

/// What one host shows.
#[derive(Debug, Clone)]
pub struct HostView {
    pub host: String,
    pub goal: String,
    pub running: String,
    pub state: String,
}

pub fn view(h: &pb::Host) -> HostView {
    let s = h.services.iter().find(|s| s.service == SERVICE);
    HostView {
        host: h.host.clone(),
        goal: s.map(|s| s.goal_build_id.clone()).unwrap_or_default(),
        running: s.map(|s| s.running_build_id.clone()).unwrap_or_default(),
        state: s.map(|s| s.state().name().to_string()).unwrap_or_default(),
    }
}

/// Why a host has not converged, if it has not: it must run its goal, in the state its
/// build's health check gives (`healthy`: whether the goal's commit passes it).
pub fn not_converged(v: &HostView, healthy: Option<bool>) -> Option<String> {
    if v.goal.is_empty() {
        return (!v.running.is_empty())
            .then(|| format!("{} runs {} with no goal", v.host, v.running));
    }
    if v.running != v.goal {
        return Some(format!(
            "{} runs {:?} ({}), its goal is {}",
            v.host, v.running, v.state, v.goal
        ));
    }
    let want = match healthy {
        Some(true) => "HEALTHY",
        Some(false) => "UNHEALTHY",
        None => return Some(format!("{}: goal {} is not a known build", v.host, v.goal)),
    };
    (v.state != want).then(|| format!("{} is {} on {}, expected {want}", v.host, v.state, v.goal))
}

/// Checks host `root` on disk: `current` is the goal's release, its process is alive, and its
/// files are exactly `expected`'s.
pub fn check_disk(host: &str, root: &Path, goal: &str, expected: &Tree) -> Result<(), String> {
    let sdir = root.join("services").join(SERVICE);
    let link = std::fs::read_link(sdir.join("current"))
        .map_err(|e| format!("{host}: no current release: {e}"))?;
    let want: PathBuf = Path::new("releases").join(goal);
    if link != want {
        return Err(format!(
            "{host}: current points at {}, the goal is {goal}",
            link.display()
        ));
    }
    let pid_text = std::fs::read_to_string(sdir.join("pid"))
        .map_err(|e| format!("{host}: no pid file: {e}"))?;
    let file = deploy_fanout::service::PidFile::parse(&pid_text)
        .ok_or_else(|| format!("{host}: the pid file is not one: {pid_text:?}"))?;
    if file.build != goal {
        return Err(format!(
            "{host}: the pid file is for another build: {pid_text:?}"
        ));
    }
    if !file.proc.alive() {
        return Err(format!(
            "{host}: the service process {} of {goal} is gone",
            file.proc
        ));
    }
    let pid = file.proc.pid;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let dir = sdir.join(&want);
    let real = dir.canonicalize().ok();
    if cwd.is_none() || cwd != real {
        return Err(format!(
            "{host}: no service process of {goal} is running (pid {pid})"
        ));
    }
    let got = tree(&dir).map_err(|e| format!("{host}: cannot read {}: {e}", dir.display()))?;
    if &got != expected {
        let extra: Vec<&String> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
        let differ: Vec<&String> = expected
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        return Err(format!(
            "{host}: the files of {goal} differ from its signed artifact (differing or missing: {differ:?}; extra: {extra:?})"
        ));
    }
    Ok(())
}

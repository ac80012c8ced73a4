//! Fetching exactly one commit: a bare mirror cache per repository, then `git archive`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::process::Command;

/// Longest a clone or fetch may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The commit is not in the repository, even after a fetch: final, never retried.
    #[error("commit not found: {commit} is not in {repo}")]
    CommitNotFound { repo: String, commit: String },
    /// The repository could not be reached or read: worth another attempt.
    #[error("git {what} failed: {detail}")]
    Failed { what: String, detail: String },
}

fn git() -> Command {
    let mut c = Command::new("git");
    // Never prompt for credentials, never read the user's config.
    c.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

async fn run(what: &str, cmd: &mut Command) -> Result<Vec<u8>, GitError> {
    let fail = |detail: String| GitError::Failed {
        what: what.to_string(),
        detail,
    };
    let out = tokio::time::timeout(GIT_TIMEOUT, cmd.output())
        .await
        .map_err(|_| fail(format!("timed out after {GIT_TIMEOUT:?}")))?
        .map_err(|e| fail(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(fail(err.trim().chars().take(2000).collect()));
    }
    Ok(out.stdout)
}

/// A cache of bare mirrors, one per repository URL.
pub struct MirrorCache {
    dir: PathBuf,
}

impl MirrorCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn mirror_path(&self, repo: &str) -> PathBuf {
        let h = hex::encode(Sha256::digest(repo.as_bytes()));
        self.dir.join(format!("{}.git", &h[..24]))
    }

    async fn has_commit(mirror: &Path, commit: &str) -> bool {
        git()
            .arg("--git-dir")
            .arg(mirror)
            .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success())
    }

    /// The mirror of `repo`, holding `commit`: cloned on first use, fetched only when the
    /// commit is missing.
    pub async fn ensure(&self, repo: &str, commit: &str) -> Result<PathBuf, GitError> {
        let mirror = self.mirror_path(repo);
        if !mirror.exists() {
            std::fs::create_dir_all(&self.dir).map_err(|e| GitError::Failed {
                what: "mirror cache".into(),
                detail: e.to_string(),
            })?;
            let tmp = mirror.with_extension(format!("tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            run(
                "clone",
                git()
                    .args(["clone", "--mirror", "--quiet", "--"])
                    .arg(repo)
                    .arg(&tmp),
            )
            .await?;
            // A half-made mirror is never used: it appears under its name only when complete.
            std::fs::rename(&tmp, &mirror).map_err(|e| GitError::Failed {
                what: "mirror cache".into(),
                detail: e.to_string(),
            })?;
        }
        if Self::has_commit(&mirror, commit).await {
            return Ok(mirror);
        }
        run(
            "fetch",
            git()
                .arg("--git-dir")
                .arg(&mirror)
                .args(["fetch", "--quiet", "--prune", "origin"]),
        )
        .await?;
        if Self::has_commit(&mirror, commit).await {
            Ok(mirror)
        } else {
            Err(GitError::CommitNotFound {
                repo: repo.to_string(),
                commit: commit.to_string(),
            })
        }
    }
}

/// Writes the tree of `commit` into `dest` (no `.git`).
pub async fn export(mirror: &Path, commit: &str, dest: &Path) -> Result<(), GitError> {
    let tar = run(
        "archive",
        git()
            .arg("--git-dir")
            .arg(mirror)
            .args(["archive", "--format=tar", commit]),
    )
    .await?;
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dest)?;
        // `unpack` refuses absolute paths and `..`.
        tar::Archive::new(&tar[..]).unpack(&dest)
    })
    .await
    .map_err(|e| GitError::Failed {
        what: "archive".into(),
        detail: e.to_string(),
    })?
    .map_err(|e| GitError::Failed {
        what: "archive".into(),
        detail: e.to_string(),
    })
}

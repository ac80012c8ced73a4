//! Real git repositories made by tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// A git repository in a directory the caller owns.
pub struct GitRepo {
    pub path: PathBuf,
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@localhost")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@localhost")
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl GitRepo {
    pub fn init(path: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)?;
        git(path, &["init", "-q", "-b", "main"])?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Writes `files` (path, content) and commits them; returns the commit's SHA.
    pub fn commit(&self, message: &str, files: &[(&str, &str)]) -> anyhow::Result<String> {
        for (name, content) in files {
            let p = self.path.join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(p, content)?;
        }
        git(&self.path, &["add", "-A"])?;
        git(
            &self.path,
            &["commit", "-q", "--allow-empty", "-m", message],
        )?;
        git(&self.path, &["rev-parse", "HEAD"])
    }

    pub fn url(&self) -> String {
        self.path.display().to_string()
    }
}

/// A recipe whose build runs `build.sh` and ships `out/`.
pub const RECIPE: &str = "[build]\ncommand = \"sh build.sh\"\noutputs = [\"out\"]\ntimeout_secs = 60\n\n[run]\ncommand = \"./out/app\"\n";

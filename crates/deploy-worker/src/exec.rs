//! Running a build command: its own process group, a clean environment, a timeout, and
//! cancellation that kills the whole group.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::logs::LogTx;
use crate::sandbox::Fence;

/// The only PATH a build sees, unless its recipe sets one.
pub const BUILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

#[derive(Debug, PartialEq, Eq)]
pub enum ExecOutcome {
    Exited(i32),
    Signalled,
    TimedOut,
    Cancelled,
}

/// Kills every process of the group led by `pid`.
fn kill_group(pid: u32) {
    if pid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
}

async fn pump(mut r: impl AsyncReadExt + Unpin, log: LogTx) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => log.write(buf[..n].to_vec()).await,
        }
    }
}

/// Runs `command` with `sh -c` in `dir`. The environment holds only PATH, HOME (`home`),
/// TMPDIR (`home/tmp`) and the recipe's variables: none of the daemon's own (its tokens and
/// keys stay out of builds). With a `fence`, the command and its children are held to it
/// (see `sandbox`).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    command: &str,
    dir: &Path,
    home: &Path,
    env: &BTreeMap<String, String>,
    fence: Option<&Fence>,
    timeout: Duration,
    cancel: &CancellationToken,
    log: &LogTx,
) -> std::io::Result<ExecOutcome> {
    let tmp = home.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(dir)
        .env_clear()
        .env("PATH", BUILD_PATH)
        .env("HOME", home)
        .env("TMPDIR", &tmp)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(fence) = fence {
        let mut ruleset = Some(fence.ruleset().map_err(std::io::Error::other)?);
        // SAFETY: the closure makes system calls only (see `sandbox::enforce`): nothing that
        // allocates or takes a lock between fork and exec.
        unsafe {
            cmd.pre_exec(move || match ruleset.take() {
                Some(r) => crate::sandbox::enforce(r),
                None => Ok(()),
            });
        }
    }
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    let out = child
        .stdout
        .take()
        .map(|o| tokio::spawn(pump(o, log.clone())));
    let err = child
        .stderr
        .take()
        .map(|e| tokio::spawn(pump(e, log.clone())));
    let outcome = tokio::select! {
        status = child.wait() => {
            let status = status?;
            match status.code() {
                Some(c) => ExecOutcome::Exited(c),
                None => ExecOutcome::Signalled,
            }
        }
        _ = tokio::time::sleep(timeout) => ExecOutcome::TimedOut,
        _ = cancel.cancelled() => ExecOutcome::Cancelled,
    };
    // Whatever happened, nothing of the build outlives it: background children included.
    kill_group(pid);
    let _ = child.wait().await;
    for t in [out, err].into_iter().flatten() {
        let _ = t.await;
    }
    Ok(outcome)
}

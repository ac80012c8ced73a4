//! A host's service processes: started from the release's `[run]` command in their own
//! process group, stopped group-wide, and checked for health.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use deploy_artifact::recipe::RunSection;

/// Starts `run.command` with `sh -c` in `dir`, in a new process group, its output appended
/// to `log`. Returns the pid (also the group id).
pub fn start(
    run: &RunSection,
    dir: &Path,
    log: &Path,
    env: &[(&str, &str)],
) -> std::io::Result<u32> {
    use std::os::unix::process::CommandExt;
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(&run.command)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn()?;
    let pid = child.id();
    // The child is reaped by `reap`; dropping the handle does not kill it.
    drop(child);
    Ok(pid)
}

/// Collects `pid` if it is a child of this process that exited, saying how it ended. Only
/// the named pid is waited for: other children (a worker's build commands in `deployd dev`)
/// are left to whoever started them.
pub fn reap(pid: u32) -> Option<String> {
    let mut status = 0;
    // SAFETY: waitpid on one pid with WNOHANG never blocks and only touches that child.
    let got = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
    if got != pid as i32 {
        return None;
    }
    Some(if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        "ended".to_string()
    })
}

/// Whether `pid` is alive (a zombie not yet reaped counts as alive until `reap`).
pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 1 && unsafe { libc::kill(pid as i32, 0) } == 0
}

/// Whether `pid` leads its own process group (one this agent made), so the group may be
/// signalled without touching anything else.
fn leads_own_group(pid: u32) -> bool {
    // SAFETY: plain queries of process group ids.
    unsafe {
        let pgid = libc::getpgid(pid as i32);
        pgid == pid as i32 && pgid != libc::getpgrp()
    }
}

/// Stops the service's process group: SIGTERM, then SIGKILL after `grace`.
pub async fn stop(pid: u32, grace: Duration) {
    if !alive(pid) || !leads_own_group(pid) {
        return;
    }
    // SAFETY: signalling the process group this agent created for the service.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        reap(pid);
        if !alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if leads_own_group(pid) {
        // SAFETY: as above.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    reap(pid);
}

/// Kills the service's process group at once (for a test or dev cluster going away).
pub fn kill_now(pid: u32) {
    if alive(pid) && leads_own_group(pid) {
        // SAFETY: signalling the process group this agent created for the service.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
        reap(pid);
    }
}

/// Runs the health check once: the recipe's command (exit 0 passes) or URL (2xx passes);
/// without either, the process being alive is health. `Err` says why it failed.
pub async fn check(run: &RunSection, dir: &Path, http: &reqwest::Client) -> Result<(), String> {
    if let Some(cmd) = &run.health_command {
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(dir)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        return match tokio::time::timeout(Duration::from_secs(5), out).await {
            Ok(Ok(o)) if o.status.success() => Ok(()),
            Ok(Ok(o)) => {
                let text = String::from_utf8_lossy(&o.stderr);
                let text = if text.trim().is_empty() {
                    String::from_utf8_lossy(&o.stdout).into_owned()
                } else {
                    text.into_owned()
                };
                let tail: String = text
                    .trim()
                    .chars()
                    .rev()
                    .take(200)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                let tail = if tail.is_empty() {
                    "no output".to_string()
                } else {
                    tail
                };
                Err(format!("health command failed ({}): {tail}", o.status))
            }
            Ok(Err(e)) => Err(format!("cannot run the health command: {e}")),
            Err(_) => Err("health command timed out after 5 s".into()),
        };
    }
    if let Some(url) = &run.health_url {
        return match http.get(url).timeout(Duration::from_secs(2)).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("health URL answered {}", r.status())),
            Err(e) => Err(format!("health URL: {e}")),
        };
    }
    Ok(())
}

//! A host's service processes: started from the release's `[run]` command in their own
//! process group, stopped group-wide, and checked for health.
//!
//! A process is known by its pid *and* the time it started ([`Proc`]): once a process ends,
//! its pid may be handed to an unrelated one, so nothing here adopts or signals a pid whose
//! start time is not the one recorded when the agent started it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use deploy_artifact::recipe::RunSection;

/// A process: its pid, and when it started (field 22 of `/proc/PID/stat`, in clock ticks
/// since boot), which no later process with the same pid shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Proc {
    pub pid: u32,
    pub started: u64,
}

/// When process `pid` started, if it exists (a zombie not yet reaped still does).
pub fn start_time(pid: u32) -> Option<u64> {
    if pid <= 1 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ...`: comm may hold spaces and parentheses, so count from the last `)`.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

impl Proc {
    /// Process `pid` as it is now, if it exists.
    pub fn of(pid: u32) -> Option<Self> {
        start_time(pid).map(|started| Self { pid, started })
    }

    /// Whether this very process still exists (not another that took its pid).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.started)
    }
}

impl std::fmt::Display for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.pid)
    }
}

/// A service's `pid` file: `<pid> <start time> <build>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidFile {
    pub proc: Proc,
    pub build: String,
}

impl PidFile {
    /// Parses a pid file's text; anything else (an older `<pid> <build>` line among them) is
    /// `None`, since nothing then says which process the pid named.
    pub fn parse(text: &str) -> Option<Self> {
        let mut it = text.split_whitespace();
        let pid = it.next()?.parse().ok()?;
        let started = it.next()?.parse().ok()?;
        let build = it.next()?.to_string();
        it.next().is_none().then_some(Self {
            proc: Proc { pid, started },
            build,
        })
    }

    pub fn read(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        if text.len() > 256 {
            return None;
        }
        Self::parse(&text)
    }

    /// Writes the file whole (a temporary file renamed over it).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            format!("{} {} {}\n", self.proc.pid, self.proc.started, self.build),
        )?;
        std::fs::rename(&tmp, path)
    }
}

/// Starts `run.command` with `sh -c` in `dir`, in a new process group, its output appended
/// to `log`. Returns the process (its pid is also the group id).
pub fn start(
    run: &RunSection,
    dir: &Path,
    log: &Path,
    env: &[(&str, &str)],
) -> std::io::Result<Proc> {
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
    // The child is reaped by `reap`; dropping the handle does not kill it. Until then its
    // pid cannot be reused, so the start time read now is its own.
    drop(child);
    Proc::of(pid).ok_or_else(|| std::io::Error::other(format!("process {pid} vanished at start")))
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

/// Whether `p` is still the process this agent started and leads its own process group, so
/// the group may be signalled without touching anything else.
fn ours(p: Proc) -> bool {
    // SAFETY: plain queries of process group ids.
    let leads = unsafe {
        let pgid = libc::getpgid(p.pid as i32);
        pgid == p.pid as i32 && pgid != libc::getpgrp()
    };
    leads && p.alive()
}

/// Signals `p`'s process group if it is still ours; whether it was.
fn signal_group(p: Proc, signal: i32) -> bool {
    if !ours(p) {
        return false;
    }
    // SAFETY: signalling the process group this agent created for the service, checked just
    // now to be that process's (same pid, same start time).
    unsafe {
        libc::kill(-(p.pid as i32), signal);
    }
    true
}

/// Stops the service's process group: SIGTERM, then SIGKILL after `grace`.
pub async fn stop(p: Proc, grace: Duration) {
    if !signal_group(p, libc::SIGTERM) {
        return;
    }
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        reap(p.pid);
        if !p.alive() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal_group(p, libc::SIGKILL);
    tokio::time::sleep(Duration::from_millis(20)).await;
    reap(p.pid);
}

/// Kills the service's process group at once (for a test or dev cluster going away).
pub fn kill_now(p: Proc) {
    if signal_group(p, libc::SIGKILL) {
        reap(p.pid);
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

//! The chaos cluster's processes: every node, worker, relay and agent a separate `deployd`,
//! started, killed with SIGKILL, paused with SIGSTOP, and restarted by a supervisor that also
//! notices processes that exit on their own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use deploy_client::Client;
use serde::Serialize;

use crate::layout::Layout;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Node,
    Worker,
    Relay,
    Agent,
}

struct Proc {
    kind: Kind,
    child: Option<Child>,
    paused: bool,
    /// Down on purpose (killed or being restarted by a fault): the supervisor leaves it.
    held: bool,
    /// When the supervisor may next restart it, after an exit of its own.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Until when exits are expected (a disk-full fault on it).
    exits_expected_until: Option<Instant>,
}

/// A process that ended without being told to.
#[derive(Debug, Clone, Serialize)]
pub struct Exit {
    pub process: String,
    pub at_ms: u64,
    pub status: String,
    /// Within a fault that makes it exit (its disk filled up).
    pub expected: bool,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub layout: Layout,
    bin: PathBuf,
    config: PathBuf,
    procs: Mutex<BTreeMap<String, Proc>>,
    pub exits: Mutex<Vec<Exit>>,
    started: Instant,
    /// Node data directories mounted as a small tmpfs (for disk-full faults).
    pub tmpfs: Vec<PathBuf>,
    /// Agents' download limit, bytes per second.
    agent_down_limit: u64,
    /// Processes started with their wall clock off by this many seconds (libfaketime).
    skews: Mutex<BTreeMap<String, i64>>,
}

/// Debian's libfaketime, if installed: what the `skew-clock` fault preloads.
pub fn faketime_lib() -> Option<PathBuf> {
    let dirs = std::fs::read_dir("/usr/lib").ok()?;
    dirs.flatten()
        .map(|d| d.path().join("faketime").join("libfaketime.so.1"))
        .chain(std::iter::once(PathBuf::from(
            "/usr/lib/faketime/libfaketime.so.1",
        )))
        .find(|p| p.exists())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends `signal` to `pid`.
fn signal(pid: u32, signal: i32) {
    // SAFETY: signalling a child process this harness started (its pid is held in `Child`).
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

impl Cluster {
    /// The `deployd` binary every process runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Writes the config into `dir` (made by the caller, with its keys and stores).
    pub fn new(
        dir: &Path,
        layout: Layout,
        bin: PathBuf,
        config_text: &str,
        tmpfs: Vec<PathBuf>,
        agent_down_limit: u64,
    ) -> anyhow::Result<Self> {
        let config = dir.join("cluster.toml");
        std::fs::write(&config, config_text)?;
        std::fs::create_dir_all(dir.join("logs"))?;
        let mut procs = BTreeMap::new();
        let kinds = layout
            .nodes
            .iter()
            .map(|n| (n.name.clone(), Kind::Node))
            .chain(layout.workers.iter().map(|w| (w.id.clone(), Kind::Worker)))
            .chain(layout.relays.iter().map(|r| (r.id.clone(), Kind::Relay)))
            .chain(layout.hosts.iter().map(|h| (h.id.clone(), Kind::Agent)));
        for (name, kind) in kinds {
            procs.insert(
                name,
                Proc {
                    kind,
                    child: None,
                    paused: false,
                    held: true,
                    retry_at: None,
                    backoff: Duration::from_millis(250),
                    exits_expected_until: None,
                },
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            layout,
            bin,
            config,
            procs: Mutex::new(procs),
            exits: Mutex::new(Vec::new()),
            started: Instant::now(),
            tmpfs,
            agent_down_limit,
            skews: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn kind(&self, name: &str) -> Option<Kind> {
        lock(&self.procs).get(name).map(|p| p.kind)
    }

    /// Names of the processes of `kind`.
    pub fn names(&self, kind: Kind) -> Vec<String> {
        lock(&self.procs)
            .iter()
            .filter(|(_, p)| p.kind == kind)
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn data_dir(&self, name: &str) -> PathBuf {
        let kind = match self.kind(name) {
            Some(Kind::Node) => "nodes",
            Some(Kind::Worker) => "workers",
            Some(Kind::Relay) => "relays",
            Some(Kind::Agent) | None => "hosts",
        };
        self.dir.join(kind).join(name)
    }

    fn spawn(&self, name: &str, kind: Kind) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("logs").join(format!("{name}.log")))?;
        let data = self.data_dir(name);
        let mut cmd = Command::new(&self.bin);
        match kind {
            Kind::Node => {
                cmd.arg("node").arg("--data-dir").arg(&data);
                cmd.arg("--store-base").arg(&self.dir);
            }
            Kind::Worker => {
                cmd.arg("worker").arg("--work-dir").arg(&data);
                cmd.arg("--store-base").arg(&self.dir);
            }
            Kind::Relay => {
                cmd.arg("relay").arg("--data-dir").arg(&data);
            }
            Kind::Agent => {
                cmd.arg("agent").arg("--root").arg(&data);
                cmd.arg("--down-limit")
                    .arg(self.agent_down_limit.to_string());
            }
        }
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--id")
            .arg(name)
            .env(
                "RUST_LOG",
                std::env::var("CHAOS_PROCESS_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .env_remove("DEPLOY_AGENT_FAILPOINT")
            .env_remove("LD_PRELOAD")
            .env_remove("FAKETIME");
        if let (Some(skew), Some(lib)) = (lock(&self.skews).get(name).copied(), faketime_lib()) {
            // The wall clock only: Instant (CLOCK_MONOTONIC) stays true, as it would on a
            // machine whose NTP went wrong.
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME", format!("{skew:+}s"))
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_DONT_RESET", "1");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        cmd.spawn()
            .with_context(|| format!("cannot start {} for {name}", self.bin.display()))
    }

    /// From its next start on, `name` runs with its wall clock off by `skew` seconds (None:
    /// the true clock).
    pub fn set_skew(&self, name: &str, skew: Option<i64>) {
        let mut s = lock(&self.skews);
        match skew {
            Some(k) => s.insert(name.to_string(), k),
            None => s.remove(name),
        };
    }

    /// Starts (or restarts) `name` unless it runs.
    pub fn start(&self, name: &str) -> anyhow::Result<()> {
        let mut procs = lock(&self.procs);
        let p = procs.get_mut(name).context("unknown process")?;
        if let Some(c) = p.child.as_mut() {
            if c.try_wait()?.is_none() {
                p.held = false;
                return Ok(());
            }
        }
        let kind = p.kind;
        drop(procs);
        let child = self.spawn(name, kind)?;
        let mut procs = lock(&self.procs);
        if let Some(p) = procs.get_mut(name) {
            p.child = Some(child);
            p.paused = false;
            p.held = false;
            p.retry_at = None;
        }
        Ok(())
    }

    pub fn start_all(&self, kind: Kind) -> anyhow::Result<()> {
        for n in self.names(kind) {
            self.start(&n)?;
        }
        Ok(())
    }

    /// `kill -9`; the supervisor leaves it down until [`Cluster::start`].
    pub fn kill9(&self, name: &str) -> anyhow::Result<()> {
        let mut procs = lock(&self.procs);
        let p = procs.get_mut(name).context("unknown process")?;
        p.held = true;
        p.paused = false;
        if let Some(mut c) = p.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`; left down until [`Cluster::start`].
    pub fn terminate(&self, name: &str, grace: Duration) -> anyhow::Result<()> {
        let child = {
            let mut procs = lock(&self.procs);
            let p = procs.get_mut(name).context("unknown process")?;
            p.held = true;
            if p.paused {
                if let Some(c) = &p.child {
                    signal(c.id(), libc::SIGCONT);
                }
                p.paused = false;
            }
            p.child.take()
        };
        let Some(mut c) = child else { return Ok(()) };
        signal(c.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if c.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        c.kill()?;
        c.wait()?;
        Ok(())
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`). Returns false if it was not running.
    pub fn pause(&self, name: &str, stop: bool) -> bool {
        let mut procs = lock(&self.procs);
        let Some(p) = procs.get_mut(name) else {
            return false;
        };
        let Some(c) = &p.child else { return false };
        signal(c.id(), if stop { libc::SIGSTOP } else { libc::SIGCONT });
        p.paused = stop;
        true
    }

    /// Running, not paused, not held down.
    pub fn is_up(&self, name: &str) -> bool {
        let procs = lock(&self.procs);
        procs
            .get(name)
            .is_some_and(|p| p.child.is_some() && !p.paused && !p.held)
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        lock(&self.procs).get(name)?.child.as_ref().map(Child::id)
    }

    /// Exits of `name` until `until` are expected (its disk is being filled).
    pub fn expect_exits(&self, name: &str, until: Instant) {
        if let Some(p) = lock(&self.procs).get_mut(name) {
            p.exits_expected_until = Some(until);
        }
    }

    /// Notices processes that ended on their own, records how, and restarts them with a
    /// backoff (as a service manager would). Held processes are left alone.
    pub fn supervise(&self) {
        let now = Instant::now();
        let mut restart = Vec::new();
        {
            let mut procs = lock(&self.procs);
            for (name, p) in procs.iter_mut() {
                if p.held {
                    continue;
                }
                if let Some(c) = p.child.as_mut() {
                    match c.try_wait() {
                        Ok(None) => {
                            // Running: a long enough run resets the backoff.
                            if p.retry_at.is_none() {
                                p.backoff = Duration::from_millis(250);
                            }
                            continue;
                        }
                        Ok(Some(status)) => {
                            let expected = p.exits_expected_until.is_some_and(|t| now < t);
                            lock(&self.exits).push(Exit {
                                process: name.clone(),
                                at_ms: self.started.elapsed().as_millis() as u64,
                                status: status.to_string(),
                                expected,
                            });
                            p.child = None;
                            p.paused = false;
                            p.retry_at = Some(now + p.backoff);
                            p.backoff = (p.backoff * 2).min(Duration::from_secs(4));
                        }
                        Err(_) => continue,
                    }
                }
                if p.child.is_none() && p.retry_at.is_none_or(|t| now >= t) {
                    restart.push(name.clone());
                }
            }
        }
        for name in restart {
            if let Err(e) = self.start(&name) {
                tracing::warn!(process = %name, error = %e, "cannot restart");
            }
        }
    }

    /// Every held or paused process running again: the end of every fault.
    pub fn heal(&self) -> anyhow::Result<()> {
        let names: Vec<String> = lock(&self.procs).keys().cloned().collect();
        for n in &names {
            self.pause(n, false);
            self.start(n)?;
        }
        Ok(())
    }

    /// Stops everything: SIGCONT and SIGTERM to all, SIGKILL to what is left after 5 s; then
    /// every service or build process left under the run's directory.
    pub fn stop_all(&self) {
        let mut children: Vec<(String, Child)> = Vec::new();
        for (name, p) in lock(&self.procs).iter_mut() {
            p.held = true;
            p.paused = false;
            if let Some(c) = p.child.take() {
                children.push((name.clone(), c));
            }
        }
        for (_, c) in &children {
            signal(c.id(), libc::SIGCONT);
            signal(c.id(), libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && children
                .iter_mut()
                .any(|(_, c)| c.try_wait().ok().flatten().is_none())
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        for (name, c) in &mut children {
            if c.try_wait().ok().flatten().is_none() {
                tracing::warn!(process = %name, "did not stop on SIGTERM within 5 s; killing");
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        kill_strays(&self.dir);
    }

    /// A client of node `name` that bypasses its proxy: the harness's own view, never cut off.
    pub fn control(&self, name: &str) -> anyhow::Result<Client> {
        let n = self.layout.node(name).context("unknown node")?;
        Ok(Client::new([n.listen.to_string()])?.with_timeout(Duration::from_secs(2)))
    }

    /// A client of node `name` through its proxy, as the workload sees the cluster.
    pub fn client(&self, name: &str, timeout: Duration) -> anyhow::Result<Client> {
        let n = self.layout.node(name).context("unknown node")?;
        Ok(Client::new([n.addr.to_string()])?.with_timeout(timeout))
    }

    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("logs").join(format!("{name}.log")))
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in lock(&self.procs).values_mut() {
            if let Some(mut c) = p.child.take() {
                signal(c.id(), libc::SIGCONT);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        kill_strays(&self.dir);
        for m in &self.tmpfs {
            unmount(m);
        }
    }
}

/// Kills every process whose working directory is under `dir`: the services agents started
/// (they outlive their agents by design) and build commands. Looking at the working
/// directory, not at a pid file, never hits a process that merely reused a pid.
pub fn kill_strays(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else { return };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) else {
            continue;
        };
        if cwd.starts_with(&dir) {
            signal(pid, libc::SIGCONT);
            signal(pid, libc::SIGKILL);
        }
    }
}

/// Mounts a tmpfs of `size_mib` at `dir` (root only).
pub fn mount_tmpfs(dir: &Path, size_mib: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let out = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size_mib}m,mode=0700"),
            "tmpfs",
        ])
        .arg(dir)
        .output()
        .context("cannot run mount")?;
    if !out.status.success() {
        bail!(
            "mount -t tmpfs at {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn unmount(dir: &Path) {
    let _ = Command::new("umount").arg("-l").arg(dir).output();
}

/// Fills the filesystem holding `dir` until a write fails, with one file; returns the bytes
/// written. Removing the file frees the space.
pub fn fill_disk(file: &Path) -> u64 {
    use std::io::Write;
    let Ok(mut f) = std::fs::File::create(file) else {
        return 0;
    };
    let block = vec![0u8; 1 << 20];
    let mut n = 0u64;
    while f.write_all(&block).is_ok() {
        n += block.len() as u64;
        if n > 64 << 30 {
            break;
        }
    }
    // Whatever still fits, byte-sized: the filesystem is full to the last block.
    while f.write_all(&block[..4096]).is_ok() {
        n += 4096;
    }
    let _ = f.flush();
    n
}

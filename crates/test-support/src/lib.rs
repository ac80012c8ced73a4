//! What every test-side crate shares (the test harness, the chaos harness, the benchmarks),
//! depending on nothing of the system, so that a crate that must drive the system only from
//! outside (chaos) can use it without linking the coordinator:
//!
//! - [`wait_until`], [`wait_every`]: tests wait on conditions, never on fixed sleeps;
//! - [`gitrepo`]: real git repositories;
//! - [`bin_dir`]: where the built `deployd` and `deployctl` are;
//! - [`ports`]: loopback ports reserved for child processes, their listeners passed on.

pub mod gitrepo;
pub mod ports;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Polls `check` until it returns `Some`, or fails after `within` naming `what`.
pub async fn wait_until<T, F, Fut>(within: Duration, what: &str, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll(within, what, Duration::from_millis(10), true, check).await
}

/// As [`wait_until`], but checking every `every` without backing off: for a condition that
/// holds only briefly (a write half done), or when the moment it holds is a measurement.
pub async fn wait_every<T, F, Fut>(
    every: Duration,
    within: Duration,
    what: &str,
    check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll(within, what, every, false, check).await
}

async fn poll<T, F, Fut>(
    within: Duration,
    what: &str,
    mut pause: Duration,
    back_off: bool,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        if back_off {
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}

/// The directory of the `deployd` and `deployctl` binaries: `DEPLOY_BIN_DIR`, else the
/// profile directory the running test binary was built into.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("DEPLOY_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe()?;
            // target/<profile>/deps/<test> -> target/<profile>
            exe.parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .context("cannot locate the target directory")?
        }
    };
    for bin in ["deployd", "deployctl"] {
        if !dir.join(bin).exists() {
            bail!(
                "{} is missing: build the binaries first (`cargo build --bins`; `cargo xtask test` does it)",
                dir.join(bin).display()
            );
        }
    }
    Ok(dir)
}

/// Ports the OS reports free at this moment, distinct from each other. They are free only
/// for the moment: for a process this harness starts, reserve them ([`crate::ports::Ports`])
/// and pass the listeners instead. For servers that can do neither (etcd in a benchmark).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

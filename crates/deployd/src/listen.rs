//! Where a process serves: a listener its parent passed it, or one it binds itself.
//!
//! A supervisor that must know a process's ports before the process starts (a test harness,
//! or systemd-style socket activation) binds the listeners itself and passes them as open
//! file descriptors, listed in `DEPLOY_LISTEN_FDS` (`3,4,...`). Each `bind(addr)` serves on
//! the passed listener bound to `addr`, if there is one, and otherwise binds `addr` as usual.
//! Passing sockets leaves no moment in which a port is free for another process to take,
//! which binding, closing and letting the child bind again would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::sync::{Mutex, OnceLock};

use anyhow::Context;
use tokio::net::TcpListener;

/// The environment variable listing the passed listeners' file descriptors.
pub const LISTEN_FDS: &str = "DEPLOY_LISTEN_FDS";

/// The passed listeners not yet served on, by the address each is bound to; read from the
/// environment once (a descriptor must not be wrapped twice).
fn passed() -> &'static Mutex<HashMap<SocketAddr, std::net::TcpListener>> {
    static PASSED: OnceLock<Mutex<HashMap<SocketAddr, std::net::TcpListener>>> = OnceLock::new();
    PASSED.get_or_init(|| {
        let mut out = HashMap::new();
        if let Some(raw) = std::env::var_os(LISTEN_FDS) {
            // Processes this one starts (an agent's services) must not take them for theirs.
            std::env::remove_var(LISTEN_FDS);
            for fd in raw.to_string_lossy().split(',') {
                match adopt(fd.trim()) {
                    Ok((addr, l)) => {
                        out.insert(addr, l);
                    }
                    Err(e) => {
                        tracing::warn!(fd, error = %format!("{e:#}"), "ignoring a passed listener")
                    }
                }
            }
        }
        Mutex::new(out)
    })
}

/// Takes ownership of passed descriptor `fd`, a bound TCP listener.
fn adopt(fd: &str) -> anyhow::Result<(SocketAddr, std::net::TcpListener)> {
    let fd: i32 = fd
        .parse()
        .ok()
        .filter(|fd| *fd > 2)
        .with_context(|| format!("{LISTEN_FDS}: {fd:?} is not a file descriptor above 2"))?;
    // SAFETY: the parent passed `fd` open for this process to own (that is what the variable
    // says), and `passed` reads the variable once, so nothing else wraps it.
    let inherited = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    // A copy marked close-on-exec, so that no process this one starts inherits the socket;
    // the passed descriptor (inherited without that mark) closes with `inherited`.
    let l = inherited
        .try_clone()
        .with_context(|| format!("{LISTEN_FDS}: {fd} is not an open socket"))?;
    drop(inherited);
    let addr = l
        .local_addr()
        .with_context(|| format!("{LISTEN_FDS}: {fd} is not a bound TCP socket"))?;
    Ok((addr, l))
}

/// A listener on `addr`: the passed one bound to it, if any, else a new one.
pub async fn bind(addr: &str, what: &str) -> anyhow::Result<TcpListener> {
    let taken = addr.parse::<SocketAddr>().ok().and_then(|a| {
        passed()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&a)
    });
    if let Some(l) = taken {
        l.set_nonblocking(true)?;
        return Ok(TcpListener::from_std(l)?);
    }
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

//! Loopback ports for child processes, with no moment in which another process can take one.
//!
//! Binding port 0, closing the socket and letting a child bind the port later races with
//! every other test doing the same. Instead a [`Ports`] reserves each port for its lifetime
//! with a bound socket that never listens (`SO_REUSEPORT`, so only sockets that set it too,
//! as ours do, may share it; the kernel sends connections only to listening sockets, so a
//! port whose process is down still refuses them). Each start of a child gets a fresh
//! listening socket on its port, passed as an open descriptor (`DEPLOY_LISTEN_FDS`, which
//! `deployd` serves on) and closed in the parent right after the spawn, so that only the
//! child holds it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

/// The variable `deployd` reads its passed listeners from.
pub const LISTEN_FDS: &str = "DEPLOY_LISTEN_FDS";

/// A TCP socket that may share its port with ours (`SO_REUSEPORT`, same user) and, when
/// `reuse_addr`, bind over the port's connections still in TIME_WAIT. A reservation must not
/// set `SO_REUSEADDR`: two sockets that both set it and do not listen may share a port, and
/// every ordinary bind sets it.
fn socket(addr: SocketAddr, reuse_addr: bool) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(reuse_addr)?;
    s.set_reuse_port(true)?;
    Ok(s)
}

/// Ports held for the life of a cluster.
#[derive(Debug, Default)]
pub struct Ports {
    reserved: BTreeMap<SocketAddr, Socket>,
}

impl Ports {
    /// Reserves `n` free loopback ports.
    pub fn reserve(n: usize) -> anyhow::Result<Self> {
        let mut p = Self::default();
        for _ in 0..n {
            p.add()?;
        }
        Ok(p)
    }

    /// Reserves one more free loopback port, and returns it.
    pub fn add(&mut self) -> anyhow::Result<SocketAddr> {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let s = socket(any, false)?;
        s.bind(&any.into())?;
        let addr = s
            .local_addr()?
            .as_socket()
            .context("a loopback socket has no address")?;
        self.reserved.insert(addr, s);
        Ok(addr)
    }

    /// The reserved addresses, in port order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.reserved.keys().copied().collect()
    }

    /// A listening socket on reserved `addr`, for one start of the process that serves it.
    pub fn listener(&self, addr: &str) -> anyhow::Result<std::net::TcpListener> {
        let a: SocketAddr = addr
            .parse()
            .with_context(|| format!("{addr:?} is no address"))?;
        anyhow::ensure!(
            self.reserved.contains_key(&a),
            "{addr} is not reserved here"
        );
        let s = socket(a, true)?;
        s.bind(&a.into())
            .with_context(|| format!("cannot bind {addr}"))?;
        s.listen(1024)?;
        Ok(s.into())
    }

    /// A listening socket on every reserved port: for one process serving them all
    /// (`deployd dev`).
    pub fn listeners(&self) -> anyhow::Result<Vec<std::net::TcpListener>> {
        self.addrs()
            .iter()
            .map(|a| self.listener(&a.to_string()))
            .collect()
    }
}

/// Spawns `cmd` with `listeners` passed to it as descriptors 3, 4, ... (named in
/// `DEPLOY_LISTEN_FDS`); the parent's copies close when this returns.
pub fn spawn_with(
    cmd: &mut Command,
    listeners: Vec<std::net::TcpListener>,
) -> std::io::Result<Child> {
    let fds: Vec<RawFd> = listeners.iter().map(AsRawFd::as_raw_fd).collect();
    let names: Vec<String> = (0..fds.len()).map(|i| (3 + i).to_string()).collect();
    cmd.env(LISTEN_FDS, names.join(","));
    // Each descriptor is first moved above every target slot, then into its slot, so that a
    // source that happens to sit in a target slot is not overwritten before it is moved.
    let high = 3 + fds.len() as RawFd + 64;
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2, close) are
    // made, on descriptors this process owns (`listeners` lives until `spawn` returns).
    unsafe {
        cmd.pre_exec(move || {
            let mut moved = Vec::with_capacity(fds.len());
            for fd in &fds {
                let m = libc::fcntl(*fd, libc::F_DUPFD, high);
                if m < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                moved.push(m);
            }
            for (i, m) in moved.iter().enumerate() {
                // dup2 leaves the new descriptor without close-on-exec: the child keeps it.
                if libc::dup2(*m, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(*m);
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(listeners);
    child
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserved_port_is_not_given_to_another_bind_and_refuses_while_nobody_listens() {
        let ports = Ports::reserve(1).unwrap();
        let addr = ports.addrs()[0];
        // Nobody listens: a connection is refused, not queued.
        let e = std::net::TcpStream::connect(addr).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        // An ordinary bind (no SO_REUSEPORT) cannot take it.
        assert!(std::net::TcpListener::bind(addr).is_err());
        // The listener made for a start accepts; once it is gone, the port refuses again.
        let l = ports.listener(&addr.to_string()).unwrap();
        assert!(std::net::TcpStream::connect(addr).is_ok());
        drop(l);
        let e = std::net::TcpStream::connect(addr).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        // And a later start gets a listener on the same port again.
        let again = ports.listener(&addr.to_string()).unwrap();
        assert_eq!(again.local_addr().unwrap(), addr);
    }
}

//! A local S3-compatible server for tests: moto's `moto_server` (from PyPI; `cargo xtask test`
//! installs it), on a loopback port of its own.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct MotoServer {
    child: Child,
    pub endpoint: String,
    addr: String,
}

async fn http(addr: &str, method: &str, path: &str) -> anyhow::Result<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let head = String::from_utf8_lossy(&raw);
    Ok(head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

impl MotoServer {
    pub async fn start() -> anyhow::Result<Self> {
        let port = crate::process::free_ports(1)?[0];
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start moto_server (`cargo xtask test` installs it: pip install 'moto[server]')")?;
        let server = Self {
            child,
            endpoint: format!("http://{addr}"),
            addr,
        };
        crate::wait_until(Duration::from_secs(30), "moto_server to answer", || async {
            http(&server.addr, "GET", "/")
                .await
                .ok()
                .filter(|c| *c == 200)
        })
        .await?;
        Ok(server)
    }

    pub async fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let code = http(&self.addr, "PUT", &format!("/{bucket}")).await?;
        if code != 200 {
            bail!("creating bucket {bucket} answered {code}");
        }
        Ok(())
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A local S3-compatible server for tests: moto's `moto_server` (from PyPI; `cargo xtask test`
//! installs it), on a loopback port of its own: it binds port 0 and says which it got.

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
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start moto_server (`cargo xtask test` installs it: pip install 'moto[server]')")?;
        // Werkzeug says where it listens on stderr: " * Running on http://127.0.0.1:PORT".
        let stderr = child.stderr.take().context("moto_server's stderr")?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("Running on http://").nth(1) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.trim().to_string());
                    }
                }
                // Keep draining, so the server never blocks on a full pipe.
            }
        });
        let addr = match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(a)) => a,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("moto_server did not say where it listens within 30 s");
            }
        };
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

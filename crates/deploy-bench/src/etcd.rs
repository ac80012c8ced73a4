//! A 3-node etcd cluster on loopback, for the write benchmark's baseline: Debian's
//! `etcd-server`, default fsync, data in a temporary directory on the same disk as ours.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use tempfile::TempDir;
use tonic::transport::Channel;

pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

pub struct EtcdCluster {
    _dir: TempDir,
    children: Vec<Child>,
    /// Client URLs, in member order.
    pub clients: Vec<String>,
}

/// The etcd binary: `ETCD_BIN`, else `etcd` on the PATH or Debian's `/usr/bin/etcd`.
fn binary() -> anyhow::Result<String> {
    if let Ok(b) = std::env::var("ETCD_BIN") {
        return Ok(b);
    }
    for b in ["etcd", "/usr/bin/etcd"] {
        if Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Ok(b.to_string());
        }
    }
    bail!("etcd is not installed: `cargo xtask bench` installs Debian's etcd-server when run as root, or set ETCD_BIN")
}

impl EtcdCluster {
    pub async fn start() -> anyhow::Result<Self> {
        let bin = binary()?;
        let dir = TempDir::new()?;
        let ports = process_harness::process::free_ports(6)?;
        let names = ["e1", "e2", "e3"];
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[3 + i]);
        let initial = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n}={}", peer(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut children = Vec::new();
        let mut clients = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let client = format!("http://127.0.0.1:{}", ports[i]);
            let log = std::fs::File::create(dir.path().join(format!("{name}.log")))?;
            let child = Command::new(&bin)
                .arg("--name")
                .arg(name)
                .arg("--data-dir")
                .arg(dir.path().join(name))
                .arg("--listen-client-urls")
                .arg(&client)
                .arg("--advertise-client-urls")
                .arg(&client)
                .arg("--listen-peer-urls")
                .arg(peer(i))
                .arg("--initial-advertise-peer-urls")
                .arg(peer(i))
                .arg("--initial-cluster")
                .arg(&initial)
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--initial-cluster-token")
                .arg("deploy-bench")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start {bin}"))?;
            children.push(child);
            clients.push(client);
        }
        Ok(Self {
            _dir: dir,
            children,
            clients,
        })
    }

    /// A channel to the member that leads, once the cluster has one.
    pub async fn leader_channel(&self) -> anyhow::Result<Channel> {
        process_harness::wait_until(Duration::from_secs(30), "an etcd leader", || async {
            for url in &self.clients {
                let Ok(ch) = Channel::from_shared(url.clone()).ok()?.connect().await else {
                    continue;
                };
                let mut m = pb::maintenance_client::MaintenanceClient::new(ch.clone());
                let Ok(s) = m.status(pb::StatusRequest {}).await else {
                    continue;
                };
                let s = s.into_inner();
                let me = s.header.map(|h| h.member_id).unwrap_or(0);
                if s.leader != 0 && s.leader == me {
                    return Some(ch);
                }
            }
            None
        })
        .await
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

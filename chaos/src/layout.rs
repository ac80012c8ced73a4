//! The chaos cluster's layout: every process, its name, addresses and directories, and the
//! cluster config they all run from.
//!
//! Each coordinator node has a loopback IP of its own (a block of 127.0.0.0/8 picked per
//! run): its proxy listens on that IP at the address the config advertises (`addr`), the node
//! binds another port on it (`listen`), and its own connections leave from it (`source_ip`).
//! Relays likewise sit behind a proxy of their own.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;

use crate::scenario::Shape;

pub const SERVICE: &str = "web";

#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    /// `global` or `region/<name>`.
    pub group: String,
    pub region: Option<String>,
    pub ip: IpAddr,
    /// What the config advertises: the proxy.
    pub addr: SocketAddr,
    /// Where the node really listens.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct RelaySpec {
    pub id: String,
    pub region: String,
    pub rack: String,
    pub addr: SocketAddr,
    pub listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub id: String,
    pub region: String,
}

#[derive(Debug, Clone)]
pub struct HostSpec {
    pub id: String,
    pub region: String,
    pub rack: String,
    pub relay: String,
}

/// Every process of the cluster and the listeners of its proxies, bound already so no other
/// program can take their ports.
pub struct Layout {
    pub nodes: Vec<NodeSpec>,
    pub relays: Vec<RelaySpec>,
    pub workers: Vec<WorkerSpec>,
    pub hosts: Vec<HostSpec>,
    pub regions: Vec<String>,
    pub proxies: Vec<(String, std::net::TcpListener, SocketAddr)>,
}

/// A /24 of loopback addresses for one run: different for each run of a process, so two
/// clusters of one test binary never share an address.
fn ip_block() -> [u8; 3] {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    [
        127,
        64 + (pid % 128) as u8,
        ((pid / 128) as u8).wrapping_add((run * 37) as u8),
    ]
}

fn bind(ip: IpAddr) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .with_context(|| format!("cannot bind a port on {ip} (loopback)"))
}

/// A free port on `ip`, released for the process that will bind it. The IP is this run's own,
/// so nothing else is waiting for its ports.
fn free_port(ip: IpAddr) -> anyhow::Result<SocketAddr> {
    Ok(bind(ip)?.local_addr()?)
}

impl Layout {
    pub fn new(shape: &Shape) -> anyhow::Result<Self> {
        let [a, b, c] = ip_block();
        let mut next_ip = 1u8;
        let mut ip = || {
            let i = IpAddr::V4(Ipv4Addr::new(a, b, c, next_ip));
            next_ip = next_ip.saturating_add(1);
            i
        };
        let mut nodes = Vec::new();
        let mut proxies = Vec::new();
        let mut node =
            |name: String, group: String, region: Option<String>| -> anyhow::Result<NodeSpec> {
                let ip = ip();
                let proxy = bind(ip)?;
                let addr = proxy.local_addr()?;
                let listen = free_port(ip)?;
                proxies.push((name.clone(), proxy, listen));
                Ok(NodeSpec {
                    name,
                    group,
                    region,
                    ip,
                    addr,
                    listen,
                })
            };
        for i in 1..=shape.global {
            nodes.push(node(format!("g{i}"), "global".into(), None)?);
        }
        for r in &shape.regions {
            for i in 1..=shape.region_nodes {
                nodes.push(node(
                    format!("{r}-{i}"),
                    format!("region/{r}"),
                    Some(r.clone()),
                )?);
            }
        }
        let mut relays = Vec::new();
        let mut hosts = Vec::new();
        let mut workers = Vec::new();
        for r in &shape.regions {
            for k in 1..=shape.workers_per_region {
                workers.push(WorkerSpec {
                    id: format!("{r}-worker-{k}"),
                    region: r.clone(),
                });
            }
            for k in 1..=shape.racks_per_region {
                let rack = format!("rack-{k}");
                let id = format!("{r}-{rack}-relay");
                let ip = ip();
                let proxy = bind(ip)?;
                let addr = proxy.local_addr()?;
                let listen = free_port(ip)?;
                proxies.push((id.clone(), proxy, listen));
                relays.push(RelaySpec {
                    id: id.clone(),
                    region: r.clone(),
                    rack: rack.clone(),
                    addr,
                    listen,
                });
                for h in 1..=shape.hosts_per_rack {
                    hosts.push(HostSpec {
                        id: format!("{r}-{k}-h{h}"),
                        region: r.clone(),
                        rack: rack.clone(),
                        relay: id.clone(),
                    });
                }
            }
        }
        Ok(Self {
            nodes,
            relays,
            workers,
            hosts,
            regions: shape.regions.clone(),
            proxies,
        })
    }

    /// Group name -> its members, in config order.
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for n in &self.nodes {
            out.entry(n.group.clone()).or_default().push(n.name.clone());
        }
        out
    }

    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn members(&self, group: &str) -> Vec<&NodeSpec> {
        self.nodes.iter().filter(|n| n.group == group).collect()
    }

    /// Source IP -> node name, for the proxies.
    pub fn node_ips(&self) -> BTreeMap<IpAddr, String> {
        self.nodes.iter().map(|n| (n.ip, n.name.clone())).collect()
    }

    /// Every process name: nodes, workers, relays, hosts.
    pub fn process_names(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.name.clone())
            .chain(self.workers.iter().map(|w| w.id.clone()))
            .chain(self.relays.iter().map(|r| r.id.clone()))
            .chain(self.hosts.iter().map(|h| h.id.clone()))
            .collect()
    }

    /// The cluster config every process runs.
    pub fn config_toml(&self, dir: &Path, public_key: &str, key_file: &Path) -> String {
        let list = |v: Vec<String>| {
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut s = String::from(
            "# Written by the chaos harness: every node behind its fault-injecting proxy.\n\
             [cluster]\nname = \"chaos\"\n\n\
             [raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 900\n\
             snapshot_every_logs = 300\nkeep_logs_after_snapshot = 100\n\n\
             [builds]\nlease_ms = 3000\nmax_attempts = 5\nlog_cap_bytes = 1048576\n\
             default_timeout_secs = 120\nchunk_bytes = 65536\nreplication_deadline_secs = 600\n\
             keep_per_service = 100\ngc_grace_secs = 3600\nallowed_repos = [\"/**\"]\n\n",
        );
        for n in &self.nodes {
            s.push_str(&format!(
                "[[nodes]]\nid = \"{}\"\naddr = \"{}\"\nlisten = \"{}\"\nsource_ip = \"{}\"\n",
                n.name, n.addr, n.listen, n.ip
            ));
        }
        let groups = self.groups();
        s.push_str(&format!(
            "\n[global]\nvoters = [{}]\n",
            list(groups.get("global").cloned().unwrap_or_default())
        ));
        for r in &self.regions {
            s.push_str(&format!(
                "\n[[regions]]\nname = \"{r}\"\nvoters = [{}]\nstore = \"file://{}\"\n",
                list(
                    groups
                        .get(&format!("region/{r}"))
                        .cloned()
                        .unwrap_or_default()
                ),
                dir.join("stores").join(r).display()
            ));
        }
        for w in &self.workers {
            s.push_str(&format!(
                "\n[[workers]]\nid = \"{}\"\nregion = \"{}\"\n",
                w.id, w.region
            ));
        }
        for relay in &self.relays {
            let hosts: Vec<String> = self
                .hosts
                .iter()
                .filter(|h| h.relay == relay.id)
                .map(|h| h.id.clone())
                .collect();
            s.push_str(&format!(
                "\n[[racks]]\nregion = \"{}\"\nname = \"{}\"\nrelays = [{{ id = \"{}\", addr = \"{}\", listen = \"{}\" }}]\nhosts = [{}]\n",
                relay.region,
                relay.rack,
                relay.id,
                relay.addr,
                relay.listen,
                list(hosts)
            ));
        }
        s.push_str(&format!(
            "\n[signing]\nkey_file = \"{}\"\ntrusted_keys = [\"{public_key}\"]\n",
            key_file.display()
        ));
        // The proxies pass TLS through as well, but the harness reads every node directly.
        s.push_str("\n[security]\ninsecure = true\n");
        s
    }

    pub fn data_dir(dir: &Path, name: &str, kind: &str) -> PathBuf {
        dir.join(kind).join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_parses_and_every_node_has_its_own_ip() -> anyhow::Result<()> {
        let layout = Layout::new(&Shape::default())?;
        let dir = tempfile::tempdir()?;
        let text = layout.config_toml(dir.path(), &"a".repeat(64), &dir.path().join("k"));
        let config = deploy_types::ClusterConfig::parse(&text, "chaos")?;
        assert_eq!(config.nodes().len(), 9);
        let ips: std::collections::BTreeSet<IpAddr> = layout.nodes.iter().map(|n| n.ip).collect();
        assert_eq!(ips.len(), 9);
        for n in config.nodes() {
            assert_ne!(
                n.listen_addr(),
                n.addr,
                "{}: the proxy must stand in between",
                n.id
            );
            assert!(n.source_ip.is_some());
        }
        assert_eq!(layout.hosts.len(), 8);
        assert_eq!(layout.relays.len(), 4);
        Ok(())
    }
}

//! Real `deployd` processes on loopback (nodes, workers, relays, agents), stopped with
//! SIGTERM or killed with SIGKILL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use deploy_client::Client;
use tempfile::TempDir;

use crate::ports::{spawn_with, Ports};

pub use test_support::{bin_dir, free_ports};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Node,
    Worker,
    Relay,
    /// A host agent, with its failpoint (see `AgentOptions::failpoint`).
    Agent(Option<String>),
}

struct Proc {
    /// Where it serves: gRPC for nodes, HTTP for relays, the probes for workers and agents.
    addr: String,
    kind: Kind,
    child: Option<Child>,
}

pub struct ProcessCluster {
    dir: TempDir,
    bins: PathBuf,
    config_path: PathBuf,
    nodes: BTreeMap<String, Proc>,
    /// Every process's port, held for the cluster's life; each start is passed its listener.
    ports: Ports,
    /// `DEPLOY_WORKER_FAILPOINT` for the workers, if the spec set one.
    worker_failpoint: Option<String>,
    /// [`crate::Spec::nic_limit`]
    nic_limit: Option<u64>,
    /// [`crate::Spec::sim_agents`]
    sim_agents: bool,
    /// [`crate::Spec::host_nics`]
    host_nics: std::collections::BTreeMap<String, u64>,
}

impl ProcessCluster {
    /// Starts `global` global nodes and `(name, n)` nodes per region as `deployd node` processes.
    pub fn start(global: usize, regions: &[(&str, usize)]) -> anyhow::Result<Self> {
        let mut spec = crate::Spec::new(global);
        for (r, n) in regions {
            spec = spec.region(r, *n);
        }
        Self::start_spec(spec)
    }

    /// Starts every node of `spec` as a `deployd node` process and every worker as a
    /// `deployd worker` process.
    pub fn start_spec(spec: crate::Spec) -> anyhow::Result<Self> {
        let bins = bin_dir()?;
        let names = spec.node_names();
        let relays = spec.relay_ids();
        let hosts: Vec<String> = spec.racks_of().into_iter().flat_map(|r| r.hosts).collect();
        let ports = Ports::reserve(names.len() + relays.len() + spec.workers.len() + hosts.len())?;
        let mut free = ports.addrs().into_iter();
        let addrs: BTreeMap<String, String> = names
            .iter()
            .chain(relays.iter())
            .zip(free.by_ref())
            .map(|(n, a)| (n.clone(), a.to_string()))
            .collect();
        let dir = TempDir::new()?;
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, spec.toml(&addrs, dir.path())?)?;
        let mut nodes: BTreeMap<String, Proc> = addrs
            .into_iter()
            .map(|(n, addr)| {
                let kind = if relays.contains(&n) {
                    Kind::Relay
                } else {
                    Kind::Node
                };
                (
                    n,
                    Proc {
                        addr,
                        kind,
                        child: None,
                    },
                )
            })
            .collect();
        // Workers and agents serve their probes (/metrics) on a port of their own.
        let mut probe_ports = free.map(|a| a.to_string());
        for (id, _) in &spec.workers {
            nodes.insert(
                id.clone(),
                Proc {
                    addr: probe_ports.next().context("a reserved port")?,
                    kind: Kind::Worker,
                    child: None,
                },
            );
        }
        let mut cluster = Self {
            dir,
            bins,
            config_path,
            nodes,
            ports,
            worker_failpoint: spec.worker_failpoint.clone(),
            nic_limit: spec.nic_limit,
            sim_agents: spec.sim_agents,
            host_nics: spec.host_nics.clone(),
        };
        for n in names
            .iter()
            .chain(spec.workers.iter().map(|(id, _)| id))
            .chain(relays.iter())
        {
            cluster.start_node(n)?;
        }
        for h in hosts {
            cluster.nodes.insert(
                h,
                Proc {
                    addr: probe_ports.next().context("a reserved port")?,
                    kind: Kind::Agent(None),
                    child: None,
                },
            );
        }
        Ok(cluster)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn bins(&self) -> &Path {
        &self.bins
    }

    /// The coordinator nodes' names.
    pub fn names(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, p)| p.kind == Kind::Node)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Where host `id`'s agent keeps its releases.
    pub fn host_root(&self, id: &str) -> PathBuf {
        self.dir.path().join("hosts").join(id)
    }

    /// Starts (or restarts) host `id`'s agent, pausing at `failpoint` if given.
    pub fn start_agent(&mut self, id: &str, failpoint: Option<&str>) -> anyhow::Result<()> {
        let p = self.nodes.get_mut(id).context("unknown host")?;
        p.kind = Kind::Agent(failpoint.map(str::to_string));
        self.start_node(id)
    }

    /// Starts every host's agent (each as `deployd agent`, no failpoint).
    pub fn start_agents(&mut self) -> anyhow::Result<()> {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, p)| matches!(p.kind, Kind::Agent(_)) && p.child.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        for h in hosts {
            self.start_agent(&h, None)?;
        }
        Ok(())
    }

    /// The process ids of everything running: nodes, workers, relays and agents.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .values()
            .filter_map(|p| p.child.as_ref().map(Child::id))
            .collect()
    }

    pub fn addr(&self, name: &str) -> anyhow::Result<&str> {
        Ok(&self.nodes.get(name).context("unknown node")?.addr)
    }

    /// Starts (or restarts) one node's or worker's process on its data directory; its log
    /// goes to a file.
    pub fn start_node(&mut self, name: &str) -> anyhow::Result<()> {
        let data = self.dir.path().join(name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))?;
        let p = self.nodes.get_mut(name).context("unknown node")?;
        if p.child.is_some() {
            bail!("{name} is already running");
        }
        let mut cmd = Command::new(self.bins.join("deployd"));
        match &p.kind {
            Kind::Worker => {
                cmd.arg("worker").arg("--work-dir").arg(&data);
                match &self.worker_failpoint {
                    Some(f) => cmd.env("DEPLOY_WORKER_FAILPOINT", f),
                    None => cmd.env_remove("DEPLOY_WORKER_FAILPOINT"),
                };
            }
            Kind::Node => {
                cmd.arg("node").arg("--data-dir").arg(&data);
            }
            Kind::Relay => {
                cmd.arg("relay").arg("--data-dir").arg(&data);
            }
            Kind::Agent(failpoint) => {
                cmd.arg("agent")
                    .arg("--root")
                    .arg(self.dir.path().join("hosts").join(name));
                match failpoint {
                    Some(f) => cmd.env("DEPLOY_AGENT_FAILPOINT", f),
                    None => cmd.env_remove("DEPLOY_AGENT_FAILPOINT"),
                };
                if self.sim_agents {
                    cmd.arg("--sim");
                }
            }
        }
        if matches!(p.kind, Kind::Worker | Kind::Node) {
            cmd.arg("--store-base").arg(self.dir.path());
        }
        if matches!(p.kind, Kind::Worker | Kind::Agent(_)) {
            cmd.arg("--http").arg(&p.addr);
        }
        let nic = self.host_nics.get(name).copied().or(self.nic_limit);
        if let (Some(rate), Kind::Relay | Kind::Agent(_)) = (nic, &p.kind) {
            cmd.args([
                "--nic-in",
                &rate.to_string(),
                "--nic-out",
                &rate.to_string(),
            ]);
        }
        let listener = self.ports.listener(&p.addr)?;
        cmd.arg("--config")
            .arg(&self.config_path)
            .arg("--id")
            .arg(name)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = spawn_with(&mut cmd, vec![listener])
            .with_context(|| format!("spawn deployd node {name}"))?;
        p.child = Some(child);
        Ok(())
    }

    /// `kill -9` the node's (or worker's) process and reap it.
    pub fn kill9(&mut self, name: &str) -> anyhow::Result<()> {
        let p = self.nodes.get_mut(name).context("unknown node")?;
        let mut child = p.child.take().context("node is not running")?;
        child.kill()?; // SIGKILL on Unix
        child.wait()?;
        Ok(())
    }

    /// Stops the node's process as an operator would (SIGTERM) and waits up to `patience`
    /// for it to exit; past that it is killed (SIGKILL) and this is an error.
    pub fn terminate(&mut self, name: &str, patience: Duration) -> anyhow::Result<()> {
        let p = self.nodes.get_mut(name).context("unknown node")?;
        let mut child = p.child.take().context("node is not running")?;
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        // SAFETY: `pid` is our own child, not yet reaped, so it cannot name another process.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!("cannot signal {name}: {}", std::io::Error::last_os_error());
        }
        let deadline = std::time::Instant::now() + patience;
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("{name} exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                bail!("{name} did not exit within {patience:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The OS process id of a running node, worker, relay or agent.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.nodes.get(name)?.child.as_ref().map(Child::id)
    }

    /// The node's log so far, for failure messages.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// A region's store, as the cluster's processes see it.
    pub fn store(&self, region: &str) -> anyhow::Result<deploy_artifact::Store> {
        Ok(deploy_artifact::Store::local(
            &self.dir.path().join("stores").join(region),
        )?)
    }

    /// A client over every node's endpoint.
    pub fn client(&self) -> anyhow::Result<Client> {
        crate::client_for(
            self.dir.path(),
            self.nodes
                .values()
                .filter(|p| p.kind == Kind::Node)
                .map(|p| p.addr.as_str()),
        )
    }

    pub fn client_of(&self, name: &str) -> anyhow::Result<Client> {
        crate::client_for(self.dir.path(), [self.addr(name)?])
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for p in self.nodes.values_mut() {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // Services outlive their agents by design; the test's must not outlive the test.
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, p)| matches!(p.kind, Kind::Agent(_)))
            .map(|(n, _)| n.clone())
            .collect();
        for h in hosts {
            let Ok(services) = std::fs::read_dir(self.host_root(&h).join("services")) else {
                continue;
            };
            for s in services.flatten() {
                // Only the process the file names, checked by its start time: after the
                // agent died its pid may have gone to another process.
                if let Some(f) = deploy_fanout::service::PidFile::read(&s.path().join("pid")) {
                    deploy_fanout::service::kill_now(f.proc);
                }
            }
        }
    }
}

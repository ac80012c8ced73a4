//! Relays and host agents of a [`GrpcCluster`], in this process (their services are real
//! processes, killed when the cluster is dropped).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use deploy_fanout::agent::{Agent, AgentOptions};
use deploy_fanout::config::{agent_options, relay_options, Limits};
use deploy_fanout::relay::Relay;
use tokio_util::sync::CancellationToken;

use crate::GrpcCluster;

pub struct RunningRelay {
    pub relay: Relay,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub struct RunningAgent {
    pub agent: Arc<Agent>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcCluster {
    /// Starts relay `id` of the config on the address reserved for it.
    pub async fn start_relay(&mut self, id: &str, limits: &Limits) -> anyhow::Result<Relay> {
        let dir = self.dir().join("relays").join(id);
        let transport = self.transport(id)?;
        let (opts, addr) = relay_options(&self.config, id, dir, limits, &transport)?;
        let listener = match self.relay_listeners.remove(id) {
            Some(l) => l,
            None => tokio::net::TcpListener::bind(&addr).await?,
        };
        let relay = Relay::new(opts)?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(relay.clone().run(listener, stop.clone()));
        self.relays.insert(
            id.to_string(),
            RunningRelay {
                relay: relay.clone(),
                stop,
                task,
            },
        );
        Ok(relay)
    }

    /// Kills a relay: its task is aborted mid-work, its connections drop.
    pub async fn kill_relay(&mut self, id: &str) -> anyhow::Result<()> {
        let mut r = self.relays.remove(id).context("relay not running")?;
        r.stop.cancel();
        r.task.abort();
        let _ = (&mut r.task).await;
        Ok(())
    }

    pub fn relay(&self, id: &str) -> Option<&Relay> {
        self.relays.get(id).map(|r| &r.relay)
    }

    /// Where host `id` keeps its releases.
    pub fn host_root(&self, id: &str) -> PathBuf {
        self.dir().join("hosts").join(id)
    }

    /// Starts the agent of host `id`; `adjust` may change its options (sim mode, sources).
    pub fn start_agent(
        &mut self,
        id: &str,
        limits: &Limits,
        adjust: impl FnOnce(&mut AgentOptions),
    ) -> anyhow::Result<Arc<Agent>> {
        let transport = self.transport(id)?;
        let mut opts = agent_options(
            &self.config,
            id,
            self.host_root(id),
            false,
            limits,
            &transport,
        )?;
        opts.failpoint = None;
        adjust(&mut opts);
        let agent = Agent::new(opts);
        let stop = CancellationToken::new();
        let task = tokio::spawn(agent.clone().run(stop.clone()));
        self.agents.insert(
            id.to_string(),
            RunningAgent {
                agent: agent.clone(),
                stop,
                task,
            },
        );
        Ok(agent)
    }

    pub fn agent(&self, id: &str) -> Option<&Arc<Agent>> {
        self.agents.get(id).map(|a| &a.agent)
    }

    /// Every relay and agent of the config, with the same limits.
    pub async fn start_fleet(&mut self, limits: &Limits, sim: bool) -> anyhow::Result<()> {
        let racks = self.config.racks().to_vec();
        for rack in &racks {
            for relay in &rack.relays {
                self.start_relay(&relay.id, limits).await?;
            }
        }
        for rack in &racks {
            for host in &rack.hosts {
                self.start_agent(host, limits, |o| o.sim = sim)?;
            }
        }
        Ok(())
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
        for pid in self.agent.pids() {
            deploy_fanout::service::kill_now(pid);
        }
    }
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

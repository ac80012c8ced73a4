//! Simulated hosts that speak the region's reporting API.
//!
//! Each simulated rack reports its hosts to the region (through any coordinator node, which
//! forwards to the regional leader) the way a rack relay does, and moves each host towards
//! the goal in the reply: DOWNLOADING, INSTALLING, STARTING, then HEALTHY, or FAILED when the
//! test's failure rule says so, never more than the rack's `max_unavailable_per_rack` hosts
//! at once. It exercises the control plane (waves, health gating, rollback) without real
//! agents, in tests and in `deployd dev --simulate-hosts`.
//!
//! This crate must not depend on server crates: it is a client, like a relay.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_client::Client;
use deploy_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Decides whether `host` fails health on `build_id` of `service`.
pub type FailRule = Arc<dyn Fn(&str, &str, &str) -> bool + Send + Sync>;

/// What to simulate.
#[derive(Clone)]
pub struct SimOptions {
    pub region: String,
    pub racks: u32,
    pub hosts_per_rack: u32,
    /// How long each update step (download, install, start) takes.
    pub step: Duration,
    pub fails: FailRule,
}

impl SimOptions {
    /// `racks` x `hosts_per_rack` healthy hosts in `region`.
    pub fn new(region: &str, racks: u32, hosts_per_rack: u32) -> Self {
        Self {
            region: region.to_string(),
            racks,
            hosts_per_rack,
            step: Duration::from_millis(100),
            fails: Arc::new(|_, _, _| false),
        }
    }
}

pub fn rack_name(rack: u32) -> String {
    format!("rack-{rack}")
}

pub fn host_name(region: &str, rack: u32, i: u32) -> String {
    format!("{region}-r{rack}-h{i}")
}

const STEPS: [&str; 3] = ["DOWNLOADING", "INSTALLING", "STARTING"];

#[derive(Debug, Clone)]
struct Running {
    build_id: String,
    state: &'static str,
    since: Instant,
}

impl Running {
    fn updating(&self) -> bool {
        STEPS.contains(&self.state)
    }
}

struct Host {
    name: String,
    services: BTreeMap<String, Running>,
}

/// Runs every simulated rack until `stop` is cancelled.
pub async fn run(client: Arc<Client>, opts: SimOptions, stop: CancellationToken) {
    info!(region = %opts.region, racks = opts.racks, hosts_per_rack = opts.hosts_per_rack, "simulating hosts");
    let mut tasks = Vec::new();
    for r in 0..opts.racks {
        tasks.push(tokio::spawn(rack(
            client.clone(),
            opts.clone(),
            r,
            stop.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn rack(client: Arc<Client>, opts: SimOptions, r: u32, stop: CancellationToken) {
    let rack = rack_name(r);
    let mut hosts: Vec<Host> = (0..opts.hosts_per_rack)
        .map(|i| Host {
            name: host_name(&opts.region, r, i),
            services: BTreeMap::new(),
        })
        .collect();
    let mut every = Duration::from_millis(500);
    loop {
        let now = Instant::now();
        for h in &mut hosts {
            for (service, run) in &mut h.services {
                if !run.updating() || now.duration_since(run.since) < opts.step {
                    continue;
                }
                run.since = now;
                run.state = match run.state {
                    "DOWNLOADING" => "INSTALLING",
                    "INSTALLING" => "STARTING",
                    _ if (opts.fails)(&h.name, service, &run.build_id) => "FAILED",
                    _ => "HEALTHY",
                };
            }
        }
        let req = pb::ReportRackRequest {
            relay: String::new(),
            region: opts.region.clone(),
            rack: rack.clone(),
            hosts: hosts
                .iter()
                .map(|h| pb::HostReport {
                    host: h.name.clone(),
                    services: h
                        .services
                        .iter()
                        .map(|(s, run)| pb::ServiceReport {
                            service: s.clone(),
                            build_id: run.build_id.clone(),
                            state: run.state.into(),
                            detail: if run.state == "FAILED" {
                                "health check failed (simulated)".into()
                            } else {
                                String::new()
                            },
                        })
                        .collect(),
                })
                .collect(),
        };
        let sent = tokio::select! {
            r = client.report_rack(req) => r,
            _ = stop.cancelled() => return,
        };
        match sent {
            Ok(reply) => {
                if reply.report_every_ms > 0 {
                    every = Duration::from_millis(u64::from(reply.report_every_ms));
                }
                start_updates(&mut hosts, &reply, now);
            }
            Err(e) => debug!(rack = %rack, error = %e, "report not delivered"),
        }
        let pause = every.min(opts.step);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Starts moving hosts whose goal differs from what they run, at most the rack's
/// `max_unavailable_per_rack` updating at once per service.
fn start_updates(hosts: &mut [Host], reply: &pb::ReportRackReply, now: Instant) {
    let goals: BTreeMap<&str, &pb::HostGoals> =
        reply.hosts.iter().map(|g| (g.host.as_str(), g)).collect();
    for i in 0..hosts.len() {
        let Some(g) = goals.get(hosts[i].name.as_str()) else {
            continue;
        };
        for goal in &g.goals {
            let current = hosts[i].services.get(&goal.service);
            if current.is_some_and(|c| c.build_id == goal.build_id) {
                continue;
            }
            let busy = hosts
                .iter()
                .filter(|h| h.services.get(&goal.service).is_some_and(Running::updating))
                .count();
            if busy >= goal.max_unavailable_per_rack.max(1) as usize {
                continue;
            }
            hosts[i].services.insert(
                goal.service.clone(),
                Running {
                    build_id: goal.build_id.clone(),
                    state: STEPS[0],
                    since: now,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn goal(host: &str, build: &str, max: u32) -> pb::HostGoals {
        pb::HostGoals {
            host: host.into(),
            goals: vec![pb::ServiceGoal {
                service: "web".into(),
                build_id: build.into(),
                artifact_digest: String::new(),
                release: "r-1".into(),
                max_unavailable_per_rack: max,
            }],
        }
    }

    #[test]
    fn no_more_than_max_unavailable_hosts_of_a_rack_update_at_once() {
        let mut hosts: Vec<Host> = (0..4)
            .map(|i| Host {
                name: format!("h{i}"),
                services: BTreeMap::new(),
            })
            .collect();
        let reply = pb::ReportRackReply {
            hosts: (0..4).map(|i| goal(&format!("h{i}"), "b-1", 2)).collect(),
            report_every_ms: 100,
        };
        start_updates(&mut hosts, &reply, Instant::now());
        let updating = hosts
            .iter()
            .filter(|h| h.services.contains_key("web"))
            .count();
        assert_eq!(updating, 2);
        // Once they are healthy, the next two start.
        for h in &mut hosts {
            if let Some(r) = h.services.get_mut("web") {
                r.state = "HEALTHY";
            }
        }
        start_updates(&mut hosts, &reply, Instant::now());
        assert!(hosts.iter().all(|h| h.services.contains_key("web")));
    }
}

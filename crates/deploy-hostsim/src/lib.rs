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

/// What a simulated host saw, for benchmarks that time the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimEvent {
    /// The host learnt a new goal build for a service.
    Goal { host: String, build_id: String },
    /// The region acknowledged a report of the host running `build_id`, healthy.
    ReportedHealthy { host: String, build_id: String },
}

pub type Observer = Arc<dyn Fn(SimEvent) + Send + Sync>;

/// What to simulate.
#[derive(Clone)]
pub struct SimOptions {
    pub region: String,
    pub racks: u32,
    pub hosts_per_rack: u32,
    /// How long each update step (download, install, start) takes.
    pub step: Duration,
    pub fails: FailRule,
    /// Learn goals from a `WatchRack` stream, as a relay does, not only from report replies.
    pub watch: bool,
    /// Report when a host changed, and otherwise at least this often; `None`: report every
    /// step (what tests with a handful of racks want).
    pub heartbeat: Option<Duration>,
    pub observer: Option<Observer>,
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
            watch: false,
            heartbeat: None,
            observer: None,
        }
    }
}

pub fn rack_name(rack: u32) -> String {
    format!("rack-{rack}")
}

pub fn host_name(region: &str, rack: u32, i: u32) -> String {
    format!("{region}-r{rack}-h{i}")
}

const STEPS: [pb::ServiceState; 3] = [
    pb::ServiceState::Downloading,
    pb::ServiceState::Installing,
    pb::ServiceState::Starting,
];

#[derive(Debug, Clone)]
struct Running {
    build_id: String,
    state: pb::ServiceState,
    since: Instant,
    /// A report of this build healthy was acknowledged (told to the observer once).
    announced: bool,
}

impl Running {
    fn updating(&self) -> bool {
        STEPS.contains(&self.state)
    }
}

struct Host {
    name: String,
    services: BTreeMap<String, Running>,
    /// The last goal build seen per service (told to the observer once each).
    goals: BTreeMap<String, String>,
}

/// Runs every simulated rack until `stop` is cancelled.
pub async fn run(client: Arc<Client>, opts: SimOptions, stop: CancellationToken) {
    run_over(&[client], opts, stop).await
}

/// As [`run`], rack `r` talking through `clients[r % len]`: thousands of racks need more than
/// one connection (a server takes a bounded number of streams on each).
pub async fn run_over(clients: &[Arc<Client>], opts: SimOptions, stop: CancellationToken) {
    info!(region = %opts.region, racks = opts.racks, hosts_per_rack = opts.hosts_per_rack, "simulating hosts");
    if clients.is_empty() {
        return;
    }
    let mut tasks = Vec::new();
    for r in 0..opts.racks {
        tasks.push(tokio::spawn(rack(
            clients[r as usize % clients.len()].clone(),
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
            goals: BTreeMap::new(),
        })
        .collect();
    let mut every = Duration::from_millis(500);
    let mut watched = opts.watch.then(|| {
        let names = hosts.iter().map(|h| h.name.clone()).collect();
        watch_goals(
            client.clone(),
            opts.region.clone(),
            rack.clone(),
            names,
            stop.clone(),
        )
    });
    let mut changed = true;
    let mut last_sent: Option<Instant> = None;
    let mut goals_arrived = false;
    loop {
        let now = Instant::now();
        for h in &mut hosts {
            for (service, run) in &mut h.services {
                if !run.updating() || now.duration_since(run.since) < opts.step {
                    continue;
                }
                run.since = now;
                changed = true;
                run.state = match run.state {
                    pb::ServiceState::Downloading => pb::ServiceState::Installing,
                    pb::ServiceState::Installing => pb::ServiceState::Starting,
                    _ if (opts.fails)(&h.name, service, &run.build_id) => pb::ServiceState::Failed,
                    _ => pb::ServiceState::Healthy,
                };
            }
        }
        if let Some(rx) = &mut watched {
            if std::mem::take(&mut goals_arrived) || rx.has_changed().unwrap_or(false) {
                let reply = rx.borrow_and_update().clone();
                if let Some(reply) = reply {
                    changed |= start_updates(&mut hosts, &reply, now, opts.observer.as_ref());
                }
            }
        }
        let due = match opts.heartbeat {
            None => true,
            Some(hb) => changed || last_sent.is_none_or(|t| now.duration_since(t) >= hb),
        };
        if !due {
            match pause(&opts, every, &mut watched, &stop).await {
                Woken::Stopped => return,
                Woken::Goals => goals_arrived = true,
                Woken::Tick => {}
            }
            continue;
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
                            state: run.state as i32,
                            detail: if run.state == pb::ServiceState::Failed {
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
                changed = false;
                last_sent = Some(now);
                if reply.report_every_ms > 0 {
                    every = Duration::from_millis(u64::from(reply.report_every_ms));
                }
                announce(&mut hosts, opts.observer.as_ref());
                changed |= start_updates(&mut hosts, &reply, now, opts.observer.as_ref());
            }
            Err(e) => debug!(rack = %rack, error = %e, "report not delivered"),
        }
        match pause(&opts, every, &mut watched, &stop).await {
            Woken::Stopped => return,
            Woken::Goals => goals_arrived = true,
            Woken::Tick => {}
        }
    }
}

/// Why a rack's pause ended.
enum Woken {
    Tick,
    /// New goals came on the watch (already marked seen on the receiver).
    Goals,
    Stopped,
}

/// Sleeps until the next step, or until new goals arrive, or until stopped.
async fn pause(
    opts: &SimOptions,
    every: Duration,
    watched: &mut Option<tokio::sync::watch::Receiver<Option<pb::ReportRackReply>>>,
    stop: &CancellationToken,
) -> Woken {
    let pause = match opts.heartbeat {
        None => every.min(opts.step),
        Some(_) => opts.step,
    };
    let goals = async {
        match watched {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(pause) => Woken::Tick,
        _ = goals => Woken::Goals,
        _ = stop.cancelled() => Woken::Stopped,
    }
}

/// Tells the observer of hosts whose healthy state the region just acknowledged.
fn announce(hosts: &mut [Host], observer: Option<&Observer>) {
    let Some(observe) = observer else {
        return;
    };
    for h in hosts {
        for run in h.services.values_mut() {
            if run.state == pb::ServiceState::Healthy && !run.announced {
                run.announced = true;
                observe(SimEvent::ReportedHealthy {
                    host: h.name.clone(),
                    build_id: run.build_id.clone(),
                });
            }
        }
    }
}

/// Holds a `WatchRack` stream to the region, as a relay does, watching again when it ends;
/// the latest goals are in the returned receiver.
fn watch_goals(
    client: Arc<Client>,
    region: String,
    rack: String,
    hosts: Vec<String>,
    stop: CancellationToken,
) -> tokio::sync::watch::Receiver<Option<pb::ReportRackReply>> {
    let (tx, rx) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        let req = pb::WatchRackRequest {
            region,
            rack,
            hosts,
        };
        while !stop.is_cancelled() {
            let watched = client.watch_rack(req.clone()).await;
            if let Err(e) = &watched {
                debug!(rack = %req.rack, error = %e, "cannot watch the rack's goals");
            }
            if let Ok(mut stream) = watched {
                loop {
                    let next = tokio::select! {
                        m = stream.message() => m,
                        _ = stop.cancelled() => return,
                    };
                    match next {
                        Ok(Some(reply)) => {
                            tx.send_replace(Some(reply));
                        }
                        _ => break,
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.cancelled() => return,
            }
        }
    });
    rx
}

/// Starts moving hosts whose goal differs from what they run, at most the rack's
/// `max_unavailable_per_rack` updating at once per service; true if any started.
fn start_updates(
    hosts: &mut [Host],
    reply: &pb::ReportRackReply,
    now: Instant,
    observer: Option<&Observer>,
) -> bool {
    let goals: BTreeMap<&str, &pb::HostGoals> =
        reply.hosts.iter().map(|g| (g.host.as_str(), g)).collect();
    let mut started = false;
    for i in 0..hosts.len() {
        let Some(g) = goals.get(hosts[i].name.as_str()) else {
            continue;
        };
        for goal in &g.goals {
            let seen = hosts[i].goals.get(&goal.service) == Some(&goal.build_id);
            if !seen {
                hosts[i]
                    .goals
                    .insert(goal.service.clone(), goal.build_id.clone());
                if let Some(observe) = observer {
                    observe(SimEvent::Goal {
                        host: hosts[i].name.clone(),
                        build_id: goal.build_id.clone(),
                    });
                }
            }
            let current = hosts[i].services.get(&goal.service);
            if current.is_some_and(|c| c.build_id == goal.build_id) {
                continue;
            }
            let busy = hosts
                .iter()
                .filter(|h| h.services.get(&goal.service).is_some_and(Running::updating))
                .count();
            if !deploy_types::fleet::may_begin_update(busy, goal.max_unavailable_per_rack) {
                continue;
            }
            hosts[i].services.insert(
                goal.service.clone(),
                Running {
                    build_id: goal.build_id.clone(),
                    state: STEPS[0],
                    since: now,
                    announced: false,
                },
            );
            started = true;
        }
    }
    started
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
            registered: true,
        }
    }

    #[test]
    fn no_more_than_max_unavailable_hosts_of_a_rack_update_at_once() {
        let mut hosts: Vec<Host> = (0..4)
            .map(|i| Host {
                name: format!("h{i}"),
                services: BTreeMap::new(),
                goals: BTreeMap::new(),
            })
            .collect();
        let reply = pb::ReportRackReply {
            hosts: (0..4).map(|i| goal(&format!("h{i}"), "b-1", 2)).collect(),
            report_every_ms: 100,
        };
        start_updates(&mut hosts, &reply, Instant::now(), None);
        let updating = hosts
            .iter()
            .filter(|h| h.services.contains_key("web"))
            .count();
        assert_eq!(updating, 2);
        // Once they are healthy, the next two start.
        for h in &mut hosts {
            if let Some(r) = h.services.get_mut("web") {
                r.state = pb::ServiceState::Healthy;
            }
        }
        start_updates(&mut hosts, &reply, Instant::now(), None);
        assert!(hosts.iter().all(|h| h.services.contains_key("web")));
    }
}

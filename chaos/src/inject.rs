//! Carrying out the fault schedule on the running cluster: each planned fault picks its target
//! when it fires (the leader of the moment, a worker holding a build, a relay whose hosts are
//! downloading), takes effect, holds, and heals itself.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cluster::{fill_disk, Cluster, Kind};
use crate::control;
use crate::fault::{FaultKind, Planned};
use crate::net::{Link, Net, Peer};

/// A fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    pub index: usize,
    pub kind: FaultKind,
    pub planned_at_ms: u64,
    /// When it took effect, from the start of the workload.
    pub at_ms: u64,
    pub hold_ms: u64,
    /// What it hit: process names, or a link description.
    pub target: String,
    pub detail: String,
    /// Why it did not happen, if it did not (no candidate, no tmpfs).
    pub skipped: Option<String>,
    pub healed_at_ms: Option<u64>,
}

pub struct Injector {
    cluster: Arc<Cluster>,
    net: Net,
    t0: Instant,
    /// Processes some fault is acting on: others leave them alone.
    busy: Mutex<BTreeSet<String>>,
    pub injected: Mutex<Vec<Injected>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Releases a busy mark when the fault ends, however it ends.
struct Busy<'a> {
    injector: &'a Injector,
    names: Vec<String>,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut b = lock(&self.injector.busy);
        for n in &self.names {
            b.remove(n);
        }
    }
}

/// `link` on every connection between a node of `a` and a node of `b`, both ways.
fn cut(a: &[String], b: &[String], link: Link) -> Vec<(Peer, String, Link)> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            if x != y {
                out.push((Peer::Node(x.clone()), y.clone(), link));
                out.push((Peer::Node(y.clone()), x.clone(), link));
            }
        }
    }
    out
}

fn pick<T: Clone>(items: &[T], draw: u64) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        Some(items[(draw % items.len() as u64) as usize].clone())
    }
}

impl Injector {
    pub fn new(cluster: Arc<Cluster>, net: Net, t0: Instant) -> Self {
        Self {
            cluster,
            net,
            t0,
            busy: Mutex::default(),
            injected: Mutex::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    fn claim(&self, names: &[String]) -> Option<Busy<'_>> {
        let mut b = lock(&self.busy);
        if names.iter().any(|n| b.contains(n)) {
            return None;
        }
        b.extend(names.iter().cloned());
        Some(Busy {
            injector: self,
            names: names.to_vec(),
        })
    }

    fn free(&self, names: Vec<String>) -> Vec<String> {
        let b = lock(&self.busy);
        names
            .into_iter()
            .filter(|n| !b.contains(n) && self.cluster.is_up(n))
            .collect()
    }

    /// One of `preferred` still up and free (then `busy_word`), else one of `all` ("idle").
    fn prefer(
        &self,
        preferred: Vec<String>,
        all: Vec<String>,
        draw: u64,
        busy_word: &'static str,
    ) -> Result<(String, &'static str), String> {
        match pick(&self.free(preferred), draw) {
            Some(n) => Ok((n, busy_word)),
            None => pick(&self.free(all), draw)
                .map(|n| (n, "idle"))
                .ok_or_else(|| "none is up".to_string()),
        }
    }

    /// The member names of `group`.
    fn members(&self, group: &str) -> Vec<String> {
        self.cluster
            .layout
            .members(group)
            .iter()
            .map(|m| m.name.clone())
            .collect()
    }

    fn groups(&self) -> Vec<String> {
        self.cluster.layout.groups().into_keys().collect()
    }

    fn region_groups(&self) -> Vec<String> {
        self.groups()
            .into_iter()
            .filter(|g| g != "global")
            .collect()
    }

    /// Runs the schedule until its end or `stop`; returns once every fault has healed.
    pub async fn run(self: Arc<Self>, plan: Vec<Planned>, stop: CancellationToken) {
        let mut running = Vec::new();
        for p in plan {
            let at = self.t0 + Duration::from_millis(p.at_ms);
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = stop.cancelled() => break,
            }
            running.push(tokio::spawn(self.clone().inject(p)));
        }
        for r in running {
            let _ = r.await;
        }
    }

    async fn inject(self: Arc<Self>, p: Planned) {
        let mut rec = Injected {
            index: p.index,
            kind: p.kind,
            planned_at_ms: p.at_ms,
            at_ms: self.now_ms(),
            hold_ms: p.hold_ms,
            target: String::new(),
            detail: String::new(),
            skipped: None,
            healed_at_ms: None,
        };
        match self.apply(&p, &mut rec).await {
            Ok(()) => rec.healed_at_ms = Some(self.now_ms()),
            Err(why) => rec.skipped = Some(why),
        }
        tracing::info!(kind = %rec.kind, target = %rec.target, skipped = ?rec.skipped, "fault done");
        lock(&self.injected).push(rec);
    }

    async fn hold(&self, p: &Planned) {
        tokio::time::sleep(Duration::from_millis(p.hold_ms)).await;
    }

    /// Kills `name`, holds, restarts it.
    async fn kill_restart(
        &self,
        p: &Planned,
        name: String,
        rec: &mut Injected,
    ) -> Result<(), String> {
        let _busy = self
            .claim(std::slice::from_ref(&name))
            .ok_or("target busy")?;
        rec.at_ms = self.now_ms();
        self.cluster.kill9(&name).map_err(|e| e.to_string())?;
        rec.target = name.clone();
        self.hold(p).await;
        self.cluster.start(&name).map_err(|e| e.to_string())
    }

    async fn leader_of(&self, group: &str) -> Result<String, String> {
        control::wait_leader(&self.cluster, group, Duration::from_secs(3))
            .await
            .ok_or_else(|| format!("{group} has no leader"))
    }

    async fn apply(&self, p: &Planned, rec: &mut Injected) -> Result<(), String> {
        let c = &self.cluster;
        match p.kind {
            FaultKind::KillGlobalLeader => {
                let l = self.leader_of("global").await?;
                rec.detail = "global leader".into();
                self.kill_restart(p, l, rec).await
            }
            FaultKind::KillRegionLeader => {
                let g = pick(&self.region_groups(), p.pick).ok_or("no region")?;
                let l = self.leader_of(&g).await?;
                rec.detail = format!("{g} leader");
                self.kill_restart(p, l, rec).await
            }
            FaultKind::KillFollower => {
                let g = pick(&self.groups(), p.pick).ok_or("no group")?;
                let l = self.leader_of(&g).await.ok();
                let followers: Vec<String> = self.free(
                    self.members(&g)
                        .into_iter()
                        .filter(|n| Some(n) != l.as_ref())
                        .collect(),
                );
                let f = pick(&followers, p.variant).ok_or("no follower up")?;
                rec.detail = format!("{g} follower");
                self.kill_restart(p, f, rec).await
            }
            FaultKind::KillWorker => {
                let busy = self.workers_building().await;
                let (w, how) = self.prefer(busy, c.names(Kind::Worker), p.variant, "mid-build")?;
                rec.detail = format!("worker {how}");
                self.kill_restart(p, w, rec).await
            }
            FaultKind::KillRelay => {
                let moving = self.hosts_installing().await;
                let relays: Vec<String> = c
                    .layout
                    .hosts
                    .iter()
                    .filter(|h| moving.contains(&h.id))
                    .map(|h| h.relay.clone())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let (r, how) =
                    self.prefer(relays, c.names(Kind::Relay), p.variant, "mid-transfer")?;
                rec.detail = format!("relay {how}");
                self.kill_restart(p, r, rec).await
            }
            FaultKind::KillAgent => {
                let installing = self.hosts_installing().await;
                let (h, how) =
                    self.prefer(installing, c.names(Kind::Agent), p.variant, "mid-install")?;
                rec.detail = format!("agent {how}");
                self.kill_restart(p, h, rec).await
            }
            FaultKind::PauseLeader => {
                let g = pick(&self.groups(), p.pick).ok_or("no group")?;
                let l = self.leader_of(&g).await?;
                rec.detail = format!("{g} leader");
                self.pause(p, l, rec).await
            }
            FaultKind::PauseProcess => {
                let all = self.free(c.layout.process_names());
                let n = pick(&all, p.pick).ok_or("nothing up")?;
                self.pause(p, n, rec).await
            }
            FaultKind::IsolateLeader => {
                let g = pick(&self.groups(), p.pick).ok_or("no group")?;
                let l = self.leader_of(&g).await?;
                let others: Vec<String> = c
                    .layout
                    .nodes
                    .iter()
                    .map(|n| n.name.clone())
                    .filter(|n| *n != l)
                    .collect();
                let link = if p.variant & 1 == 0 {
                    Link::Drop
                } else {
                    Link::Reset
                };
                let mut links = cut(std::slice::from_ref(&l), &others, link);
                let clients_too = p.variant & 2 != 0;
                if clients_too {
                    links.push((Peer::Outside, l.clone(), link));
                }
                rec.target = l.clone();
                rec.detail = format!(
                    "{g} leader cut off from every other node ({link:?}){}",
                    if clients_too {
                        ", and from clients"
                    } else {
                        ""
                    }
                );
                self.partition(p, links, rec).await
            }
            FaultKind::PartitionMinority => {
                let g = pick(&self.groups(), p.pick).ok_or("no group")?;
                let mut members = self.members(&g);
                if members.len() < 2 {
                    return Err(format!("{g} has one member"));
                }
                let shift = (p.variant % members.len() as u64) as usize;
                members.rotate_left(shift);
                let minority_len = (members.len() - 1) / 2;
                let minority: Vec<String> = members[..minority_len.max(1)].to_vec();
                let majority: Vec<String> = members[minority_len.max(1)..].to_vec();
                let link = if p.variant & 0x100 == 0 {
                    Link::Drop
                } else {
                    Link::Reset
                };
                let links = cut(&minority, &majority, link);
                rec.target = format!("{} | {}", minority.join(","), majority.join(","));
                rec.detail = format!("{g} split ({link:?})");
                self.partition(p, links, rec).await
            }
            FaultKind::PartitionOneWay => {
                let g = pick(&self.groups(), p.pick).ok_or("no group")?;
                let members = self.members(&g);
                if members.len() < 2 {
                    return Err(format!("{g} has one member"));
                }
                let n = members.len() as u64;
                let a = (p.variant % n) as usize;
                let b = (a + 1 + ((p.variant / n) % (n - 1)) as usize) % members.len();
                let link = if p.variant & 0x100 == 0 {
                    Link::Drop
                } else {
                    Link::Reset
                };
                rec.target = format!("{} -> {}", members[a], members[b]);
                rec.detail = format!(
                    "{g}: {} cannot reach {} ({link:?}); the other way works",
                    members[a], members[b]
                );
                let links = vec![(Peer::Node(members[a].clone()), members[b].clone(), link)];
                self.partition(p, links, rec).await
            }
            FaultKind::CutRegion => {
                let g = pick(&self.region_groups(), p.pick).ok_or("no region")?;
                let region = self.members(&g);
                let global = self.members("global");
                let links = cut(&region, &global, Link::Drop);
                rec.target = g.clone();
                rec.detail = format!("{g} cut off from the global group");
                self.partition(p, links, rec).await
            }
            FaultKind::SlowLinks => {
                let g = pick(&self.groups(), p.pick).ok_or("no group")?;
                let members = self.members(&g);
                let delay = Duration::from_millis(50 + p.variant % 350);
                let links = cut(&members, &members, Link::Delay(delay));
                rec.target = g.clone();
                rec.detail = format!("{} ms on every link of {g}", delay.as_millis());
                self.partition(p, links, rec).await
            }
            FaultKind::CorruptRelay => {
                let r = pick(&c.names(Kind::Relay), p.pick).ok_or("no relay")?;
                rec.target = r.clone();
                rec.detail = "bytes flipped on the way to its hosts".into();
                let links = vec![(Peer::Outside, r, Link::Corrupt)];
                self.partition(p, links, rec).await
            }
            FaultKind::DiskFull => self.disk_full(p, rec).await,
            FaultKind::RollingRestart => {
                let g = pick(&self.groups(), p.pick).ok_or("no group")?;
                let members = self.members(&g);
                rec.detail = format!("{g}, one member at a time");
                self.rolling(p, members, true, rec).await
            }
            FaultKind::RollingRestartFleet => {
                let r = pick(&c.layout.relays, p.pick).ok_or("no relay")?;
                let mut names = vec![r.id.clone()];
                names.extend(
                    c.layout
                        .hosts
                        .iter()
                        .filter(|h| h.relay == r.id)
                        .map(|h| h.id.clone()),
                );
                rec.detail = format!("{} {}: relay, then each agent", r.region, r.rack);
                self.rolling(p, names, false, rec).await
            }
            FaultKind::SkewClock => self.skew_clock(p, rec).await,
        }
    }

    /// Restarts the lowest-named free global follower with its wall clock off by 30-120 s
    /// (ahead or behind, by the draw), asks the leader to hand over (SIGTERM: the handover
    /// prefers the lowest-named caught-up voter), holds, then restarts it on the true clock.
    async fn skew_clock(&self, p: &Planned, rec: &mut Injected) -> Result<(), String> {
        let c = &self.cluster;
        if crate::cluster::faketime_lib().is_none() {
            return Err("libfaketime is not installed (apt-get install libfaketime)".into());
        }
        let leader = self.leader_of("global").await?;
        let mut followers = self.free(
            self.members("global")
                .into_iter()
                .filter(|n| *n != leader)
                .collect(),
        );
        followers.sort();
        let f = followers.first().cloned().ok_or("no global follower up")?;
        let _busy = self
            .claim(&[f.clone(), leader.clone()])
            .ok_or("target busy")?;
        let secs = 30 + (p.variant >> 1) % 91;
        let skew = if p.variant & 1 == 0 {
            secs as i64
        } else {
            -(secs as i64)
        };
        rec.at_ms = self.now_ms();
        rec.target = f.clone();
        let grace = Duration::from_secs(5);
        c.set_skew(&f, Some(skew));
        c.terminate(&f, grace).map_err(|e| e.to_string())?;
        c.start(&f).map_err(|e| e.to_string())?;
        // Let it catch up, so that the handover may choose it.
        let within = Duration::from_secs(5);
        let caught_up =
            test_support::wait_every(Duration::from_millis(100), within, "catch-up", || async {
                let l =
                    control::node_status(c, &leader, "global", Duration::from_millis(500)).await?;
                let s = control::node_status(c, &f, "global", Duration::from_millis(500)).await?;
                (s.last_applied + 2 >= l.last_applied).then_some(())
            })
            .await
            .is_ok();
        c.terminate(&leader, grace).map_err(|e| e.to_string())?;
        c.start(&leader).map_err(|e| e.to_string())?;
        let now = self.leader_of("global").await.unwrap_or_else(|e| e);
        rec.detail = format!(
            "clock {skew:+} s (caught up before the handover: {caught_up}); global leader after it: {now}"
        );
        self.hold(p).await;
        c.set_skew(&f, None);
        c.terminate(&f, grace).map_err(|e| e.to_string())?;
        c.start(&f).map_err(|e| e.to_string())
    }

    async fn pause(&self, p: &Planned, name: String, rec: &mut Injected) -> Result<(), String> {
        let _busy = self
            .claim(std::slice::from_ref(&name))
            .ok_or("target busy")?;
        rec.at_ms = self.now_ms();
        if !self.cluster.pause(&name, true) {
            return Err(format!("{name} is not running"));
        }
        rec.target = name.clone();
        rec.detail = format!("{} SIGSTOP for {} ms", rec.detail, p.hold_ms)
            .trim()
            .to_string();
        self.hold(p).await;
        self.cluster.pause(&name, false);
        Ok(())
    }

    async fn partition(
        &self,
        p: &Planned,
        links: Vec<(Peer, String, Link)>,
        rec: &mut Injected,
    ) -> Result<(), String> {
        let id = p.index as u64;
        rec.at_ms = self.now_ms();
        self.net.set(id, links);
        self.hold(p).await;
        self.net.heal(id);
        Ok(())
    }

    async fn disk_full(&self, p: &Planned, rec: &mut Injected) -> Result<(), String> {
        let c = &self.cluster;
        let mounted: Vec<String> = c
            .layout
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .filter(|n| c.tmpfs.contains(&c.data_dir(n)))
            .collect();
        if mounted.is_empty() {
            return Err("no node's data is on a tmpfs (mounting one needs root)".into());
        }
        // Prefer a leader: that is where writes land first.
        let leaders: Vec<String> = {
            let mut l = Vec::new();
            for g in self.groups() {
                if let Some(x) = control::leader(c, &g).await {
                    l.push(x);
                }
            }
            l
        };
        let candidates = if p.variant & 1 == 0 {
            self.free(
                mounted
                    .iter()
                    .filter(|n| leaders.contains(n))
                    .cloned()
                    .collect(),
            )
        } else {
            self.free(mounted.clone())
        };
        let node = pick(&candidates, p.pick)
            .or_else(|| pick(&self.free(mounted), p.pick))
            .ok_or("every tmpfs node is busy")?;
        let _busy = self
            .claim(std::slice::from_ref(&node))
            .ok_or("target busy")?;
        rec.at_ms = self.now_ms();
        rec.target = node.clone();
        let filler = c.data_dir(&node).join(".chaos-filler");
        // The node is expected to stop on the write errors (and to fail to start while
        // full): until a little after the space is back.
        c.expect_exits(
            &node,
            Instant::now() + Duration::from_millis(p.hold_ms) + Duration::from_secs(10),
        );
        let f = filler.clone();
        let bytes = tokio::task::spawn_blocking(move || fill_disk(&f))
            .await
            .unwrap_or(0);
        rec.detail = format!("{} MiB written until the tmpfs was full", bytes >> 20);
        self.hold(p).await;
        let _ = std::fs::remove_file(&filler);
        Ok(())
    }

    /// Stops and restarts each of `names` in turn; `nodes` waits for each node to answer
    /// again before the next.
    async fn rolling(
        &self,
        p: &Planned,
        names: Vec<String>,
        nodes: bool,
        rec: &mut Injected,
    ) -> Result<(), String> {
        let _busy = self.claim(&names).ok_or("a target is busy")?;
        rec.at_ms = self.now_ms();
        rec.target = names.join(",");
        let down = Duration::from_millis((p.hold_ms / names.len().max(1) as u64).clamp(200, 2_000));
        for n in &names {
            self.cluster
                .terminate(n, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            tokio::time::sleep(down).await;
            self.cluster.start(n).map_err(|e| e.to_string())?;
            if nodes {
                let group = self
                    .cluster
                    .layout
                    .node(n)
                    .map(|x| x.group.clone())
                    .unwrap_or_default();
                let deadline = Instant::now() + Duration::from_secs(15);
                while Instant::now() < deadline {
                    if control::node_status(&self.cluster, n, &group, Duration::from_millis(500))
                        .await
                        .is_some_and(|s| !s.leader.is_empty())
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            } else {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Ok(())
    }

    /// Workers that hold a RUNNING build, as the global leader says.
    async fn workers_building(&self) -> Vec<String> {
        let Some(l) = control::leader(&self.cluster, "global").await else {
            return Vec::new();
        };
        let Ok(client) = self.cluster.control(&l) else {
            return Vec::new();
        };
        let req = deploy_proto::v1::ListBuildsRequest {
            state: deploy_proto::v1::BuildState::Running as i32,
            page_size: 100,
            ..Default::default()
        };
        match client.list_builds(req).await {
            Ok(r) => r.builds.into_iter().map(|b| b.worker).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Hosts moving to a new build (downloading, installing, starting), as their regions'
    /// leaders last heard.
    async fn hosts_installing(&self) -> Vec<String> {
        let mut moving = Vec::new();
        for g in self.region_groups() {
            let region = g.trim_start_matches("region/").to_string();
            let Some(l) = control::leader(&self.cluster, &g).await else {
                continue;
            };
            let Ok(client) = self.cluster.control(&l) else {
                continue;
            };
            let Ok(hosts) = control::hosts(&client, &region, false).await else {
                continue;
            };
            for h in hosts {
                if h.services
                    .iter()
                    .any(|s| matches!(s.state().name(), "DOWNLOADING" | "INSTALLING" | "STARTING"))
                {
                    moving.push(h.host.clone());
                }
            }
        }
        moving
    }
}

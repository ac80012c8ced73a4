//! A regional group's state: the global decisions it applied, its hosts, each service's goal,
//! and its releases' waves.
//!
//! Goals are kept per rack, with per-host exceptions for a canary that takes part of a rack,
//! so 100k hosts cost one entry per rack, and a host that joins a rack later gets the rack's
//! goal. Every goal change a release makes is recorded with what it replaced, so a rollback
//! restores exactly the previous goals, in reverse order. Host reports are not here: the
//! leader keeps them as soft state and commits only transitions and summaries.

use std::collections::{BTreeMap, BTreeSet};

use deploy_types::Digest;
use serde::{Deserialize, Serialize};

use crate::releases::{
    clip, parse_release_id, push_history, release_id, Action, Counts, Decision, DecisionKind,
    Entry, ReleaseError, ReleaseState, Strategy,
};
use crate::rollout::{plan, PlanError, Wave};

/// Hosts one registration command may carry.
pub const MAX_HOSTS_PER_COMMAND: usize = 4096;
/// Finished releases a region keeps at most. They leave sooner by the retention policy
/// ([`RegionCommand::Collect`]); this bound holds whatever the policy says.
pub const MAX_FINISHED_KEPT: usize = 1000;
/// Hosts (and, apart, relays) one region's registry holds at most, whatever reports.
pub const MAX_REGION_HOSTS: usize = 1_000_000;

/// What a host (or a rack) should run for one service. An empty `build_id` is an explicit
/// "nothing": a host exception that hides its rack's goal (a host that never took a build
/// its rack moved to, and had nothing before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goal {
    pub build_id: String,
    /// `None` only in the explicit "nothing" goal.
    #[serde(with = "deploy_types::digest::or_empty")]
    pub artifact_digest: Option<Digest>,
    pub release: String,
}

impl Goal {
    /// The explicit "nothing" goal.
    pub fn nothing() -> Self {
        Self {
            build_id: String::new(),
            artifact_digest: None,
            release: String::new(),
        }
    }

    pub fn is_nothing(&self) -> bool {
        self.build_id.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    Rack(String),
    Host(String),
}

/// One goal change a release made, with the goal it replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    pub target: Target,
    pub prev: Option<Goal>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceGoals {
    pub racks: imbl::OrdMap<String, Goal>,
    /// Exceptions to the rack's goal (a canary taking part of a rack).
    pub hosts: imbl::OrdMap<String, Goal>,
    /// The release rolling out, if any.
    pub active: Option<u64>,
    /// The newest release applied, the only one a rollback may undo once it succeeded.
    pub latest: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRelease {
    pub seq: u64,
    pub service: String,
    pub build_id: String,
    pub artifact_digest: Digest,
    pub strategy: Strategy,
    pub plan: Vec<Wave>,
    /// The wave in progress, or the last one once final.
    pub wave: u32,
    pub wave_started_ms: u64,
    pub state: ReleaseState,
    pub reason: String,
    pub moved: Vec<Moved>,
    pub counts: Counts,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub history: Vec<Entry>,
    /// An ABORTED or FAILED release's last wave has been settled (see
    /// [`RegionCommand::Settle`]).
    #[serde(default)]
    pub settled: bool,
}

impl RegionRelease {
    pub fn id(&self) -> String {
        release_id(self.seq)
    }

    pub fn hosts_total(&self) -> u64 {
        self.plan.iter().map(|w| w.hosts.len() as u64).sum()
    }

    /// The hosts of the current wave.
    pub fn wave_hosts(&self) -> &[String] {
        self.plan
            .get(self.wave as usize)
            .map(|w| w.hosts.as_slice())
            .unwrap_or(&[])
    }

    /// Every host of waves up to and including the current one.
    pub fn moved_hosts(&self) -> impl Iterator<Item = &String> {
        self.plan
            .iter()
            .take(self.wave as usize + 1)
            .flat_map(|w| w.hosts.iter())
    }

    fn end(&mut self, state: ReleaseState, now_ms: u64, by: &str, reason: String) {
        self.state = state;
        self.reason = clip(&reason);
        self.finished_at_ms = Some(now_ms);
        let what = if reason.is_empty() {
            state.as_str().to_string()
        } else {
            format!("{}: {}", state.as_str(), clip(&reason))
        };
        push_history(&mut self.history, now_ms, by, what);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionCommand {
    /// Global decisions pulled by the leader, in order; `upto` is the global decision number
    /// the region has seen everything up to once these are applied.
    Apply {
        decisions: Vec<Decision>,
        upto: u64,
        now_ms: u64,
    },
    /// New hosts, or hosts that moved rack: (host, rack).
    RegisterHosts { hosts: Vec<(String, String)> },
    /// A relay serving a rack.
    RegisterRelay { relay: String, rack: String },
    /// Every host of `wave` ran the build healthy for the minimum time.
    WavePassed {
        id: String,
        wave: u32,
        counts: Counts,
        now_ms: u64,
    },
    /// A wave crossed its failure threshold or its deadline.
    Halt {
        id: String,
        wave: u32,
        reason: String,
        counts: Counts,
        now_ms: u64,
    },
    /// A periodic summary of the hosts' reports.
    Summary { id: String, counts: Counts },
    /// An ABORTED or FAILED release stops where it is: the hosts of its last wave that never
    /// took its build (the rack's relay held them back while others tried it, or they were
    /// down) return to the goal they had, so every host's goal is what it runs. `keep` are
    /// the hosts the leader saw on the build. Once per release.
    Settle {
        id: String,
        keep: Vec<String>,
        now_ms: u64,
    },
    /// Hosts and relays that stopped reporting leave the registry (the leader saw nothing of
    /// them for the policy's timeout). A host an unfinished release's plan names stays. (Last,
    /// as every new variant: the binary format numbers variants in order.)
    Forget {
        hosts: Vec<String>,
        relays: Vec<String>,
    },
    /// Finished release records beyond the retention policy leave the state, at most
    /// [`crate::retention::MAX_COLLECT`]: never an unfinished one, a service's newest (a
    /// rollback undoes its changes), one of the newest `keep_per_service` of its service,
    /// nor one finished less than `keep_ms` before `now_ms`. Stamped by the leader.
    Collect {
        now_ms: u64,
        keep_per_service: u32,
        keep_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionResponse {
    Applied {
        applied: u64,
    },
    Registered {
        added: usize,
    },
    State {
        id: String,
        state: ReleaseState,
        wave: u32,
    },
    /// What a [`RegionCommand::Forget`] removed.
    Forgotten {
        hosts: usize,
        relays: usize,
    },
    /// How many release records a [`RegionCommand::Collect`] removed.
    Collected {
        releases: usize,
    },
}

/// The replicated state of a regional group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// The last global decision applied.
    pub applied: u64,
    /// host -> rack.
    pub hosts: imbl::OrdMap<String, String>,
    /// relay -> rack.
    #[serde(default)]
    pub relays: imbl::OrdMap<String, String>,
    pub services: imbl::OrdMap<String, ServiceGoals>,
    pub releases: imbl::OrdMap<u64, RegionRelease>,
    /// The region's copy of the API tokens, from the global group's decisions.
    #[serde(default)]
    pub tokens: crate::tokens::Tokens,
}

fn stale(r: &RegionRelease, why: String) -> ReleaseError {
    ReleaseError::WrongState {
        id: r.id(),
        state: r.state.as_str().into(),
        why,
    }
}

impl Region {
    pub fn release(&self, id: &str) -> Option<&RegionRelease> {
        parse_release_id(id).and_then(|s| self.releases.get(&s))
    }

    /// Releases rolling out or paused.
    pub fn unfinished(&self) -> impl Iterator<Item = &RegionRelease> {
        self.releases.values().filter(|r| !r.state.is_final())
    }

    /// Racks and their hosts, in name order.
    pub fn racks(&self) -> BTreeMap<String, Vec<String>> {
        let mut racks: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (h, r) in &self.hosts {
            racks.entry(r.clone()).or_default().push(h.clone());
        }
        racks
    }

    /// What `host` should run: (service, goal) for every service with a goal there (an
    /// explicit "nothing" exception is no goal).
    pub fn goals_of(&self, host: &str) -> Vec<(String, Goal)> {
        let Some(rack) = self.hosts.get(host) else {
            return Vec::new();
        };
        self.services
            .iter()
            .filter_map(|(s, g)| {
                g.hosts
                    .get(host)
                    .or_else(|| g.racks.get(rack))
                    .filter(|goal| !goal.is_nothing())
                    .map(|goal| (s.clone(), goal.clone()))
            })
            .collect()
    }

    /// Releases that ended ABORTED or FAILED and are not settled yet.
    pub fn unsettled(&self) -> impl Iterator<Item = &RegionRelease> {
        self.releases.values().filter(|r| {
            !r.settled && matches!(r.state, ReleaseState::Aborted | ReleaseState::Failed)
        })
    }

    fn release_mut(&mut self, id: &str) -> Result<&mut RegionRelease, ReleaseError> {
        parse_release_id(id)
            .and_then(|s| self.releases.get_mut(&s))
            .ok_or_else(|| ReleaseError::NotFound(id.chars().take(40).collect()))
    }

    pub fn apply(&mut self, cmd: &RegionCommand) -> Result<RegionResponse, ReleaseError> {
        match cmd {
            RegionCommand::Apply {
                decisions,
                upto,
                now_ms,
            } => {
                for d in decisions {
                    // Each decision once, in order: a repeated pull changes nothing.
                    if d.seq <= self.applied {
                        continue;
                    }
                    self.decide(d, *now_ms);
                    self.applied = d.seq;
                }
                self.applied = self.applied.max(*upto);
                self.trim();
                Ok(RegionResponse::Applied {
                    applied: self.applied,
                })
            }
            RegionCommand::RegisterHosts { hosts } => {
                if hosts.len() > MAX_HOSTS_PER_COMMAND {
                    return Err(ReleaseError::Invalid {
                        field: "hosts".into(),
                        why: format!("at most {MAX_HOSTS_PER_COMMAND} per registration"),
                    });
                }
                for (h, r) in hosts {
                    for (kind, name) in [("host", h), ("rack", r)] {
                        deploy_types::check_name(kind, name).map_err(|e| {
                            ReleaseError::Invalid {
                                field: kind.into(),
                                why: e.to_string(),
                            }
                        })?;
                    }
                }
                let new = hosts
                    .iter()
                    .filter(|(h, _)| !self.hosts.contains_key(h))
                    .count();
                if self.hosts.len() + new > MAX_REGION_HOSTS {
                    return Err(ReleaseError::Invalid {
                        field: "hosts".into(),
                        why: format!(
                            "the region holds {} hosts; at most {MAX_REGION_HOSTS}",
                            self.hosts.len()
                        ),
                    });
                }
                let mut added = 0;
                for (h, r) in hosts {
                    if self.hosts.insert(h.clone(), r.clone()).as_ref() != Some(r) {
                        added += 1;
                    }
                }
                Ok(RegionResponse::Registered { added })
            }
            RegionCommand::RegisterRelay { relay, rack } => {
                for (kind, name) in [("relay", relay), ("rack", rack)] {
                    deploy_types::check_name(kind, name).map_err(|e| ReleaseError::Invalid {
                        field: kind.into(),
                        why: e.to_string(),
                    })?;
                }
                if !self.relays.contains_key(relay) && self.relays.len() >= MAX_REGION_HOSTS {
                    return Err(ReleaseError::Invalid {
                        field: "relay".into(),
                        why: format!("the region holds {MAX_REGION_HOSTS} relays, the most"),
                    });
                }
                let added = usize::from(
                    self.relays.insert(relay.clone(), rack.clone()).as_ref() != Some(rack),
                );
                Ok(RegionResponse::Registered { added })
            }
            RegionCommand::Forget { hosts, relays } => {
                if hosts.len() + relays.len() > MAX_HOSTS_PER_COMMAND {
                    return Err(ReleaseError::Invalid {
                        field: "hosts".into(),
                        why: format!("at most {MAX_HOSTS_PER_COMMAND} per command"),
                    });
                }
                Ok(self.forget(hosts, relays))
            }
            RegionCommand::Collect {
                now_ms,
                keep_per_service,
                keep_ms,
            } => {
                let gone = self.collectable(*now_ms, *keep_per_service, *keep_ms);
                for seq in &gone {
                    self.releases.remove(seq);
                }
                Ok(RegionResponse::Collected {
                    releases: gone.len(),
                })
            }
            RegionCommand::WavePassed {
                id,
                wave,
                counts,
                now_ms,
            } => {
                let r = self.release_mut(id)?;
                if r.state != ReleaseState::RollingOut || r.wave != *wave {
                    let why = format!("wave {wave} is not the wave rolling out");
                    return Err(stale(r, why));
                }
                r.counts = *counts;
                let seq = r.seq;
                let what = format!("wave {} passed", wave + 1);
                self.advance(seq, *now_ms, "region", what);
                self.state_of(seq)
            }
            RegionCommand::Halt {
                id,
                wave,
                reason,
                counts,
                now_ms,
            } => {
                let r = self.release_mut(id)?;
                if r.state.is_final() || r.wave != *wave {
                    let why = format!("wave {wave} is not the wave rolling out");
                    return Err(stale(r, why));
                }
                r.counts = *counts;
                let seq = r.seq;
                if r.strategy.auto_rollback {
                    self.roll_back(seq, *now_ms, "region", reason.clone());
                } else if let Some(r) = self.releases.get_mut(&seq) {
                    r.end(ReleaseState::Failed, *now_ms, "region", reason.clone());
                    self.clear_active(seq);
                }
                self.state_of(seq)
            }
            RegionCommand::Summary { id, counts } => {
                let r = self.release_mut(id)?;
                r.counts = *counts;
                let seq = r.seq;
                self.state_of(seq)
            }
            RegionCommand::Settle { id, keep, now_ms } => {
                let r = self.release_mut(id)?;
                if r.settled || !matches!(r.state, ReleaseState::Aborted | ReleaseState::Failed) {
                    let why = "only an ABORTED or FAILED release is settled, once".to_string();
                    return Err(stale(r, why));
                }
                let seq = r.seq;
                self.settle(seq, keep, *now_ms);
                self.state_of(seq)
            }
        }
    }

    /// Returns the hosts of release `seq`'s last wave that are not in `keep`, and still have
    /// its goal, to the goal they had before it.
    fn settle(&mut self, seq: u64, keep: &[String], now_ms: u64) {
        let Some(r) = self.releases.get_mut(&seq) else {
            return;
        };
        r.settled = true;
        let (id, service, build) = (r.id(), r.service.clone(), r.build_id.clone());
        let hosts: Vec<String> = r.wave_hosts().to_vec();
        let moved = r.moved.clone();
        let keep: BTreeSet<&String> = keep.iter().collect();
        let mut changes = Vec::new();
        let mut reverted = Vec::new();
        for h in hosts.iter().filter(|h| !keep.contains(h)) {
            let on_release = self
                .goals_of(h)
                .iter()
                .any(|(s, g)| *s == service && g.release == id);
            let Some(rack) = self.hosts.get(h).cloned() else {
                continue;
            };
            if !on_release {
                continue;
            }
            // The host's own exception if the release replaced one, else its rack's goal.
            let before = moved
                .iter()
                .find(|m| m.target == Target::Host(h.clone()))
                .map(|m| (true, m.prev.clone()))
                .or_else(|| {
                    moved
                        .iter()
                        .find(|m| m.target == Target::Rack(rack.clone()))
                        .map(|m| (false, m.prev.clone()))
                });
            let Some((own, prev)) = before else { continue };
            let goals = self.services.entry(service.clone()).or_default();
            let replaced = match (own, prev) {
                (true, None) => goals.hosts.remove(h),
                (_, Some(g)) => goals.hosts.insert(h.clone(), g),
                (false, None) => goals.hosts.insert(h.clone(), Goal::nothing()),
            };
            changes.push(Moved {
                target: Target::Host(h.clone()),
                prev: replaced,
            });
            reverted.push(h.clone());
        }
        if let Some(r) = self.releases.get_mut(&seq) {
            r.moved.extend(changes);
            let what = if reverted.is_empty() {
                "settled: every host of the last wave took it".to_string()
            } else {
                clip(&format!(
                    "settled: {} hosts of the last wave never took {build} and keep what they had: {}",
                    reverted.len(),
                    reverted.join(", ")
                ))
            };
            push_history(&mut r.history, now_ms, "region", what);
        }
    }

    fn state_of(&self, seq: u64) -> Result<RegionResponse, ReleaseError> {
        let r = self
            .releases
            .get(&seq)
            .ok_or_else(|| ReleaseError::NotFound(release_id(seq)))?;
        Ok(RegionResponse::State {
            id: r.id(),
            state: r.state,
            wave: r.wave,
        })
    }

    /// Applies one global decision. Never fails: a decision that no longer fits (a pause
    /// for a release that already ended here) is recorded in the history and ignored.
    fn decide(&mut self, d: &Decision, now_ms: u64) {
        if let DecisionKind::Token(change) = &d.kind {
            self.tokens.change(change);
            return;
        }
        let Some(seq) = parse_release_id(&d.release) else {
            return;
        };
        match &d.kind {
            DecisionKind::Start {
                service,
                build_id,
                artifact_digest,
                strategy,
            } => self.start(seq, d, service, build_id, artifact_digest, strategy, now_ms),
            // Applied above.
            DecisionKind::Token(_) => {}
            DecisionKind::Act(action) => {
                let Some(r) = self.releases.get_mut(&seq) else {
                    return;
                };
                let what = if d.reason.is_empty() {
                    action.as_str().to_string()
                } else {
                    format!("{}: {}", action.as_str(), d.reason)
                };
                let latest = self.services.get(&r.service).and_then(|g| g.latest);
                let fits = match action {
                    Action::Pause => r.state == ReleaseState::RollingOut,
                    Action::Resume => r.state == ReleaseState::Paused,
                    Action::Abort | Action::Promote => !r.state.is_final(),
                    Action::Rollback => {
                        !r.state.is_final()
                            || (r.state == ReleaseState::Succeeded && latest == Some(seq))
                    }
                };
                if !fits {
                    let note = format!("{what} (ignored: the release is {})", r.state.as_str());
                    push_history(&mut r.history, now_ms, &d.by, note);
                    return;
                }
                match action {
                    Action::Pause => {
                        r.state = ReleaseState::Paused;
                        push_history(&mut r.history, now_ms, &d.by, what);
                    }
                    Action::Resume => {
                        r.state = ReleaseState::RollingOut;
                        // The wave's deadline counts from the resume.
                        r.wave_started_ms = now_ms;
                        push_history(&mut r.history, now_ms, &d.by, what);
                    }
                    Action::Abort => {
                        let reason = if d.reason.is_empty() {
                            format!("aborted by {}", d.by)
                        } else {
                            d.reason.clone()
                        };
                        r.end(ReleaseState::Aborted, now_ms, &d.by, reason);
                        self.clear_active(seq);
                    }
                    Action::Rollback => {
                        let reason = if d.reason.is_empty() {
                            format!("rolled back by {}", d.by)
                        } else {
                            d.reason.clone()
                        };
                        self.roll_back(seq, now_ms, &d.by, reason);
                    }
                    Action::Promote => {
                        r.state = ReleaseState::RollingOut;
                        let what = format!("wave {} promoted", r.wave + 1);
                        self.advance(seq, now_ms, &d.by, what);
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        seq: u64,
        d: &Decision,
        service: &str,
        build_id: &str,
        artifact_digest: &Digest,
        strategy: &Strategy,
        now_ms: u64,
    ) {
        if self.releases.contains_key(&seq) {
            return;
        }
        // A rolling release of the service is superseded here too (the global group already
        // sent its abort; this covers a region that applies both in one pull).
        let old = self.services.get(service).and_then(|g| g.active);
        if let Some(old) = old {
            if let Some(o) = self.releases.get_mut(&old) {
                let reason = format!("superseded by {}", release_id(seq));
                o.end(ReleaseState::Aborted, now_ms, &d.by, reason);
            }
        }
        let mut history = Vec::new();
        push_history(
            &mut history,
            now_ms,
            &d.by,
            format!("started: {service} build {build_id}"),
        );
        let mut r = RegionRelease {
            seq,
            service: service.to_string(),
            build_id: build_id.to_string(),
            artifact_digest: *artifact_digest,
            strategy: strategy.clone(),
            plan: Vec::new(),
            wave: 0,
            wave_started_ms: now_ms,
            state: ReleaseState::RollingOut,
            reason: String::new(),
            moved: Vec::new(),
            counts: Counts::default(),
            started_at_ms: now_ms,
            finished_at_ms: None,
            history,
            settled: false,
        };
        let planned = plan(&self.racks(), &strategy.wave_spec());
        let goals = self.services.entry(service.to_string()).or_default();
        goals.latest = Some(seq);
        match planned {
            Ok(p) => {
                r.counts.hosts_total = p.iter().map(|w| w.hosts.len() as u64).sum();
                let waves = p.len();
                r.plan = p;
                let what = format!("planned {waves} waves over {} hosts", r.counts.hosts_total);
                push_history(&mut r.history, now_ms, "region", what);
                goals.active = Some(seq);
                self.releases.insert(seq, r);
                self.move_wave(seq);
            }
            Err(PlanError::NoHosts) => {
                r.end(
                    ReleaseState::Succeeded,
                    now_ms,
                    "region",
                    "no hosts are registered in this region".into(),
                );
                goals.active = None;
                self.releases.insert(seq, r);
            }
            Err(e) => {
                r.end(
                    ReleaseState::Failed,
                    now_ms,
                    "region",
                    format!("cannot plan: {e}"),
                );
                goals.active = None;
                self.releases.insert(seq, r);
            }
        }
    }

    /// Sets the goal of the current wave's hosts: the whole rack when the waves so far cover
    /// every host it has, else those hosts one by one.
    fn move_wave(&mut self, seq: u64) {
        let Some(r) = self.releases.get(&seq) else {
            return;
        };
        let Some(wave) = r.plan.get(r.wave as usize) else {
            return;
        };
        let covered: BTreeSet<&String> = r.moved_hosts().collect();
        let goal = Goal {
            build_id: r.build_id.clone(),
            artifact_digest: Some(r.artifact_digest),
            release: r.id(),
        };
        // Racks and the wave's hosts grouped once: per rack scans of every host cost
        // racks x hosts (2,500 x 100,000) on every replica, under the state machine's lock.
        let racks = self.racks();
        let mut wave_by_rack: BTreeMap<&String, Vec<&String>> = BTreeMap::new();
        for h in &wave.hosts {
            if let Some(rack) = self.hosts.get(h) {
                wave_by_rack.entry(rack).or_default().push(h);
            }
        }
        let mut changes: Vec<Target> = Vec::new();
        for rack in &wave.racks {
            let members = racks.get(rack).map(Vec::as_slice).unwrap_or(&[]);
            if members.iter().all(|h| covered.contains(h)) {
                changes.push(Target::Rack(rack.clone()));
            } else {
                changes.extend(
                    wave_by_rack
                        .get(rack)
                        .into_iter()
                        .flatten()
                        .map(|h| Target::Host((*h).clone())),
                );
            }
        }
        let service = r.service.clone();
        let goals = self.services.entry(service).or_default();
        let mut moved = Vec::new();
        for t in changes {
            match &t {
                Target::Rack(rack) => {
                    let prev = goals.racks.insert(rack.clone(), goal.clone());
                    moved.push(Moved {
                        target: t.clone(),
                        prev,
                    });
                    // The rack's goal now covers its hosts' exceptions.
                    for h in racks.get(rack).into_iter().flatten() {
                        if let Some(prev) = goals.hosts.remove(h) {
                            moved.push(Moved {
                                target: Target::Host(h.clone()),
                                prev: Some(prev),
                            });
                        }
                    }
                }
                Target::Host(h) => {
                    let prev = goals.hosts.insert(h.clone(), goal.clone());
                    moved.push(Moved {
                        target: t.clone(),
                        prev,
                    });
                }
            }
        }
        if let Some(r) = self.releases.get_mut(&seq) {
            r.moved.extend(moved);
        }
    }

    /// Passes the current wave: the next one starts, or the release succeeds after the last.
    fn advance(&mut self, seq: u64, now_ms: u64, by: &str, what: String) {
        let Some(r) = self.releases.get_mut(&seq) else {
            return;
        };
        push_history(&mut r.history, now_ms, by, what);
        if r.wave as usize + 1 >= r.plan.len() {
            r.end(ReleaseState::Succeeded, now_ms, "region", String::new());
            self.clear_active(seq);
            return;
        }
        r.wave += 1;
        r.wave_started_ms = now_ms;
        self.move_wave(seq);
    }

    /// Restores every goal the release changed, newest change first.
    fn roll_back(&mut self, seq: u64, now_ms: u64, by: &str, reason: String) {
        let Some(r) = self.releases.get_mut(&seq) else {
            return;
        };
        let moved = std::mem::take(&mut r.moved);
        r.end(ReleaseState::RolledBack, now_ms, by, reason);
        let service = r.service.clone();
        let goals = self.services.entry(service).or_default();
        for m in moved.into_iter().rev() {
            let map = match &m.target {
                Target::Rack(k) => (&mut goals.racks, k),
                Target::Host(h) => (&mut goals.hosts, h),
            };
            match m.prev {
                Some(g) => {
                    map.0.insert(map.1.clone(), g);
                }
                None => {
                    map.0.remove(map.1);
                }
            }
        }
        self.clear_active(seq);
    }

    fn clear_active(&mut self, seq: u64) {
        let holding: Vec<String> = self
            .services
            .iter()
            .filter(|(_, g)| g.active == Some(seq))
            .map(|(name, _)| name.clone())
            .collect();
        for name in holding {
            if let Some(g) = self.services.get_mut(&name) {
                g.active = None;
            }
        }
    }

    /// The finished release records a [`RegionCommand::Collect`] with this policy removes,
    /// oldest first, at most [`crate::retention::MAX_COLLECT`].
    pub fn collectable(&self, now_ms: u64, keep_per_service: u32, keep_ms: u64) -> Vec<u64> {
        let newest: BTreeSet<u64> = self.services.values().filter_map(|g| g.latest).collect();
        let mut nth: BTreeMap<&str, u32> = BTreeMap::new();
        let mut out = Vec::new();
        for r in self.releases.values().rev() {
            let n = nth.entry(r.service.as_str()).or_default();
            *n += 1;
            let kept = !r.state.is_final()
                || newest.contains(&r.seq)
                || *n <= keep_per_service
                || r.finished_at_ms
                    .unwrap_or(r.started_at_ms)
                    .saturating_add(keep_ms)
                    > now_ms;
            if !kept {
                out.push(r.seq);
            }
        }
        out.reverse();
        out.truncate(crate::retention::MAX_COLLECT);
        out
    }

    /// Removes `hosts` (with their goal exceptions) and `relays` from the registry, except
    /// hosts an unfinished release's plan names.
    fn forget(&mut self, hosts: &[String], relays: &[String]) -> RegionResponse {
        let planned: BTreeSet<&String> = self
            .releases
            .values()
            .filter(|r| !r.state.is_final())
            .flat_map(|r| r.plan.iter().flat_map(|w| w.hosts.iter()))
            .collect();
        let gone: Vec<String> = hosts
            .iter()
            .filter(|h| self.hosts.contains_key(*h) && !planned.contains(h))
            .cloned()
            .collect();
        drop(planned);
        for h in &gone {
            self.hosts.remove(h);
            let with: Vec<String> = self
                .services
                .iter()
                .filter(|(_, g)| g.hosts.contains_key(h))
                .map(|(s, _)| s.clone())
                .collect();
            for service in with {
                if let Some(goals) = self.services.get_mut(&service) {
                    goals.hosts.remove(h);
                }
            }
        }
        let relays_gone = relays
            .iter()
            .filter(|r| self.relays.remove(*r).is_some())
            .count();
        RegionResponse::Forgotten {
            hosts: gone.len(),
            relays: relays_gone,
        }
    }

    /// Drops the oldest finished releases beyond [`MAX_FINISHED_KEPT`]; a service's newest
    /// release is always kept, as a rollback still needs its changes.
    fn trim(&mut self) {
        let finished: Vec<u64> = self
            .releases
            .values()
            .filter(|r| r.state.is_final())
            .map(|r| r.seq)
            .collect();
        if finished.len() <= MAX_FINISHED_KEPT {
            return;
        }
        let keep: BTreeSet<u64> = self.services.values().filter_map(|g| g.latest).collect();
        let excess = finished.len() - MAX_FINISHED_KEPT;
        for seq in finished
            .into_iter()
            .filter(|s| !keep.contains(s))
            .take(excess)
        {
            self.releases.remove(&seq);
        }
    }
}

#[cfg(test)]
#[path = "region_tests.rs"]
mod tests;

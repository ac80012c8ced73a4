//! The build queue of the global group: builds, leases, fencing and attempts.
//!
//! Every transition is a committed command stamped with the proposer's clock (`now_ms`), so
//! applying stays deterministic. A lease names a worker and an attempt number; the attempt is
//! the fencing token: renewals and completions that carry an older attempt, another worker,
//! or arrive after an expiry ended the lease are refused, so a worker that lost its lease can never
//! decide the build's result.
//!
//! No replica compares clocks to decide that a lease ran out: stamps come from whichever node
//! led when each command was proposed, and their wall clocks need not agree. A lease holds
//! until a committed [`BuildCommand::ExpireLeases`] names it, at the exact version
//! (attempt, renewals) its proposer watched go unrenewed for a whole lease on its own
//! monotonic clock (the coordinator's `lease_watch`). A renewal committed meanwhile changes
//! the version, and the expiry then leaves the lease alone. `expires_at_ms` is what the
//! stamping leader's clock expected, kept for people to read.

use std::collections::{BTreeMap, BTreeSet};

use deploy_types::Digest;
use serde::{Deserialize, Serialize};

/// Transitions remembered per build; older ones are dropped.
pub const MAX_HISTORY: usize = 32;
/// Longest error text kept.
pub const MAX_ERROR_BYTES: usize = 4096;
/// Builds waiting for a worker, at most, unless the config says otherwise: a submission past
/// it is refused (the queue is replicated state; a flood of distinct commits must not grow
/// it without end).
pub const MAX_QUEUED: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BuildState {
    Queued,
    Running,
    Replicating,
    Succeeded,
    Failed,
    Cancelled,
}

impl BuildState {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Queued => "QUEUED",
            BuildState::Running => "RUNNING",
            BuildState::Replicating => "REPLICATING",
            BuildState::Succeeded => "SUCCEEDED",
            BuildState::Failed => "FAILED",
            BuildState::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            BuildState::Queued,
            BuildState::Running,
            BuildState::Replicating,
            BuildState::Succeeded,
            BuildState::Failed,
            BuildState::Cancelled,
        ]
        .into_iter()
        .find(|b| b.as_str().eq_ignore_ascii_case(s))
    }

    /// No transition leaves a final state.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            BuildState::Succeeded | BuildState::Failed | BuildState::Cancelled
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub worker: String,
    pub attempt: u32,
    /// The stamping leader's expectation (for display): expiry is decided by
    /// [`BuildCommand::ExpireLeases`], never by comparing this with another clock.
    pub expires_at_ms: u64,
    /// Renewals committed for this attempt: with the attempt, the lease's version.
    pub renewals: u32,
}

/// One version of one build's lease: what an expiry names, so that a renewal committed
/// after the proposer looked makes the expiry a no-op for that lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeaseVersion {
    pub seq: u64,
    pub attempt: u32,
    pub renewals: u32,
}

impl Lease {
    pub fn version(&self, seq: u64) -> LeaseVersion {
        LeaseVersion {
            seq,
            attempt: self.attempt,
            renewals: self.renewals,
        }
    }
}

/// Leases one expiry names, at most: running builds are bounded by the workers, and an
/// entry stays small.
pub const MAX_EXPIRE: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub state: BuildState,
    pub at_ms: u64,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    pub seq: u64,
    pub service: String,
    pub repo: String,
    pub commit: String,
    pub state: BuildState,
    pub attempts: u32,
    pub lease: Option<Lease>,
    /// The worker of the latest attempt, and its region (where the artifact first lands).
    pub worker: String,
    pub worker_region: String,
    pub artifact_digest: Option<Digest>,
    pub artifact_size: u64,
    pub error: Option<String>,
    /// Regions whose store holds the whole artifact.
    pub regions_done: BTreeSet<String>,
    /// Bytes copied into each region's store by replication (the first region: the size).
    #[serde(default)]
    pub bytes_copied: BTreeMap<String, u64>,
    /// The region whose replication failed the build, if one did.
    #[serde(default)]
    pub replication_failed: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub history: Vec<Transition>,
}

impl Build {
    pub fn id(&self) -> String {
        build_id(self.seq)
    }

    fn to(&mut self, state: BuildState, now_ms: u64, note: impl Into<String>) {
        self.state = state;
        self.updated_at_ms = now_ms;
        if state.is_final() {
            self.finished_at_ms = Some(now_ms);
            self.lease = None;
        }
        self.history.push(Transition {
            state,
            at_ms: now_ms,
            note: note.into(),
        });
        if self.history.len() > MAX_HISTORY {
            let cut = self.history.len() - MAX_HISTORY;
            self.history.drain(..cut);
        }
    }
}

/// `b-<seq>`: the public id of a build.
pub fn build_id(seq: u64) -> String {
    format!("b-{seq}")
}

/// The sequence number inside a build id, if it is one.
pub fn parse_build_id(id: &str) -> Option<u64> {
    let n = id.strip_prefix("b-")?;
    if n.is_empty() || n.len() > 20 || !n.bytes().all(|b| b.is_ascii_digit()) || n.starts_with('0')
    {
        return None;
    }
    n.parse().ok()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub region: String,
    pub registered_at_ms: u64,
}

/// How a worker's attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The artifact is stored in the worker's region.
    Built {
        artifact_digest: Digest,
        artifact_size: u64,
    },
    /// The build failed; `retry` re-queues it while attempts remain (an infrastructure error),
    /// otherwise it is final (the build itself failed, the commit does not exist, ...).
    Failed { error: String, retry: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuildCommand {
    Submit {
        service: String,
        repo: String,
        commit: String,
        now_ms: u64,
        /// Who submitted it: the caller's token (or, on an insecure cluster, nobody known).
        #[serde(default)]
        by: Option<String>,
        /// The queue's bound (`builds.max_queued`), stamped by the proposer so every replica
        /// applies the same one; [`MAX_QUEUED`] when absent.
        #[serde(default)]
        max_queued: Option<u32>,
    },
    Cancel {
        id: String,
        now_ms: u64,
        #[serde(default)]
        by: Option<String>,
    },
    RegisterWorker {
        worker: String,
        region: String,
        now_ms: u64,
    },
    /// Leases the oldest queued build to `worker`, if any.
    Acquire {
        worker: String,
        now_ms: u64,
        lease_ms: u64,
    },
    Renew {
        id: String,
        worker: String,
        attempt: u32,
        now_ms: u64,
        lease_ms: u64,
    },
    Complete {
        id: String,
        worker: String,
        attempt: u32,
        now_ms: u64,
        outcome: Outcome,
        /// Every region of the cluster: a build is SUCCEEDED once all of them hold it.
        regions: Vec<String>,
        max_attempts: u32,
    },
    /// Re-queues the builds whose leases are still at exactly the versions named (their
    /// proposer saw each go unrenewed for a whole lease); fails those out of attempts.
    /// `now_ms` only stamps the history.
    ExpireLeases {
        now_ms: u64,
        max_attempts: u32,
        leases: Vec<LeaseVersion>,
    },
    /// `region`'s store now holds the whole artifact of build `id`.
    Replicated {
        id: String,
        region: String,
        now_ms: u64,
        regions: Vec<String>,
        bytes_copied: u64,
    },
    /// `region` stayed unreachable past the replication deadline: the build fails.
    ReplicationFailed {
        id: String,
        region: String,
        error: String,
        now_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuildResponse {
    Submitted {
        id: String,
        created: bool,
    },
    Assigned {
        id: String,
        attempt: u32,
        expires_at_ms: u64,
    },
    NoWork,
    Leased {
        expires_at_ms: u64,
    },
    State {
        id: String,
        state: BuildState,
    },
    Expired {
        requeued: Vec<String>,
        failed: Vec<String>,
    },
    Registered,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum BuildError {
    #[error("build {0} does not exist")]
    NotFound(String),
    #[error("build {id} is {state}, not {expected}")]
    WrongState {
        id: String,
        state: String,
        expected: String,
    },
    #[error("stale lease for build {id}: {why}")]
    Stale { id: String, why: String },
    #[error("worker {0:?} is not registered")]
    UnknownWorker(String),
    /// `why` names the field.
    #[error("{why}")]
    Invalid { field: String, why: String },
    #[error(
        "the build queue is full ({max} builds waiting for a worker); submit again once it drains"
    )]
    QueueFull { max: usize },
}

/// The build queue and the worker registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Builds {
    pub by_seq: imbl::OrdMap<u64, Build>,
    pub next_seq: u64,
    /// Queued builds, oldest first.
    pub queued: imbl::OrdSet<u64>,
    /// Running builds, to find expired leases without a full scan.
    pub running: imbl::OrdSet<u64>,
    /// The latest build of each (service, repo, commit), for idempotent submission.
    pub by_key: imbl::OrdMap<String, u64>,
    pub workers: imbl::OrdMap<String, WorkerInfo>,
}

fn key(service: &str, repo: &str, commit: &str) -> String {
    format!("{service}\n{repo}\n{commit}")
}

fn clip(s: &str) -> String {
    crate::clip_to(s, MAX_ERROR_BYTES)
}

impl Builds {
    pub fn get(&self, id: &str) -> Option<&Build> {
        parse_build_id(id).and_then(|s| self.by_seq.get(&s))
    }

    /// Removes a finished build (and its idempotency key, if the key still names it); a
    /// build that has not finished is never removed.
    pub(crate) fn remove_finished(&mut self, seq: u64) -> Option<Build> {
        if !self.by_seq.get(&seq)?.state.is_final() {
            return None;
        }
        let b = self.by_seq.remove(&seq)?;
        let k = key(&b.service, &b.repo, &b.commit);
        if self.by_key.get(&k) == Some(&seq) {
            self.by_key.remove(&k);
        }
        Some(b)
    }

    fn get_mut(&mut self, id: &str) -> Result<&mut Build, BuildError> {
        parse_build_id(id)
            .and_then(|s| self.by_seq.get_mut(&s))
            .ok_or_else(|| BuildError::NotFound(id.chars().take(40).collect()))
    }

    /// The running build whose lease `worker` holds, if any. A worker runs one build at a
    /// time and only polls between builds, so a poll from a worker that still holds a lease
    /// means the reply that handed it out was lost (a leader died after committing it).
    pub fn held_by(&self, worker: &str) -> Option<u64> {
        self.running.iter().copied().find(|seq| {
            self.by_seq
                .get(seq)
                .is_some_and(|b| b.lease.as_ref().is_some_and(|l| l.worker == worker))
        })
    }

    /// The version of every running build's lease.
    pub fn lease_versions(&self) -> impl Iterator<Item = LeaseVersion> + '_ {
        self.running.iter().filter_map(|seq| {
            self.by_seq
                .get(seq)
                .and_then(|b| b.lease.as_ref())
                .map(|l| l.version(*seq))
        })
    }

    /// A build that must be REPLICATING for the command at hand.
    fn replicating_mut(&mut self, id: &str) -> Result<&mut Build, BuildError> {
        let b = self.get_mut(id)?;
        if b.state != BuildState::Replicating {
            return Err(BuildError::WrongState {
                id: id.to_string(),
                state: b.state.as_str().into(),
                expected: "REPLICATING".into(),
            });
        }
        Ok(b)
    }

    /// Checks a lease claim: the build is running under exactly this worker and attempt (an
    /// expired lease is gone, or has a newer attempt). No clock is compared.
    fn check_lease(&self, id: &str, worker: &str, attempt: u32) -> Result<u64, BuildError> {
        let b = self
            .get(id)
            .ok_or_else(|| BuildError::NotFound(id.chars().take(40).collect()))?;
        let stale = |why: String| BuildError::Stale {
            id: id.to_string(),
            why,
        };
        if b.state != BuildState::Running {
            return Err(stale(format!("the build is {}", b.state.as_str())));
        }
        let lease = b
            .lease
            .as_ref()
            .ok_or_else(|| stale("no lease is held".into()))?;
        if lease.worker != worker || lease.attempt != attempt {
            return Err(stale(format!(
                "attempt {attempt} of {worker} is not the current lease (attempt {} of {})",
                lease.attempt, lease.worker
            )));
        }
        Ok(b.seq)
    }

    pub fn apply(&mut self, cmd: &BuildCommand) -> Result<BuildResponse, BuildError> {
        match cmd {
            BuildCommand::Submit {
                service,
                repo,
                commit,
                now_ms,
                by,
                max_queued,
            } => {
                crate::check_build_input(service, repo, commit)?;
                let k = key(service, repo, commit);
                if let Some(b) = self.by_key.get(&k).and_then(|s| self.by_seq.get(s)) {
                    if !matches!(b.state, BuildState::Failed | BuildState::Cancelled) {
                        return Ok(BuildResponse::Submitted {
                            id: b.id(),
                            created: false,
                        });
                    }
                }
                let max = max_queued.map_or(MAX_QUEUED, |m| m as usize);
                if self.queued.len() >= max {
                    return Err(BuildError::QueueFull { max });
                }
                self.next_seq += 1;
                let seq = self.next_seq;
                let mut b = Build {
                    seq,
                    service: service.clone(),
                    repo: repo.clone(),
                    commit: commit.clone(),
                    state: BuildState::Queued,
                    attempts: 0,
                    lease: None,
                    worker: String::new(),
                    worker_region: String::new(),
                    artifact_digest: None,
                    artifact_size: 0,
                    error: None,
                    regions_done: BTreeSet::new(),
                    bytes_copied: BTreeMap::new(),
                    replication_failed: None,
                    created_at_ms: *now_ms,
                    updated_at_ms: *now_ms,
                    started_at_ms: None,
                    finished_at_ms: None,
                    history: Vec::new(),
                };
                let note = match by {
                    Some(who) => format!("submitted by {who}"),
                    None => "submitted".to_string(),
                };
                b.to(BuildState::Queued, *now_ms, note);
                self.by_seq.insert(seq, b);
                self.queued.insert(seq);
                self.by_key.insert(k, seq);
                Ok(BuildResponse::Submitted {
                    id: build_id(seq),
                    created: true,
                })
            }
            BuildCommand::Cancel { id, now_ms, by } => {
                let b = self.get_mut(id)?;
                if b.state.is_final() || b.state == BuildState::Replicating {
                    return Err(BuildError::WrongState {
                        id: id.clone(),
                        state: b.state.as_str().into(),
                        expected: "QUEUED or RUNNING".into(),
                    });
                }
                let seq = b.seq;
                let note = match by {
                    Some(who) => format!("cancelled by {who}"),
                    None => "cancelled".to_string(),
                };
                b.to(BuildState::Cancelled, *now_ms, note);
                self.queued.remove(&seq);
                self.running.remove(&seq);
                Ok(BuildResponse::State {
                    id: id.clone(),
                    state: BuildState::Cancelled,
                })
            }
            BuildCommand::RegisterWorker {
                worker,
                region,
                now_ms,
            } => {
                if worker.is_empty() || worker.len() > 63 {
                    return Err(BuildError::Invalid {
                        field: "worker".into(),
                        why: "must be 1-63 bytes".into(),
                    });
                }
                self.workers.insert(
                    worker.clone(),
                    WorkerInfo {
                        region: region.clone(),
                        registered_at_ms: *now_ms,
                    },
                );
                Ok(BuildResponse::Registered)
            }
            BuildCommand::Acquire {
                worker,
                now_ms,
                lease_ms,
            } => {
                let region = self
                    .workers
                    .get(worker)
                    .map(|w| w.region.clone())
                    .ok_or_else(|| BuildError::UnknownWorker(worker.clone()))?;
                // Hand a lost assignment back to its holder instead of leaving the build to
                // wait out its lease: same attempt, fresh expiry.
                if let Some(seq) = self.held_by(worker) {
                    if let Some(b) = self.by_seq.get_mut(&seq) {
                        let expires_at_ms = now_ms.saturating_add(*lease_ms);
                        let attempt = b.attempts;
                        if let Some(l) = b.lease.as_mut() {
                            l.expires_at_ms = expires_at_ms;
                            l.renewals = l.renewals.saturating_add(1);
                        }
                        let note = format!("attempt {attempt} handed to {worker} again");
                        b.to(BuildState::Running, *now_ms, note);
                        return Ok(BuildResponse::Assigned {
                            id: build_id(seq),
                            attempt,
                            expires_at_ms,
                        });
                    }
                }
                let Some(seq) = self.queued.remove_min() else {
                    return Ok(BuildResponse::NoWork);
                };
                let Some(b) = self.by_seq.get_mut(&seq) else {
                    return Ok(BuildResponse::NoWork);
                };
                b.attempts += 1;
                let expires_at_ms = now_ms.saturating_add(*lease_ms);
                b.lease = Some(Lease {
                    worker: worker.clone(),
                    attempt: b.attempts,
                    expires_at_ms,
                    renewals: 0,
                });
                b.worker = worker.clone();
                b.worker_region = region;
                b.started_at_ms.get_or_insert(*now_ms);
                let note = format!("attempt {} leased to {worker}", b.attempts);
                b.to(BuildState::Running, *now_ms, note);
                self.running.insert(seq);
                Ok(BuildResponse::Assigned {
                    id: build_id(seq),
                    attempt: b.attempts,
                    expires_at_ms,
                })
            }
            BuildCommand::Renew {
                id,
                worker,
                attempt,
                now_ms,
                lease_ms,
            } => {
                let seq = self.check_lease(id, worker, *attempt)?;
                let b = self
                    .by_seq
                    .get_mut(&seq)
                    .ok_or_else(|| BuildError::NotFound(id.clone()))?;
                let expires_at_ms = now_ms.saturating_add(*lease_ms);
                if let Some(l) = b.lease.as_mut() {
                    l.expires_at_ms = expires_at_ms;
                    l.renewals = l.renewals.saturating_add(1);
                }
                b.updated_at_ms = *now_ms;
                Ok(BuildResponse::Leased { expires_at_ms })
            }
            BuildCommand::Complete {
                id,
                worker,
                attempt,
                now_ms,
                outcome,
                regions,
                max_attempts,
            } => {
                let seq = self.check_lease(id, worker, *attempt)?;
                let b = self
                    .by_seq
                    .get_mut(&seq)
                    .ok_or_else(|| BuildError::NotFound(id.clone()))?;
                self.running.remove(&seq);
                b.lease = None;
                let state = match outcome {
                    Outcome::Built {
                        artifact_digest,
                        artifact_size,
                    } => {
                        b.artifact_digest = Some(*artifact_digest);
                        b.artifact_size = *artifact_size;
                        b.regions_done.insert(b.worker_region.clone());
                        b.bytes_copied
                            .insert(b.worker_region.clone(), *artifact_size);
                        let state = if regions.iter().all(|r| b.regions_done.contains(r)) {
                            BuildState::Succeeded
                        } else {
                            BuildState::Replicating
                        };
                        b.to(
                            state,
                            *now_ms,
                            format!("attempt {attempt} built {artifact_digest}"),
                        );
                        state
                    }
                    Outcome::Failed { error, retry } => {
                        b.error = Some(clip(error));
                        if *retry && b.attempts < *max_attempts {
                            b.to(
                                BuildState::Queued,
                                *now_ms,
                                format!("attempt {attempt} failed, retrying: {}", clip(error)),
                            );
                            self.queued.insert(seq);
                            BuildState::Queued
                        } else {
                            b.to(
                                BuildState::Failed,
                                *now_ms,
                                format!("attempt {attempt} failed"),
                            );
                            BuildState::Failed
                        }
                    }
                };
                Ok(BuildResponse::State {
                    id: id.clone(),
                    state,
                })
            }
            BuildCommand::ExpireLeases {
                now_ms,
                max_attempts,
                leases,
            } => {
                let mut requeued = Vec::new();
                let mut failed = Vec::new();
                // Only a lease still at the version its proposer watched go unrenewed.
                let expired: BTreeSet<u64> = leases
                    .iter()
                    .filter(|v| {
                        self.running.contains(&v.seq)
                            && self
                                .by_seq
                                .get(&v.seq)
                                .and_then(|b| b.lease.as_ref())
                                .is_some_and(|l| l.version(v.seq) == **v)
                    })
                    .map(|v| v.seq)
                    .collect();
                for seq in expired {
                    self.running.remove(&seq);
                    let Some(b) = self.by_seq.get_mut(&seq) else {
                        continue;
                    };
                    let who = b
                        .lease
                        .take()
                        .map(|l| format!("attempt {} of {}", l.attempt, l.worker))
                        .unwrap_or_default();
                    if b.attempts >= *max_attempts {
                        b.error = Some(format!(
                            "gave up after {} attempts: the lease of {who} expired (worker lost?)",
                            b.attempts
                        ));
                        b.to(
                            BuildState::Failed,
                            *now_ms,
                            format!("lease of {who} expired; no attempts left"),
                        );
                        failed.push(b.id());
                    } else {
                        b.to(
                            BuildState::Queued,
                            *now_ms,
                            format!("lease of {who} expired; re-queued"),
                        );
                        self.queued.insert(seq);
                        requeued.push(b.id());
                    }
                }
                Ok(BuildResponse::Expired { requeued, failed })
            }
            BuildCommand::ReplicationFailed {
                id,
                region,
                error,
                now_ms,
            } => {
                let b = self.replicating_mut(id)?;
                b.error = Some(clip(&format!(
                    "replication to region {region} failed: {error}"
                )));
                b.replication_failed = Some(region.clone());
                b.to(
                    BuildState::Failed,
                    *now_ms,
                    format!("region {region} unreachable past the deadline"),
                );
                Ok(BuildResponse::State {
                    id: id.clone(),
                    state: BuildState::Failed,
                })
            }
            BuildCommand::Replicated {
                id,
                region,
                now_ms,
                regions,
                bytes_copied,
            } => {
                let b = self.replicating_mut(id)?;
                b.regions_done.insert(region.clone());
                *b.bytes_copied.entry(region.clone()).or_default() += bytes_copied;
                b.updated_at_ms = *now_ms;
                if regions.iter().all(|r| b.regions_done.contains(r)) {
                    b.to(
                        BuildState::Succeeded,
                        *now_ms,
                        format!("stored in every region (last: {region})"),
                    );
                }
                Ok(BuildResponse::State {
                    id: id.clone(),
                    state: b.state,
                })
            }
        }
    }

    /// Builds, newest first, optionally filtered; `before` is a sequence number to page from.
    pub fn list<'a>(
        &'a self,
        service: Option<&'a str>,
        state: Option<BuildState>,
        before: Option<u64>,
    ) -> impl Iterator<Item = &'a Build> + 'a {
        let upper = before.unwrap_or(u64::MAX);
        self.by_seq
            .range(..upper)
            .rev()
            .map(|(_, b)| b)
            .filter(move |b| {
                service.is_none_or(|s| b.service == s) && state.is_none_or(|st| b.state == st)
            })
    }
}

#[cfg(test)]
#[path = "builds_tests.rs"]
mod tests;

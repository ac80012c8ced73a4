//! The release state machine: creating a release, acting on it, and what a region's report
//! moves it to. Every function checks everything before it changes anything, so a refusal
//! changes nothing.

use super::decisions::DecisionKind;
use super::{
    check_actor, check_request_id, clip, parse_release_id, push_history, release_id, Action,
    RegionProgress, Release, ReleaseError, ReleaseResponse, ReleaseState, Releases, Strategy,
};
use crate::builds::{BuildState, Builds};

/// The fields of a [`super::ReleaseCommand::Create`].
pub(super) struct Create<'a> {
    pub service: &'a str,
    pub build_id: &'a str,
    pub regions: &'a [String],
    pub strategy: &'a Strategy,
    pub by: &'a str,
    pub now_ms: u64,
    pub known_regions: &'a [String],
    pub request_id: &'a Option<String>,
}

/// The fields of a [`super::ReleaseCommand::Act`].
pub(super) struct Act<'a> {
    pub id: &'a str,
    pub action: Action,
    pub by: &'a str,
    pub reason: &'a str,
    pub now_ms: u64,
    pub request_id: &'a Option<String>,
}

impl Releases {
    pub(super) fn create(
        &mut self,
        builds: &Builds,
        c: Create<'_>,
    ) -> Result<ReleaseResponse, ReleaseError> {
        let Create {
            service,
            build_id,
            regions,
            strategy,
            by,
            now_ms,
            known_regions,
            request_id,
        } = c;
        check_request_id(request_id)?;
        if let Some(seq) = request_id.as_ref().and_then(|r| self.requests.get(r)) {
            // A repeat of a call that already made its release.
            return Ok(ReleaseResponse::Created {
                id: release_id(seq),
                superseded: None,
            });
        }
        check_actor(by)?;
        strategy.check()?;
        let build = builds.get(build_id).ok_or_else(|| {
            ReleaseError::Refused(format!(
                "build {} does not exist",
                build_id.chars().take(40).collect::<String>()
            ))
        })?;
        if build.state != BuildState::Succeeded {
            return Err(ReleaseError::Refused(format!(
                "build {build_id} is {}, not SUCCEEDED: only a build stored in every region can be released",
                build.state.as_str()
            )));
        }
        if build.service != *service {
            return Err(ReleaseError::Invalid {
                field: "service".into(),
                why: format!(
                    "build {build_id} is of service {:?}, not {service:?}",
                    build.service
                ),
            });
        }
        if regions.is_empty() {
            return Err(ReleaseError::Invalid {
                field: "regions".into(),
                why: "name at least one region".into(),
            });
        }
        for (i, g) in regions.iter().enumerate() {
            if !known_regions.contains(g) {
                return Err(ReleaseError::Invalid {
                    field: "regions".into(),
                    why: format!(
                        "{:?} is not a region of this cluster (regions: {})",
                        g.chars().take(64).collect::<String>(),
                        known_regions.join(", ")
                    ),
                });
            }
            if regions[..i].contains(g) {
                return Err(ReleaseError::Invalid {
                    field: "regions".into(),
                    why: format!("{g} is named twice"),
                });
            }
        }
        let Some(digest) = build.artifact_digest else {
            return Err(ReleaseError::Refused(format!(
                "build {build_id} has no artifact"
            )));
        };
        self.next_seq += 1;
        let seq = self.next_seq;
        let id = release_id(seq);
        // A rolling release of the same service is superseded: it ends ABORTED and
        // its regions stop before this one starts there.
        let superseded = self.active.remove(service);
        if let Some(old) = superseded {
            let reason = format!("superseded by {id}");
            self.tell_active(old, Action::Abort, by, &reason, now_ms);
            if let Some(o) = self.by_seq.get_mut(&old) {
                o.superseded_by = Some(id.clone());
                o.end(ReleaseState::Aborted, now_ms, reason.clone());
                push_history(&mut o.history, now_ms, by, reason);
            }
        }
        let mut history = Vec::new();
        push_history(
            &mut history,
            now_ms,
            by,
            format!(
                "created: {service} build {build_id} to {}",
                regions.join(", ")
            ),
        );
        self.by_seq.insert(
            seq,
            Release {
                seq,
                service: service.to_string(),
                build_id: build_id.to_string(),
                artifact_digest: digest,
                regions: regions.to_vec(),
                strategy: strategy.clone(),
                state: ReleaseState::RollingOut,
                reason: String::new(),
                created_by: by.to_string(),
                created_at_ms: now_ms,
                updated_at_ms: now_ms,
                finished_at_ms: None,
                superseded_by: None,
                progress: Default::default(),
                history,
            },
        );
        self.active.insert(service.to_string(), seq);
        self.latest.insert(service.to_string(), seq);
        self.start_due(seq, now_ms);
        self.remember(request_id, seq, now_ms);
        Ok(ReleaseResponse::Created {
            id,
            superseded: superseded.map(release_id),
        })
    }

    pub(super) fn act(&mut self, a: Act<'_>) -> Result<ReleaseResponse, ReleaseError> {
        let Act {
            id,
            action,
            by,
            reason,
            now_ms,
            request_id,
        } = a;
        check_request_id(request_id)?;
        check_actor(by)?;
        let latest = self.latest.clone();
        let done = request_id.as_ref().and_then(|r| self.requests.get(r));
        let r = self.release_mut(id)?;
        let seq = r.seq;
        if let Some(done) = done {
            if done != seq {
                return Err(ReleaseError::Invalid {
                    field: "request_id".into(),
                    why: format!("it was used for release {}", release_id(done)),
                });
            }
            // A repeat of an action already taken: what it did stands.
            return Ok(ReleaseResponse::State {
                id: id.to_string(),
                state: r.state,
            });
        }
        let wrong = |r: &Release, why: &str| ReleaseError::WrongState {
            id: r.id(),
            state: r.state.as_str().into(),
            why: why.into(),
        };
        let allowed = match action {
            Action::Pause => r.state == ReleaseState::RollingOut,
            Action::Resume => r.state == ReleaseState::Paused,
            Action::Abort | Action::Promote => !r.state.is_final(),
            Action::Rollback => {
                !r.state.is_final()
                    || (r.state == ReleaseState::Succeeded && latest.get(&r.service) == Some(&seq))
            }
        };
        if !allowed {
            let why = match action {
                Action::Pause => "only a release ROLLING_OUT can be paused",
                Action::Resume => "only a PAUSED release can be resumed",
                Action::Rollback => "only an unfinished release, or the newest release of its service once SUCCEEDED, can be rolled back",
                _ => "it has already ended",
            };
            return Err(wrong(r, why));
        }
        let what = if reason.is_empty() {
            action.as_str().to_string()
        } else {
            format!("{}: {}", action.as_str(), clip(reason))
        };
        push_history(&mut r.history, now_ms, by, what);
        r.updated_at_ms = now_ms;
        let service = r.service.clone();
        match action {
            Action::Pause => r.state = ReleaseState::Paused,
            Action::Resume => r.state = ReleaseState::RollingOut,
            Action::Promote => {}
            Action::Abort => r.end(ReleaseState::Aborted, now_ms, format!("aborted by {by}")),
            Action::Rollback => r.end(
                ReleaseState::RolledBack,
                now_ms,
                format!("rolled back by {by}"),
            ),
        }
        let state = r.state;
        self.tell_active(seq, action, by, reason, now_ms);
        if state.is_final() && self.active.get(&service) == Some(&seq) {
            self.active.remove(&service);
        }
        if action == Action::Resume {
            self.start_due(seq, now_ms);
        }
        self.remember(request_id, seq, now_ms);
        Ok(ReleaseResponse::State {
            id: id.to_string(),
            state,
        })
    }

    pub(super) fn report(
        &mut self,
        id: &str,
        region: &str,
        progress: &RegionProgress,
        now_ms: u64,
    ) -> Result<ReleaseResponse, ReleaseError> {
        let r = self.release_mut(id)?;
        let seq = r.seq;
        let Some(known) = r.progress.get_mut(region) else {
            return Err(ReleaseError::Refused(format!(
                "release {id} was not started in region {}",
                region.chars().take(64).collect::<String>()
            )));
        };
        let new_state = progress.state();
        // What a region reported final stays so.
        if known.state().is_final() {
            return Ok(ReleaseResponse::State {
                id: id.to_string(),
                state: r.state,
            });
        }
        let entered = known.state() != new_state;
        *known = RegionProgress {
            reason: clip(&progress.reason),
            updated_at_ms: now_ms,
            ..progress.clone()
        };
        if entered {
            let mut what = format!("region {region} {}", new_state.as_str());
            if !progress.reason.is_empty() {
                what = format!("{what}: {}", clip(&progress.reason));
            }
            push_history(&mut r.history, now_ms, region, what);
        }
        r.updated_at_ms = now_ms;
        if r.state.is_final() {
            return Ok(ReleaseResponse::State {
                id: id.to_string(),
                state: r.state,
            });
        }
        let failed = matches!(new_state, ReleaseState::Failed | ReleaseState::RolledBack);
        if failed && r.strategy.halt_all_on_failure {
            let verdict = if new_state == ReleaseState::RolledBack {
                ReleaseState::RolledBack
            } else {
                ReleaseState::Failed
            };
            let reason = format!("region {region}: {}", progress.reason);
            r.end(verdict, now_ms, reason.clone());
            let action = if r.strategy.auto_rollback {
                Action::Rollback
            } else {
                Action::Abort
            };
            let service = r.service.clone();
            // Only the other regions still rolling out are stopped.
            let others: Vec<String> = r
                .active_regions()
                .into_iter()
                .filter(|g| g != region)
                .collect();
            for g in others {
                self.decide(id, &g, DecisionKind::Act(action), "global", &reason, now_ms);
            }
            if self.active.get(&service) == Some(&seq) {
                self.active.remove(&service);
            }
        } else {
            self.start_due(seq, now_ms);
            self.settle(seq, now_ms);
        }
        let state = self
            .by_seq
            .get(&seq)
            .map(|r| r.state)
            .unwrap_or(ReleaseState::Pending);
        Ok(ReleaseResponse::State {
            id: id.to_string(),
            state,
        })
    }

    fn release_mut(&mut self, id: &str) -> Result<&mut Release, ReleaseError> {
        parse_release_id(id)
            .and_then(|s| self.by_seq.get_mut(&s))
            .ok_or_else(|| ReleaseError::NotFound(id.chars().take(40).collect()))
    }

    /// Starts the next regions in order while fewer than `regions_at_once` are rolling out.
    fn start_due(&mut self, seq: u64, now_ms: u64) {
        let Some(r) = self.by_seq.get(&seq) else {
            return;
        };
        if r.state != ReleaseState::RollingOut {
            return;
        }
        let running = r.active_regions().len();
        let room = (r.strategy.regions_at_once as usize).saturating_sub(running);
        let next: Vec<String> = r
            .regions
            .iter()
            .filter(|g| !r.progress.contains_key(*g))
            .take(room)
            .cloned()
            .collect();
        let kind = DecisionKind::Start {
            service: r.service.clone(),
            build_id: r.build_id.clone(),
            artifact_digest: r.artifact_digest,
            strategy: r.strategy.clone(),
        };
        let id = r.id();
        for region in next {
            self.decide(&id, &region, kind.clone(), "global", "", now_ms);
            if let Some(r) = self.by_seq.get_mut(&seq) {
                r.progress.insert(
                    region.clone(),
                    RegionProgress {
                        updated_at_ms: now_ms,
                        ..Default::default()
                    },
                );
                push_history(
                    &mut r.history,
                    now_ms,
                    "global",
                    format!("started region {region}"),
                );
            }
        }
    }

    /// Ends the release when every region has finished.
    fn settle(&mut self, seq: u64, now_ms: u64) {
        let Some(r) = self.by_seq.get_mut(&seq) else {
            return;
        };
        if r.state.is_final() || r.progress.len() < r.regions.len() {
            return;
        }
        if r.progress.values().any(|p| !p.state().is_final()) {
            return;
        }
        let failed: Vec<String> = r
            .progress
            .iter()
            .filter(|(_, p)| p.state() != ReleaseState::Succeeded)
            .map(|(g, p)| format!("{g}: {}", p.state().as_str()))
            .collect();
        if failed.is_empty() {
            r.end(ReleaseState::Succeeded, now_ms, String::new());
        } else {
            r.end(ReleaseState::Failed, now_ms, failed.join(", "));
        }
        let what = format!("release {}", r.state.as_str());
        push_history(&mut r.history, now_ms, "global", what);
        let service = r.service.clone();
        if self.active.get(&service) == Some(&seq) {
            self.active.remove(&service);
        }
    }
}

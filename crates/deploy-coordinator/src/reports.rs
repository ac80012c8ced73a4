//! Host reports: soft state held by a regional leader, never written to the log one by one.
//!
//! Relays (or simulators) send each rack's reports to the leader, which keeps the latest per
//! host here. The rollout driver judges waves from them and commits only the outcome and a
//! periodic summary. A new leader starts empty and rebuilds this from fresh reports, so a
//! wave's minimum healthy time restarts after a failover: slower, never wrong.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deploy_proto::v1::{HostReport, ServiceState};
use deploy_state::region::RegionRelease;
use deploy_state::releases::Counts;

/// A report older than this no longer counts: the host is presumed down.
pub const REPORT_TTL: Duration = Duration::from_secs(10);
/// Reports one rack may carry.
pub const MAX_HOSTS_PER_REPORT: usize = 1024;
/// Services one host may report.
pub const MAX_SERVICES_PER_HOST: usize = 64;

pub const HEALTHY: ServiceState = ServiceState::Healthy;

fn is_failure(state: ServiceState) -> bool {
    matches!(state, ServiceState::Failed | ServiceState::Unhealthy)
}

#[derive(Debug, Clone)]
pub struct ServiceSeen {
    pub build_id: String,
    pub state: ServiceState,
    pub detail: String,
    /// Since when this build has been reported healthy without a break.
    pub healthy_since: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct HostSeen {
    pub rack: String,
    pub at: Instant,
    pub services: BTreeMap<String, ServiceSeen>,
}

/// One region's reports, for the leadership term they were received in.
#[derive(Debug)]
struct Book {
    term: u64,
    /// When this node started listening in this term.
    since: Instant,
    hosts: HashMap<String, HostSeen>,
    /// When each relay last reported.
    relays: HashMap<String, Instant>,
}

impl Book {
    fn new(term: u64) -> Self {
        Self {
            term,
            since: Instant::now(),
            hosts: HashMap::new(),
            relays: HashMap::new(),
        }
    }
}

/// Every region's reports on this node.
#[derive(Debug, Default)]
pub struct Reports {
    regions: Mutex<HashMap<String, Book>>,
}

impl Reports {
    fn with_book<R>(&self, region: &str, term: u64, f: impl FnOnce(&mut Book) -> R) -> R {
        let mut g = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        let book = g
            .entry(region.to_string())
            .or_insert_with(|| Book::new(term));
        // Reports from an earlier term may predate what the log decided since: start over.
        if book.term != term {
            *book = Book::new(term);
        }
        f(book)
    }

    fn with<R>(
        &self,
        region: &str,
        term: u64,
        f: impl FnOnce(&mut HashMap<String, HostSeen>) -> R,
    ) -> R {
        self.with_book(region, term, |b| f(&mut b.hosts))
    }

    /// Notes that `relay` reported at `now`.
    pub fn record_relay(&self, region: &str, term: u64, relay: &str, now: Instant) {
        self.with_book(region, term, |b| {
            b.relays.insert(relay.to_string(), now);
        })
    }

    /// Of the registered `hosts` and `relays`, those this node has heard nothing from for
    /// `after`; none until it has listened that long in this term (a new leader has not
    /// heard anyone yet).
    pub fn quiet<'a>(
        &self,
        region: &str,
        term: u64,
        hosts: impl Iterator<Item = &'a String>,
        relays: impl Iterator<Item = &'a String>,
        after: Duration,
        now: Instant,
    ) -> (Vec<String>, Vec<String>) {
        self.with_book(region, term, |b| {
            if now.saturating_duration_since(b.since) < after {
                return (Vec::new(), Vec::new());
            }
            let silent = |at: Option<Instant>| {
                at.is_none_or(|at| now.saturating_duration_since(at) >= after)
            };
            let hosts = hosts
                .filter(|h| silent(b.hosts.get(*h).map(|s| s.at)))
                .cloned()
                .collect();
            let relays = relays
                .filter(|r| silent(b.relays.get(*r).copied()))
                .cloned()
                .collect();
            (hosts, relays)
        })
    }

    /// Records a rack's reports, received at `now`.
    pub fn record(&self, region: &str, term: u64, rack: &str, hosts: &[HostReport], now: Instant) {
        self.with(region, term, |book| {
            for h in hosts {
                let old = book.remove(&h.host);
                let mut services = BTreeMap::new();
                for s in h.services.iter().take(MAX_SERVICES_PER_HOST) {
                    let healthy = s.state() == HEALTHY;
                    let prior = old.as_ref().and_then(|o| o.services.get(&s.service));
                    let healthy_since = match prior {
                        Some(p) if healthy && p.build_id == s.build_id => {
                            p.healthy_since.or(Some(now))
                        }
                        _ if healthy => Some(now),
                        _ => None,
                    };
                    services.insert(
                        s.service.clone(),
                        ServiceSeen {
                            build_id: s.build_id.clone(),
                            state: s.state(),
                            detail: s.detail.chars().take(512).collect(),
                            healthy_since,
                        },
                    );
                }
                book.insert(
                    h.host.clone(),
                    HostSeen {
                        rack: rack.to_string(),
                        at: now,
                        services,
                    },
                );
            }
        })
    }

    /// The latest report of each of `hosts` that is still fresh at `now` (the tests' view;
    /// the driver judges on the book in place, [`Reports::judge_release`]).
    #[cfg(test)]
    pub fn fresh(
        &self,
        region: &str,
        term: u64,
        hosts: &[&String],
        now: Instant,
    ) -> HashMap<String, HostSeen> {
        self.with(region, term, |book| {
            hosts
                .iter()
                .filter_map(|h| {
                    book.get(*h)
                        .filter(|s| now.saturating_duration_since(s.at) < REPORT_TTL)
                        .map(|s| ((*h).clone(), s.clone()))
                })
                .collect()
        })
    }

    /// Judges release `r` on this region's reports where they are: a copy of every report
    /// on every tick would cost as much as the judging at 100,000 hosts.
    pub fn judge_release(
        &self,
        region: &str,
        term: u64,
        r: &RegionRelease,
        now: Instant,
        now_ms: u64,
    ) -> (Verdict, Counts) {
        self.with(region, term, |book| judge(r, book, now, now_ms))
    }

    /// Of `hosts`, those whose fresh report shows `service` on `build` (any state), and how
    /// many have a fresh report at all.
    pub fn on_build(
        &self,
        region: &str,
        term: u64,
        service: &str,
        build: &str,
        hosts: &[String],
        now: Instant,
    ) -> (Vec<String>, usize) {
        self.with(region, term, |book| {
            let mut on = Vec::new();
            let mut fresh = 0;
            for h in hosts {
                let Some(seen) = book
                    .get(h)
                    .filter(|s| now.saturating_duration_since(s.at) < REPORT_TTL)
                else {
                    continue;
                };
                fresh += 1;
                if seen
                    .services
                    .get(service)
                    .is_some_and(|s| s.build_id == build)
                {
                    on.push(h.clone());
                }
            }
            (on, fresh)
        })
    }

    /// Every fresh report of the region (for status pages).
    pub fn all(&self, region: &str, term: u64, now: Instant) -> HashMap<String, HostSeen> {
        self.with(region, term, |book| {
            book.iter()
                .filter(|(_, s)| now.saturating_duration_since(s.at) < REPORT_TTL)
                .map(|(h, s)| (h.clone(), s.clone()))
                .collect()
        })
    }
}

/// What the driver does about a release's current wave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every host of the wave ran the build healthy for the minimum time.
    Pass,
    /// The failure threshold was crossed or the deadline passed.
    Halt(String),
    Wait,
}

/// Judges a release's current wave from the hosts' reports (`seen`; reports older than
/// [`REPORT_TTL`] at `now` count as none) and counts the whole release's hosts. Pure: the
/// same reports give the same verdict.
pub fn judge(
    r: &RegionRelease,
    seen: &HashMap<String, HostSeen>,
    now: Instant,
    now_ms: u64,
) -> (Verdict, Counts) {
    // A stale report counts as none, so `seen` may be a whole book, stale entries and all.
    let on_build = |h: &String| {
        seen.get(h)
            .filter(|s| now.saturating_duration_since(s.at) < REPORT_TTL)
            .and_then(|s| s.services.get(&r.service))
            .filter(|s| s.build_id == r.build_id)
    };
    let all: Vec<&String> = r.plan.iter().flat_map(|w| w.hosts.iter()).collect();
    let counts = Counts {
        hosts_total: all.len() as u64,
        hosts_updated: all
            .iter()
            .filter(|h| on_build(h).is_some_and(|s| s.state == HEALTHY))
            .count() as u64,
        hosts_failed: all
            .iter()
            .filter(|h| on_build(h).is_some_and(|s| is_failure(s.state)))
            .count() as u64,
    };
    let hosts = r.wave_hosts();
    let n = hosts.len() as u64;
    let min_healthy = Duration::from_millis(r.strategy.min_healthy_ms);
    let mut ready = 0u64;
    let mut failed: Vec<(&String, String)> = Vec::new();
    for h in hosts {
        match on_build(h) {
            Some(s)
                if s.state == HEALTHY
                    && s.healthy_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= min_healthy) =>
            {
                ready += 1
            }
            Some(s) if is_failure(s.state) => failed.push((h, s.detail.clone())),
            _ => {}
        }
    }
    let wave = r.wave + 1;
    let verdict = if failed.len() as u64 * 100 > u64::from(r.strategy.failure_threshold_pct) * n {
        let (host, detail) = &failed[0];
        Verdict::Halt(format!(
            "{} of {n} hosts of wave {wave} failed (threshold {}%); {host}: {detail}",
            failed.len(),
            r.strategy.failure_threshold_pct
        ))
    } else if ready == n {
        Verdict::Pass
    } else if now_ms.saturating_sub(r.wave_started_ms) > r.strategy.progress_deadline_ms {
        Verdict::Halt(format!(
            "wave {wave} missed its progress deadline of {} s: {ready} of {n} hosts healthy",
            r.strategy.progress_deadline_ms / 1000
        ))
    } else {
        Verdict::Wait
    };
    (verdict, counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deploy_proto::v1::ServiceReport;
    use deploy_state::releases::{ReleaseState, Strategy};
    use deploy_state::rollout::Wave;

    fn release(threshold: u32) -> RegionRelease {
        RegionRelease {
            seq: 1,
            service: "web".into(),
            build_id: "b-2".into(),
            artifact_digest: deploy_types::Digest::of(b"x"),
            strategy: Strategy {
                failure_threshold_pct: threshold,
                min_healthy_ms: 1000,
                progress_deadline_ms: 60_000,
                ..Strategy::default()
            },
            plan: vec![
                Wave {
                    canary: true,
                    racks: vec!["k0".into()],
                    hosts: vec!["a".into(), "b".into()],
                },
                Wave {
                    canary: false,
                    racks: vec!["k1".into()],
                    hosts: vec!["c".into()],
                },
            ],
            wave: 0,
            wave_started_ms: 0,
            state: ReleaseState::RollingOut,
            reason: String::new(),
            moved: vec![],
            counts: Counts::default(),
            started_at_ms: 0,
            finished_at_ms: None,
            history: vec![],
            settled: false,
        }
    }

    fn report(host: &str, build: &str, state: ServiceState) -> HostReport {
        HostReport {
            host: host.into(),
            services: vec![ServiceReport {
                service: "web".into(),
                build_id: build.into(),
                state: state as i32,
                detail: format!("{} detail", state.name()),
            }],
        }
    }

    #[test]
    fn judging_in_place_counts_a_stale_report_as_none() {
        let book = Reports::default();
        let r = release(0);
        let t0 = Instant::now();
        book.record("east", 1, "k0", &[report("a", "b-2", HEALTHY)], t0);
        let (_, c) = book.judge_release("east", 1, &r, t0, 10);
        assert_eq!(c.hosts_updated, 1);
        let later = t0 + REPORT_TTL + Duration::from_millis(1);
        let (v, c) = book.judge_release("east", 1, &r, later, 20);
        assert_eq!(
            c.hosts_updated, 0,
            "a report older than the TTL no longer counts"
        );
        assert_ne!(v, Verdict::Pass);
    }

    #[test]
    fn a_wave_passes_only_after_every_host_was_healthy_long_enough() {
        let book = Reports::default();
        let r = release(0);
        let t0 = Instant::now();
        let hosts = [&"a".to_string(), &"b".to_string(), &"c".to_string()];
        book.record(
            "east",
            1,
            "k0",
            &[report("a", "b-2", HEALTHY), report("b", "b-1", HEALTHY)],
            t0,
        );
        let (v, c) = judge(&r, &book.fresh("east", 1, &hosts, t0), t0, 10);
        assert_eq!(v, Verdict::Wait);
        assert_eq!((c.hosts_total, c.hosts_updated, c.hosts_failed), (3, 1, 0));
        let t1 = t0 + Duration::from_millis(600);
        book.record(
            "east",
            1,
            "k0",
            &[report("a", "b-2", HEALTHY), report("b", "b-2", HEALTHY)],
            t1,
        );
        let t2 = t0 + Duration::from_millis(1200);
        let (v, _) = judge(&r, &book.fresh("east", 1, &hosts, t2), t2, 20);
        assert_eq!(v, Verdict::Wait, "b has been healthy for only 600 ms");
        let t3 = t1 + Duration::from_millis(1000);
        let (v, c) = judge(&r, &book.fresh("east", 1, &hosts, t3), t3, 30);
        assert_eq!(v, Verdict::Pass);
        assert_eq!(c.hosts_updated, 2);
        // A new term forgets the old reports.
        assert!(book.fresh("east", 2, &hosts, t3).is_empty());
    }

    #[test]
    fn failures_past_the_threshold_and_a_missed_deadline_halt() {
        let book = Reports::default();
        let t0 = Instant::now();
        let hosts = [&"a".to_string(), &"b".to_string()];
        book.record(
            "east",
            1,
            "k0",
            &[
                report("a", "b-2", ServiceState::Failed),
                report("b", "b-2", HEALTHY),
            ],
            t0,
        );
        let seen = book.fresh("east", 1, &hosts, t0);
        let (v, c) = judge(&release(0), &seen, t0, 10);
        assert!(
            matches!(&v, Verdict::Halt(why) if why.contains("1 of 2") && why.contains("a: FAILED detail")),
            "{v:?}"
        );
        assert_eq!(c.hosts_failed, 1);
        // 50% allowed: one of two failing is not over it.
        assert_eq!(judge(&release(50), &seen, t0, 10).0, Verdict::Wait);
        let (v, _) = judge(&release(50), &seen, t0, 61_000);
        assert!(
            matches!(&v, Verdict::Halt(why) if why.contains("deadline")),
            "{v:?}"
        );
        // Stale reports do not count.
        let later = t0 + REPORT_TTL + Duration::from_millis(1);
        assert!(book.fresh("east", 1, &hosts, later).is_empty());
    }
}

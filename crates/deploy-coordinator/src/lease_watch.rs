//! How the global leader decides that a build's lease ran out, on its own monotonic clock.
//!
//! Commands are stamped with the wall clock of whichever node led when they were proposed,
//! and those clocks need not agree: a leader whose clock ran ahead would expire every lease
//! early, one whose clock lagged would keep dead workers' leases. So no one compares stamps.
//! The leader watches each running lease's version (attempt, renewals) on its own
//! `Instant`: a version it has watched for a whole lease without a renewal is named in an
//! `ExpireLeases`, which the state applies only if the version is still current.
//!
//! The cost of this: a new leader gives every lease it finds a full lease from the moment it
//! first sees it, so a leader change extends a dead worker's lease by at most one lease (plus
//! a reaper tick). Wall-clock skew between nodes is tolerated without bound.
//!
//! Soft state of the leader, never persisted; it holds one entry per running build (bounded by
//! the registered workers), and forgets a build as soon as it stops running.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deploy_state::builds::LeaseVersion;

/// Running build (seq) -> the version last seen and when this node first saw it.
#[derive(Debug, Default)]
pub struct LeaseWatch(Mutex<BTreeMap<u64, (LeaseVersion, Instant)>>);

impl LeaseWatch {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (LeaseVersion, Instant)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in the running leases as the state shows them at `now`, and returns those whose
    /// version has not changed for `lease` (oldest seen first). Builds no longer running are
    /// forgotten.
    pub fn observe(
        &self,
        running: impl IntoIterator<Item = LeaseVersion>,
        now: Instant,
        lease: Duration,
    ) -> Vec<LeaseVersion> {
        let mut m = self.map();
        let mut seen = BTreeMap::new();
        for v in running {
            let since = match m.get(&v.seq) {
                Some((old, since)) if *old == v => *since,
                _ => now,
            };
            seen.insert(v.seq, (v, since));
        }
        *m = seen;
        let mut expired: Vec<(Instant, LeaseVersion)> = m
            .values()
            .filter(|(_, since)| now.saturating_duration_since(*since) >= lease)
            .map(|(v, since)| (*since, *v))
            .collect();
        expired.sort();
        expired.into_iter().map(|(_, v)| v).collect()
    }

    /// A renewal of `v` committed at `now`: its lease runs from here.
    pub fn renewed(&self, v: LeaseVersion, now: Instant) {
        self.map().insert(v.seq, (v, now));
    }

    /// Whether `v` was seen less than `within` ago: then a renewal need not be written.
    pub fn fresh(&self, v: LeaseVersion, now: Instant, within: Duration) -> bool {
        self.map()
            .get(&v.seq)
            .is_some_and(|(old, since)| *old == v && now.saturating_duration_since(*since) < within)
    }

    /// Forgets everything: this node stopped leading (a later term sees the leases afresh).
    pub fn clear(&self) {
        self.map().clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(seq: u64, attempt: u32, renewals: u32) -> LeaseVersion {
        LeaseVersion {
            seq,
            attempt,
            renewals,
        }
    }

    const LEASE: Duration = Duration::from_secs(3);

    #[test]
    fn a_lease_expires_a_whole_lease_after_its_version_was_first_seen() {
        let w = LeaseWatch::default();
        let t0 = Instant::now();
        assert!(w.observe([v(1, 1, 0)], t0, LEASE).is_empty());
        assert!(w
            .observe([v(1, 1, 0)], t0 + LEASE - Duration::from_millis(1), LEASE)
            .is_empty());
        assert_eq!(w.observe([v(1, 1, 0)], t0 + LEASE, LEASE), vec![v(1, 1, 0)]);
    }

    #[test]
    fn a_renewal_or_a_new_attempt_starts_the_lease_again() {
        let w = LeaseWatch::default();
        let t0 = Instant::now();
        w.observe([v(1, 1, 0), v(2, 1, 0)], t0, LEASE);
        let t1 = t0 + Duration::from_secs(2);
        w.observe([v(1, 1, 1), v(2, 2, 0)], t1, LEASE);
        assert!(w
            .observe([v(1, 1, 1), v(2, 2, 0)], t0 + LEASE, LEASE)
            .is_empty());
        assert_eq!(
            w.observe([v(1, 1, 1), v(2, 2, 0)], t1 + LEASE, LEASE),
            vec![v(1, 1, 1), v(2, 2, 0)]
        );
    }

    /// A new leader (or one that led before) knows nothing of how long a lease went
    /// unrenewed elsewhere: it gives each a full lease of its own time, whatever the stamps.
    #[test]
    fn a_new_leader_gives_every_lease_a_full_lease_of_its_own_time() {
        let w = LeaseWatch::default();
        let t0 = Instant::now();
        w.observe([v(7, 3, 9)], t0, LEASE);
        w.clear();
        let t1 = t0 + Duration::from_secs(60);
        assert!(w.observe([v(7, 3, 9)], t1, LEASE).is_empty());
        assert_eq!(w.observe([v(7, 3, 9)], t1 + LEASE, LEASE), vec![v(7, 3, 9)]);
    }

    #[test]
    fn builds_that_stopped_running_are_forgotten() {
        let w = LeaseWatch::default();
        let t0 = Instant::now();
        w.observe((0..1000).map(|s| v(s, 1, 0)), t0, LEASE);
        assert_eq!(w.len(), 1000);
        w.observe([v(5, 1, 0)], t0, LEASE);
        assert_eq!(w.len(), 1);
        w.observe([], t0, LEASE);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn a_renewal_written_here_is_fresh_for_a_while() {
        let w = LeaseWatch::default();
        let t0 = Instant::now();
        assert!(!w.fresh(v(1, 1, 1), t0, LEASE / 3));
        w.renewed(v(1, 1, 1), t0);
        assert!(w.fresh(v(1, 1, 1), t0 + Duration::from_millis(900), LEASE / 3));
        assert!(!w.fresh(v(1, 1, 1), t0 + LEASE / 3, LEASE / 3));
        assert!(!w.fresh(v(1, 1, 2), t0, LEASE / 3));
    }
}

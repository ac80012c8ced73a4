//! What a group's store measures about itself, for `/metrics`: the newest snapshot's size,
//! how long building one held the state lock, and the longest apply call of late (the stall a
//! write would feel if anything held applying up).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a period of [`StoreStats::apply_max_us`] lasts.
pub const APPLY_PERIOD: Duration = Duration::from_secs(10);

/// The longest value of the current and the previous period.
#[derive(Debug, Default)]
struct PeriodMax {
    period: u64,
    current: u64,
    previous: u64,
}

impl PeriodMax {
    fn roll(&mut self, period: u64) {
        if period != self.period {
            self.previous = if period == self.period + 1 {
                self.current
            } else {
                0
            };
            self.current = 0;
            self.period = period;
        }
    }
}

/// A store's measurements, shared by its state machine and its readers.
#[derive(Debug)]
pub struct StoreStats {
    started: Instant,
    snapshot_bytes: AtomicU64,
    snapshot_lock_max_us: AtomicU64,
    snapshots: AtomicU64,
    apply: Mutex<PeriodMax>,
}

impl Default for StoreStats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            snapshot_bytes: AtomicU64::new(0),
            snapshot_lock_max_us: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            apply: Mutex::default(),
        }
    }
}

impl StoreStats {
    fn period(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_secs() / APPLY_PERIOD.as_secs()
    }

    /// A snapshot of `bytes` is now the newest (built here, after holding the lock `held`,
    /// or received with `held` zero).
    pub(crate) fn snapshot(&self, bytes: u64, held: Duration) {
        self.snapshot_bytes.store(bytes, Ordering::Relaxed);
        self.snapshots.fetch_add(1, Ordering::Relaxed);
        self.snapshot_lock_max_us
            .fetch_max(held.as_micros() as u64, Ordering::Relaxed);
    }

    /// One apply call took `took`, waiting for the lock included.
    pub(crate) fn applied(&self, took: Duration) {
        let mut m = self.apply.lock().unwrap_or_else(|p| p.into_inner());
        m.roll(self.period(Instant::now()));
        m.current = m.current.max(took.as_micros() as u64);
    }

    /// The newest snapshot's size in bytes (0 before the first).
    pub fn snapshot_bytes(&self) -> u64 {
        self.snapshot_bytes.load(Ordering::Relaxed)
    }

    /// Snapshots built or installed since the process started.
    pub fn snapshots(&self) -> u64 {
        self.snapshots.load(Ordering::Relaxed)
    }

    /// The longest a snapshot build held the state lock since the process started.
    pub fn snapshot_lock_max_us(&self) -> u64 {
        self.snapshot_lock_max_us.load(Ordering::Relaxed)
    }

    /// The longest apply call in the current and the previous [`APPLY_PERIOD`].
    pub fn apply_max_us(&self) -> u64 {
        self.apply_max_at(Instant::now())
    }

    fn apply_max_at(&self, at: Instant) -> u64 {
        let mut m = self.apply.lock().unwrap_or_else(|p| p.into_inner());
        m.roll(self.period(at));
        m.current.max(m.previous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apply_maximum_covers_two_periods_then_forgets() {
        let s = StoreStats::default();
        s.applied(Duration::from_micros(700));
        s.applied(Duration::from_micros(300));
        assert_eq!(s.apply_max_us(), 700);
        let next = s.started + APPLY_PERIOD;
        assert_eq!(
            s.apply_max_at(next),
            700,
            "the previous period still counts"
        );
        assert_eq!(
            s.apply_max_at(next + APPLY_PERIOD),
            0,
            "two periods on, forgotten"
        );
    }

    #[test]
    fn snapshots_keep_the_newest_size_and_the_longest_hold() {
        let s = StoreStats::default();
        s.snapshot(1000, Duration::from_micros(40));
        s.snapshot(500, Duration::from_micros(10));
        assert_eq!(
            (s.snapshot_bytes(), s.snapshot_lock_max_us(), s.snapshots()),
            (500, 40, 2)
        );
    }
}

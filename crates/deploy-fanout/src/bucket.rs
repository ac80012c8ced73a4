//! Token buckets limiting bytes per second, so a deploy cannot starve a rack's production
//! traffic, and so benchmarks can model real machines on one.
//!
//! A [`Bucket`] limits one link (one connection's pace); a [`Nic`] is a process's network
//! card, one bucket per direction that every connection of the process draws from. A link
//! made [`Bucket::within`] a NIC direction passes bytes only as fast as both allow.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes per second with a burst of a tenth of a second; `None`: unlimited.
#[derive(Debug)]
pub struct Bucket {
    rate: Option<u64>,
    state: Mutex<(f64, Instant)>,
    /// The budget this link shares with the process's other links (its NIC's direction).
    within: Option<Arc<Bucket>>,
}

impl Bucket {
    pub fn new(rate: Option<u64>) -> Self {
        let rate = rate.filter(|r| *r > 0);
        Self {
            rate,
            state: Mutex::new((0.0, Instant::now())),
            within: None,
        }
    }

    pub fn unlimited() -> Self {
        Self::new(None)
    }

    /// Its own rate, bytes per second (`None`: unlimited).
    pub fn rate(&self) -> Option<u64> {
        self.rate
    }

    /// This link, drawing also from `shared` (a direction of the process's [`Nic`]).
    pub fn within(mut self, shared: &Arc<Bucket>) -> Self {
        self.within = Some(shared.clone());
        self
    }

    /// Waits until `n` bytes may pass this link and the budget it is within.
    pub async fn take(&self, n: usize) {
        let wait = self.reserve(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes `n` bytes now, going into debt, and says how long the caller must wait for them:
    /// the longer of this link's wait and its shared budget's.
    fn reserve(&self, n: usize) -> Duration {
        let outer = self
            .within
            .as_ref()
            .map_or(Duration::ZERO, |b| b.reserve(n));
        let Some(rate) = self.rate else {
            return outer;
        };
        let rate = rate as f64;
        let burst = rate / 10.0;
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, last) = *g;
        // Refill, capped at the burst; then go into debt for this take.
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(burst);
        let left = tokens - n as f64;
        *g = (left, now);
        let own = if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / rate)
        };
        own.max(outer)
    }
}

/// A process's network card: every byte it receives draws from `ingress`, every byte it
/// sends from `egress`, whichever connection carries it. Unlimited unless configured.
#[derive(Debug, Clone)]
pub struct Nic {
    pub ingress: Arc<Bucket>,
    pub egress: Arc<Bucket>,
}

impl Nic {
    /// A NIC of `ingress` and `egress` bytes per second (`None`: that direction unlimited).
    pub fn new(ingress: Option<u64>, egress: Option<u64>) -> Self {
        Self {
            ingress: Arc::new(Bucket::new(ingress)),
            egress: Arc::new(Bucket::new(egress)),
        }
    }

    pub fn unlimited() -> Self {
        Self::new(None, None)
    }

    /// A link receiving at most `rate` (its own pace) within this NIC's ingress.
    pub fn receiving(&self, rate: Option<u64>) -> Bucket {
        Bucket::new(rate).within(&self.ingress)
    }

    /// A link sending at most `rate` (its own pace) within this NIC's egress.
    pub fn sending(&self, rate: Option<u64>) -> Bucket {
        Bucket::new(rate).within(&self.egress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_limited_bucket_never_lets_bytes_through_faster_than_its_rate() {
        let b = Bucket::new(Some(100_000));
        let start = std::time::Instant::now();
        for _ in 0..10 {
            b.take(5_000).await;
        }
        // 50 000 bytes at 100 000 B/s, less a burst of 10 000: at least 0.4 s. (A lower
        // bound only: sleeping can be late, never early.)
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(390), "{took:?}");
        let free = Bucket::unlimited();
        let start = std::time::Instant::now();
        free.take(usize::MAX).await;
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    /// Four links, each allowed 1 MB/s, within one NIC of 100 KB/s: together they pass no
    /// faster than the NIC, and each alone would have passed ten times faster.
    #[tokio::test]
    async fn links_within_one_nic_share_its_budget() {
        let nic = Nic::new(None, Some(100_000));
        let start = std::time::Instant::now();
        let sends = (0..4).map(|_| {
            let link = nic.sending(Some(1_000_000));
            async move {
                for _ in 0..5 {
                    link.take(5_000).await;
                }
            }
        });
        futures::future::join_all(sends).await;
        // 100 000 bytes at 100 000 B/s, less a burst of 10 000: at least 0.9 s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(890), "{took:?}");
        // The other direction is not limited.
        let start = std::time::Instant::now();
        nic.receiving(None).take(10_000_000).await;
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}

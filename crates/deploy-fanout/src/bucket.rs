//! A token bucket limiting bytes per second on one link, so a deploy cannot starve a rack's
//! production traffic, and so benchmarks can model real links on one machine.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes per second with a burst of a tenth of a second; `None`: unlimited.
#[derive(Debug)]
pub struct Bucket {
    rate: Option<u64>,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub fn new(rate: Option<u64>) -> Self {
        let rate = rate.filter(|r| *r > 0);
        Self {
            rate,
            state: Mutex::new((0.0, Instant::now())),
        }
    }

    pub fn unlimited() -> Self {
        Self::new(None)
    }

    /// Waits until `n` bytes may pass.
    pub async fn take(&self, n: usize) {
        let Some(rate) = self.rate else {
            return;
        };
        let rate = rate as f64;
        let burst = rate / 10.0;
        let wait = {
            let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let (tokens, last) = *g;
            // Refill, capped at the burst; then go into debt for this take.
            let tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(burst);
            let left = tokens - n as f64;
            *g = (left, now);
            if left >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-left / rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
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
}

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
    async fn a_limited_bucket_spreads_bytes_over_time() {
        tokio::time::pause();
        let b = Bucket::new(Some(1000));
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            b.take(500).await;
        }
        // 5000 bytes at 1000 B/s: about five seconds of (virtual) time.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(4800), "{took:?}");
        assert!(took <= Duration::from_millis(5200), "{took:?}");
        let free = Bucket::unlimited();
        free.take(usize::MAX).await;
    }
}

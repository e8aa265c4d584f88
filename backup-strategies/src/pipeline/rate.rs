//! A bandwidth limit (bytes per second) shared by the concurrent requests of one transfer, so
//! a backup or restore does not starve the database's own traffic.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// A pacing limiter: each request of `n` bytes gets a start slot `n / rate` after the previous
/// one's, so the average over any long window is at most `rate`.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// A limiter of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            next: Mutex::new(None),
        }
    }

    /// The configured rate.
    pub fn rate(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Waits for the slot of a request of `n` bytes.
    pub async fn take(&self, n: u64) {
        #[allow(clippy::cast_precision_loss)]
        let cost = Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
        let start = {
            let mut g = self.next.lock().await;
            let now = Instant::now();
            let start = g.map_or(now, |t| t.max(now));
            *g = Some(start + cost);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_requests() {
        let r = RateLimiter::new(1000);
        let t0 = Instant::now();
        r.take(500).await;
        r.take(500).await;
        r.take(1000).await;
        // Three slots: 0 s, 0.5 s, 1.0 s (virtual time).
        assert_eq!(Instant::now() - t0, Duration::from_secs(1));
    }
}

//! [`RetryPolicy`]: capped exponential backoff with decorrelated jitter (object_store's
//! `RetryConfig`/`BackoffConfig`), retrying only errors that say retrying may help.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::{BackupError, Result};

/// How a store call is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = no retry).
    pub max_retries: u32,
    /// First backoff.
    pub initial_backoff: Duration,
    /// Longest single backoff.
    pub max_backoff: Duration,
    /// Give up when this much time has passed since the first attempt.
    pub retry_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 8,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            retry_timeout: Duration::from_secs(180),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// A policy for tests: `n` quick retries.
    pub fn quick(n: u32) -> Self {
        Self {
            max_retries: n,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
            retry_timeout: Duration::from_secs(60),
        }
    }

    /// Runs `op` until it succeeds, fails with a non-retryable error, runs out of retries or
    /// time, or `cancel` fires between attempts (then `Cancelled`). The first attempt always
    /// runs; an attempt in flight is never interrupted.
    ///
    /// # Errors
    /// The last error of `op`, or `Cancelled`.
    pub async fn run<T, F, Fut>(&self, cancel: &CancellationToken, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let start = tokio::time::Instant::now();
        let mut backoff = Backoff::new(self);
        let mut attempt = 0u32;
        loop {
            if attempt > 0 && cancel.is_cancelled() {
                return Err(BackupError::Cancelled);
            }
            // An attempt in flight is not interrupted: dropping a request midway could let a
            // part land after the upload was aborted, leaving an orphan.
            let r = op().await;
            match r {
                Ok(v) => return Ok(v),
                Err(e)
                    if e.is_retryable()
                        && attempt < self.max_retries
                        && start.elapsed() < self.retry_timeout =>
                {
                    attempt += 1;
                    let wait = backoff.next();
                    tracing::debug!(attempt, ?wait, error = %e, "Retrying a store call.");
                    tokio::select! {
                        biased;
                        () = cancel.cancelled() => return Err(BackupError::Cancelled),
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Decorrelated jitter: next = min(max, random(initial, 3 × previous)).
struct Backoff {
    initial: f64,
    max: f64,
    prev: f64,
    rng: u64,
}

impl Backoff {
    fn new(p: &RetryPolicy) -> Self {
        let mut seed = [0u8; 8];
        // A fixed seed only makes the jitter predictable; it is never a security property.
        let _ = getrandom::fill(&mut seed);
        Self {
            initial: p.initial_backoff.as_secs_f64(),
            max: p.max_backoff.as_secs_f64(),
            prev: p.initial_backoff.as_secs_f64(),
            rng: u64::from_le_bytes(seed) | 1,
        }
    }

    fn unit(&mut self) -> f64 {
        // xorshift64: plenty for jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        #[allow(clippy::cast_precision_loss)]
        let x = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        x
    }

    fn next(&mut self) -> Duration {
        let hi = (self.prev * 3.0).max(self.initial);
        let v = (self.initial + self.unit() * (hi - self.initial)).min(self.max);
        self.prev = v;
        Duration::from_secs_f64(v)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::error::StoreErrorKind;

    fn err(kind: StoreErrorKind) -> BackupError {
        BackupError::store("t", "op", "k", kind, "x")
    }

    #[tokio::test]
    async fn retries_only_retryable_and_stops_at_max() {
        let calls = AtomicU32::new(0);
        let cancel = CancellationToken::new();
        let r: Result<()> = RetryPolicy::quick(3)
            .run(&cancel, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(err(StoreErrorKind::Unavailable))
            })
            .await;
        assert!(r.unwrap_err().is_retryable());
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        calls.store(0, Ordering::SeqCst);
        let r: Result<()> = RetryPolicy::quick(3)
            .run(&cancel, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(err(StoreErrorKind::Rejected))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        calls.store(0, Ordering::SeqCst);
        let r = RetryPolicy::quick(3)
            .run(&cancel, || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(err(StoreErrorKind::Timeout))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
    }

    #[test]
    fn backoff_stays_within_bounds() {
        let p = RetryPolicy::default();
        let mut b = Backoff::new(&p);
        for _ in 0..100 {
            let d = b.next();
            assert!(d >= p.initial_backoff && d <= p.max_backoff, "{d:?}");
        }
    }
}

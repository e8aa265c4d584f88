//! [`MemoryBudget`]: a semaphore of byte permits that every pipeline buffer acquires before it
//! is filled, so the pipeline's data memory is capped by construction and tests can assert its
//! peak (object_store's `LimitStore` idea, counted in bytes instead of requests).
//!
//! The pipeline checks at start that the budget can hold what every stage may hold at once
//! ([`crate::pipeline::PipelineOpts::required_budget`]), so waiting on the budget is
//! back-pressure, never a deadlock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{BackupError, Result};

#[derive(Debug)]
struct Inner {
    sem: Arc<Semaphore>,
    capacity: usize,
    in_use: AtomicUsize,
    peak: AtomicUsize,
}

/// A shared cap on the bytes the pipeline's buffers hold at once.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

/// Bytes taken from a [`MemoryBudget`]; given back on drop.
#[derive(Debug)]
pub struct BudgetPermit {
    inner: Arc<Inner>,
    bytes: usize,
    _permit: Option<OwnedSemaphorePermit>,
}

impl BudgetPermit {
    /// Bytes this permit holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.inner.in_use.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Semaphore permits are `u32`; larger budgets count in units of this many bytes.
const UNIT: usize = 1024;

impl MemoryBudget {
    /// A budget of `capacity` bytes (rounded up to whole KiB).
    pub fn new(capacity: usize) -> Self {
        let units = capacity.div_ceil(UNIT).min(Semaphore::MAX_PERMITS);
        Self {
            inner: Arc::new(Inner {
                sem: Arc::new(Semaphore::new(units)),
                capacity: units * UNIT,
                in_use: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
            }),
        }
    }

    /// The cap in bytes.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Bytes held now.
    pub fn in_use(&self) -> usize {
        self.inner.in_use.load(Ordering::Acquire)
    }

    /// The most bytes held at once since creation.
    pub fn peak(&self) -> usize {
        self.inner.peak.load(Ordering::Acquire)
    }

    fn units(&self, bytes: usize) -> Result<u32> {
        if bytes > self.inner.capacity {
            return Err(BackupError::invalid(
                "memory_budget",
                format!(
                    "a {bytes}-byte buffer does not fit a budget of {} bytes",
                    self.inner.capacity
                ),
            ));
        }
        u32::try_from(bytes.div_ceil(UNIT))
            .map_err(|_| BackupError::Internal(format!("{bytes} bytes overflow the budget")))
    }

    fn permit(&self, bytes: usize, p: Option<OwnedSemaphorePermit>) -> BudgetPermit {
        let now = self.inner.in_use.fetch_add(bytes, Ordering::AcqRel) + bytes;
        self.inner.peak.fetch_max(now, Ordering::AcqRel);
        BudgetPermit {
            inner: Arc::clone(&self.inner),
            bytes,
            _permit: p,
        }
    }

    /// Waits until `bytes` are free and takes them.
    ///
    /// # Errors
    /// `InvalidArgument` when `bytes` exceeds the whole budget (it could never be granted).
    pub async fn acquire(&self, bytes: usize) -> Result<BudgetPermit> {
        let units = self.units(bytes)?;
        if units == 0 {
            return Ok(self.permit(0, None));
        }
        let p = Arc::clone(&self.inner.sem)
            .acquire_many_owned(units)
            .await
            .map_err(|_| BackupError::Internal("memory budget closed".into()))?;
        Ok(self.permit(bytes, Some(p)))
    }

    /// [`MemoryBudget::acquire`] for blocking threads (the zstd and AEAD stages).
    ///
    /// # Errors
    /// As [`MemoryBudget::acquire`].
    pub fn acquire_blocking(&self, bytes: usize) -> Result<BudgetPermit> {
        let units = self.units(bytes)?;
        if units == 0 {
            return Ok(self.permit(0, None));
        }
        let sem = Arc::clone(&self.inner.sem);
        let p = futures::executor::block_on(sem.acquire_many_owned(units))
            .map_err(|_| BackupError::Internal("memory budget closed".into()))?;
        Ok(self.permit(bytes, Some(p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tracks_use_and_peak_and_blocks_when_full() {
        let b = MemoryBudget::new(4096);
        let a = b.acquire(3000).await.unwrap();
        assert_eq!(b.in_use(), 3000);
        assert!(b.acquire(5000).await.is_err());
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.acquire(2048).await.map(|p| p.bytes()) });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(a);
        assert_eq!(waiter.await.unwrap().unwrap(), 2048);
        assert_eq!(b.in_use(), 0);
        assert_eq!(b.peak(), 3000);
    }
}

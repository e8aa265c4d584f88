//! [`MemoryBudget`]: a semaphore of byte permits that every pipeline buffer acquires before it
//! is filled, so the pipeline's data memory is capped by construction and tests can assert its
//! peak (object_store's `LimitStore` idea, counted in bytes instead of requests).
//!
//! The pipeline checks at start that the budget can hold what every stage may hold at once
//! ([`crate::pipeline::PipelineOpts::required_budget`]), so waiting on the budget is
//! back-pressure, never a deadlock.
//!
//! [`BufferPool`] hands out budgeted buffers and takes them back when the last reference to
//! their bytes drops, so one operation reuses a handful of buffers instead of allocating a fresh
//! megabyte per block. The buffers are anonymous memory maps, not heap allocations: the C
//! allocator's adaptive mmap threshold would otherwise keep freed megabytes in per-thread
//! arenas, and the process grew by tens of MiB beyond the budget, more with every backup.
//! A map is returned to the OS the moment the operation's pool drops it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use memmap2::MmapMut;
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

/// Reusable buffers paid for by a [`MemoryBudget`], for the length of one operation.
///
/// Idle buffers are kept only while the budget's bytes in use plus the idle bytes fit the
/// budget's capacity, so mapped memory never exceeds the budget by more than one buffer.
/// Dropping the pool (and every buffer it handed out) unmaps them all.
#[derive(Debug, Clone)]
pub struct BufferPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    budget: MemoryBudget,
    idle: Mutex<Vec<MmapMut>>,
}

impl PoolInner {
    fn idle_bytes(idle: &[MmapMut]) -> usize {
        idle.iter().map(|m| m.len()).sum()
    }

    /// An idle map that fits `len` without wasting more than a quarter, or a new one.
    fn take(&self, len: usize) -> Result<Option<MmapMut>> {
        if len == 0 {
            return Ok(None);
        }
        if let Ok(mut idle) = self.idle.lock() {
            let fit = idle
                .iter()
                .position(|m| m.len() >= len && m.len() - len <= len / 4);
            if let Some(i) = fit {
                return Ok(Some(idle.swap_remove(i)));
            }
            // Make room: a new map plus the idle ones must stay within the budget.
            let cap = self.budget.capacity();
            while !idle.is_empty() && self.budget.in_use() + Self::idle_bytes(&idle) > cap {
                idle.pop();
            }
        }
        MmapMut::map_anon(len)
            .map(Some)
            .map_err(|e| BackupError::io("mapping a pipeline buffer", e))
    }

    fn put(&self, map: MmapMut) {
        if let Ok(mut idle) = self.idle.lock() {
            // The returning buffer's permit is still held, so `in_use` counts it.
            if self.budget.in_use() + Self::idle_bytes(&idle) <= self.budget.capacity() {
                idle.push(map);
            }
        }
    }
}

impl BufferPool {
    /// A pool drawing on `budget`.
    pub fn new(budget: MemoryBudget) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                budget,
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The budget that pays for the buffers.
    pub fn budget(&self) -> &MemoryBudget {
        &self.inner.budget
    }

    /// Bytes of idle buffers kept for reuse.
    pub fn idle_bytes(&self) -> usize {
        self.inner
            .idle
            .lock()
            .map(|i| PoolInner::idle_bytes(&i))
            .unwrap_or(0)
    }

    fn wrap(&self, len: usize, permit: BudgetPermit) -> Result<PoolBuf> {
        Ok(PoolBuf {
            map: self.inner.take(len)?,
            len: 0,
            limit: len,
            _permit: permit,
            pool: Arc::clone(&self.inner),
        })
    }

    /// Waits until `len` bytes of budget are free and returns an empty buffer that holds up to
    /// `len` bytes.
    ///
    /// # Errors
    /// As [`MemoryBudget::acquire`]; `Io` when the OS refuses the memory.
    pub async fn get(&self, len: usize) -> Result<PoolBuf> {
        let permit = self.inner.budget.acquire(len).await?;
        self.wrap(len, permit)
    }

    /// [`BufferPool::get`] for blocking threads.
    ///
    /// # Errors
    /// As [`BufferPool::get`].
    pub fn get_blocking(&self, len: usize) -> Result<PoolBuf> {
        let permit = self.inner.budget.acquire_blocking(len)?;
        self.wrap(len, permit)
    }
}

/// A budgeted buffer of fixed capacity from a [`BufferPool`]; goes back to the pool when
/// dropped (or, once frozen, when the last [`Bytes`] referring to it drops).
#[derive(Debug)]
pub struct PoolBuf {
    map: Option<MmapMut>,
    len: usize,
    limit: usize,
    _permit: BudgetPermit,
    pool: Arc<PoolInner>,
}

impl PoolBuf {
    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes that still fit.
    pub fn room(&self) -> usize {
        self.limit - self.len
    }

    /// Whether it is full.
    pub fn is_full(&self) -> bool {
        self.len == self.limit
    }

    /// Appends as much of `data` as there is room for; returns the bytes taken.
    pub fn fill_from(&mut self, data: &[u8]) -> usize {
        let take = self.room().min(data.len());
        if let Some(m) = self.map.as_mut() {
            m[self.len..self.len + take].copy_from_slice(&data[..take]);
            self.len += take;
        }
        take
    }

    /// The free space, to be filled in place and then committed with [`PoolBuf::advance`].
    pub fn spare(&mut self) -> &mut [u8] {
        let (len, limit) = (self.len, self.limit);
        match self.map.as_mut() {
            Some(m) => &mut m[len..limit],
            None => &mut [],
        }
    }

    /// Counts `n` bytes written into [`PoolBuf::spare`] as held (at most the room left).
    pub fn advance(&mut self, n: usize) {
        self.len += n.min(self.room());
    }

    /// Immutable bytes that return the buffer to the pool when the last clone drops.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PoolBuf {
    fn as_ref(&self) -> &[u8] {
        match &self.map {
            Some(m) => &m[..self.len],
            None => &[],
        }
    }
}

impl AsMut<[u8]> for PoolBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        match self.map.as_mut() {
            Some(m) => &mut m[..len],
            None => &mut [],
        }
    }
}

/// In-place sealing and opening append and strip the tag within the fixed capacity.
impl aes_gcm::aead::Buffer for PoolBuf {
    fn extend_from_slice(&mut self, other: &[u8]) -> aes_gcm::aead::Result<()> {
        if other.len() > self.room() {
            return Err(aes_gcm::aead::Error);
        }
        self.fill_from(other);
        Ok(())
    }

    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        if let Some(m) = self.map.take() {
            self.pool.put(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pool_reuses_buffers_and_keeps_within_the_budget() {
        let pool = BufferPool::new(MemoryBudget::new(8 << 10));
        let mut a = pool.get(4096).await.unwrap();
        assert_eq!(a.fill_from(&[7u8; 5000]), 4096);
        assert_eq!(a.as_ref(), &[7u8; 4096][..]);
        assert!(a.is_full());
        let ptr = a.as_ref().as_ptr();
        let bytes = a.freeze();
        let clone = bytes.clone();
        drop(bytes);
        assert_eq!(
            pool.idle_bytes(),
            0,
            "a live clone keeps the buffer out of the pool"
        );
        drop(clone);
        assert_eq!(pool.idle_bytes(), 4096);
        assert_eq!(pool.budget().in_use(), 0);
        // The same allocation comes back, empty.
        let b = pool.get(4096).await.unwrap();
        assert!(b.is_empty());
        assert_eq!(b.as_ref().as_ptr(), ptr);
        assert_eq!(pool.idle_bytes(), 0);
        // A size that does not fit the idle buffer gets a new one; idle buffers are evicted so
        // allocated bytes stay within the budget.
        drop(b);
        let c = pool.get(8 << 10).await.unwrap();
        assert_eq!(pool.idle_bytes(), 0);
        drop(c);
        assert_eq!(pool.idle_bytes(), 8 << 10);
        let small = pool.get(1024).await.unwrap();
        assert_eq!(
            pool.idle_bytes(),
            0,
            "1 KiB in use plus 8 KiB idle is over the budget"
        );
        drop(small);
    }

    #[tokio::test]
    async fn pool_buffers_work_in_place_within_their_capacity() {
        use aes_gcm::aead::Buffer;
        let pool = BufferPool::new(MemoryBudget::new(4096));
        let mut b = pool.get(8).await.unwrap();
        b.spare()[..3].copy_from_slice(b"abc");
        b.advance(3);
        assert_eq!(b.as_ref(), b"abc");
        assert!(Buffer::extend_from_slice(&mut b, b"defgh").is_ok());
        assert!(b.is_full());
        assert!(
            Buffer::extend_from_slice(&mut b, b"i").is_err(),
            "never grows"
        );
        b.as_mut()[0] = b'A';
        Buffer::truncate(&mut b, 2);
        assert_eq!(b.as_ref(), b"Ab");
        // A zero-length buffer maps nothing and holds nothing.
        let mut z = pool.get(0).await.unwrap();
        assert_eq!(z.fill_from(b"x"), 0);
        assert!(z.as_ref().is_empty() && z.is_full());
        drop((b, z));
        assert_eq!(pool.budget().in_use(), 0);
    }

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

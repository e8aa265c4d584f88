//! [`FaultyStore`]: a decorator that makes chosen calls fail, for fault tests (object_store's
//! `ThrottleStore`, OpenDAL's chaos layer). It also counts calls so tests can check that an
//! upload was aborted.

use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use super::{
    ByteStream, ObjectKey, ObjectMeta, ObjectStore, PartNumber, PartReceipt, PendingUpload,
    PutReceipt, UploadId,
};
use crate::error::{BackupError, Result, StoreErrorKind};

/// Which calls fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Every data call (put, parts, complete, get) fails as unavailable, as if the store were
    /// down; `abort_multipart`, `delete` and listings still work so cleanup can be checked.
    Down,
    /// Data calls work until `after` parts have been stored, then the store is down.
    DownAfterParts {
        /// Parts that succeed before the outage.
        after: u32,
    },
    /// The `nth` (1-based) `put_part` call fails once with `kind`; later calls work.
    FailPartOnce {
        /// Which call.
        nth: u32,
        /// How it fails.
        kind: StoreErrorKind,
    },
    /// Every `complete_multipart` fails with `kind`.
    FailComplete {
        /// How it fails.
        kind: StoreErrorKind,
    },
    /// Every `put` fails with `kind` (manifests and small objects).
    FailPut {
        /// How it fails.
        kind: StoreErrorKind,
    },
}

/// Counters of what reached the inner store.
#[derive(Debug, Default)]
pub struct Calls {
    /// `put_part` calls made (including failed ones).
    pub put_part: AtomicU32,
    /// `abort_multipart` calls.
    pub abort: AtomicU32,
    /// `complete_multipart` calls.
    pub complete: AtomicU32,
    /// `put` calls.
    pub put: AtomicU32,
}

/// A store that fails according to its [`Fault`] list.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    faults: Mutex<Vec<Fault>>,
    parts_ok: AtomicU32,
    down: AtomicBool,
    /// What was called.
    pub calls: Calls,
}

impl FaultyStore {
    /// Wraps `inner` with `faults`.
    pub fn new(inner: Arc<dyn ObjectStore>, faults: Vec<Fault>) -> Self {
        let down = faults.contains(&Fault::Down);
        Self {
            inner,
            faults: Mutex::new(faults),
            parts_ok: AtomicU32::new(0),
            down: AtomicBool::new(down),
            calls: Calls::default(),
        }
    }

    /// Brings the store back up (clears every fault).
    pub fn heal(&self) {
        self.down.store(false, Ordering::SeqCst);
        if let Ok(mut f) = self.faults.lock() {
            f.clear();
        }
    }

    fn faults(&self) -> Vec<Fault> {
        self.faults.lock().map(|f| f.clone()).unwrap_or_default()
    }

    fn check_down(&self, op: &'static str, key: &ObjectKey) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BackupError::store(
                "faulty",
                op,
                key.as_str(),
                StoreErrorKind::Unavailable,
                "injected: store down",
            ));
        }
        Ok(())
    }
}

fn injected(op: &'static str, key: &ObjectKey, kind: StoreErrorKind) -> BackupError {
    BackupError::store("faulty", op, key.as_str(), kind, "injected failure")
}

#[async_trait]
impl ObjectStore for FaultyStore {
    fn name(&self) -> &'static str {
        "faulty"
    }

    async fn put(&self, key: &ObjectKey, body: Bytes) -> Result<PutReceipt> {
        self.calls.put.fetch_add(1, Ordering::SeqCst);
        self.check_down("put", key)?;
        for f in self.faults() {
            if let Fault::FailPut { kind } = f {
                return Err(injected("put", key, kind));
            }
        }
        self.inner.put(key, body).await
    }

    async fn create_multipart(&self, key: &ObjectKey) -> Result<UploadId> {
        self.check_down("create_multipart", key)?;
        self.inner.create_multipart(key).await
    }

    async fn put_part(
        &self,
        key: &ObjectKey,
        id: &UploadId,
        n: PartNumber,
        body: Bytes,
    ) -> Result<PartReceipt> {
        let call = self.calls.put_part.fetch_add(1, Ordering::SeqCst) + 1;
        self.check_down("put_part", key)?;
        let mut faults = self.faults();
        for (i, f) in faults.clone().into_iter().enumerate() {
            match f {
                Fault::DownAfterParts { after }
                    if self.parts_ok.load(Ordering::SeqCst) >= after =>
                {
                    self.down.store(true, Ordering::SeqCst);
                    return Err(injected("put_part", key, StoreErrorKind::Unavailable));
                }
                Fault::FailPartOnce { nth, kind } if nth == call => {
                    faults.remove(i);
                    if let Ok(mut g) = self.faults.lock() {
                        *g = faults;
                    }
                    return Err(injected("put_part", key, kind));
                }
                _ => {}
            }
        }
        let r = self.inner.put_part(key, id, n, body).await?;
        self.parts_ok.fetch_add(1, Ordering::SeqCst);
        Ok(r)
    }

    async fn complete_multipart(
        &self,
        key: &ObjectKey,
        id: &UploadId,
        parts: Vec<PartReceipt>,
    ) -> Result<PutReceipt> {
        self.calls.complete.fetch_add(1, Ordering::SeqCst);
        self.check_down("complete_multipart", key)?;
        for f in self.faults() {
            if let Fault::FailComplete { kind } = f {
                return Err(injected("complete_multipart", key, kind));
            }
        }
        self.inner.complete_multipart(key, id, parts).await
    }

    async fn abort_multipart(&self, key: &ObjectKey, id: &UploadId) -> Result<()> {
        self.calls.abort.fetch_add(1, Ordering::SeqCst);
        self.inner.abort_multipart(key, id).await
    }

    async fn get(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Result<ByteStream> {
        self.check_down("get", key)?;
        self.inner.get(key, range).await
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        self.inner.head(key).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.inner.delete(key).await
    }

    fn list(&self, prefix: &str) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        self.inner.list_pending_uploads(prefix).await
    }
}

//! Object storage: the [`ObjectStore`] trait that backends implement with primitives, and the
//! backends themselves — S3 API ([`s3`]), OpenStack Swift v1 ([`swift`]), a local directory
//! ([`local`]) — plus the retry policy ([`retry`]) and a fault-injecting decorator for tests
//! ([`faulty`]).
//!
//! Backends do not buffer, retry or run parts concurrently: the one uploader in
//! [`crate::pipeline::upload`] owns concurrency, retries and abort (OpenDAL's `MultipartWrite`
//! split). Keys are relative to the bucket or container the backend was built for.

use std::fmt;
use std::ops::Range;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use futures::stream::BoxStream;

use crate::error::{BackupError, Result};

pub mod faulty;
pub mod local;
pub mod retry;
pub mod s3;
pub mod swift;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use faulty::{Fault, FaultyStore};
pub use local::LocalStore;
pub use retry::RetryPolicy;
pub use s3::{S3Store, S3StoreBuilder};
pub use swift::{SwiftAuth, SwiftStore, SwiftStoreBuilder};

/// A stream of bytes, as read from a store or a tool.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// Longest key accepted (S3's limit is 1024 bytes; Swift's object names too).
const MAX_KEY_LEN: usize = 1024;

/// A validated object key: non-empty, relative, `/`-separated, no empty, `.` or `..`
/// components, no control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Validates `key`.
    ///
    /// # Errors
    /// `InvalidArgument` naming what is wrong.
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        let bad = |reason: &str| Err(BackupError::invalid("object key", reason.to_owned()));
        if key.is_empty() {
            return bad("empty");
        }
        if key.len() > MAX_KEY_LEN {
            return bad("longer than 1024 bytes");
        }
        if key.chars().any(char::is_control) {
            return bad("contains a control character");
        }
        if key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return bad("has an empty, '.' or '..' component (or a leading/trailing '/')");
        }
        Ok(Self(key))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// This key with `suffix` appended (`backup.zst` + `.manifest.json`).
    ///
    /// # Errors
    /// When the result is not a valid key.
    pub fn with_suffix(&self, suffix: &str) -> Result<Self> {
        Self::new(format!("{}{suffix}", self.0))
    }

    /// `self/child`.
    ///
    /// # Errors
    /// When the result is not a valid key.
    pub fn join(&self, child: &str) -> Result<Self> {
        Self::new(format!("{}/{child}", self.0))
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A multipart upload's identifier, as the backend issued it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId(pub String);

/// A 1-based part number (S3 allows 1..=10000).
pub type PartNumber = u32;

/// Most parts in one multipart upload (S3's limit; the uploader refuses more).
pub const MAX_PARTS: PartNumber = 10_000;

/// What a backend returns for a stored part; handed back to `complete_multipart`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartReceipt {
    /// Part number.
    pub number: PartNumber,
    /// The part's entity tag as the store reported it (quotes stripped).
    pub etag: String,
    /// Part size in bytes.
    pub size: u64,
}

/// What a backend returns for a completed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReceipt {
    /// Entity tag, when the store gives one (quotes stripped).
    pub etag: Option<String>,
    /// Object size in bytes.
    pub size: u64,
}

/// Object metadata from `head` or `list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key.
    pub key: ObjectKey,
    /// Size in bytes.
    pub size: u64,
    /// Entity tag, when the store gives one (quotes stripped).
    pub etag: Option<String>,
}

/// A multipart upload that was started and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// The object key it would complete into.
    pub key: String,
    /// Its id.
    pub id: UploadId,
}

/// Storage primitives a backend implements.
///
/// Contract for every method: a failure is a [`BackupError::Store`] whose kind says whether
/// retrying may help ([`BackupError::is_retryable`]); "not found" is
/// [`crate::error::StoreErrorKind::NotFound`]. Methods are safe to retry after a retryable
/// failure: `put`, `put_part` and `complete_multipart` replace what a previous attempt wrote.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug + 'static {
    /// Short backend name for logs and errors (`s3`, `swift`, `local`).
    fn name(&self) -> &'static str;

    /// Stores `body` as `key` in one request, replacing any existing object. Atomic: readers
    /// see the old object or the new one, never a part.
    async fn put(&self, key: &ObjectKey, body: Bytes) -> Result<PutReceipt>;

    /// Starts a multipart upload to `key`. Nothing is visible at `key` until
    /// [`ObjectStore::complete_multipart`].
    async fn create_multipart(&self, key: &ObjectKey) -> Result<UploadId>;

    /// Stores part `n` of upload `id`. Parts may be sent in any order and concurrently;
    /// every part but the last must be at least the backend's minimum part size (5 MiB on S3).
    async fn put_part(
        &self,
        key: &ObjectKey,
        id: &UploadId,
        n: PartNumber,
        body: Bytes,
    ) -> Result<PartReceipt>;

    /// Assembles `parts` (in ascending part number order) into the object at `key`, replacing
    /// any existing object. On success the upload's parts are no longer listed as pending.
    async fn complete_multipart(
        &self,
        key: &ObjectKey,
        id: &UploadId,
        parts: Vec<PartReceipt>,
    ) -> Result<PutReceipt>;

    /// Removes every part of upload `id`. Idempotent: aborting an unknown or already aborted
    /// upload succeeds. Dropping an upload does not clean up; callers must abort.
    async fn abort_multipart(&self, key: &ObjectKey, id: &UploadId) -> Result<()>;

    /// Reads `key`, or the byte `range` of it (end exclusive, clamped to the object's size).
    /// The stream is read incrementally; nothing collects the whole body.
    async fn get(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Result<ByteStream>;

    /// Metadata of `key`.
    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta>;

    /// Deletes `key` (and, for segmented objects, its segments). Deleting a missing key
    /// succeeds.
    async fn delete(&self, key: &ObjectKey) -> Result<()>;

    /// Objects whose key starts with `prefix` (a plain string prefix, not only whole
    /// components), in key order.
    fn list(&self, prefix: &str) -> BoxStream<'static, Result<ObjectMeta>>;

    /// Multipart uploads under `prefix` that were started and neither completed nor aborted.
    async fn list_pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>>;
}

/// Reads a whole (small) object into memory, refusing more than `limit` bytes. For manifests;
/// backup data is always streamed.
///
/// # Errors
/// The store's errors, or `Manifest` when the object exceeds `limit`.
pub async fn get_small(store: &dyn ObjectStore, key: &ObjectKey, limit: usize) -> Result<Vec<u8>> {
    use futures::TryStreamExt;
    let mut s = store.get(key, None).await?;
    let mut out = Vec::new();
    while let Some(b) = s.try_next().await? {
        if out.len() + b.len() > limit {
            return Err(BackupError::Manifest {
                key: key.to_string(),
                reason: format!("larger than {limit} bytes"),
            });
        }
        out.extend_from_slice(&b);
    }
    Ok(out)
}

/// Strips the quotes S3 and Swift put around entity tags.
pub(crate) fn unquote(etag: &str) -> String {
    etag.trim().trim_matches('"').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        for ok in ["a", "a/b", "db/backups/x.zst.enc", "a-b_c.d"] {
            ObjectKey::new(ok).unwrap();
        }
        for bad in ["", "/a", "a/", "a//b", "../a", "a/./b", "a\nb", "a\0b"] {
            assert!(ObjectKey::new(bad).is_err(), "{bad:?}");
        }
        assert!(ObjectKey::new("x".repeat(1025)).is_err());
        let k = ObjectKey::new("a/b").unwrap();
        assert_eq!(k.with_suffix(".m").unwrap().as_str(), "a/b.m");
        assert_eq!(k.join("c").unwrap().as_str(), "a/b/c");
    }
}

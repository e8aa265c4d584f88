//! [`LocalStore`]: objects as files under a root directory, the embedded default.
//!
//! Writes go to a temporary file in the same directory, are fsynced and renamed into place
//! (then the directory is fsynced), so an object is either absent, the old one or complete.
//! Multipart uploads keep one file per part under `<root>/.uploads/<id>/`; `complete`
//! concatenates them the same way, `abort` removes the directory.

use std::io::SeekFrom;
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{
    ByteStream, ObjectKey, ObjectMeta, ObjectStore, PartNumber, PartReceipt, PendingUpload,
    PutReceipt, UploadId,
};
use crate::error::{BackupError, Result, StoreErrorKind};

/// Directory (under the root) holding in-progress multipart uploads.
const UPLOADS: &str = ".uploads";
/// Read size for `get`.
const READ_CHUNK: usize = 256 << 10;

/// A directory-backed object store.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

fn err(op: &'static str, key: &str, e: &std::io::Error) -> BackupError {
    let kind = match e.kind() {
        std::io::ErrorKind::NotFound => StoreErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => StoreErrorKind::Unauthorized,
        // A full disk or a read-only file system will not heal by retrying at once.
        _ => StoreErrorKind::Rejected,
    };
    BackupError::store("local", op, key, kind, e.to_string())
}

fn valid_upload_id(id: &UploadId) -> Result<&str> {
    let s = id.0.as_str();
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(BackupError::invalid(
            "upload id",
            "not an id this store issued",
        ));
    }
    Ok(s)
}

impl LocalStore {
    /// A store rooted at `root` (created if missing).
    ///
    /// # Errors
    /// `Io` when the directory cannot be created.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join(UPLOADS))
            .map_err(|e| BackupError::io(format!("creating {}", root.display()), e))?;
        Ok(Self { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &ObjectKey) -> PathBuf {
        // ObjectKey forbids '..', '.', empty components and a leading '/', so this stays under
        // the root.
        self.root.join(key.as_str())
    }

    fn upload_dir(&self, id: &UploadId) -> Result<PathBuf> {
        Ok(self.root.join(UPLOADS).join(valid_upload_id(id)?))
    }

    /// Writes `parts` (in order) to a temp file beside `dest`, fsyncs and renames it into place.
    async fn write_atomically(
        &self,
        op: &'static str,
        key: &ObjectKey,
        parts: Vec<Source>,
    ) -> Result<u64> {
        let dest = self.path(key);
        let dir = dest
            .parent()
            .ok_or_else(|| BackupError::Internal("object path without parent".into()))?
            .to_owned();
        if dir.starts_with(self.root.join(UPLOADS)) {
            return Err(BackupError::invalid(
                "object key",
                "reserved prefix .uploads",
            ));
        }
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| err(op, key.as_str(), &e))?;
        let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        let result = async {
            let mut f = tokio::fs::File::create(&tmp).await?;
            let mut total = 0u64;
            for p in parts {
                match p {
                    Source::Bytes(b) => {
                        f.write_all(&b).await?;
                        total += b.len() as u64;
                    }
                    Source::File(path) => {
                        let mut src = tokio::fs::File::open(&path).await?;
                        total += tokio::io::copy(&mut src, &mut f).await?;
                    }
                }
            }
            f.sync_all().await?;
            drop(f);
            tokio::fs::rename(&tmp, &dest).await?;
            sync_dir(&dir).await?;
            Ok::<_, std::io::Error>(total)
        }
        .await;
        match result {
            Ok(n) => Ok(n),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(err(op, key.as_str(), &e))
            }
        }
    }
}

enum Source {
    Bytes(Bytes),
    File(PathBuf),
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let d = tokio::fs::File::open(dir).await?;
    d.sync_all().await
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn put(&self, key: &ObjectKey, body: Bytes) -> Result<PutReceipt> {
        let size = self
            .write_atomically("put", key, vec![Source::Bytes(body)])
            .await?;
        Ok(PutReceipt { etag: None, size })
    }

    async fn create_multipart(&self, key: &ObjectKey) -> Result<UploadId> {
        let id = UploadId(uuid::Uuid::new_v4().simple().to_string());
        let dir = self.upload_dir(&id)?;
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| err("create_multipart", key.as_str(), &e))?;
        // The key is recorded so pending uploads can be listed by prefix.
        tokio::fs::write(dir.join("key"), key.as_str())
            .await
            .map_err(|e| err("create_multipart", key.as_str(), &e))?;
        Ok(id)
    }

    async fn put_part(
        &self,
        key: &ObjectKey,
        id: &UploadId,
        n: PartNumber,
        body: Bytes,
    ) -> Result<PartReceipt> {
        let dir = self.upload_dir(id)?;
        if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            return Err(BackupError::store(
                "local",
                "put_part",
                key.as_str(),
                StoreErrorKind::NotFound,
                "no such upload",
            ));
        }
        let size = body.len() as u64;
        let tmp = dir.join(format!(".part-{n}-{}", uuid::Uuid::new_v4().simple()));
        let dest = dir.join(format!("part-{n:05}"));
        let r = async {
            let mut f = tokio::fs::File::create(&tmp).await?;
            f.write_all(&body).await?;
            f.sync_all().await?;
            tokio::fs::rename(&tmp, &dest).await
        }
        .await;
        if let Err(e) = r {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(err("put_part", key.as_str(), &e));
        }
        Ok(PartReceipt {
            number: n,
            etag: format!("part-{n}"),
            size,
        })
    }

    async fn complete_multipart(
        &self,
        key: &ObjectKey,
        id: &UploadId,
        parts: Vec<PartReceipt>,
    ) -> Result<PutReceipt> {
        let dir = self.upload_dir(id)?;
        let mut sources = Vec::with_capacity(parts.len());
        for p in &parts {
            let path = dir.join(format!("part-{:05}", p.number));
            let meta = tokio::fs::metadata(&path)
                .await
                .map_err(|e| err("complete_multipart", key.as_str(), &e))?;
            if meta.len() != p.size {
                return Err(BackupError::store(
                    "local",
                    "complete_multipart",
                    key.as_str(),
                    StoreErrorKind::Rejected,
                    format!(
                        "part {} has {} bytes, expected {}",
                        p.number,
                        meta.len(),
                        p.size
                    ),
                ));
            }
            sources.push(Source::File(path));
        }
        let size = self
            .write_atomically("complete_multipart", key, sources)
            .await?;
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|e| err("complete_multipart", key.as_str(), &e))?;
        Ok(PutReceipt { etag: None, size })
    }

    async fn abort_multipart(&self, key: &ObjectKey, id: &UploadId) -> Result<()> {
        let dir = self.upload_dir(id)?;
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err("abort_multipart", key.as_str(), &e)),
        }
    }

    async fn get(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Result<ByteStream> {
        let path = self.path(key);
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| err("get", key.as_str(), &e))?;
        let len = f
            .metadata()
            .await
            .map_err(|e| err("get", key.as_str(), &e))?
            .len();
        let (start, end) = match range {
            Some(r) => (r.start.min(len), r.end.min(len).max(r.start.min(len))),
            None => (0, len),
        };
        f.seek(SeekFrom::Start(start))
            .await
            .map_err(|e| err("get", key.as_str(), &e))?;
        let key = key.to_string();
        let reader = f.take(end - start);
        let s = tokio_util::io::ReaderStream::with_capacity(reader, READ_CHUNK)
            .map(move |r| r.map_err(|e| err("get", &key, &e)));
        Ok(Box::pin(s))
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let meta = tokio::fs::metadata(self.path(key))
            .await
            .map_err(|e| err("head", key.as_str(), &e))?;
        if !meta.is_file() {
            return Err(BackupError::store(
                "local",
                "head",
                key.as_str(),
                StoreErrorKind::NotFound,
                "not a file",
            ));
        }
        Ok(ObjectMeta {
            key: key.clone(),
            size: meta.len(),
            etag: None,
        })
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err("delete", key.as_str(), &e)),
        }
    }

    fn list(&self, prefix: &str) -> BoxStream<'static, Result<ObjectMeta>> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        // Directory walks are blocking and bounded by what is stored; the listing itself is
        // small metadata, so it is built on a blocking thread and then streamed.
        let fut = async move {
            let p = prefix.clone();
            tokio::task::spawn_blocking(move || walk(&root, &p))
                .await
                .map_err(|e| BackupError::Internal(format!("list task: {e}")))?
        };
        futures::stream::once(fut)
            .map(|r| match r {
                Ok(v) => futures::stream::iter(v.into_iter().map(Ok)).left_stream(),
                Err(e) => futures::stream::iter(vec![Err(e)]).right_stream(),
            })
            .flatten()
            .boxed()
    }

    async fn list_pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let dir = self.root.join(UPLOADS);
        let mut out = Vec::new();
        let mut rd = tokio::fs::read_dir(&dir)
            .await
            .map_err(|e| err("list_pending_uploads", prefix, &e))?;
        while let Some(entry) = rd
            .next_entry()
            .await
            .map_err(|e| err("list_pending_uploads", prefix, &e))?
        {
            let Ok(key) = tokio::fs::read_to_string(entry.path().join("key")).await else {
                continue;
            };
            if key.starts_with(prefix) {
                out.push(PendingUpload {
                    key,
                    id: UploadId(entry.file_name().to_string_lossy().into_owned()),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// Every regular file under `root` (except the uploads and temp files) whose key starts with
/// `prefix`, sorted by key.
fn walk(root: &Path, prefix: &str) -> Result<Vec<ObjectMeta>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err("list", prefix, &e)),
        };
        for entry in rd {
            let entry = entry.map_err(|e| err("list", prefix, &e))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if dir == root && name == UPLOADS || name.starts_with(".tmp-") {
                continue;
            }
            let ft = entry.file_type().map_err(|e| err("list", prefix, &e))?;
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let rel = rel.to_string_lossy().into_owned();
            if ft.is_dir() {
                // Only descend where keys with this prefix can be.
                let as_prefix = format!("{rel}/");
                if prefix.starts_with(&as_prefix) || as_prefix.starts_with(prefix) {
                    stack.push(path);
                }
            } else if ft.is_file() && rel.starts_with(prefix) {
                let size = entry.metadata().map_err(|e| err("list", prefix, &e))?.len();
                if let Ok(key) = ObjectKey::new(rel) {
                    out.push(ObjectMeta {
                        key,
                        size,
                        etag: None,
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    #[tokio::test]
    async fn conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        conformance::run_all(&store, "conf").await;
        // Nothing left behind in the uploads area.
        let left: Vec<_> = std::fs::read_dir(dir.path().join(UPLOADS))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn bad_upload_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        let key = ObjectKey::new("k").unwrap();
        let bad = UploadId("../../etc".into());
        assert!(store.abort_multipart(&key, &bad).await.is_err());
        assert!(
            store
                .put(&ObjectKey::new(".uploads/x").unwrap(), Bytes::new())
                .await
                .is_err()
        );
    }
}

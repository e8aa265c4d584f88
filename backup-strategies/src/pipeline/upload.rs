//! The uploader: the one place that owns multipart concurrency, retries, the completion rule
//! and abort (object_store's `WriteMultipart`, OpenDAL's `MultipartWriter`).
//!
//! Blocks are gathered into parts of `part_size` (a budgeted buffer each); at most
//! `concurrency` parts are in flight. An input of at most one part is stored with one `put`.
//! After the input ends, the caller's `gate` (the tool's exit judgement) decides whether the
//! object is committed (`put` / `complete_multipart`); on any failure in-flight parts finish
//! their current attempt, the upload is aborted and nothing is committed.

use std::future::Future;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::checksum::{Checksum, Checksummer};
use super::chunk::BlockRx;
use super::rate::RateLimiter;
use crate::budget::{BufferPool, PoolBuf};
use crate::error::{BackupError, Result};
use crate::store::{MAX_PARTS, ObjectKey, ObjectStore, PartReceipt, RetryPolicy, UploadId};

/// How the uploader sends parts.
#[derive(Debug, Clone)]
pub struct UploadOpts {
    /// Bytes per part (S3 needs at least 5 MiB for every part but the last).
    pub part_size: usize,
    /// Parts in flight at once.
    pub concurrency: usize,
    /// Retries of each store call.
    pub retry: RetryPolicy,
    /// Optional bandwidth limit shared by the parts.
    pub rate: Option<Arc<RateLimiter>>,
}

/// What an upload stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReport {
    /// SHA-256 and size of the stored bytes.
    pub checksum: Checksum,
    /// The store's entity tag of the object, if it gives one.
    pub etag: Option<String>,
    /// Parts used (0 for a single `put`).
    pub parts: u32,
}

type PartTask = JoinSet<Result<PartReceipt>>;

/// State of one multipart upload while parts are sent.
struct Multipart {
    id: UploadId,
    tasks: PartTask,
    receipts: Vec<PartReceipt>,
    next: u32,
}

/// Uploads `input` to `key`, committing only if `gate` succeeds after the input ended.
/// `on_stored` is told the stored bytes that landed so far (for progress).
///
/// # Errors
/// The first error of the input, the store (after retries), the gate, or `Cancelled`; in every
/// error case nothing is visible at `key` and no part is left behind.
#[allow(clippy::too_many_arguments)]
pub async fn upload<G, T>(
    mut input: BlockRx,
    store: Arc<dyn ObjectStore>,
    key: &ObjectKey,
    opts: &UploadOpts,
    pool: &BufferPool,
    gate: G,
    on_stored: &(dyn Fn(u64) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<(UploadReport, T)>
where
    G: Future<Output = Result<T>>,
{
    if opts.part_size == 0 || opts.concurrency == 0 {
        return Err(BackupError::invalid(
            "upload",
            "part size and concurrency must be > 0",
        ));
    }
    let mut sum = Checksummer::new();
    let mut part: Option<PoolBuf> = None;
    let mut mp: Option<Multipart> = None;
    let mut landed = 0u64;
    // Stops retries of in-flight parts once the upload has failed.
    let stop = cancel.child_token();

    let result: Result<(UploadReport, T)> = async {
        loop {
            let item = tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(BackupError::Cancelled),
                item = input.recv() => item,
            };
            let Some(item) = item else { break };
            let block = item?;
            sum.update(&block.data);
            let mut data: &[u8] = &block.data;
            while !data.is_empty() {
                if part.as_ref().is_some_and(PoolBuf::is_full) {
                    // More data follows, so the full part goes out now.
                    if let Some(full) = part.take() {
                        send_part(
                            &mut mp,
                            full,
                            &store,
                            key,
                            opts,
                            &stop,
                            &mut landed,
                            on_stored,
                        )
                        .await?;
                    }
                }
                if part.is_none() {
                    part = Some(pool.get(opts.part_size).await?);
                }
                if let Some(buf) = part.as_mut() {
                    let take = buf.fill_from(data);
                    data = &data[take..];
                }
            }
            if let Some(m) = mp.as_mut() {
                reap_finished(m, &mut landed, on_stored)?;
            }
        }

        match mp.as_mut() {
            None => {
                let body = part.take().map(PoolBuf::freeze).unwrap_or_default();
                let meta = wait_gate(gate, cancel).await?;
                if let Some(r) = &opts.rate {
                    r.take(body.len() as u64).await;
                }
                let receipt = opts
                    .retry
                    .run(cancel, || store.put(key, body.clone()))
                    .await?;
                on_stored(body.len() as u64);
                Ok((
                    UploadReport {
                        checksum: std::mem::take(&mut sum).finish(),
                        etag: receipt.etag,
                        parts: 0,
                    },
                    meta,
                ))
            }
            Some(_) => {
                if let Some(last) = part.take() {
                    send_part(
                        &mut mp,
                        last,
                        &store,
                        key,
                        opts,
                        &stop,
                        &mut landed,
                        on_stored,
                    )
                    .await?;
                }
                let m = mp
                    .as_mut()
                    .ok_or_else(|| BackupError::Internal("multipart state lost".into()))?;
                while let Some(r) = m.tasks.join_next().await {
                    let receipt = joined(r)?;
                    landed += receipt.size;
                    on_stored(landed);
                    m.receipts.push(receipt);
                }
                let meta = wait_gate(gate, cancel).await?;
                let mut receipts = std::mem::take(&mut m.receipts);
                receipts.sort_by_key(|r| r.number);
                let parts = u32::try_from(receipts.len()).unwrap_or(u32::MAX);
                let id = m.id.clone();
                let done = opts
                    .retry
                    .run(cancel, || {
                        store.complete_multipart(key, &id, receipts.clone())
                    })
                    .await?;
                Ok((
                    UploadReport {
                        checksum: std::mem::take(&mut sum).finish(),
                        etag: done.etag,
                        parts,
                    },
                    meta,
                ))
            }
        }
    }
    .await;

    if result.is_err() {
        stop.cancel();
        if let Some(mut m) = mp.take() {
            // Let in-flight attempts end so no part lands after the abort.
            while m.tasks.join_next().await.is_some() {}
            abort(&store, key, &m.id, &opts.retry).await;
        }
    }
    result
}

async fn wait_gate<G, T>(gate: G, cancel: &CancellationToken) -> Result<T>
where
    G: Future<Output = Result<T>>,
{
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(BackupError::Cancelled),
        r = gate => r,
    }
}

/// Aborts with its own retries; a failed abort is logged (the upload is failing anyway) and
/// leaves the upload listed by `list_pending_uploads` for a later cleanup.
async fn abort(store: &Arc<dyn ObjectStore>, key: &ObjectKey, id: &UploadId, retry: &RetryPolicy) {
    let never = CancellationToken::new();
    if let Err(e) = retry.run(&never, || store.abort_multipart(key, id)).await {
        tracing::error!(%key, upload_id = %id.0, error = %e, "Could not abort a failed upload.");
    } else {
        tracing::info!(%key, upload_id = %id.0, "Aborted a failed upload.");
    }
}

fn joined(
    r: std::result::Result<Result<PartReceipt>, tokio::task::JoinError>,
) -> Result<PartReceipt> {
    r.map_err(|e| BackupError::Internal(format!("part task: {e}")))?
}

fn reap_finished(
    m: &mut Multipart,
    landed: &mut u64,
    on_stored: &(dyn Fn(u64) + Send + Sync),
) -> Result<()> {
    while let Some(r) = m.tasks.try_join_next() {
        let receipt = joined(r)?;
        *landed += receipt.size;
        on_stored(*landed);
        m.receipts.push(receipt);
    }
    Ok(())
}

/// Starts the multipart upload if needed, waits for a free slot, then sends `part`.
#[allow(clippy::too_many_arguments)]
async fn send_part(
    mp: &mut Option<Multipart>,
    buf: PoolBuf,
    store: &Arc<dyn ObjectStore>,
    key: &ObjectKey,
    opts: &UploadOpts,
    stop: &CancellationToken,
    landed: &mut u64,
    on_stored: &(dyn Fn(u64) + Send + Sync),
) -> Result<()> {
    if mp.is_none() {
        let id = opts.retry.run(stop, || store.create_multipart(key)).await?;
        *mp = Some(Multipart {
            id,
            tasks: JoinSet::new(),
            receipts: Vec::new(),
            next: 1,
        });
    }
    let m = mp
        .as_mut()
        .ok_or_else(|| BackupError::Internal("multipart state lost".into()))?;
    while m.tasks.len() >= opts.concurrency {
        if let Some(r) = m.tasks.join_next().await {
            let receipt = joined(r)?;
            *landed += receipt.size;
            on_stored(*landed);
            m.receipts.push(receipt);
        }
    }
    if m.next > MAX_PARTS {
        return Err(BackupError::invalid(
            "part_size",
            format!("the backup needs more than {MAX_PARTS} parts; raise the part size"),
        ));
    }
    let n = m.next;
    m.next += 1;
    let body = buf.freeze();
    let store = Arc::clone(store);
    let key = key.clone();
    let id = m.id.clone();
    let retry = opts.retry;
    let rate = opts.rate.clone();
    let stop = stop.clone();
    m.tasks.spawn(async move {
        if let Some(r) = rate {
            r.take(body.len() as u64).await;
        }
        retry
            .run(&stop, || store.put_part(&key, &id, n, body.clone()))
            .await
    });
    Ok(())
}

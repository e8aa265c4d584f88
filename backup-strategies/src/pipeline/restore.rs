//! The read side: download a stored object as budgeted blocks (rate-limited, checksummed,
//! size-checked against the manifest) and feed plaintext blocks to a restore tool's stdin.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::checksum::Checksummer;
use super::chunk::{Block, BlockRx};
use super::rate::RateLimiter;
use crate::budget::{BufferPool, PoolBuf};
use crate::error::{BackupError, CryptoError, Result};
use crate::manifest::Manifest;
use crate::run::{RunningSink, ToolExit};
use crate::store::{ObjectStore, RetryPolicy};

/// What the download checks the stored object against.
#[derive(Debug, Clone)]
pub struct Expected {
    /// Stored size.
    pub size: u64,
    /// Stored SHA-256 (hex).
    pub sha256: String,
}

impl From<&Manifest> for Expected {
    fn from(m: &Manifest) -> Self {
        Self {
            size: m.data.stored_size,
            sha256: m.data.sha256.clone(),
        }
    }
}

/// Downloads `m`'s data object into blocks of `chunk` bytes. A size or checksum mismatch is
/// sent as the final item, so the stages behind fail before they report success.
#[allow(clippy::too_many_arguments)]
pub fn download(
    store: Arc<dyn ObjectStore>,
    m: &Manifest,
    chunk: usize,
    depth: usize,
    pool: BufferPool,
    rate: Option<Arc<RateLimiter>>,
    retry: RetryPolicy,
    stored: Arc<AtomicU64>,
    cancel: CancellationToken,
) -> Result<BlockRx> {
    let key = m.data_key()?;
    let expected = Expected::from(m);
    let (tx, rx) = mpsc::channel(depth.max(1));
    tokio::spawn(async move {
        let run = async {
            let meta = retry.run(&cancel, || store.head(&key)).await?;
            if meta.size < expected.size {
                return Err(BackupError::Crypto(CryptoError::Truncated));
            }
            if meta.size != expected.size {
                return Err(BackupError::Checksum {
                    key: key.to_string(),
                    expected: format!("{} bytes", expected.size),
                    actual: format!("{} bytes", meta.size),
                });
            }
            let mut body = retry.run(&cancel, || store.get(&key, None)).await?;
            let mut sum = Checksummer::new();
            let mut cur: Option<PoolBuf> = None;
            loop {
                let next = tokio::select! {
                    biased;
                    () = cancel.cancelled() => return Err(BackupError::Cancelled),
                    n = body.next() => n,
                };
                let Some(bytes) = next else { break };
                let bytes = bytes?;
                if let Some(r) = &rate {
                    r.take(bytes.len() as u64).await;
                }
                sum.update(&bytes);
                stored.store(sum.bytes(), Ordering::Relaxed);
                let mut data: &[u8] = &bytes;
                while !data.is_empty() {
                    if cur.is_none() {
                        cur = Some(pool.get(chunk).await?);
                    }
                    if let Some(buf) = cur.as_mut() {
                        let take = buf.fill_from(data);
                        data = &data[take..];
                        if buf.is_full()
                            && let Some(buf) = cur.take()
                            && tx.send(Ok(Block::pooled(buf))).await.is_err()
                        {
                            return Ok(());
                        }
                    }
                }
            }
            if let Some(buf) = cur.take()
                && tx.send(Ok(Block::pooled(buf))).await.is_err()
            {
                return Ok(());
            }
            let got = sum.finish();
            if got.size < expected.size {
                return Err(BackupError::Crypto(CryptoError::Truncated));
            }
            if got.sha256 != expected.sha256 || got.size != expected.size {
                return Err(BackupError::Checksum {
                    key: key.to_string(),
                    expected: expected.sha256.clone(),
                    actual: got.sha256,
                });
            }
            Ok(())
        };
        if let Err(e) = run.await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Ok(rx)
}

/// Writes every block of `input` to the sink's stdin, then closes it and judges the exit with
/// `judge`. On a pipeline error the tool is killed and the pipeline's error returned; when the
/// tool stops reading, its own exit explains why.
pub async fn feed_sink(
    mut input: BlockRx,
    sink: RunningSink,
    raw: &AtomicU64,
    judge: impl FnOnce(&ToolExit) -> Result<()>,
    cancel: &CancellationToken,
) -> Result<()> {
    let RunningSink {
        mut stdin,
        done,
        killer,
        ..
    } = sink;
    let fed: Result<()> = async {
        loop {
            let item = tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(BackupError::Cancelled),
                i = input.recv() => i,
            };
            let Some(item) = item else { break };
            let block = item?;
            stdin
                .write_all(&block.data)
                .await
                .map_err(|e| BackupError::io("writing to the restore tool", e))?;
            raw.fetch_add(block.data.len() as u64, Ordering::Relaxed);
        }
        stdin
            .shutdown()
            .await
            .map_err(|e| BackupError::io("closing the restore tool's input", e))
    }
    .await;
    drop(stdin);
    match fed {
        Ok(()) => {
            let exit = done.await?;
            judge(&exit)
        }
        Err(e @ BackupError::Io { .. }) => {
            // The tool stopped reading: its exit is the better explanation.
            let exit = done.await?;
            judge(&exit)?;
            Err(e)
        }
        Err(e) => {
            killer.kill();
            let _ = done.await;
            Err(e)
        }
    }
}

/// Counts the blocks of `input` (for `verify`): succeeds once every stage behind it did.
pub async fn drain(mut input: BlockRx, raw: &AtomicU64, cancel: &CancellationToken) -> Result<()> {
    loop {
        let item = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(BackupError::Cancelled),
            i = input.recv() => i,
        };
        let Some(item) = item else { return Ok(()) };
        raw.fetch_add(item?.data.len() as u64, Ordering::Relaxed);
    }
}

//! Blocks: budgeted byte buffers that flow between stages, and the stage that cuts a tool's
//! output (any `AsyncRead`) into blocks of a fixed size.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::budget::{BufferPool, PoolBuf};
use crate::error::{BackupError, Result};

/// Bytes of a pooled buffer; the buffer (and the budget it holds) goes back to its pool when
/// the last reference to the bytes drops.
#[derive(Debug)]
pub struct Block {
    /// The bytes.
    pub data: Bytes,
}

impl Block {
    /// A block of a pooled buffer.
    pub fn pooled(buf: PoolBuf) -> Self {
        Self { data: buf.freeze() }
    }
}

/// The receiving end of a stage.
pub type BlockRx = mpsc::Receiver<Result<Block>>;

/// Reads `reader` into blocks of exactly `chunk` bytes (the last may be shorter; an empty input
/// gives no block), counting bytes into `counter`. Runs as a task until EOF, an error or the
/// receiver going away.
pub fn read_chunks<R>(
    mut reader: R,
    chunk: usize,
    depth: usize,
    pool: BufferPool,
    counter: Arc<AtomicU64>,
) -> BlockRx
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::channel(depth.max(1));
    tokio::spawn(async move {
        loop {
            let mut buf = match pool.get(chunk).await {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let mut eof = false;
            while !buf.is_full() {
                match reader.read(buf.spare()).await {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        buf.advance(n);
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(BackupError::io("reading the tool's output", e)))
                            .await;
                        return;
                    }
                }
            }
            if !buf.is_empty() && tx.send(Ok(Block::pooled(buf))).await.is_err() {
                return;
            }
            if eof {
                return;
            }
        }
    });
    rx
}

/// Writes the blocks of a blocking stage: fills budgeted buffers of `chunk` bytes and sends
/// each when full (or on [`BlockWriter::finish`]). Used as the `io::Write` sink of zstd.
pub struct BlockWriter {
    tx: mpsc::Sender<Result<Block>>,
    pool: BufferPool,
    chunk: usize,
    cur: Option<PoolBuf>,
    written: u64,
    limit: Option<u64>,
}

impl BlockWriter {
    /// A writer sending `chunk`-byte blocks to `tx`; writing more than `limit` bytes in total
    /// fails (a guard for decompression).
    pub fn new(
        tx: mpsc::Sender<Result<Block>>,
        pool: BufferPool,
        chunk: usize,
        limit: Option<u64>,
    ) -> Self {
        Self {
            tx,
            pool,
            chunk,
            cur: None,
            written: 0,
            limit,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn send_current(&mut self) -> std::io::Result<()> {
        if let Some(buf) = self.cur.take()
            && !buf.is_empty()
        {
            self.tx
                .blocking_send(Ok(Block::pooled(buf)))
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stage closed"))?;
        }
        Ok(())
    }

    /// Sends what is buffered.
    ///
    /// # Errors
    /// `BrokenPipe` when the next stage is gone.
    pub fn finish(&mut self) -> std::io::Result<()> {
        self.send_current()
    }
}

impl std::io::Write for BlockWriter {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        let n = data.len();
        if let Some(limit) = self.limit
            && self.written + n as u64 > limit
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "output larger than the manifest says",
            ));
        }
        while !data.is_empty() {
            if self.cur.is_none() {
                let buf = self
                    .pool
                    .get_blocking(self.chunk)
                    .map_err(std::io::Error::other)?;
                self.cur = Some(buf);
            }
            let Some(buf) = self.cur.as_mut() else {
                break;
            };
            let take = buf.fill_from(data);
            data = &data[take..];
            if buf.is_full() {
                self.send_current()?;
            }
        }
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

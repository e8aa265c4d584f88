//! Blocks: budgeted byte buffers that flow between stages, and the stage that cuts a tool's
//! output (any `AsyncRead`) into blocks of a fixed size.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::budget::{BudgetPermit, MemoryBudget};
use crate::error::{BackupError, Result};

/// A buffer and the budget it holds; the budget is returned when the block is dropped.
#[derive(Debug)]
pub struct Block {
    /// The bytes.
    pub data: Bytes,
    _permit: BudgetPermit,
}

impl Block {
    /// Wraps `data` with the `permit` that pays for it.
    pub fn new(data: Bytes, permit: BudgetPermit) -> Self {
        Self {
            data,
            _permit: permit,
        }
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
    budget: MemoryBudget,
    counter: Arc<AtomicU64>,
) -> BlockRx
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::channel(depth.max(1));
    tokio::spawn(async move {
        loop {
            let permit = match budget.acquire(chunk).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let mut buf = BytesMut::with_capacity(chunk);
            let mut eof = false;
            while buf.len() < chunk {
                match reader.read_buf(&mut buf).await {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
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
            if !buf.is_empty() && tx.send(Ok(Block::new(buf.freeze(), permit))).await.is_err() {
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
    budget: MemoryBudget,
    chunk: usize,
    cur: Option<(BytesMut, BudgetPermit)>,
    written: u64,
    limit: Option<u64>,
}

impl BlockWriter {
    /// A writer sending `chunk`-byte blocks to `tx`; writing more than `limit` bytes in total
    /// fails (a guard for decompression).
    pub fn new(
        tx: mpsc::Sender<Result<Block>>,
        budget: MemoryBudget,
        chunk: usize,
        limit: Option<u64>,
    ) -> Self {
        Self {
            tx,
            budget,
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
        if let Some((buf, permit)) = self.cur.take()
            && !buf.is_empty()
        {
            self.tx
                .blocking_send(Ok(Block::new(buf.freeze(), permit)))
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
                let permit = self
                    .budget
                    .acquire_blocking(self.chunk)
                    .map_err(std::io::Error::other)?;
                self.cur = Some((BytesMut::with_capacity(self.chunk), permit));
            }
            let Some((buf, _)) = self.cur.as_mut() else {
                break;
            };
            let take = (self.chunk - buf.len()).min(data.len());
            buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if buf.len() == self.chunk {
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

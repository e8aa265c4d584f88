//! zstd stages on blocking threads: [`compress`] (multi-threaded "zstdmt" workers) and
//! [`decompress`] (streaming, bounded output). Both read blocks from a bounded channel and
//! write blocks into the next, so back-pressure reaches the source.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::chunk::{Block, BlockRx, BlockWriter};
use crate::budget::BufferPool;
use crate::error::{BackupError, Result};

/// zstd settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZstdOpts {
    /// Compression level (1..=19; 3 is zstd's default).
    pub level: i32,
    /// Worker threads (0 = compress on the stage thread itself).
    pub workers: u32,
}

impl Default for ZstdOpts {
    fn default() -> Self {
        Self {
            level: 3,
            workers: 2,
        }
    }
}

/// Bytes of input per multi-threaded compression job. zstd's buffers scale with the job: at
/// level 3 with two workers about 16 MiB with 1 MiB jobs, 9 MiB with its 512 KiB minimum (which
/// compressed about 20 % slower in wall time), some 40 MiB more with its 8 MiB default.
const MT_JOB_SIZE: u32 = 1 << 20;

/// Sends `e` unless the next stage is gone (then nobody needs it).
fn report(tx: &mpsc::Sender<Result<Block>>, e: BackupError) {
    let _ = tx.blocking_send(Err(e));
}

fn is_closed(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

/// Compresses the blocks of `input` into blocks of `chunk` bytes.
pub fn compress(
    mut input: BlockRx,
    opts: ZstdOpts,
    chunk: usize,
    depth: usize,
    pool: BufferPool,
) -> BlockRx {
    let (tx, rx) = mpsc::channel(depth.max(1));
    tokio::task::spawn_blocking(move || {
        let writer = BlockWriter::new(tx.clone(), pool, chunk, None);
        let run = || -> std::result::Result<(), Option<BackupError>> {
            let io = |e: std::io::Error| {
                if is_closed(&e) {
                    None
                } else {
                    Some(BackupError::io("compressing", e))
                }
            };
            let mut enc = zstd::stream::write::Encoder::new(writer, opts.level).map_err(io)?;
            if opts.workers > 0 {
                enc.multithread(opts.workers).map_err(io)?;
                // zstd's default job is 4 windows (8 MiB at level 3) per worker, in and out;
                // small jobs keep the compressor's memory near the pipeline budget.
                enc.set_parameter(zstd::stream::raw::CParameter::JobSize(MT_JOB_SIZE))
                    .map_err(io)?;
            }
            enc.include_checksum(true).map_err(io)?;
            while let Some(item) = input.blocking_recv() {
                let block = item.map_err(Some)?;
                enc.write_all(&block.data).map_err(io)?;
            }
            let mut w = enc.finish().map_err(io)?;
            w.finish().map_err(io)?;
            Ok(())
        };
        if let Err(Some(e)) = run() {
            report(&tx, e);
        }
    });
    rx
}

/// `io::Read` over a block channel, for the streaming decoder. An error item is kept aside
/// (typed) and surfaces as an I/O error to the decoder.
struct ChannelReader {
    rx: BlockRx,
    cur: Option<Block>,
    pos: usize,
    failed: Arc<Mutex<Option<BackupError>>>,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(b) = &self.cur {
                let data: &Bytes = &b.data;
                if self.pos < data.len() {
                    let n = (data.len() - self.pos).min(out.len());
                    out[..n].copy_from_slice(&data[self.pos..self.pos + n]);
                    self.pos += n;
                    return Ok(n);
                }
            }
            self.cur = None;
            self.pos = 0;
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(b)) => self.cur = Some(b),
                Some(Err(e)) => {
                    if let Ok(mut f) = self.failed.lock() {
                        *f = Some(e);
                    }
                    return Err(std::io::Error::other("upstream stage failed"));
                }
            }
        }
    }
}

/// Decompresses the blocks of `input` into blocks of `chunk` bytes. More than `limit` bytes of
/// output, or an incomplete or corrupt frame, fail the stage.
pub fn decompress(
    input: BlockRx,
    chunk: usize,
    depth: usize,
    pool: BufferPool,
    limit: Option<u64>,
) -> BlockRx {
    let (tx, rx) = mpsc::channel(depth.max(1));
    tokio::task::spawn_blocking(move || {
        let failed = Arc::new(Mutex::new(None));
        let reader = ChannelReader {
            rx: input,
            cur: None,
            pos: 0,
            failed: Arc::clone(&failed),
        };
        let mut writer = BlockWriter::new(tx.clone(), pool, chunk, limit);
        let run = |writer: &mut BlockWriter| -> std::io::Result<()> {
            let mut dec = zstd::stream::read::Decoder::new(reader)?;
            std::io::copy(&mut dec, writer)?;
            writer.finish()
        };
        if let Err(e) = run(&mut writer) {
            let upstream = failed.lock().ok().and_then(|mut f| f.take());
            match upstream {
                Some(u) => report(&tx, u),
                None if is_closed(&e) => {}
                None => report(
                    &tx,
                    BackupError::Crypto(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        crate::error::CryptoError::Truncated
                    } else {
                        crate::error::CryptoError::Tampered
                    }),
                ),
            }
        }
    });
    rx
}

//! The streaming pipeline and the [`BackupEngine`] that runs it.
//!
//! Backup: `tool stdout → chunk → zstd → AEAD → SHA-256 tee → multipart upload`, then the
//! manifest. Restore and verify: `download (SHA-256, size) → AEAD open → zstd → tool stdin`
//! (or a counter). Stages are tasks and blocking threads joined by bounded channels; every
//! buffer holds bytes of one [`MemoryBudget`], so memory is set by part size × concurrency and
//! chunk size × depth, never by the database's size.
//!
//! Completion rule: a backup is reported only when the tool exited 0, its stderr shows no
//! failure, every part landed and the object was committed; then the manifest is written last.
//! On any failure the tool is killed, the upload aborted, and no manifest is written.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

pub mod checksum;
pub mod chunk;
pub mod compress;
pub mod encrypt;
pub mod rate;
pub mod restore;
pub mod upload;

use self::compress::ZstdOpts;
use self::encrypt::{Cipher, InstanceKey, Sealer, TAG_LEN};
use self::rate::RateLimiter;
use self::upload::{UploadOpts, upload};
use crate::budget::{BufferPool, MemoryBudget};
use crate::error::{BackupError, CryptoError, Result};
use crate::manifest::{
    BackupKind, CompressionInfo, DataInfo, EncryptionInfo, MANIFEST_FORMAT, Manifest,
};
use crate::run::ToolRunner;
use crate::store::{ObjectKey, ObjectStore, RetryPolicy};
use crate::strategy::{BackupRequest, BackupStrategy, RestoreRequest};

/// Largest chunk size an engine can be configured with.
const MAX_CHUNK: usize = 64 << 20;

/// Restores accept stored chunks up to this size even when the engine seals smaller ones, so
/// backups made with other chunk sizes (up to 1 MiB) stay restorable.
const RESTORE_CHUNK_FLOOR: usize = 1 << 20;

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct PipelineOpts {
    /// Plaintext bytes per encrypted chunk (part of the stored format; restores read the size
    /// from the stored header and accept up to this or 1 MiB, whichever is larger).
    pub chunk_size: usize,
    /// Bytes per block passed between the tool, zstd and the cipher (not stored anywhere):
    /// small blocks keep the queues between stages small.
    pub block_size: usize,
    /// Blocks queued between two stages.
    pub depth: usize,
    /// zstd settings.
    pub zstd: ZstdOpts,
    /// Chunk cipher (when a key is given).
    pub cipher: Cipher,
    /// Bytes per uploaded part.
    pub part_size: usize,
    /// Parts in flight.
    pub concurrency: usize,
    /// Retries of store calls.
    pub retry: RetryPolicy,
    /// Upload bandwidth limit (bytes/s).
    pub upload_rate: Option<u64>,
    /// Download bandwidth limit for restore and verify (bytes/s).
    pub download_rate: Option<u64>,
    /// Shortest time between two progress reports (the last one is always sent).
    pub progress_interval: Duration,
    /// Verify every stored backup of a chain before a restore starts writing.
    pub verify_before_restore: bool,
}

impl Default for PipelineOpts {
    fn default() -> Self {
        Self {
            // Small chunks keep the queue of sealed chunks small; a 16-byte tag per 256 KiB
            // costs nothing measurable.
            chunk_size: 256 << 10,
            block_size: 256 << 10,
            depth: 2,
            zstd: ZstdOpts::default(),
            cipher: Cipher::default(),
            part_size: 8 << 20,
            concurrency: 2,
            retry: RetryPolicy::default(),
            upload_rate: None,
            download_rate: None,
            progress_interval: Duration::from_secs(1),
            verify_before_restore: false,
        }
    }
}

impl PipelineOpts {
    /// The budget that lets every stage hold its most at once: parts in flight plus the one
    /// being filled, and per stage boundary `depth + 2` blocks (queued, being sent, being
    /// filled) — two boundaries of plain blocks and one of sealed chunks, either way round —
    /// with per-buffer rounding slack. Waiting on such a budget never deadlocks.
    pub fn required_budget(&self) -> usize {
        let sealed = self.chunk_size + TAG_LEN + 1024;
        let stored = self.restore_chunk_max() + TAG_LEN + 1024;
        let block = self.block_size + 1024;
        let parts = (self.concurrency + 1) * (self.part_size + 1024);
        let backup = parts + (self.depth + 2) * (2 * block + sealed);
        let restore = (self.depth + 2) * (2 * block + stored);
        backup.max(restore) + encrypt::HEADER_LEN + 1024
    }

    /// The largest stored chunk a restore accepts.
    fn restore_chunk_max(&self) -> usize {
        self.chunk_size.max(RESTORE_CHUNK_FLOOR)
    }

    fn validate(&self) -> Result<()> {
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK {
            return Err(BackupError::invalid("chunk_size", "1 byte to 64 MiB"));
        }
        if self.block_size == 0 || self.block_size > MAX_CHUNK {
            return Err(BackupError::invalid("block_size", "1 byte to 64 MiB"));
        }
        if self.part_size == 0 || self.concurrency == 0 || self.depth == 0 {
            return Err(BackupError::invalid(
                "pipeline",
                "part_size, concurrency and depth must be > 0",
            ));
        }
        if !(1..=22).contains(&self.zstd.level) {
            return Err(BackupError::invalid("zstd.level", "1 to 22"));
        }
        Ok(())
    }
}

/// Which operation a progress report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Creating a backup.
    Backup,
    /// Restoring one.
    Restore,
    /// Verifying one.
    Verify,
}

/// A progress report.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Operation.
    pub phase: Phase,
    /// Bytes the tool produced (backup) or received (restore) so far.
    pub raw_bytes: u64,
    /// Stored bytes uploaded (backup) or downloaded (restore, verify) so far.
    pub stored_bytes: u64,
    /// Time since the operation started.
    pub elapsed: Duration,
    /// Average raw bytes per second so far.
    pub bytes_per_sec: u64,
    /// Whether this is the final report.
    pub done: bool,
}

/// Receives progress reports (the agent turns them into Trove `update_backup` calls and
/// metrics). Called from pipeline tasks: must not block.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

struct Reporter {
    phase: Phase,
    f: Option<ProgressFn>,
    start: Instant,
    interval: Duration,
    last: Mutex<Option<Instant>>,
}

impl Reporter {
    fn new(phase: Phase, f: Option<ProgressFn>, interval: Duration) -> Self {
        Self {
            phase,
            f,
            start: Instant::now(),
            interval,
            last: Mutex::new(None),
        }
    }

    fn report(&self, raw: u64, stored: u64, done: bool) {
        let Some(f) = &self.f else { return };
        let now = Instant::now();
        if !done {
            let Ok(mut last) = self.last.lock() else {
                return;
            };
            if last.is_some_and(|l| now.duration_since(l) < self.interval) {
                return;
            }
            *last = Some(now);
        }
        let elapsed = now.duration_since(self.start);
        let secs = elapsed.as_secs_f64();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rate = if secs > 0.0 {
            (raw as f64 / secs) as u64
        } else {
            0
        };
        f(&Progress {
            phase: self.phase,
            raw_bytes: raw,
            stored_bytes: stored,
            elapsed,
            bytes_per_sec: rate,
            done,
        });
    }
}

/// A backup to create.
#[derive(Debug, Clone, Default)]
pub struct BackupSpec {
    /// Backup id: 1 to 128 of `[A-Za-z0-9._-]` (Trove's backup UUID).
    pub backup_id: String,
    /// Key prefix (a "directory") for the objects, e.g. the instance id; empty = none.
    pub prefix: String,
    /// Datastore version for the manifest.
    pub datastore_version: String,
    /// Databases (logical strategies); empty = all.
    pub databases: Vec<String>,
    /// Manifest key of the parent, for an incremental backup.
    pub parent_manifest: Option<ObjectKey>,
    /// The instance backup key; `None` stores the backup unencrypted.
    pub key: Option<InstanceKey>,
    /// Extra values for the manifest (from `BackupHooks::before_backup` ...).
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// A committed backup.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// Key of the manifest (the backup's location).
    pub manifest_key: ObjectKey,
    /// The manifest as written.
    pub manifest: Manifest,
    /// Wall time.
    pub elapsed: Duration,
}

/// A finished restore.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// Backups restored, full first.
    pub chain: Vec<String>,
    /// Raw bytes fed to the tools.
    pub raw_bytes: u64,
    /// Stored bytes read.
    pub stored_bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// A successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Backup id.
    pub backup_id: String,
    /// Stored bytes read and checksummed.
    pub stored_bytes: u64,
    /// Raw bytes after decryption and decompression.
    pub raw_bytes: u64,
    /// The stored SHA-256 (as in the manifest, now confirmed).
    pub sha256: String,
}

/// Runs backups, restores and verifications against one store with one tool runner.
#[derive(Debug, Clone)]
pub struct BackupEngine {
    store: Arc<dyn ObjectStore>,
    runner: Arc<dyn ToolRunner>,
    opts: PipelineOpts,
    budget: MemoryBudget,
}

fn valid_backup_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        || id.starts_with('.')
    {
        return Err(BackupError::invalid(
            "backup_id",
            "1 to 128 of [A-Za-z0-9._-], not starting with '.'",
        ));
    }
    Ok(())
}

impl BackupEngine {
    /// An engine with a budget of exactly [`PipelineOpts::required_budget`].
    ///
    /// # Errors
    /// `InvalidArgument` for bad options.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        runner: Arc<dyn ToolRunner>,
        opts: PipelineOpts,
    ) -> Result<Self> {
        opts.validate()?;
        let budget = MemoryBudget::new(opts.required_budget());
        Ok(Self {
            store,
            runner,
            opts,
            budget,
        })
    }

    /// Uses `budget` (shared with other engines, or larger for tests).
    ///
    /// # Errors
    /// `InvalidArgument` when it is smaller than the options require.
    pub fn with_budget(mut self, budget: MemoryBudget) -> Result<Self> {
        if budget.capacity() < self.opts.required_budget() {
            return Err(BackupError::invalid(
                "memory_budget",
                format!(
                    "{} bytes is less than the {} these options need",
                    budget.capacity(),
                    self.opts.required_budget()
                ),
            ));
        }
        self.budget = budget;
        Ok(self)
    }

    /// The memory budget (its peak shows the pipeline's data memory).
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The options.
    pub fn opts(&self) -> &PipelineOpts {
        &self.opts
    }

    fn rate(limit: Option<u64>) -> Option<Arc<RateLimiter>> {
        limit.map(|r| Arc::new(RateLimiter::new(r)))
    }

    /// Reads a manifest.
    ///
    /// # Errors
    /// Store errors and `Manifest`.
    pub async fn manifest(&self, key: &ObjectKey) -> Result<Manifest> {
        Manifest::load(self.store.as_ref(), key).await
    }

    /// Loads the parent named by `key` for a backup or restore of `child`.
    async fn parent(&self, child: &str, key: &ObjectKey) -> Result<Manifest> {
        let missing = || BackupError::ParentMissing {
            child: child.to_owned(),
            parent: key.to_string(),
        };
        let m = match self.manifest(key).await {
            Ok(m) => m,
            Err(e) if e.is_not_found() => return Err(missing()),
            Err(e) => return Err(e),
        };
        match self.store.head(&m.data_key()?).await {
            Ok(_) => Ok(m),
            Err(e) if e.is_not_found() => Err(missing()),
            Err(e) => Err(e),
        }
    }

    /// Creates a backup with `strategy`: runs its tool, streams the output through the
    /// pipeline into the store and writes the manifest last.
    ///
    /// # Errors
    /// `InvalidArgument`, `ParentMissing`, `DatabaseNotFound`, `Tool`, store errors,
    /// `Cancelled`. After any error no manifest exists and no part is left behind.
    pub async fn backup(
        &self,
        strategy: &dyn BackupStrategy,
        spec: &BackupSpec,
        progress: Option<ProgressFn>,
        cancel: &CancellationToken,
    ) -> Result<BackupReport> {
        valid_backup_id(&spec.backup_id)?;
        let started = Instant::now();
        let parent = match &spec.parent_manifest {
            None => None,
            Some(pk) => {
                if !strategy.supports_incremental() {
                    return Err(BackupError::invalid(
                        "parent",
                        format!("strategy '{}' has no incremental backups", strategy.id()),
                    ));
                }
                let p = self.parent(&spec.backup_id, pk).await?;
                if p.strategy != strategy.id() {
                    return Err(BackupError::invalid(
                        "parent",
                        format!(
                            "parent was made by '{}', not '{}'",
                            p.strategy,
                            strategy.id()
                        ),
                    ));
                }
                Some((pk.clone(), p))
            }
        };
        let req = BackupRequest {
            backup_id: spec.backup_id.clone(),
            databases: spec.databases.clone(),
            parent: parent.as_ref().map(|(_, p)| p.clone()),
        };
        let name = format!(
            "{}.{}.zst{}",
            spec.backup_id,
            strategy.extension(),
            if spec.key.is_some() { ".enc" } else { "" }
        );
        let data_key = if spec.prefix.is_empty() {
            ObjectKey::new(name)?
        } else {
            ObjectKey::new(format!("{}/{name}", spec.prefix.trim_end_matches('/')))?
        };
        let manifest_key = Manifest::key_for(&data_key)?;
        let cmd = strategy.backup_command(&req)?;
        let job = cancel.child_token();
        let o = &self.opts;
        let sealer = match &spec.key {
            Some(k) => Some(Sealer::new(k, o.cipher, o.chunk_size, &spec.backup_id)?),
            None => None,
        };

        let tool = self.runner.spawn_reader(&cmd).await?;
        let killer = tool.killer.clone();
        let raw = Arc::new(AtomicU64::new(0));
        // This backup's buffers, freed when it ends.
        let pool = BufferPool::new(self.budget.clone());
        let rx = chunk::read_chunks(
            tool.stdout,
            o.block_size,
            o.depth,
            pool.clone(),
            Arc::clone(&raw),
        );
        let rx = compress::compress(rx, o.zstd, o.block_size, o.depth, pool.clone());
        let encryption = sealer.as_ref().map(|_| EncryptionInfo {
            cipher: o.cipher,
            chunk_size: o.chunk_size as u64,
            key_id: spec
                .key
                .as_ref()
                .map(|k| hex::encode(k.key_id()))
                .unwrap_or_default(),
            format: 1,
        });
        let rx = match sealer {
            Some(s) => encrypt::encrypt_stage(rx, s, o.depth, pool.clone()),
            None => rx,
        };
        let done = tool.done;
        let gate = async {
            let exit = done.await?;
            strategy.judge_backup(&req, &exit)
        };
        let reporter = Reporter::new(Phase::Backup, progress, o.progress_interval);
        let on_stored = |stored: u64| reporter.report(raw.load(Ordering::Relaxed), stored, false);
        let uopts = UploadOpts {
            part_size: o.part_size,
            concurrency: o.concurrency,
            retry: o.retry,
            rate: Self::rate(o.upload_rate),
        };
        let uploaded = upload(
            rx,
            Arc::clone(&self.store),
            &data_key,
            &uopts,
            &pool,
            gate,
            &on_stored,
            &job,
        )
        .await;
        let (up, tool_report) = match uploaded {
            Ok(v) => v,
            Err(e) => {
                killer.kill();
                job.cancel();
                tracing::warn!(backup_id = %spec.backup_id, error = %e, "Backup failed.");
                return Err(e);
            }
        };

        let kind = match &parent {
            None => BackupKind::Full,
            Some((pk, p)) => BackupKind::Incremental {
                parent_id: p.backup_id.clone(),
                parent_manifest: pk.to_string(),
                parent_sha256: p.data.sha256.clone(),
            },
        };
        let mut metadata = spec.metadata.clone();
        if !spec.databases.is_empty() {
            metadata.insert("databases".into(), spec.databases.clone().into());
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            backup_id: spec.backup_id.clone(),
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            datastore: strategy.datastore().into(),
            datastore_version: spec.datastore_version.clone(),
            strategy: strategy.id().into(),
            kind,
            position: tool_report.position,
            tool: tool_report.values,
            metadata,
            data: DataInfo {
                key: data_key.to_string(),
                raw_size: raw.load(Ordering::Relaxed),
                stored_size: up.checksum.size,
                sha256: up.checksum.sha256.clone(),
                etag: up.etag.clone(),
                parts: up.parts,
                part_size: o.part_size as u64,
            },
            compression: CompressionInfo::from(o.zstd),
            encryption,
        };
        let body = bytes::Bytes::from(manifest.to_json()?);
        // The commit marker. Its failure un-does the data so nothing half-made remains.
        let never = CancellationToken::new();
        if let Err(e) = o
            .retry
            .run(&job, || self.store.put(&manifest_key, body.clone()))
            .await
        {
            if let Err(d) = o.retry.run(&never, || self.store.delete(&data_key)).await {
                tracing::error!(key = %data_key, error = %d, "Could not remove the data of a failed backup.");
            }
            return Err(e);
        }
        reporter.report(manifest.data.raw_size, manifest.data.stored_size, true);
        tracing::info!(
            backup_id = %spec.backup_id,
            raw = manifest.data.raw_size,
            stored = manifest.data.stored_size,
            "Backup committed."
        );
        Ok(BackupReport {
            manifest_key,
            manifest,
            elapsed: started.elapsed(),
        })
    }

    /// The chain ending at `key`, full backup first. Checks that each parent is present and
    /// unchanged.
    ///
    /// # Errors
    /// `ParentMissing`, `Manifest`, store errors.
    pub async fn chain(&self, key: &ObjectKey) -> Result<Vec<Manifest>> {
        let mut chain = vec![self.manifest(key).await?];
        loop {
            let last = chain
                .last()
                .ok_or_else(|| BackupError::Internal("empty chain".into()))?;
            let BackupKind::Incremental {
                parent_manifest,
                parent_sha256,
                ..
            } = &last.kind
            else {
                break;
            };
            if chain.len() > 1000 {
                return Err(BackupError::Manifest {
                    key: key.to_string(),
                    reason: "incremental chain longer than 1000".into(),
                });
            }
            let pk =
                ObjectKey::new(parent_manifest.clone()).map_err(|_| BackupError::Manifest {
                    key: key.to_string(),
                    reason: "invalid parent key".into(),
                })?;
            let child = last.backup_id.clone();
            let expected = parent_sha256.clone();
            let p = self.parent(&child, &pk).await?;
            if p.data.sha256 != expected {
                return Err(BackupError::Manifest {
                    key: pk.to_string(),
                    reason: format!("parent of '{child}' was replaced (checksum differs)"),
                });
            }
            chain.push(p);
        }
        chain.reverse();
        Ok(chain)
    }

    fn check_key(m: &Manifest, key: Option<&InstanceKey>) -> Result<()> {
        match (&m.encryption, key) {
            (None, _) => Ok(()),
            (Some(_), None) => Err(BackupError::invalid(
                "key",
                format!(
                    "backup '{}' is encrypted; its instance key is required",
                    m.backup_id
                ),
            )),
            (Some(e), Some(k)) if e.key_id != hex::encode(k.key_id()) => {
                Err(CryptoError::WrongKey.into())
            }
            _ => Ok(()),
        }
    }

    /// The plaintext stream of one stored backup (download → decrypt → decompress).
    fn open_stream(
        &self,
        m: &Manifest,
        key: Option<&InstanceKey>,
        stored: Arc<AtomicU64>,
        cancel: &CancellationToken,
    ) -> Result<chunk::BlockRx> {
        let o = &self.opts;
        // This stream's buffers, freed when it ends.
        let pool = BufferPool::new(self.budget.clone());
        let rx = restore::download(
            Arc::clone(&self.store),
            m,
            o.block_size,
            o.depth,
            pool.clone(),
            Self::rate(o.download_rate),
            o.retry,
            stored,
            cancel.clone(),
        )?;
        let rx = match (&m.encryption, key) {
            (Some(_), Some(k)) => encrypt::decrypt_stage(
                rx,
                k.clone(),
                m.backup_id.clone(),
                // Stored chunks must fit this engine's budgeted buffers.
                o.restore_chunk_max(),
                o.depth,
                pool.clone(),
            ),
            (Some(_), None) => return Err(BackupError::invalid("key", "required")),
            (None, _) => rx,
        };
        Ok(compress::decompress(
            rx,
            o.block_size,
            o.depth,
            pool,
            Some(m.data.raw_size),
        ))
    }

    /// Streams a stored backup (and nothing else) back, authenticating and checksumming it
    /// without restoring.
    ///
    /// # Errors
    /// `Crypto` (`Tampered`, `Truncated`, `WrongKey`), `Checksum`, store errors.
    pub async fn verify(
        &self,
        manifest_key: &ObjectKey,
        key: Option<&InstanceKey>,
        progress: Option<ProgressFn>,
        cancel: &CancellationToken,
    ) -> Result<VerifyReport> {
        let m = self.manifest(manifest_key).await?;
        self.verify_manifest(&m, key, progress, cancel).await
    }

    async fn verify_manifest(
        &self,
        m: &Manifest,
        key: Option<&InstanceKey>,
        progress: Option<ProgressFn>,
        cancel: &CancellationToken,
    ) -> Result<VerifyReport> {
        Self::check_key(m, key)?;
        let job = cancel.child_token();
        let stored = Arc::new(AtomicU64::new(0));
        let raw = AtomicU64::new(0);
        let reporter = Reporter::new(Phase::Verify, progress, self.opts.progress_interval);
        let rx = self.open_stream(m, key, Arc::clone(&stored), &job)?;
        let r = restore::drain(rx, &raw, &job).await;
        job.cancel();
        r?;
        let raw = raw.load(Ordering::Relaxed);
        if raw != m.data.raw_size {
            return Err(CryptoError::Truncated.into());
        }
        reporter.report(raw, stored.load(Ordering::Relaxed), true);
        Ok(VerifyReport {
            backup_id: m.backup_id.clone(),
            stored_bytes: stored.load(Ordering::Relaxed),
            raw_bytes: raw,
            sha256: m.data.sha256.clone(),
        })
    }

    /// Restores the backup at `manifest_key` (with its incremental parents) with `strategy`.
    /// Everything that can be checked before writing is checked first: the chain, the
    /// strategy, the key (and, with `verify_before_restore`, every stored byte).
    ///
    /// # Errors
    /// `ParentMissing`, `Crypto`, `Checksum`, `Tool`, store errors, `Cancelled`.
    pub async fn restore(
        &self,
        strategy: &dyn BackupStrategy,
        manifest_key: &ObjectKey,
        req: RestoreRequest,
        key: Option<&InstanceKey>,
        progress: Option<ProgressFn>,
        cancel: &CancellationToken,
    ) -> Result<RestoreReport> {
        let started = Instant::now();
        let chain = self.chain(manifest_key).await?;
        for m in &chain {
            if m.strategy != strategy.id() {
                return Err(BackupError::invalid(
                    "strategy",
                    format!(
                        "backup '{}' was made by '{}', not '{}'",
                        m.backup_id,
                        m.strategy,
                        strategy.id()
                    ),
                ));
            }
            Self::check_key(m, key)?;
        }
        if self.opts.verify_before_restore {
            for m in &chain {
                self.verify_manifest(m, key, None, cancel).await?;
            }
        }
        let req = RestoreRequest { chain, ..req };
        strategy.before_restore(self.runner.as_ref(), &req).await?;
        let reporter = Reporter::new(Phase::Restore, progress, self.opts.progress_interval);
        let stored = Arc::new(AtomicU64::new(0));
        let raw = AtomicU64::new(0);
        let mut stored_total = 0;
        for (step, m) in req.chain.iter().enumerate() {
            let job = cancel.child_token();
            let step_stored = Arc::new(AtomicU64::new(0));
            let rx = self.open_stream(m, key, Arc::clone(&step_stored), &job)?;
            let cmd = strategy.restore_command(&req, step)?;
            let sink = self.runner.spawn_writer(&cmd).await?;
            let before = raw.load(Ordering::Relaxed);
            let r = restore::feed_sink(rx, sink, &raw, |e| strategy.judge_restore(e), &job).await;
            job.cancel();
            r?;
            stored_total += step_stored.load(Ordering::Relaxed);
            stored.store(stored_total, Ordering::Relaxed);
            if raw.load(Ordering::Relaxed) - before != m.data.raw_size {
                return Err(CryptoError::Truncated.into());
            }
            reporter.report(raw.load(Ordering::Relaxed), stored_total, false);
        }
        strategy.finish_restore(self.runner.as_ref(), &req).await?;
        let raw = raw.load(Ordering::Relaxed);
        reporter.report(raw, stored_total, true);
        Ok(RestoreReport {
            chain: req.chain.iter().map(|m| m.backup_id.clone()).collect(),
            raw_bytes: raw,
            stored_bytes: stored_total,
            elapsed: started.elapsed(),
        })
    }

    /// Deletes a backup: the manifest first (so it stops being a backup), then the data.
    ///
    /// # Errors
    /// Store errors.
    pub async fn delete(&self, manifest_key: &ObjectKey) -> Result<()> {
        let m = match self.manifest(manifest_key).await {
            Ok(m) => Some(m),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let never = CancellationToken::new();
        self.opts
            .retry
            .run(&never, || self.store.delete(manifest_key))
            .await?;
        if let Some(m) = m {
            let dk = m.data_key()?;
            self.opts
                .retry
                .run(&never, || self.store.delete(&dk))
                .await?;
        }
        Ok(())
    }
}

//! # guest-agent-backup
//!
//! Backups and restores for the guest agent: strategies that run the datastore's own tools
//! ([`strategies`]), a streaming pipeline with bounded memory
//! (`tool → zstd → AEAD → SHA-256 → multipart upload`, [`pipeline`]), and object stores
//! ([`store`]: S3 API, OpenStack Swift, local directory).
//!
//! The entry point is [`BackupEngine`]: `backup` commits a backup only when the tool succeeded
//! and every part landed, writing the [`Manifest`] last; `restore` streams it back into a
//! restore tool after checking the chain, the key and (chunk by chunk) authenticity;
//! `verify` authenticates and checksums a stored backup without restoring it.

pub mod budget;
pub mod error;
pub mod manifest;
pub mod pipeline;
pub mod run;
pub mod store;
pub mod strategies;
pub mod strategy;

/// Re-exported so strategies written outside this crate use the same macro version.
pub use async_trait::async_trait;
pub use budget::{BufferPool, MemoryBudget, PoolBuf};
pub use error::{BackupError, CryptoError, Result, StoreErrorKind};
pub use manifest::Manifest;
pub use pipeline::encrypt::{Cipher, InstanceKey};
pub use pipeline::{
    BackupEngine, BackupReport, BackupSpec, PipelineOpts, Progress, ProgressFn, RestoreReport,
    VerifyReport,
};
pub use run::{ProcessRunner, ToolRunner};
pub use store::{ObjectKey, ObjectStore};
pub use strategy::{BackupRequest, BackupStrategy, RestoreRequest};

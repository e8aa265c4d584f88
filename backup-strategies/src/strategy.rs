//! The [`BackupStrategy`] trait: how one datastore tool produces a backup stream and how the
//! stream is restored, independent of the pipeline and of where the tool runs.
//!
//! A strategy only builds commands and judges tool exits; the engine
//! ([`crate::pipeline::BackupEngine`]) runs them through a [`ToolRunner`] and owns the stream.

use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;
use guest_agent_api::Position;

use crate::error::{BackupError, Result};
use crate::manifest::Manifest;
use crate::run::{CommandSpec, ToolExit, ToolRunner};

/// What a backup is asked for.
#[derive(Debug, Clone, Default)]
pub struct BackupRequest {
    /// The backup id (used in labels).
    pub backup_id: String,
    /// Databases to include (logical strategies); empty = all.
    pub databases: Vec<String>,
    /// The parent's manifest for an incremental backup.
    pub parent: Option<Manifest>,
}

/// What a finished backup tool reported.
#[derive(Debug, Clone, Default)]
pub struct ToolReport {
    /// Transaction position of the backup, when the tool tells.
    pub position: Option<Position>,
    /// Other values for the manifest (checkpoint LSN ...).
    pub values: serde_json::Map<String, serde_json::Value>,
}

/// Where and how a restore writes.
#[derive(Debug, Clone, Default)]
pub struct RestoreRequest {
    /// For physical strategies: the (empty) data directory to fill.
    pub target_dir: Option<PathBuf>,
    /// Scratch space for incremental deltas (physical strategies).
    pub work_dir: Option<PathBuf>,
    /// For logical strategies: the database to restore into (default: the backed-up one).
    pub database: Option<String>,
    /// The chain being restored, full first; filled in by the engine.
    pub chain: Vec<Manifest>,
}

impl RestoreRequest {
    /// The target directory or an `InvalidArgument` error.
    ///
    /// # Errors
    /// When the request has none.
    pub fn require_target(&self) -> Result<&PathBuf> {
        self.target_dir
            .as_ref()
            .ok_or_else(|| BackupError::invalid("target_dir", "required for a physical restore"))
    }
}

/// A backup method of one datastore.
#[async_trait]
pub trait BackupStrategy: Send + Sync + fmt::Debug {
    /// Stable id stored in manifests (`pg_basebackup`, `pg_dump`, `mariabackup`, `mariadb_dump`).
    fn id(&self) -> &'static str;

    /// Datastore family (`postgresql`, `mariadb`).
    fn datastore(&self) -> &'static str;

    /// File extension of the raw stream (`tar`, `pgdump`, `xbstream`, `sql`).
    fn extension(&self) -> &'static str;

    /// Whether incremental backups are supported.
    fn supports_incremental(&self) -> bool {
        false
    }

    /// The tool that writes the backup to stdout.
    ///
    /// # Errors
    /// `InvalidArgument` for requests the strategy cannot serve.
    fn backup_command(&self, req: &BackupRequest) -> Result<CommandSpec>;

    /// Judges the finished backup tool: success only if it exited 0 and its stderr shows no
    /// failure; reports what the tool printed about the backup.
    ///
    /// # Errors
    /// `Tool`, or `DatabaseNotFound` when the tool said the database does not exist.
    fn judge_backup(&self, req: &BackupRequest, exit: &ToolExit) -> Result<ToolReport>;

    /// Prepares the target before any stream is restored (directories, ownership, database).
    ///
    /// # Errors
    /// Tool or I/O failures.
    async fn before_restore(&self, runner: &dyn ToolRunner, req: &RestoreRequest) -> Result<()>;

    /// The tool that consumes element `step` of `req.chain` on stdin.
    ///
    /// # Errors
    /// `InvalidArgument` for requests the strategy cannot serve.
    fn restore_command(&self, req: &RestoreRequest, step: usize) -> Result<CommandSpec>;

    /// Judges a finished restore tool.
    ///
    /// # Errors
    /// `Tool` when it failed.
    fn judge_restore(&self, exit: &ToolExit) -> Result<()> {
        if exit.success() {
            Ok(())
        } else {
            Err(exit.to_error())
        }
    }

    /// Runs after every stream was restored (prepare, apply incrementals ...).
    ///
    /// # Errors
    /// Tool or I/O failures.
    async fn finish_restore(&self, runner: &dyn ToolRunner, req: &RestoreRequest) -> Result<()>;
}

/// Fails with the tool's error unless `exit` succeeded.
///
/// # Errors
/// `Tool`.
pub fn require_success(exit: &ToolExit) -> Result<()> {
    if exit.success() {
        Ok(())
    } else {
        Err(exit.to_error())
    }
}

//! Backup hooks: which strategies a driver supports and what it does around a backup or restore.

use async_trait::async_trait;

use crate::{OpContext, Result};

/// Name of a backup strategy (`pg_basebackup`, `pg_dump`, `mariabackup`, `mariadb_dump`).
pub type StrategyId = &'static str;

/// Work a driver does around backups and restores.
#[async_trait]
pub trait BackupHooks: Send + Sync {
    /// Strategies this driver can back up and restore with.
    fn strategies(&self) -> &[StrategyId];

    /// Runs before a backup; returns metadata to store with it (binlog position ...).
    async fn before_backup(
        &self,
        ctx: &OpContext,
    ) -> Result<serde_json::Map<String, serde_json::Value>>;

    /// Runs after a backup, whether it succeeded or not.
    async fn after_backup(&self, ctx: &OpContext) -> Result<()>;

    /// Stops the server and empties the data directory for a restore.
    async fn prepare_restore(&self, ctx: &OpContext) -> Result<()>;

    /// Fixes ownership, applies recovery settings and starts the server after a restore.
    async fn finish_restore(&self, ctx: &OpContext) -> Result<()>;
}

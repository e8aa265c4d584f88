//! Backup hooks: which strategies a driver supports, how backup tools reach its datastore, and
//! what it does around a backup or restore.

use std::path::PathBuf;

use async_trait::async_trait;

use crate::{OpContext, Result};

/// Name of a backup strategy (`pg_basebackup`, `pg_dump`, `mariabackup`, `mariadb_dump`).
pub type StrategyId = &'static str;

/// How backup and restore tools (run by the agent, outside the driver) reach the datastore.
/// Credentials are only ever in files (0600), never in this value or on a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolAccess {
    /// Directories holding the datastore's client tools (`pg_basebackup`, `pg_dump`,
    /// `mariabackup` ...), searched in order; empty means the system's (`/usr/bin`).
    pub bin_dirs: Vec<PathBuf>,
    /// The server's Unix socket: the socket file (MySQL) or its directory (PostgreSQL).
    pub socket: PathBuf,
    /// The server's port (PostgreSQL names its socket by it).
    pub port: u16,
    /// Account the tools log in as (PostgreSQL: also for replication connections).
    pub user: String,
    /// Credentials for that account: for MySQL an option file the tools read as their only
    /// `--defaults-file` (it includes [`ToolAccess::server_config`] and adds the account), for
    /// PostgreSQL a libpq password file (`PGPASSFILE`); `None` when the login needs none (peer
    /// identity over the socket).
    pub credentials_file: Option<PathBuf>,
    /// The server's own option file (MySQL `my.cnf`), for tools that need no login.
    pub server_config: Option<PathBuf>,
    /// The server's data directory.
    pub data_dir: PathBuf,
    /// Private scratch directory for tools, outside the data directory.
    pub tmp_dir: PathBuf,
    /// OS account that owns the data; restore tools run as it (when the agent is root).
    pub os_user: Option<String>,
}

/// Work a driver does around backups and restores.
#[async_trait]
pub trait BackupHooks: Send + Sync {
    /// Strategies this driver can back up and restore with; the first is the default
    /// (physical) one.
    fn strategies(&self) -> &[StrategyId];

    /// How tools reach the datastore; writes the credentials file when one is needed.
    async fn tool_access(&self, ctx: &OpContext) -> Result<ToolAccess>;

    /// Runs before a backup; returns metadata to store with it (binlog position ...).
    async fn before_backup(
        &self,
        ctx: &OpContext,
    ) -> Result<serde_json::Map<String, serde_json::Value>>;

    /// Runs after a backup, whether it succeeded or not.
    async fn after_backup(&self, ctx: &OpContext) -> Result<()>;

    /// Stops the server and empties the data directory for a physical restore, keeping what
    /// the driver manages itself (configuration it wrote for this server) aside.
    async fn prepare_restore(&self, ctx: &OpContext) -> Result<()>;

    /// After a physical restore filled the data directory: puts this server's own managed
    /// configuration back (port, socket, access rules), drops the source's replication
    /// settings, fixes ownership, makes the driver's administrative login work again (the
    /// restored catalog is the source's) and starts the server.
    async fn finish_restore(&self, ctx: &OpContext) -> Result<()>;
}

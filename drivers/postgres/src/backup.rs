//! Backup hooks: `pg_basebackup` (physical) and `pg_dump` (one database) reach the server over
//! its Unix socket as `postgres` by the agent's peer identity (pg_hba admits replication
//! connections for it too), so no password file is needed; around a physical restore the
//! driver keeps the files that describe this server (port, socket, access rules,
//! configuration) aside in its state directory and puts them back over the source's.

use std::fs;
use std::path::PathBuf;

use async_trait::async_trait;
use guest_agent_api::backup::{BackupHooks, StrategyId, ToolAccess};
use guest_agent_api::fsutil::{ensure_dir, io_err, write_file};
use guest_agent_api::{Error, Lifecycle, OpContext, Result, StopMode};

use crate::replication::{
    LOCAL_FILES, PASSFILE, RECOVERY_SIGNAL, STANDBY_SIGNAL, remove_if_exists,
};
use crate::{ADMIN_USER, PgDriver, ROLE_CONF_FILE};

/// Physical first: the default.
const STRATEGIES: &[StrategyId] = &["pg_basebackup", "pg_dump"];
/// Directory in the state directory holding this server's own files during a restore.
const STASH_DIR: &str = "restore-stash";
/// Marker in the stash: the stash is complete (written last).
const STASH_DONE: &str = ".complete";

impl PgDriver {
    fn stash_dir(&self) -> PathBuf {
        self.state_dir.join(STASH_DIR)
    }

    /// Copies this server's own files into the stash (absent ones stay absent there).
    fn stash_local_files(&self) -> Result<()> {
        let dir = self.stash_dir();
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err("removing", &dir))?;
        }
        ensure_dir(&dir, 0o700, None)?;
        for (name, bytes) in self.keep_local_files()? {
            if let Some(b) = bytes {
                write_file(&dir.join(name), &b, 0o600, None)?;
            }
        }
        write_file(&dir.join(STASH_DONE), b"", 0o600, None)
    }

    /// Puts the stashed files back over what the restore brought, then drops the stash.
    fn unstash_local_files(&self) -> Result<()> {
        let dir = self.stash_dir();
        if !dir.join(STASH_DONE).exists() {
            return Err(Error::InvalidState {
                operation: "finish restore",
                reason: format!(
                    "{} holds no complete copy of this server's files; prepare_restore first",
                    dir.display()
                ),
            });
        }
        let owner = self.owner()?;
        for name in LOCAL_FILES {
            let stashed = dir.join(name);
            let target = self.data_dir.join(name);
            match fs::read(&stashed) {
                Ok(b) => write_file(&target, &b, 0o600, owner.as_ref())?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => remove_if_exists(&target)?,
                Err(e) => return Err(io_err("reading", &stashed)(e)),
            }
        }
        fs::remove_dir_all(&dir).map_err(io_err("removing", &dir))
    }
}

#[async_trait]
impl BackupHooks for PgDriver {
    fn strategies(&self) -> &[StrategyId] {
        STRATEGIES
    }

    async fn tool_access(&self, ctx: &OpContext) -> Result<ToolAccess> {
        ctx.cancelled()?;
        let tmp_dir = self.state_dir.join("tmp");
        ensure_dir(&tmp_dir, 0o700, None)?;
        Ok(ToolAccess {
            bin_dirs: self.bin_dirs(),
            socket: self.run_dir.clone(),
            port: self.port,
            user: ADMIN_USER.to_owned(),
            credentials_file: None,
            server_config: None,
            data_dir: self.data_dir.clone(),
            tmp_dir,
            os_user: self.os_user.clone(),
        })
    }

    async fn before_backup(
        &self,
        ctx: &OpContext,
    ) -> Result<serde_json::Map<String, serde_json::Value>> {
        let mut m = serde_json::Map::new();
        // Informational: the manifest carries the exact position the tool reports.
        if let Ok(p) = guest_agent_api::Health::position(self, ctx).await {
            m.insert("lsn".to_owned(), p.to_string().into());
        }
        Ok(m)
    }

    async fn after_backup(&self, ctx: &OpContext) -> Result<()> {
        ctx.cancelled()
    }

    async fn prepare_restore(&self, ctx: &OpContext) -> Result<()> {
        self.require_initialised("prepare a restore")?;
        self.stash_local_files()?;
        self.stop(ctx, StopMode::Fast).await?;
        ctx.cancelled()?;
        tracing::info!(data_dir = %self.data_dir.display(), "Emptying the data directory for a restore.");
        self.clear_data_dir()
    }

    async fn finish_restore(&self, ctx: &OpContext) -> Result<()> {
        self.require_initialised("finish a restore")?;
        self.unstash_local_files()?;
        // The source's replication state and run files mean nothing here.
        for name in [
            ROLE_CONF_FILE,
            PASSFILE,
            STANDBY_SIGNAL,
            RECOVERY_SIGNAL,
            "postmaster.pid",
            "postmaster.opts",
        ] {
            remove_if_exists(&self.data_dir.join(name))?;
        }
        self.write_access_files(self.owner()?.as_ref())?;
        self.start(ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn physical_strategy_is_the_default() {
        assert_eq!(STRATEGIES.first(), Some(&"pg_basebackup"));
        assert!(LOCAL_FILES.contains(&"postgresql.conf"));
    }
}

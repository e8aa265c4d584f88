//! Backup hooks: the strategies this driver backs up with, the binary log position recorded
//! with a backup (Trove's `pre_create_backup` answer), and stopping, emptying, fixing
//! ownership and starting around a restore.

use std::fs;
use std::path::Path;

use crate::MySqlDriver;
use crate::position::applied;
use crate::replication::column;
use async_trait::async_trait;
use guest_agent_api::backup::{BackupHooks, StrategyId};
use guest_agent_api::lifecycle::{Lifecycle, StopMode};
use guest_agent_api::{Error, OpContext, Result};

/// Physical (mariabackup) and logical (mariadb-dump) backups.
const STRATEGIES: &[StrategyId] = &["mariabackup", "mariadb_dump"];

/// Removes everything inside `dir`, keeping `dir` itself (it may be a mount point).
fn empty_dir(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let path = entry.path();
        let is_dir = entry
            .file_type()
            .map_err(|e| Error::io(format!("inspecting {}", path.display()), e))?
            .is_dir();
        let removed = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
    }
    Ok(())
}

/// Hands `dir` and everything below it to `uid:gid` (symbolic links themselves, not their
/// targets).
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
        .map_err(|e| Error::io(format!("changing the owner of {}", dir.display()), e))?;
    let meta = fs::symlink_metadata(dir)
        .map_err(|e| Error::io(format!("inspecting {}", dir.display()), e))?;
    if meta.is_dir() {
        for entry in
            fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
        {
            let entry = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
            chown_tree(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[async_trait]
impl BackupHooks for MySqlDriver {
    fn strategies(&self) -> &[StrategyId] {
        STRATEGIES
    }

    async fn before_backup(
        &self,
        ctx: &OpContext,
    ) -> Result<serde_json::Map<String, serde_json::Value>> {
        ctx.cancelled()?;
        let mut s = self.connector.connect().await?;
        // Read by column name: the statement has grown columns across versions.
        let rows = s.rows(s.server.binlog_status_sql()).await?;
        let gtid = applied(&mut s).await?;
        s.close().await;
        let mut m = serde_json::Map::new();
        if let Some(row) = rows.first() {
            if let Some(file) = column(row, &["File"]) {
                m.insert("log_file".to_owned(), file.into());
            }
            if let Some(pos) = column(row, &["Position"]).and_then(|p| p.parse::<u64>().ok()) {
                m.insert("log_position".to_owned(), pos.into());
            }
        }
        m.insert("log_executed_gtid_set".to_owned(), gtid.to_string().into());
        Ok(m)
    }

    async fn after_backup(&self, ctx: &OpContext) -> Result<()> {
        ctx.cancelled()
    }

    async fn prepare_restore(&self, ctx: &OpContext) -> Result<()> {
        self.stop(ctx, StopMode::Fast).await?;
        ctx.cancelled()?;
        tracing::info!(data_dir = %self.data_dir.display(), "Emptying the data directory for a restore.");
        empty_dir(&self.data_dir)
    }

    async fn finish_restore(&self, ctx: &OpContext) -> Result<()> {
        ctx.cancelled()?;
        if let Some(o) = self.file_owner()? {
            chown_tree(&self.data_dir, o.0, o.1)?;
        }
        self.start(ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_dir_keeps_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("mysql/sub")).unwrap();
        fs::write(dir.path().join("ibdata1"), b"x").unwrap();
        fs::write(dir.path().join("mysql/sub/f"), b"x").unwrap();
        empty_dir(dir.path()).unwrap();
        assert!(dir.path().is_dir());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        empty_dir(&dir.path().join("missing")).unwrap();
    }

    #[test]
    fn chown_tree_to_the_current_owner() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/f"), b"x").unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        chown_tree(dir.path(), uid, gid).unwrap();
        assert!(STRATEGIES.contains(&"mariabackup"));
    }
}

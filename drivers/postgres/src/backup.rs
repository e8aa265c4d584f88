//! Backup hooks: `pg_basebackup` (physical) and `pg_dump` (one database) reach the server over
//! its Unix socket as `postgres` by the agent's peer identity (pg_hba admits replication
//! connections for it too), so no password file is needed; around a physical restore the
//! driver keeps the files that describe this server (port, socket, access rules,
//! configuration) aside in its state directory and puts them back over the source's, drops
//! the source's replication state, hands the restored files to the OS user and gives the
//! restored catalog's administrative and replication roles this server's stored passwords.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use guest_agent_api::backup::{BackupHooks, StrategyId, ToolAccess};
use guest_agent_api::fsutil::{Owner, ensure_dir, io_err, write_file};
use guest_agent_api::{Error, Lifecycle, OpContext, Result, StopMode};

use crate::config::{include_line, read_optional};
use crate::error::{Subject, stmt};
use crate::replication::{
    LOCAL_FILES, PASSFILE, RECOVERY_SIGNAL, STANDBY_SIGNAL, remove_if_exists,
};
use crate::sql::{Connector, password_literal, quote_ident, read_admin_password};
use crate::{ADMIN_USER, MANAGED_CONF_FILE, PgDriver, REPLICATION_USER, ROLE_CONF_FILE};

/// Physical first: the default.
const STRATEGIES: &[StrategyId] = &["pg_basebackup", "pg_dump"];
/// Directory in the state directory holding this server's own files during a restore.
const STASH_DIR: &str = "restore-stash";
/// Marker in the stash: the stash is complete (written last).
const STASH_DONE: &str = ".complete";
/// The tools' scratch directory in the state directory.
const TOOL_TMP_DIR: &str = "tmp";
/// Files a restored data directory may carry that mean nothing on this server: the source's
/// replication role settings and walreceiver password file, its recovery signals and its
/// run files.
const SOURCE_ONLY_FILES: &[&str] = &[
    ROLE_CONF_FILE,
    PASSFILE,
    STANDBY_SIGNAL,
    RECOVERY_SIGNAL,
    "postmaster.pid",
    "postmaster.opts",
];

impl PgDriver {
    fn stash_dir(&self) -> PathBuf {
        self.state_dir.join(STASH_DIR)
    }

    /// Whether the stash holds a complete copy of this server's files.
    fn stash_complete(&self) -> bool {
        self.stash_dir().join(STASH_DONE).exists()
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

    /// Puts the stashed files back over what the restore brought (the stash stays until the
    /// restored server runs, so a failed finish can be retried).
    fn unstash_local_files(&self, owner: Option<&Owner>) -> Result<()> {
        let dir = self.stash_dir();
        if !self.stash_complete() {
            return Err(Error::InvalidState {
                operation: "finish restore",
                reason: format!(
                    "{} holds no complete copy of this server's files; prepare_restore first",
                    dir.display()
                ),
            });
        }
        for name in LOCAL_FILES {
            let stashed = dir.join(name);
            let target = self.data_dir.join(name);
            match fs::read(&stashed) {
                Ok(b) => write_file(&target, &b, 0o600, owner)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => remove_if_exists(&target)?,
                Err(e) => return Err(io_err("reading", &stashed)(e)),
            }
        }
        Ok(())
    }

    /// Makes sure `postgresql.conf` includes the managed file (exactly once when the driver
    /// adds it) and the managed file its own includes.
    fn ensure_managed_include(&self, owner: Option<&Owner>) -> Result<()> {
        let path = self.data_dir.join("postgresql.conf");
        let text = read_optional(&path)?.unwrap_or_default();
        if include_count(&text) == 0 {
            let mut new = text;
            new.push_str(&include_line());
            write_file(&path, new.as_bytes(), 0o600, owner)?;
            tracing::info!("Added the managed include line to the restored postgresql.conf.");
        }
        self.ensure_includes()
    }

    /// Gives the restored catalog's administrative and replication roles this server's
    /// stored passwords (the catalog came with the source's).
    async fn adopt_role_passwords(&self) -> Result<()> {
        let client = self.session.client().await?;
        let admin = read_admin_password(&Connector::admin_password_path(&self.state_dir))?;
        client
            .batch_execute(&format!(
                "ALTER ROLE {} PASSWORD {}",
                quote_ident(ADMIN_USER)?,
                password_literal(&admin)?
            ))
            .await
            .map_err(stmt(Some(Subject::user(ADMIN_USER))))?;
        let Some(password) = self.stored_replication_password()? else {
            return Ok(());
        };
        let subject = Some(Subject::user(REPLICATION_USER));
        let exists = self.role_exists(&client, REPLICATION_USER).await?;
        if exists {
            client
                .batch_execute(&format!(
                    "ALTER ROLE {} PASSWORD {}",
                    quote_ident(REPLICATION_USER)?,
                    password_literal(&password)?
                ))
                .await
                .map_err(stmt(subject))?;
        }
        Ok(())
    }
}

/// How many lines of `text` include the managed file.
fn include_count(text: &str) -> usize {
    let want = format!("include '{MANAGED_CONF_FILE}'");
    text.lines().filter(|l| l.trim() == want).count()
}

/// Hands `path` and everything below it to `owner` (symbolic links themselves, never what
/// they point at; the walk does not follow them).
fn chown_tree(path: &Path, owner: &Owner) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(owner.uid.as_raw()), Some(owner.gid.as_raw()))
        .map_err(io_err("changing the owner of", path))?;
    let meta = fs::symlink_metadata(path).map_err(io_err("inspecting", path))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(io_err("reading", path))? {
            let entry = entry.map_err(io_err("reading", path))?;
            chown_tree(&entry.path(), owner)?;
        }
    }
    Ok(())
}

#[async_trait]
impl BackupHooks for PgDriver {
    fn strategies(&self) -> &[StrategyId] {
        STRATEGIES
    }

    async fn tool_access(&self, ctx: &OpContext) -> Result<ToolAccess> {
        ctx.cancelled()?;
        let tmp_dir = self.state_dir.join(TOOL_TMP_DIR);
        ensure_dir(&self.state_dir, 0o700, None)?;
        // The OS user's, so restore tools running as it may use it too.
        ensure_dir(&tmp_dir, 0o700, self.owner()?.as_ref())?;
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
        // A complete stash is this server's files from an earlier prepare whose restore did
        // not finish: the data directory may hold part of the source's by now, so the stash
        // is kept rather than taken again.
        if !self.stash_complete() {
            self.require_initialised("prepare a restore")?;
            self.stash_local_files()?;
        }
        self.stop(ctx, StopMode::Fast).await?;
        ctx.cancelled()?;
        tracing::info!(data_dir = %self.data_dir.display(), "Emptying the data directory for a restore.");
        self.clear_data_dir()
    }

    async fn finish_restore(&self, ctx: &OpContext) -> Result<()> {
        ctx.cancelled()?;
        self.require_initialised("finish a restore")?;
        let owner = self.owner()?;
        if let Some(o) = &owner {
            chown_tree(&self.data_dir, o)?;
        }
        fs::set_permissions(&self.data_dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("setting the mode of", &self.data_dir))?;
        self.unstash_local_files(owner.as_ref())?;
        for name in SOURCE_ONLY_FILES {
            remove_if_exists(&self.data_dir.join(name))?;
        }
        self.write_access_files(owner.as_ref())?;
        self.ensure_managed_include(owner.as_ref())?;
        tracing::info!(port = self.port, "Starting the restored server.");
        self.start(ctx).await?;
        self.adopt_role_passwords().await?;
        let dir = self.stash_dir();
        fs::remove_dir_all(&dir).map_err(io_err("removing", &dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn physical_strategy_is_the_default() {
        assert_eq!(STRATEGIES.first(), Some(&"pg_basebackup"));
        assert!(LOCAL_FILES.contains(&"postgresql.conf"));
        assert!(LOCAL_FILES.contains(&MANAGED_CONF_FILE));
        assert!(SOURCE_ONLY_FILES.contains(&STANDBY_SIGNAL));
    }

    #[test]
    fn the_managed_include_is_counted_by_line() {
        assert_eq!(include_count("port = 5432\n"), 0);
        assert_eq!(include_count(&include_line()), 1);
        assert_eq!(
            include_count("#include 'guest-agent.conf'\n  include 'guest-agent.conf'  \n"),
            1
        );
    }

    #[test]
    fn chown_tree_walks_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("a/link")).unwrap();
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .unwrap()
            .unwrap();
        let owner = Owner {
            name: me.name,
            uid: me.uid,
            gid: me.gid,
        };
        chown_tree(dir.path(), &owner).unwrap();
    }
}

//! Backup hooks: the strategies this driver backs up with, how their tools log in (a private
//! `[client]` option file with the administrative account), the binary log position recorded
//! with a backup (Trove's `pre_create_backup` answer), and stopping, emptying, fixing
//! ownership and starting around a restore — a restored `mysql` schema is the source's, so the
//! first start after a restore puts this server's administrative account back and forgets
//! every replication source the source server knew (the default and named connections).

use std::fs;
use std::path::Path;

use std::ffi::OsString;

use crate::driver::SOCKET_FILE;
use crate::position::applied;
use crate::replication::column;
use crate::sql::{Session, account, quote_string, read_admin_password};
use crate::{ADMIN_USER, MySqlDriver};
use async_trait::async_trait;
use guest_agent_api::backup::{BackupHooks, StrategyId, ToolAccess};
use guest_agent_api::fsutil::{RemoveOnDrop, ensure_dir, write_file};
use guest_agent_api::ident::Password;
use guest_agent_api::lifecycle::{Lifecycle, StopMode};
use guest_agent_api::{Error, OpContext, Result};

/// Physical (mariabackup) and logical (mariadb-dump) backups.
const STRATEGIES: &[StrategyId] = &["mariabackup", "mariadb_dump"];

/// The backup tools' option file in the state directory (mode 0600).
const CLIENT_CNF: &str = "backup-client.cnf";
/// The statements run once by the first start after a restore, in the run directory.
const RESTORE_INIT_SQL: &str = ".restore-init.sql";

/// The tools' option file, read as their only `--defaults-file` (the tools take one option
/// file first and refuse a second): the server's own `my.cnf` (included, so the tools see the
/// server's settings) and then the administrative account in every group the client tools and
/// `mariabackup` read. The password is generated (letters and digits), so it needs no quoting;
/// anything else is refused rather than written in a form a tool could misread.
fn client_cnf(password: &Password, socket: &Path, my_cnf: &Path) -> Result<String> {
    let pw = password.expose();
    if pw.is_empty() || !pw.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Error::InvalidState {
            operation: "write the backup tools' option file",
            reason: "the stored administrative password is not the generated kind".to_owned(),
        });
    }
    let plain = |p: &Path| {
        p.to_str()
            .filter(|s| !s.contains(['\n', '"']))
            .map(str::to_owned)
            .ok_or_else(|| Error::InvalidState {
                operation: "write the backup tools' option file",
                reason: format!("path {} cannot be written", p.display()),
            })
    };
    let (sock, cnf) = (plain(socket)?, plain(my_cnf)?);
    let mut text =
        format!("# Written by guest-agent for its backup tools. Do not edit.\n!include {cnf}\n");
    for group in ["client", "mariabackup", "mariadb-backup"] {
        text.push_str(&format!(
            "[{group}]\nuser={ADMIN_USER}\npassword={pw}\nsocket=\"{sock}\"\n"
        ));
    }
    Ok(text)
}

/// The statements that give a restored server this instance's administrative account.
fn restore_init_sql(password: &Password) -> Result<String> {
    let admin = account(ADMIN_USER, "localhost")?;
    let pw = quote_string(password.expose())?;
    Ok(format!(
        "CREATE USER IF NOT EXISTS {admin} IDENTIFIED BY {pw};\n\
         ALTER USER {admin} IDENTIFIED BY {pw};\n\
         GRANT ALL PRIVILEGES ON *.* TO {admin} WITH GRANT OPTION;\n"
    ))
}

impl MySqlDriver {
    /// Starts a freshly restored server once with an init file that re-creates the
    /// administrative account with this instance's password, and without starting the
    /// source's replication; then forgets any replication source the backup carried.
    async fn start_restored(&self, ctx: &OpContext) -> Result<()> {
        let password = read_admin_password(&self.connector.password_file)?;
        let owner = self.owner()?;
        let init = self.run_dir.join(RESTORE_INIT_SQL);
        write_file(
            &init,
            restore_init_sql(&password)?.as_bytes(),
            0o600,
            owner.as_ref(),
        )?;
        let _cleanup = RemoveOnDrop(init.clone());
        if !self.tmp_dir.exists() {
            ensure_dir(&self.tmp_dir, 0o700, owner.as_ref())?;
        }
        self.connector.forget_version();
        let mut spec = self.server_spec()?;
        let mut arg = OsString::from("--init-file=");
        arg.push(&init);
        spec.args.push(arg);
        spec.args.push("--skip-slave-start".into());
        tracing::info!("Starting the restored server with this instance's administrative account.");
        self.runtime.start(&spec).await?;
        self.wait_ready(ctx).await?;
        let mut s = self.connector.connect().await?;
        let out = forget_sources(self, &mut s).await;
        s.close().await;
        out
    }
}

/// Stops and forgets every replication source the restored server knows: the default one
/// the driver manages and, on MariaDB, any named (multi-source) connection the backup
/// carried.
async fn forget_sources(driver: &MySqlDriver, s: &mut Session) -> Result<()> {
    if s.server.is_mariadb() {
        s.exec("STOP ALL SLAVES", None).await?;
        for row in s.rows("SHOW ALL SLAVES STATUS").await? {
            if let Some(name) = column(&row, &["Connection_name"]).filter(|n| !n.is_empty()) {
                tracing::info!(connection = %name, "Forgetting a restored replication source.");
                s.exec(&format!("RESET SLAVE {} ALL", quote_string(&name)?), None)
                    .await?;
            }
        }
    }
    driver.stop_and_reset(s).await
}

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

    async fn tool_access(&self, ctx: &OpContext) -> Result<ToolAccess> {
        ctx.cancelled()?;
        let password = read_admin_password(&self.connector.password_file)?;
        let socket = self.run_dir.join(SOCKET_FILE);
        let cnf = self.state_dir.join(CLIENT_CNF);
        ensure_dir(&self.state_dir, 0o700, None)?;
        write_file(
            &cnf,
            client_cnf(&password, &socket, &self.my_cnf())?.as_bytes(),
            0o600,
            None,
        )?;
        Ok(ToolAccess {
            bin_dirs: self.bin_dirs(),
            socket,
            port: self.port,
            user: ADMIN_USER.to_owned(),
            credentials_file: Some(cnf),
            server_config: Some(self.my_cnf()),
            data_dir: self.data_dir.clone(),
            // The server's private tmpdir: the OS user may write there (restore deltas).
            tmp_dir: self.tmp_dir.clone(),
            os_user: self.os_user.clone(),
        })
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
        let schema = self.data_dir.join("mysql");
        if !schema
            .try_exists()
            .map_err(|e| Error::io(format!("inspecting {}", schema.display()), e))?
        {
            return Err(Error::InvalidState {
                operation: "finish restore",
                reason: format!(
                    "the data directory {} holds no restored server (no mysql schema)",
                    self.data_dir.display()
                ),
            });
        }
        if let Some(o) = self.file_owner()? {
            chown_tree(&self.data_dir, o.0, o.1)?;
        }
        self.start_restored(ctx).await
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
    fn option_file_and_init_sql() {
        let pw = Password::new("Abc123xyz".to_owned()).unwrap();
        let text = client_cnf(
            &pw,
            Path::new("/run/my/mysqld.sock"),
            Path::new("/c/my.cnf"),
        )
        .unwrap();
        assert!(text.contains("\n!include /c/my.cnf\n"));
        assert!(text.contains(
            "[client]\nuser=os_admin\npassword=Abc123xyz\nsocket=\"/run/my/mysqld.sock\"\n"
        ));
        assert!(text.contains("[mariabackup]"));
        let odd = Password::new("a b#c".to_owned()).unwrap();
        assert!(client_cnf(&odd, Path::new("/s"), Path::new("/c")).is_err());
        let sql = restore_init_sql(&pw).unwrap();
        assert!(sql.contains(
            "CREATE USER IF NOT EXISTS `os_admin`@`localhost` IDENTIFIED BY 'Abc123xyz';"
        ));
        assert!(sql.contains("WITH GRANT OPTION;"));
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

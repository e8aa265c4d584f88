//! PostgreSQL physical backup: `pg_basebackup -D - -Ft -X fetch` writes one tar (data
//! directory plus the WAL needed to be consistent) to stdout; restore untars it into an empty
//! data directory as the server's OS user.

use std::ffi::OsString;
use std::path::PathBuf;

use async_trait::async_trait;
use guest_agent_api::Position;

use super::{base_env, find_after, prepare_empty_dir};
use crate::error::{BackupError, Result};
use crate::run::{CommandSpec, ToolExit, ToolRunner};
use crate::strategy::{BackupRequest, BackupStrategy, RestoreRequest, ToolReport};

/// Connection and tool settings shared by the PostgreSQL strategies.
#[derive(Debug, Clone)]
pub struct PgConn {
    /// Directory of the client tools (`/usr/lib/postgresql/15/bin`).
    pub bin_dir: PathBuf,
    /// Host or socket directory.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Role to connect as (needs REPLICATION for pg_basebackup).
    pub user: String,
    /// A password file (`PGPASSFILE`); passwords never go on the command line.
    pub passfile: Option<PathBuf>,
    /// OS user that owns the data directory; restore tools run as it.
    pub run_as: Option<String>,
}

impl PgConn {
    pub(crate) fn env(&self) -> Vec<(OsString, OsString)> {
        let mut env = base_env();
        env.push(("PGCONNECT_TIMEOUT".into(), "30".into()));
        if let Some(p) = &self.passfile {
            env.push(("PGPASSFILE".into(), p.clone().into()));
        }
        env
    }

    pub(crate) fn args(&self) -> Vec<OsString> {
        vec![
            "-h".into(),
            self.host.clone().into(),
            "-p".into(),
            self.port.to_string().into(),
            "-U".into(),
            self.user.clone().into(),
            "-w".into(),
        ]
    }

    pub(crate) fn tool(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// `pg_basebackup` as a tar stream.
#[derive(Debug, Clone)]
pub struct PgBasebackup {
    /// Connection.
    pub conn: PgConn,
    /// `tar` used for restores.
    pub tar: PathBuf,
}

impl PgBasebackup {
    /// The strategy with `/usr/bin/tar` for restores.
    pub fn new(conn: PgConn) -> Self {
        Self {
            conn,
            tar: PathBuf::from("/usr/bin/tar"),
        }
    }
}

#[async_trait]
impl BackupStrategy for PgBasebackup {
    fn id(&self) -> &'static str {
        "pg_basebackup"
    }

    fn datastore(&self) -> &'static str {
        "postgresql"
    }

    fn extension(&self) -> &'static str {
        "tar"
    }

    fn backup_command(&self, req: &BackupRequest) -> Result<CommandSpec> {
        if req.parent.is_some() {
            return Err(BackupError::invalid(
                "parent",
                "pg_basebackup backups are full",
            ));
        }
        let mut args = self.conn.args();
        args.extend(
            ["-D", "-", "-Ft", "-X", "fetch", "-c", "fast", "-v"]
                .into_iter()
                .map(OsString::from),
        );
        args.push(format!("--label={}", req.backup_id).into());
        let mut cmd = CommandSpec::new(self.conn.tool("pg_basebackup"), args);
        cmd.env = self.conn.env();
        Ok(cmd)
    }

    fn judge_backup(&self, _req: &BackupRequest, exit: &ToolExit) -> Result<ToolReport> {
        let text = exit.stderr_text();
        if !exit.success() || text.contains("pg_basebackup: error:") {
            return Err(exit.to_error());
        }
        let mut report = ToolReport::default();
        if let Some(end) = find_after(&text, "write-ahead log end point: ", ' ') {
            report.values.insert("end_lsn".into(), end.into());
            report.position = end.parse().ok().map(Position::Lsn);
        }
        if let Some(start) = find_after(&text, "write-ahead log start point: ", ' ') {
            report.values.insert("start_lsn".into(), start.into());
        }
        Ok(report)
    }

    async fn before_restore(&self, _runner: &dyn ToolRunner, req: &RestoreRequest) -> Result<()> {
        prepare_empty_dir(req.require_target()?, self.conn.run_as.as_deref())
    }

    fn restore_command(&self, req: &RestoreRequest, step: usize) -> Result<CommandSpec> {
        if step > 0 {
            return Err(BackupError::invalid(
                "chain",
                "pg_basebackup backups are full",
            ));
        }
        let target = req.require_target()?;
        let mut cmd = CommandSpec::new(
            &self.tar,
            [
                OsString::from("-x"),
                "-f".into(),
                "-".into(),
                "-C".into(),
                target.clone().into(),
            ],
        );
        cmd.env = base_env();
        cmd.run_as.clone_from(&self.conn.run_as);
        Ok(cmd)
    }

    async fn finish_restore(&self, _runner: &dyn ToolRunner, _req: &RestoreRequest) -> Result<()> {
        // The tar holds backup_label and the WAL to reach consistency; the server recovers on
        // its first start.
        Ok(())
    }
}

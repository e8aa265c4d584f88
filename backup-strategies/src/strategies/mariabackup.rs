//! MariaDB physical backup: `mariabackup --backup --stream=xbstream` (full, or incremental from
//! the parent's checkpoint LSN); restore extracts each stream with `mbstream -x` and prepares
//! the full backup, applying the incrementals in order.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use guest_agent_api::Position;
use guest_agent_api::position::GtidSet;

use super::{base_env, chown_to, find_after, prepare_empty_dir};
use crate::error::{BackupError, Result};
use crate::run::{CommandSpec, ToolExit, ToolRunner};
use crate::strategy::{BackupRequest, BackupStrategy, RestoreRequest, ToolReport};

/// Connection settings shared by the MariaDB strategies.
#[derive(Debug, Clone, Default)]
pub struct MyConn {
    /// An option file read instead of the system ones (`--defaults-file`); may hold the
    /// password, which never goes on the command line.
    pub defaults_file: Option<PathBuf>,
    /// An option file read in addition (`--defaults-extra-file`), for credentials.
    pub defaults_extra_file: Option<PathBuf>,
    /// Server socket.
    pub socket: Option<PathBuf>,
    /// Host (when no socket).
    pub host: Option<String>,
    /// Port (with `host`).
    pub port: Option<u16>,
    /// User.
    pub user: String,
    /// OS user that owns the data directory; restore tools run as it.
    pub run_as: Option<String>,
}

impl MyConn {
    /// Option-file arguments; they must come first on the command line.
    pub(crate) fn defaults_args(&self) -> Vec<OsString> {
        let mut v = Vec::new();
        if let Some(f) = &self.defaults_file {
            v.push(flag("--defaults-file=", f));
        }
        if let Some(f) = &self.defaults_extra_file {
            v.push(flag("--defaults-extra-file=", f));
        }
        if v.is_empty() {
            v.push("--no-defaults".into());
        }
        v
    }

    pub(crate) fn conn_args(&self) -> Vec<OsString> {
        let mut v = vec![format!("--user={}", self.user).into()];
        if let Some(s) = &self.socket {
            v.push(flag("--socket=", s));
        }
        if let Some(h) = &self.host {
            v.push(format!("--host={h}").into());
        }
        if let Some(p) = self.port {
            v.push(format!("--port={p}").into());
        }
        v
    }
}

fn flag(name: &str, path: &Path) -> OsString {
    let mut s = OsString::from(name);
    s.push(path);
    s
}

/// `mariabackup` streams.
#[derive(Debug, Clone)]
pub struct Mariabackup {
    /// Connection.
    pub conn: MyConn,
    /// `mariabackup` (or `mariadb-backup`).
    pub mariabackup: PathBuf,
    /// `mbstream`.
    pub mbstream: PathBuf,
    /// The server's data directory (`--datadir`), when option files do not say.
    pub datadir: Option<PathBuf>,
    /// Scratch directory for the tool's own files during a backup.
    pub tmp_dir: PathBuf,
    /// Copy threads (`--parallel`).
    pub parallel: u32,
}

impl Mariabackup {
    /// The strategy with Debian's tool paths.
    pub fn new(conn: MyConn, tmp_dir: impl Into<PathBuf>) -> Self {
        Self {
            conn,
            mariabackup: PathBuf::from("/usr/bin/mariabackup"),
            mbstream: PathBuf::from("/usr/bin/mbstream"),
            datadir: None,
            tmp_dir: tmp_dir.into(),
            parallel: 2,
        }
    }

    fn scratch(&self, backup_id: &str) -> PathBuf {
        self.tmp_dir.join(format!("mariabackup-{backup_id}"))
    }

    fn step_dir(req: &RestoreRequest, step: usize) -> Result<PathBuf> {
        if step == 0 {
            return Ok(req.require_target()?.clone());
        }
        let work = req
            .work_dir
            .as_ref()
            .ok_or_else(|| BackupError::invalid("work_dir", "required to restore incrementals"))?;
        Ok(work.join(format!("inc-{step}")))
    }

    fn judge_ok(exit: &ToolExit) -> Result<()> {
        // mariabackup's own success line is the last thing it prints.
        if exit.success() && exit.last_lines(1).contains("completed OK!") {
            Ok(())
        } else {
            Err(exit.to_error())
        }
    }
}

#[async_trait]
impl BackupStrategy for Mariabackup {
    fn id(&self) -> &'static str {
        "mariabackup"
    }

    fn datastore(&self) -> &'static str {
        "mariadb"
    }

    fn extension(&self) -> &'static str {
        "xbstream"
    }

    fn supports_incremental(&self) -> bool {
        true
    }

    fn backup_command(&self, req: &BackupRequest) -> Result<CommandSpec> {
        let scratch = self.scratch(&req.backup_id);
        std::fs::create_dir_all(&scratch)
            .map_err(|e| BackupError::io(format!("creating {}", scratch.display()), e))?;
        let mut args = self.conn.defaults_args();
        args.push("--backup".into());
        args.push("--stream=xbstream".into());
        args.push(flag("--target-dir=", &scratch));
        if let Some(d) = &self.datadir {
            args.push(flag("--datadir=", d));
        }
        args.push(format!("--parallel={}", self.parallel.max(1)).into());
        args.extend(self.conn.conn_args());
        if let Some(parent) = &req.parent {
            let lsn = parent
                .tool
                .get("to_lsn")
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| BackupError::Manifest {
                    key: parent.backup_id.clone(),
                    reason: "the parent has no checkpoint LSN (to_lsn)".into(),
                })?;
            args.push(format!("--incremental-lsn={lsn}").into());
        }
        let mut cmd = CommandSpec::new(&self.mariabackup, args);
        cmd.env = base_env();
        Ok(cmd)
    }

    fn judge_backup(&self, req: &BackupRequest, exit: &ToolExit) -> Result<ToolReport> {
        let _ = std::fs::remove_dir_all(self.scratch(&req.backup_id));
        Self::judge_ok(exit)?;
        let text = exit.stderr_text();
        let mut report = ToolReport::default();
        if let Some(lsn) = find_after(&text, "The latest check point (for incremental): '", '\'') {
            report.values.insert("to_lsn".into(), lsn.into());
        }
        if let Some(gtid) = find_after(&text, "GTID of the last change '", '\'')
            && !gtid.is_empty()
        {
            report.values.insert("gtid".into(), gtid.into());
            report.position = GtidSet::parse(gtid).ok().map(Position::Gtid);
        }
        if report.values.get("to_lsn").is_none() {
            return Err(BackupError::Tool {
                program: exit.program.clone(),
                exit: exit.describe(),
                stderr_tail: "no checkpoint LSN in the output".into(),
            });
        }
        Ok(report)
    }

    async fn before_restore(&self, _runner: &dyn ToolRunner, req: &RestoreRequest) -> Result<()> {
        let run_as = self.conn.run_as.as_deref();
        prepare_empty_dir(req.require_target()?, run_as)?;
        for step in 1..req.chain.len() {
            let dir = Self::step_dir(req, step)?;
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| BackupError::io(format!("creating {}", parent.display()), e))?;
                chown_to(parent, run_as)?;
            }
            prepare_empty_dir(&dir, run_as)?;
        }
        Ok(())
    }

    fn restore_command(&self, req: &RestoreRequest, step: usize) -> Result<CommandSpec> {
        let dir = Self::step_dir(req, step)?;
        let mut cmd = CommandSpec::new(
            &self.mbstream,
            [OsString::from("-x"), "-C".into(), dir.into()],
        );
        cmd.env = base_env();
        cmd.run_as.clone_from(&self.conn.run_as);
        Ok(cmd)
    }

    async fn finish_restore(&self, runner: &dyn ToolRunner, req: &RestoreRequest) -> Result<()> {
        let target = req.require_target()?;
        for step in 0..req.chain.len() {
            let mut args: Vec<OsString> = vec!["--no-defaults".into(), "--prepare".into()];
            args.push(flag("--target-dir=", target));
            if step > 0 {
                args.push(flag("--incremental-dir=", &Self::step_dir(req, step)?));
            }
            let mut cmd = CommandSpec::new(&self.mariabackup, args);
            cmd.env = base_env();
            cmd.run_as.clone_from(&self.conn.run_as);
            Self::judge_ok(&runner.run(&cmd).await?)?;
        }
        for step in 1..req.chain.len() {
            let dir = Self::step_dir(req, step)?;
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok(())
    }
}

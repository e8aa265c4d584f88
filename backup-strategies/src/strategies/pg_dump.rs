//! PostgreSQL logical backup of one database: `pg_dump -Fc` to stdout; restore with
//! `pg_restore --single-transaction --exit-on-error` from stdin, so a failed restore leaves the
//! target database as it was.

use std::ffi::OsString;

use async_trait::async_trait;

use super::pg_basebackup::PgConn;
use crate::error::{BackupError, Result};
use crate::run::{CommandSpec, ToolExit, ToolRunner};
use crate::strategy::{BackupRequest, BackupStrategy, RestoreRequest, ToolReport, require_success};

/// `pg_dump` custom format of one database.
#[derive(Debug, Clone)]
pub struct PgDump {
    /// Connection.
    pub conn: PgConn,
    /// Create the target database (with `createdb`) before restoring.
    pub create_database: bool,
    /// Restore without ownership (`--no-owner`): objects belong to the restoring role.
    pub no_owner: bool,
    /// Restore without access privileges (`--no-privileges`), for a target that lacks the
    /// source's roles.
    pub no_privileges: bool,
}

impl PgDump {
    /// The strategy; restores go into an existing database with owners kept.
    pub fn new(conn: PgConn) -> Self {
        Self {
            conn,
            create_database: false,
            no_owner: false,
            no_privileges: false,
        }
    }
}

/// `dbname='…'` for a libpq connection string, so no database name is read as options.
fn conninfo(db: &str) -> String {
    format!("dbname='{}'", db.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn one_database(databases: &[String]) -> Result<&str> {
    match databases {
        [db] if !db.is_empty() && !db.contains('\0') => Ok(db),
        _ => Err(BackupError::invalid(
            "databases",
            "pg_dump backs up exactly one database",
        )),
    }
}

impl PgDump {
    fn restore_database(&self, req: &RestoreRequest) -> Result<String> {
        if let Some(db) = &req.database {
            return Ok(db.clone());
        }
        req.chain
            .first()
            .and_then(|m| m.metadata.get("databases"))
            .and_then(|v| v.as_array())
            .and_then(|a| a.first())
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| BackupError::invalid("database", "name the database to restore into"))
    }
}

#[async_trait]
impl BackupStrategy for PgDump {
    fn id(&self) -> &'static str {
        "pg_dump"
    }

    fn datastore(&self) -> &'static str {
        "postgresql"
    }

    fn extension(&self) -> &'static str {
        "pgdump"
    }

    fn backup_command(&self, req: &BackupRequest) -> Result<CommandSpec> {
        if req.parent.is_some() {
            return Err(BackupError::invalid("parent", "pg_dump backups are full"));
        }
        let db = one_database(&req.databases)?;
        let mut args = self.conn.args();
        args.push("-Fc".into());
        args.push(format!("--dbname={}", conninfo(db)).into());
        let mut cmd = CommandSpec::new(self.conn.tool("pg_dump"), args);
        cmd.env = self.conn.env();
        Ok(cmd)
    }

    fn judge_backup(&self, req: &BackupRequest, exit: &ToolExit) -> Result<ToolReport> {
        let text = exit.stderr_text();
        if let Some(db) = req.databases.first()
            && text.contains(&format!("database \"{db}\" does not exist"))
        {
            return Err(BackupError::DatabaseNotFound { name: db.clone() });
        }
        if !exit.success() || text.contains("pg_dump: error:") {
            return Err(exit.to_error());
        }
        Ok(ToolReport::default())
    }

    async fn before_restore(&self, runner: &dyn ToolRunner, req: &RestoreRequest) -> Result<()> {
        if !self.create_database {
            return Ok(());
        }
        let db = self.restore_database(req)?;
        let mut args = self.conn.args();
        args.push("--".into());
        args.push(db.into());
        let mut cmd = CommandSpec::new(self.conn.tool("createdb"), args);
        cmd.env = self.conn.env();
        require_success(&runner.run(&cmd).await?)
    }

    fn restore_command(&self, req: &RestoreRequest, step: usize) -> Result<CommandSpec> {
        if step > 0 {
            return Err(BackupError::invalid("chain", "pg_dump backups are full"));
        }
        let db = self.restore_database(req)?;
        let mut args = self.conn.args();
        args.extend(
            ["--exit-on-error", "--single-transaction"]
                .into_iter()
                .map(OsString::from),
        );
        if self.no_owner {
            args.push("--no-owner".into());
        }
        if self.no_privileges {
            args.push("--no-privileges".into());
        }
        args.push(format!("--dbname={}", conninfo(&db)).into());
        let mut cmd = CommandSpec::new(self.conn.tool("pg_restore"), args);
        cmd.env = self.conn.env();
        Ok(cmd)
    }

    async fn finish_restore(&self, _runner: &dyn ToolRunner, _req: &RestoreRequest) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_quotes() {
        assert_eq!(conninfo("a b"), "dbname='a b'");
        assert_eq!(conninfo("x' host=evil"), "dbname='x\\' host=evil'");
        assert!(one_database(&[]).is_err());
        assert!(one_database(&["a".into(), "b".into()]).is_err());
    }
}

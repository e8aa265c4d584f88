//! MariaDB logical backup: `mariadb-dump` of all databases or a chosen list, in one
//! consistent snapshot; restore feeds the SQL to the `mariadb` client.

use std::ffi::OsString;
use std::path::PathBuf;

use async_trait::async_trait;

use super::base_env;
use super::mariabackup::MyConn;
use crate::error::{BackupError, Result};
use crate::run::{CommandSpec, ToolExit, ToolRunner};
use crate::strategy::{BackupRequest, BackupStrategy, RestoreRequest, ToolReport};

/// `mariadb-dump` SQL.
#[derive(Debug, Clone)]
pub struct MariadbDump {
    /// Connection.
    pub conn: MyConn,
    /// `mariadb-dump`.
    pub dump: PathBuf,
    /// `mariadb` client, for restores.
    pub client: PathBuf,
}

impl MariadbDump {
    /// The strategy with Debian's tool paths.
    pub fn new(conn: MyConn) -> Self {
        Self {
            conn,
            dump: PathBuf::from("/usr/bin/mariadb-dump"),
            client: PathBuf::from("/usr/bin/mariadb"),
        }
    }
}

/// The database a "1049 Unknown database" error names.
fn unknown_database(text: &str) -> Option<String> {
    let rest = text.split("Unknown database '").nth(1)?;
    Some(rest.split('\'').next()?.to_owned())
}

#[async_trait]
impl BackupStrategy for MariadbDump {
    fn id(&self) -> &'static str {
        "mariadb_dump"
    }

    fn datastore(&self) -> &'static str {
        "mariadb"
    }

    fn extension(&self) -> &'static str {
        "sql"
    }

    fn backup_command(&self, req: &BackupRequest) -> Result<CommandSpec> {
        if req.parent.is_some() {
            return Err(BackupError::invalid(
                "parent",
                "mariadb-dump backups are full",
            ));
        }
        let mut args = self.conn.defaults_args();
        args.extend(self.conn.conn_args());
        args.extend(
            [
                "--single-transaction",
                "--quick",
                "--routines",
                "--events",
                "--triggers",
                "--hex-blob",
            ]
            .into_iter()
            .map(OsString::from),
        );
        if req.databases.is_empty() {
            args.push("--all-databases".into());
        } else {
            if req
                .databases
                .iter()
                .any(|d| d.is_empty() || d.starts_with('-'))
            {
                return Err(BackupError::invalid(
                    "databases",
                    "empty or option-like name",
                ));
            }
            args.push("--databases".into());
            args.extend(req.databases.iter().map(OsString::from));
        }
        let mut cmd = CommandSpec::new(&self.dump, args);
        cmd.env = base_env();
        Ok(cmd)
    }

    fn judge_backup(&self, _req: &BackupRequest, exit: &ToolExit) -> Result<ToolReport> {
        let text = exit.stderr_text();
        if let Some(name) = unknown_database(&text) {
            return Err(BackupError::DatabaseNotFound { name });
        }
        if !exit.success() || text.contains("Got error") || text.contains("Couldn't execute") {
            return Err(exit.to_error());
        }
        Ok(ToolReport::default())
    }

    async fn before_restore(&self, _runner: &dyn ToolRunner, _req: &RestoreRequest) -> Result<()> {
        Ok(())
    }

    fn restore_command(&self, req: &RestoreRequest, step: usize) -> Result<CommandSpec> {
        if step > 0 {
            return Err(BackupError::invalid(
                "chain",
                "mariadb-dump backups are full",
            ));
        }
        if req.database.is_some() {
            return Err(BackupError::invalid(
                "database",
                "a mariadb-dump backup restores into the databases it names",
            ));
        }
        let mut args = self.conn.defaults_args();
        args.extend(self.conn.conn_args());
        args.push("--binary-mode".into());
        let mut cmd = CommandSpec::new(&self.client, args);
        cmd.env = base_env();
        Ok(cmd)
    }

    fn judge_restore(&self, exit: &ToolExit) -> Result<()> {
        if exit.success() && !exit.stderr_text().contains("ERROR ") {
            Ok(())
        } else {
            Err(exit.to_error())
        }
    }

    async fn finish_restore(&self, _runner: &dyn ToolRunner, _req: &RestoreRequest) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unknown_database() {
        let t = "mariadb-dump: Got error: 1049: \"Unknown database 'nope'\" when selecting the database";
        assert_eq!(unknown_database(t).as_deref(), Some("nope"));
        assert_eq!(unknown_database("fine"), None);
    }
}

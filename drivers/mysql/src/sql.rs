//! SQL text helpers, the server flavour, and the driver's own sessions.
//!
//! MySQL's account and replication statements (`CREATE USER … IDENTIFIED BY`, `CHANGE MASTER
//! TO MASTER_PASSWORD=`, `GRANT`) take no bind parameters (checked on MariaDB 10.11: `PREPARE`
//! of `CREATE USER … IDENTIFIED BY ?` and of `CHANGE MASTER TO MASTER_PASSWORD=?` is a syntax
//! error), so names and a few values must be spliced into the text. That happens only through
//! [`quote_ident`] and [`quote_string`], the single quoting helpers of this dialect; every
//! catalog query binds its values instead.
//!
//! Every session pins its `sql_mode` (without `NO_BACKSLASH_ESCAPES`) and character set, so a
//! literal from [`quote_string`] means exactly its input; were the mode different anyway, the
//! literal would still not end early (see [`quote_string`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use guest_agent_api::ident::Password;
use guest_agent_api::{Error, Result};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row};

use crate::ADMIN_USER;
use crate::error::{MySqlError, stmt};

/// The `sql_mode` of every driver session: strict, and without `NO_BACKSLASH_ESCAPES` or
/// `ANSI_QUOTES`, the two modes that change how literals and identifiers are read.
pub const SESSION_SQL_MODE: &str =
    "STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION";

/// Quotes an identifier (database, user or host name, character set) with backticks, inner
/// backticks doubled.
///
/// Quoting always keeps keywords and `-` harmless. NUL cannot be part of an identifier and is
/// refused, as is the empty name.
pub fn quote_ident(name: &str) -> Result<String> {
    if name.is_empty() {
        return Err(Error::invalid("identifier", "must not be empty"));
    }
    if name.contains('\0') {
        return Err(Error::invalid("identifier", "must not contain NUL"));
    }
    let mut out = String::with_capacity(name.len() + 2);
    out.push('`');
    for c in name.chars() {
        if c == '`' {
            out.push('`');
        }
        out.push(c);
    }
    out.push('`');
    Ok(out)
}

/// Quotes a string literal: single quotes doubled, backslashes doubled.
///
/// Doubling `'` works whether or not `NO_BACKSLASH_ESCAPES` is set; doubling `\` is exact
/// without that mode (which every driver session pins off, [`SESSION_SQL_MODE`]) and, were the
/// mode on, would only double the backslash in the value: in neither mode can the value end
/// the literal early. NUL is refused (passwords and names never hold it).
pub fn quote_string(value: &str) -> Result<String> {
    if value.contains('\0') {
        return Err(Error::invalid("literal", "must not contain NUL"));
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    Ok(out)
}

/// An account name `` `user`@`host` ``.
pub fn account(user: &str, host: &str) -> Result<String> {
    Ok(format!("{}@{}", quote_ident(user)?, quote_ident(host)?))
}

/// The database part of a database-level `GRANT`/`REVOKE` (`` `db`.* ``).
///
/// In grant statements `_` and `%` in a database name are wildcards even inside backticks;
/// they are escaped so that a grant on `app_db` does not also open `appXdb`.
pub fn grant_target(db: &str) -> Result<String> {
    let mut escaped = String::with_capacity(db.len() + 4);
    for c in db.chars() {
        if matches!(c, '_' | '%' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    Ok(format!("{}.*", quote_ident(&escaped)?))
}

/// Reads a `mysql.db`.`Db` pattern back into a database name; `None` when the pattern holds an
/// unescaped wildcard (it names no single database).
pub fn grant_pattern_to_name(pattern: &str) -> Option<String> {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '_' | '%' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// The server's product line: the SQL differs between MariaDB and MySQL (Percona speaks
/// MySQL's dialect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// MariaDB.
    MariaDb,
    /// Oracle MySQL.
    MySql,
    /// Percona Server for MySQL.
    Percona,
}

/// Flavour and version of the server, from `VERSION()` and `@@version_comment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerVersion {
    /// Product line.
    pub flavor: Flavor,
    /// `major.minor.patch`.
    pub version: (u32, u32, u32),
}

impl ServerVersion {
    /// Parses `SELECT VERSION(), @@version_comment` (`10.11.19-MariaDB-0+deb12u1`, `8.0.36`,
    /// `8.0.36-28` with a Percona comment, `5.5.5-10.4.1-MariaDB` from old proxies).
    pub fn parse(version: &str, comment: &str) -> Result<Self> {
        let bad = || Error::Internal(format!("unrecognised server version '{version}'"));
        let mut v = version.trim();
        let is_maria = v.contains("MariaDB") || comment.contains("MariaDB");
        if is_maria && let Some(rest) = v.strip_prefix("5.5.5-") {
            v = rest;
        }
        let numeric = v.split(['-', '+', ' ']).next().unwrap_or_default();
        let mut parts = numeric
            .split('.')
            .map(|p| p.parse::<u32>().map_err(|_| bad()));
        let major = parts.next().ok_or_else(bad)??;
        let minor = parts.next().transpose()?.unwrap_or(0);
        let patch = parts.next().transpose()?.unwrap_or(0);
        let flavor = if is_maria {
            Flavor::MariaDb
        } else if comment.contains("Percona") || version.contains("Percona") {
            Flavor::Percona
        } else {
            Flavor::MySql
        };
        Ok(Self {
            flavor,
            version: (major, minor, patch),
        })
    }

    /// Whether the server is MariaDB.
    pub fn is_mariadb(&self) -> bool {
        self.flavor == Flavor::MariaDb
    }

    /// MySQL 8.0.23 and later name replication SOURCE/REPLICA (8.4 removed the old words).
    pub fn uses_source_syntax(&self) -> bool {
        !self.is_mariadb() && self.version >= (8, 0, 23)
    }

    /// The query for the executed GTID set.
    pub fn position_sql(&self) -> &'static str {
        if self.is_mariadb() {
            "SELECT @@GLOBAL.gtid_binlog_pos"
        } else {
            "SELECT @@GLOBAL.gtid_executed"
        }
    }

    /// `SHOW SLAVE STATUS` or `SHOW REPLICA STATUS`.
    pub fn replica_status_sql(&self) -> &'static str {
        if !self.is_mariadb() && self.version >= (8, 0, 22) {
            "SHOW REPLICA STATUS"
        } else {
            "SHOW SLAVE STATUS"
        }
    }

    /// Stops the replication threads.
    pub fn stop_replica_sql(&self) -> &'static str {
        if !self.is_mariadb() && self.version >= (8, 0, 22) {
            "STOP REPLICA"
        } else {
            "STOP SLAVE"
        }
    }

    /// Starts the replication threads.
    pub fn start_replica_sql(&self) -> &'static str {
        if !self.is_mariadb() && self.version >= (8, 0, 22) {
            "START REPLICA"
        } else {
            "START SLAVE"
        }
    }

    /// Forgets the source and the relay logs.
    pub fn reset_replica_sql(&self) -> &'static str {
        if !self.is_mariadb() && self.version >= (8, 0, 22) {
            "RESET REPLICA ALL"
        } else {
            "RESET SLAVE ALL"
        }
    }

    /// The current binary log file and position (`File`, `Position` first).
    pub fn binlog_status_sql(&self) -> &'static str {
        if !self.is_mariadb() && self.version >= (8, 4, 0) {
            "SHOW BINARY LOG STATUS"
        } else {
            "SHOW MASTER STATUS"
        }
    }

    /// Waits for a GTID set with a timeout in seconds (both bound); returns 0 when reached.
    pub fn wait_sql(&self) -> &'static str {
        if self.is_mariadb() {
            "SELECT MASTER_GTID_WAIT(?, ?)"
        } else {
            "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)"
        }
    }

    /// `CHANGE MASTER TO` / `CHANGE REPLICATION SOURCE TO` with GTID auto-positioning.
    pub fn change_source_sql(
        &self,
        host: &str,
        port: u16,
        user: &str,
        password: &Password,
        connect_retry_secs: u32,
    ) -> Result<String> {
        let (host, user, pw) = (
            quote_string(host)?,
            quote_string(user)?,
            quote_string(password.expose())?,
        );
        Ok(if self.is_mariadb() {
            format!(
                "CHANGE MASTER TO MASTER_HOST={host}, MASTER_PORT={port}, MASTER_USER={user}, \
                 MASTER_PASSWORD={pw}, MASTER_USE_GTID=slave_pos, \
                 MASTER_CONNECT_RETRY={connect_retry_secs}"
            )
        } else if self.uses_source_syntax() {
            format!(
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST={host}, SOURCE_PORT={port}, \
                 SOURCE_USER={user}, SOURCE_PASSWORD={pw}, SOURCE_AUTO_POSITION=1, \
                 GET_SOURCE_PUBLIC_KEY=1, SOURCE_CONNECT_RETRY={connect_retry_secs}"
            )
        } else {
            format!(
                "CHANGE MASTER TO MASTER_HOST={host}, MASTER_PORT={port}, MASTER_USER={user}, \
                 MASTER_PASSWORD={pw}, MASTER_AUTO_POSITION=1, \
                 MASTER_CONNECT_RETRY={connect_retry_secs}"
            )
        })
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.flavor {
            Flavor::MariaDb => "MariaDB",
            Flavor::MySql => "MySQL",
            Flavor::Percona => "Percona Server",
        };
        let (a, b, c) = self.version;
        write!(f, "{name} {a}.{b}.{c}")
    }
}

/// Reads the administrative password from `path`.
pub(crate) fn read_admin_password(path: &Path) -> Result<Password> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::InvalidState {
                operation: "connect",
                reason: format!(
                    "the administrative password file {} does not exist; the datastore was not \
                     prepared by this agent",
                    path.display()
                ),
            });
        }
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    Password::new(text.trim_end_matches(['\n', '\r'])).map_err(|_| Error::InvalidState {
        operation: "connect",
        reason: format!(
            "the administrative password file {} is malformed",
            path.display()
        ),
    })
}

/// One administrative session and the server it talks to.
pub(crate) struct Session {
    /// The connection.
    pub(crate) conn: Conn,
    /// Flavour and version of the server.
    pub(crate) server: ServerVersion,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Runs one statement without parameters. `subject` names the object for error kinds.
    pub(crate) async fn exec(
        &mut self,
        sql: &str,
        subject: Option<crate::error::Subject<'_>>,
    ) -> Result<()> {
        self.conn.query_drop(sql).await.map_err(stmt(subject))
    }

    /// Runs a text query and returns its rows.
    pub(crate) async fn rows(&mut self, sql: &str) -> Result<Vec<Row>> {
        self.conn.query(sql).await.map_err(stmt(None))
    }

    /// Whether `SELECT 1 FROM mysql.user WHERE User = ? AND Host = ?` finds the account.
    pub(crate) async fn account_exists(&mut self, user: &str, host: &str) -> Result<bool> {
        let row: Option<u8> = self
            .conn
            .exec_first(
                "SELECT 1 FROM mysql.user WHERE User = ? AND Host = ?",
                (user, host),
            )
            .await
            .map_err(stmt(None))?;
        Ok(row.is_some())
    }

    /// Whether database `name` exists.
    pub(crate) async fn database_exists(&mut self, name: &str) -> Result<bool> {
        let row: Option<u8> = self
            .conn
            .exec_first(
                "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                (name,),
            )
            .await
            .map_err(stmt(None))?;
        Ok(row.is_some())
    }

    /// One global variable as text (`None` when NULL).
    pub(crate) async fn global(&mut self, sql: &str) -> Result<Option<String>> {
        let v: Option<Option<String>> = self.conn.query_first(sql).await.map_err(stmt(None))?;
        Ok(v.flatten())
    }

    /// Closes the session politely.
    pub(crate) async fn close(self) {
        if let Err(e) = self.conn.disconnect().await {
            tracing::debug!(error = %e, "Closing a MySQL session failed.");
        }
    }
}

/// How the driver opens sessions to its own server: the Unix socket, the administrative
/// account, and the server version once it is known.
pub(crate) struct Connector {
    /// The server's Unix socket.
    pub(crate) socket: PathBuf,
    /// The file with the administrative password.
    pub(crate) password_file: PathBuf,
    /// Bound on opening a session.
    pub(crate) connect_timeout: Duration,
    /// Flavour and version, read on the first session after a start.
    version: RwLock<Option<ServerVersion>>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector that has not talked to the server yet.
    pub(crate) fn new(socket: PathBuf, password_file: PathBuf, connect_timeout: Duration) -> Self {
        Self {
            socket,
            password_file,
            connect_timeout,
            version: RwLock::new(None),
        }
    }

    /// Forgets the server version (the binaries may change across a restart).
    pub(crate) fn forget_version(&self) {
        if let Ok(mut v) = self.version.write() {
            *v = None;
        }
    }

    /// The server version if a session has read it since the last start.
    pub(crate) fn known_version(&self) -> Option<ServerVersion> {
        self.version.read().ok().and_then(|v| *v)
    }

    /// Opens an administrative session and learns the server version on the way.
    pub(crate) async fn connect(&self) -> Result<Session> {
        let password = read_admin_password(&self.password_file)?;
        let socket = self.socket.to_str().ok_or_else(|| Error::InvalidConfig {
            key: "datastore.run_dir".to_owned(),
            reason: "must be valid UTF-8".to_owned(),
        })?;
        let opts = OptsBuilder::default()
            .socket(Some(socket))
            .prefer_socket(false)
            .user(Some(ADMIN_USER))
            .pass(Some(password.expose()))
            .init(vec![
                format!("SET SESSION sql_mode = {}", quote_string(SESSION_SQL_MODE)?),
                "SET NAMES utf8mb4".to_owned(),
            ]);
        let socket_text = socket.to_owned();
        let conn = match tokio::time::timeout(self.connect_timeout, Conn::new(opts)).await {
            Ok(Ok(c)) => c,
            Ok(Err(source)) => {
                return Err(MySqlError::Connect {
                    socket: socket_text,
                    source,
                }
                .into());
            }
            Err(_) => {
                return Err(Error::Unavailable {
                    message: format!(
                        "no session with the server on {socket_text} within {:?}",
                        self.connect_timeout
                    ),
                    source: None,
                });
            }
        };
        let mut session = Session {
            conn,
            server: ServerVersion {
                flavor: Flavor::MariaDb,
                version: (0, 0, 0),
            },
        };
        session.server = match self.known_version() {
            Some(v) => v,
            None => {
                let row: Option<(String, Option<String>)> = session
                    .conn
                    .query_first("SELECT VERSION(), @@version_comment")
                    .await
                    .map_err(stmt(None))?;
                let (version, comment) = row.ok_or_else(|| {
                    Error::Internal("SELECT VERSION() returned no row".to_owned())
                })?;
                let v = ServerVersion::parse(&version, comment.as_deref().unwrap_or_default())?;
                if let Ok(mut cached) = self.version.write() {
                    *cached = Some(v);
                }
                tracing::debug!(server = %v, "Detected the server version.");
                v
            }
        };
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted() {
        assert_eq!(quote_ident("app").unwrap(), "`app`");
        assert_eq!(quote_ident("My-DB$1").unwrap(), "`My-DB$1`");
        assert_eq!(quote_ident("select").unwrap(), "`select`");
        assert_eq!(
            quote_ident("a`; DROP DATABASE mysql; #").unwrap(),
            "`a``; DROP DATABASE mysql; #`"
        );
        assert_eq!(quote_ident("`").unwrap(), "````");
        assert!(quote_ident("").is_err());
        assert!(quote_ident("a\0b").is_err());
        assert_eq!(account("app", "%").unwrap(), "`app`@`%`");
    }

    /// Hostile values: the literal must stay one literal however the server reads
    /// backslashes. Simulates both readings and checks the value comes back intact (mode off)
    /// or at least unbroken (mode on).
    #[test]
    fn string_literals_survive_hostile_input() {
        /// Reads one literal starting at the beginning of `sql`, returning the value and the
        /// rest of the text after the closing quote.
        fn read_literal(sql: &str, backslash_escapes: bool) -> (String, &str) {
            assert!(sql.starts_with('\''));
            let mut out = String::new();
            let mut it = sql.char_indices().skip(1).peekable();
            while let Some((i, c)) = it.next() {
                match c {
                    '\\' if backslash_escapes => {
                        let (_, n) = it.next().unwrap();
                        out.push(n);
                    }
                    '\'' => {
                        if let Some((_, '\'')) = it.peek() {
                            it.next();
                            out.push('\'');
                        } else {
                            return (out, &sql[i + 1..]);
                        }
                    }
                    c => out.push(c),
                }
            }
            panic!("unterminated literal in {sql}");
        }
        for hostile in [
            "it's",
            "back\\slash\\",
            "\\",
            "\\'",
            "'; DROP DATABASE mysql; --",
            "\\'; DROP USER root; #",
            "x\\\\'y",
            "say \"hi\"",
            "`tick`",
            "ünï©ødé ☃",
            "%_wild*?",
            "  spaces  ",
            "/* c */ -- x",
            "\u{bf}\\'",
        ] {
            let lit = quote_string(hostile).unwrap();
            let sql = format!("{lit} AND 1");
            let (value, rest) = read_literal(&sql, true);
            assert_eq!(value, hostile, "mode off: {lit}");
            assert_eq!(rest, " AND 1", "mode off: {lit}");
            let (_, rest) = read_literal(&sql, false);
            assert_eq!(rest, " AND 1", "NO_BACKSLASH_ESCAPES: {lit}");
        }
        assert!(quote_string("a\0b").is_err());
        assert_eq!(quote_string("").unwrap(), "''");
        assert!(!SESSION_SQL_MODE.contains("NO_BACKSLASH_ESCAPES"));
        assert!(!SESSION_SQL_MODE.contains("ANSI_QUOTES"));
    }

    #[test]
    fn grant_targets_escape_wildcards() {
        assert_eq!(grant_target("app").unwrap(), "`app`.*");
        assert_eq!(grant_target("app_db").unwrap(), "`app\\_db`.*");
        assert_eq!(grant_target("a%b").unwrap(), "`a\\%b`.*");
        assert_eq!(grant_pattern_to_name("app\\_db").as_deref(), Some("app_db"));
        assert_eq!(grant_pattern_to_name("app_db"), None);
        assert_eq!(grant_pattern_to_name("a%"), None);
        assert_eq!(grant_pattern_to_name("plain").as_deref(), Some("plain"));
        assert_eq!(grant_pattern_to_name("bad\\"), None);
    }

    #[test]
    fn versions_and_flavours() {
        let m = ServerVersion::parse("10.11.19-MariaDB-0+deb12u1", "Debian 12").unwrap();
        assert_eq!(m.flavor, Flavor::MariaDb);
        assert_eq!(m.version, (10, 11, 19));
        assert_eq!(m.to_string(), "MariaDB 10.11.19");
        let old = ServerVersion::parse("5.5.5-10.4.1-MariaDB", "").unwrap();
        assert_eq!((old.flavor, old.version), (Flavor::MariaDb, (10, 4, 1)));
        let my = ServerVersion::parse("8.0.36", "MySQL Community Server - GPL").unwrap();
        assert_eq!((my.flavor, my.version), (Flavor::MySql, (8, 0, 36)));
        let p = ServerVersion::parse("8.0.36-28", "Percona Server (GPL), Release 28").unwrap();
        assert_eq!(p.flavor, Flavor::Percona);
        assert!(ServerVersion::parse("garbage", "").is_err());

        assert_eq!(m.position_sql(), "SELECT @@GLOBAL.gtid_binlog_pos");
        assert_eq!(my.position_sql(), "SELECT @@GLOBAL.gtid_executed");
        assert_eq!(m.replica_status_sql(), "SHOW SLAVE STATUS");
        assert_eq!(my.replica_status_sql(), "SHOW REPLICA STATUS");
        assert!(m.wait_sql().contains("MASTER_GTID_WAIT"));
        assert!(my.wait_sql().contains("WAIT_FOR_EXECUTED_GTID_SET"));
        let my57 = ServerVersion::parse("5.7.44-log", "MySQL Community Server (GPL)").unwrap();
        assert_eq!(my57.stop_replica_sql(), "STOP SLAVE");
        assert_eq!(m.binlog_status_sql(), "SHOW MASTER STATUS");
        let my84 = ServerVersion::parse("8.4.0", "").unwrap();
        assert_eq!(my84.binlog_status_sql(), "SHOW BINARY LOG STATUS");
        assert!(!my57.uses_source_syntax() && my.uses_source_syntax());
    }

    #[test]
    fn change_source_per_dialect() {
        let pw = Password::new("p'w\\x").unwrap();
        let m = ServerVersion::parse("10.11.19-MariaDB", "").unwrap();
        let sql = m
            .change_source_sql("10.0.0.5", 3306, "os_repl_x", &pw, 5)
            .unwrap();
        assert!(sql.starts_with("CHANGE MASTER TO MASTER_HOST='10.0.0.5', MASTER_PORT=3306"));
        assert!(sql.contains("MASTER_PASSWORD='p''w\\\\x'"), "{sql}");
        assert!(sql.contains("MASTER_USE_GTID=slave_pos"));
        let my = ServerVersion::parse("8.0.36", "").unwrap();
        let sql = my.change_source_sql("h", 3306, "u", &pw, 5).unwrap();
        assert!(sql.starts_with("CHANGE REPLICATION SOURCE TO SOURCE_HOST='h'"));
        assert!(sql.contains("SOURCE_AUTO_POSITION=1"));
        let my57 = ServerVersion::parse("5.7.44", "").unwrap();
        let sql = my57.change_source_sql("h", 3306, "u", &pw, 5).unwrap();
        assert!(sql.contains("MASTER_AUTO_POSITION=1"));
    }

    #[test]
    fn admin_password_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        assert!(matches!(
            read_admin_password(&path),
            Err(Error::InvalidState { .. })
        ));
        std::fs::write(&path, "abcDEF123\n").unwrap();
        assert_eq!(read_admin_password(&path).unwrap().expose(), "abcDEF123");
        std::fs::write(&path, "").unwrap();
        let e = read_admin_password(&path).unwrap_err().to_string();
        assert!(e.contains("malformed"), "{e}");
    }
}

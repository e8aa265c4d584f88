//! SQL text helpers and the driver's own sessions.
//!
//! PostgreSQL's utility statements (`CREATE DATABASE`, `CREATE ROLE`, `GRANT`) take no bind
//! parameters, so names and a few validated values must be spliced into the text. That happens
//! only through [`quote_ident`] and [`quote_literal`], the single quoting helpers of this
//! dialect; every catalog query binds its values instead.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use guest_agent_api::ident::Password;
use guest_agent_api::{Error, Result};
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use crate::error::PgError;
use crate::{ADMIN_PASSWORD_FILE, ADMIN_USER};

/// Quotes an identifier for PostgreSQL: wrapped in double quotes, inner double quotes doubled.
///
/// Quoting always (never "only when needed") keeps the case and makes keywords harmless. NUL
/// cannot be represented in PostgreSQL text and is refused, as is the empty name.
pub fn quote_ident(name: &str) -> Result<String> {
    check_text("identifier", name)?;
    if name.is_empty() {
        return Err(Error::invalid("identifier", "must not be empty"));
    }
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    Ok(out)
}

/// Quotes a string literal for PostgreSQL: single quotes doubled; a value with a backslash
/// becomes an `E'…'` literal with the backslash doubled, so the result means the same whatever
/// `standard_conforming_strings` is set to.
pub fn quote_literal(value: &str) -> Result<String> {
    check_text("literal", value)?;
    let escape = value.contains('\\');
    let mut out = String::with_capacity(value.len() + 3);
    if escape {
        out.push('E');
    }
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || (escape && c == '\\') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    Ok(out)
}

fn check_text(field: &str, s: &str) -> Result<()> {
    if s.contains('\0') {
        return Err(Error::invalid(field, "must not contain NUL"));
    }
    Ok(())
}

/// The SCRAM-SHA-256 verifier of `password`, as a quoted literal for `PASSWORD …`.
///
/// The server stores a verifier given in this form as it is, so neither the server nor its
/// statement log ever sees the plaintext.
pub(crate) fn password_literal(password: &Password) -> Result<String> {
    let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
    quote_literal(&verifier)
}

/// How the driver opens sessions to its own server.
#[derive(Clone)]
pub(crate) struct Connector {
    /// The Unix socket directory.
    pub(crate) socket_dir: PathBuf,
    /// The server port (names the socket file).
    pub(crate) port: u16,
    /// The file with the administrative password.
    pub(crate) password_file: PathBuf,
    /// Bound on opening a session.
    pub(crate) connect_timeout: Duration,
    /// `statement_timeout` of every session.
    pub(crate) statement_timeout: Duration,
    /// `lock_timeout` of every session.
    pub(crate) lock_timeout: Duration,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("socket_dir", &self.socket_dir)
            .field("port", &self.port)
            .finish_non_exhaustive()
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
        Err(e) => {
            return Err(Error::io(format!("reading {}", path.display()), e));
        }
    };
    Password::new(text.trim_end_matches(['\n', '\r'])).map_err(|_| Error::InvalidState {
        operation: "connect",
        reason: format!(
            "the administrative password file {} is malformed",
            path.display()
        ),
    })
}

impl Connector {
    /// Path of the administrative password file in the state directory `state_dir`.
    pub(crate) fn admin_password_path(state_dir: &Path) -> PathBuf {
        state_dir.join(ADMIN_PASSWORD_FILE)
    }

    /// Opens an administrative session to `dbname`. The connection task ends with the client.
    pub(crate) async fn connect(&self, dbname: &str) -> Result<Client> {
        let password = read_admin_password(&self.password_file)?;
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(&self.socket_dir)
            .port(self.port)
            .user(ADMIN_USER)
            .password(password.expose())
            .dbname(dbname)
            .application_name("guest-agent")
            .connect_timeout(self.connect_timeout)
            // A read-only primary (`make_read_only`) stays administrable by the driver.
            .options(format!(
                "-c default_transaction_read_only=off -c statement_timeout={} -c lock_timeout={}",
                self.statement_timeout.as_millis(),
                self.lock_timeout.as_millis()
            ));
        let (client, connection) = cfg
            .connect(NoTls)
            .await
            .map_err(|source| PgError::Connect {
                socket_dir: self.socket_dir.display().to_string(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL session ended with an error.");
            }
        });
        Ok(client)
    }
}

/// The cached administrative session to the `postgres` database, reopened when it closed.
#[derive(Debug)]
pub(crate) struct AdminSession {
    connector: Connector,
    cached: Mutex<Option<Arc<Client>>>,
}

impl AdminSession {
    /// A session holder that connects on first use.
    pub(crate) fn new(connector: Connector) -> Self {
        Self {
            connector,
            cached: Mutex::new(None),
        }
    }

    /// The connector, for sessions to other databases.
    pub(crate) fn connector(&self) -> &Connector {
        &self.connector
    }

    /// The open session, connecting (again) when there is none or it closed.
    pub(crate) async fn client(&self) -> Result<Arc<Client>> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(c));
        }
        *cached = None;
        let client = Arc::new(self.connector.connect("postgres").await?);
        *cached = Some(Arc::clone(&client));
        Ok(client)
    }

    /// Drops the cached session (before a stop, so a smart shutdown does not wait for it, or
    /// after an error that may have left it unusable).
    pub(crate) async fn reset(&self) {
        self.cached.lock().await.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted() {
        assert_eq!(quote_ident("app").unwrap(), "\"app\"");
        assert_eq!(quote_ident("My-DB$1").unwrap(), "\"My-DB$1\"");
        assert_eq!(quote_ident("select").unwrap(), "\"select\"");
        assert_eq!(
            quote_ident("a\"; DROP TABLE x; --").unwrap(),
            "\"a\"\"; DROP TABLE x; --\""
        );
        assert_eq!(quote_ident("\"").unwrap(), "\"\"\"\"");
        assert!(quote_ident("").is_err());
        assert!(quote_ident("a\0b").is_err());
    }

    #[test]
    fn literals_are_escaped() {
        assert_eq!(quote_literal("UTF8").unwrap(), "'UTF8'");
        assert_eq!(quote_literal("").unwrap(), "''");
        assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
        assert_eq!(quote_literal("a\\'b").unwrap(), "E'a\\\\''b'");
        assert_eq!(
            quote_literal("x'); DROP DATABASE y; --").unwrap(),
            "'x''); DROP DATABASE y; --'"
        );
        assert!(quote_literal("a\0").is_err());
    }

    #[test]
    fn password_becomes_a_scram_verifier() {
        let p = Password::new("s3cr'et\\pw").unwrap();
        let lit = password_literal(&p).unwrap();
        assert!(lit.starts_with("'SCRAM-SHA-256$4096:"), "{lit}");
        assert!(!lit.contains("s3cr"));
        // Salted: the same password gives another verifier each time.
        assert_ne!(lit, password_literal(&p).unwrap());
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

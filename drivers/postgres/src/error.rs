//! The driver's private errors and their mapping into the API's [`Error`] kinds.
//!
//! Server errors are classified by SQLSTATE: a duplicate is [`Error::AlreadyExists`], a missing
//! object [`Error::NotFound`], a server that is shutting down or unreachable
//! [`Error::Unavailable`] (retryable), anything else [`Error::Datastore`] with the code. No
//! statement text is ever put into an error, so a password verifier cannot leak through one.

use guest_agent_api::{BoxError, Error};

/// The object a statement was about, so that a "not found" or "already exists" can name it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subject<'a> {
    /// Kind of object (`database`, `user`).
    pub(crate) what: &'static str,
    /// Its name.
    pub(crate) name: &'a str,
}

impl<'a> Subject<'a> {
    /// A database named `name`.
    pub(crate) fn database(name: &'a str) -> Self {
        Self {
            what: "database",
            name,
        }
    }

    /// A user (role) named `name`.
    pub(crate) fn user(name: &'a str) -> Self {
        Self { what: "user", name }
    }
}

/// Errors of the driver before they cross the crate edge.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PgError {
    /// Opening a session failed.
    #[error("connecting to PostgreSQL through {socket_dir}: {source}")]
    Connect {
        /// The socket directory.
        socket_dir: String,
        /// What the client library said.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A statement failed.
    #[error("{source}")]
    Statement {
        /// What the client library said.
        #[source]
        source: tokio_postgres::Error,
        /// What the statement was about.
        what: Option<&'static str>,
        /// The object's name.
        name: String,
    },
}

impl PgError {
    /// A failed statement about `subject`.
    pub(crate) fn statement(source: tokio_postgres::Error, subject: Option<Subject<'_>>) -> Self {
        Self::Statement {
            source,
            what: subject.map(|s| s.what),
            name: subject.map(|s| s.name.to_owned()).unwrap_or_default(),
        }
    }
}

/// SQLSTATE classes and codes that mean "the server cannot serve you right now".
fn is_unavailable(code: &str) -> bool {
    // 08: connection exceptions; 57P01..57P05: admin/crash shutdown, cannot connect now,
    // database dropped, idle session timeout; 53300: too many connections.
    code.starts_with("08") || code.starts_with("57P") || code == "53300"
}

/// Maps a server error (SQLSTATE `code`, server `message`) about `subject` into an API error.
pub(crate) fn classify(code: &str, message: &str, subject: Option<Subject<'_>>) -> Error {
    let named = |default_what: &'static str| match subject {
        Some(s) => (s.what, s.name.to_owned()),
        None => (default_what, String::new()),
    };
    match code {
        // duplicate_database, duplicate_object
        "42P04" | "42710" => {
            let (what, name) = named(if code == "42P04" {
                "database"
            } else {
                "object"
            });
            Error::AlreadyExists { what, name }
        }
        // undefined_object, invalid_catalog_name (a missing database)
        "42704" | "3D000" => {
            let (what, name) = named(if code == "3D000" {
                "database"
            } else {
                "object"
            });
            Error::NotFound { what, name }
        }
        // reserved_name: `public`, `none`, `pg_*` roles.
        "42939" => Error::InvalidArgument {
            field: subject.map_or("name", |s| s.what).to_owned(),
            reason: message.to_owned(),
        },
        c if is_unavailable(c) => Error::Unavailable {
            message: format!("{message} (SQLSTATE {code})"),
            source: None,
        },
        _ => Error::Datastore {
            code: code.to_owned(),
            message: message.to_owned(),
        },
    }
}

/// Whether a client error without a server error means the connection is gone.
fn is_connection_loss(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if s.is::<std::io::Error>() {
            return true;
        }
        src = s.source();
    }
    false
}

impl From<PgError> for Error {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Connect { socket_dir, source } => {
                // Whatever the reason (no server, starting up, refused credentials), the
                // datastore cannot be used right now; the server's own words say why.
                let message = match source.as_db_error() {
                    Some(db) => format!(
                        "PostgreSQL refused a session through {socket_dir}: {} (SQLSTATE {})",
                        db.message(),
                        db.code().code()
                    ),
                    None => format!("cannot connect to PostgreSQL through {socket_dir}"),
                };
                Error::Unavailable {
                    message,
                    source: Some(BoxError::from(source)),
                }
            }
            PgError::Statement { source, what, name } => {
                if let Some(db) = source.as_db_error() {
                    let subject = what.map(|what| Subject { what, name: &name });
                    return classify(db.code().code(), db.message(), subject);
                }
                if is_connection_loss(&source) {
                    Error::Unavailable {
                        message: "the connection to PostgreSQL was lost".to_owned(),
                        source: Some(BoxError::from(source)),
                    }
                } else {
                    Error::Internal(format!("unexpected answer from PostgreSQL: {source}"))
                }
            }
        }
    }
}

/// Shorthand: maps a statement error about `subject` straight into an API error.
pub(crate) fn stmt(subject: Option<Subject<'_>>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |e| PgError::statement(e, subject).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_mapping() {
        let db = Some(Subject::database("app"));
        let user = Some(Subject::user("bob"));
        assert!(matches!(
            classify("42P04", "database \"app\" already exists", db),
            Error::AlreadyExists { what: "database", name } if name == "app"
        ));
        assert!(matches!(
            classify("42710", "role \"bob\" already exists", user),
            Error::AlreadyExists { what: "user", name } if name == "bob"
        ));
        assert!(matches!(
            classify("42704", "role \"bob\" does not exist", user),
            Error::NotFound { what: "user", name } if name == "bob"
        ));
        assert!(matches!(
            classify("3D000", "database \"x\" does not exist", None),
            Error::NotFound {
                what: "database",
                ..
            }
        ));
        for code in ["57P01", "57P02", "57P03", "08006", "53300"] {
            let e = classify(code, "shutting down", None);
            assert!(e.is_retryable(), "{code}: {e}");
            assert_eq!(e.kind(), "Unavailable");
        }
        assert!(matches!(
            classify("42939", "role name \"public\" is reserved", user),
            Error::InvalidArgument { field, .. } if field == "user"
        ));
        let e = classify("42601", "syntax error at or near \"x\"", None);
        assert!(
            matches!(&e, Error::Datastore { code, .. } if code == "42601"),
            "{e}"
        );
        assert_eq!(e.kind(), "DatastoreError");
    }
}

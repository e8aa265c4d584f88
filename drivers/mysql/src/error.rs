//! The driver's private errors and their mapping into the API's [`Error`] kinds.
//!
//! Server errors are classified by errno: a duplicate is [`Error::AlreadyExists`], a missing
//! object [`Error::NotFound`], a server that is shutting down or unreachable
//! [`Error::Unavailable`] (retryable), a read-only server [`Error::InvalidState`], anything
//! else [`Error::Datastore`] with the code. No statement text is ever put into an error, and
//! the server's message is dropped for statements that carried a secret (a syntax error quotes
//! the text near it), so a password cannot leak through one.

use guest_agent_api::{BoxError, Error};

/// What a failed `CREATE USER`/`ALTER USER`/`DROP USER` (errno 1396) means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UserOp {
    /// Creating: 1396 means the account exists already.
    Create,
    /// Changing or dropping: 1396 means it does not exist.
    Change,
}

/// The object a statement was about, so that a "not found" or "already exists" can name it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subject<'a> {
    /// Kind of object (`database`, `user`).
    pub(crate) what: &'static str,
    /// Its name.
    pub(crate) name: &'a str,
    /// For account statements, how to read errno 1396.
    pub(crate) user_op: Option<UserOp>,
    /// Whether the statement carried a secret (its server message is then not kept).
    pub(crate) secret: bool,
}

impl<'a> Subject<'a> {
    /// A database named `name`.
    pub(crate) fn database(name: &'a str) -> Self {
        Self {
            what: "database",
            name,
            user_op: None,
            secret: false,
        }
    }

    /// An account `name` (`user@host`), changed or dropped.
    pub(crate) fn user(name: &'a str) -> Self {
        Self {
            what: "user",
            name,
            user_op: Some(UserOp::Change),
            secret: false,
        }
    }

    /// An account `name` being created.
    pub(crate) fn new_user(name: &'a str) -> Self {
        Self {
            user_op: Some(UserOp::Create),
            ..Self::user(name)
        }
    }

    /// The same subject, for a statement that carries a secret.
    pub(crate) fn with_secret(self) -> Self {
        Self {
            secret: true,
            ..self
        }
    }

    /// A statement that carries a secret and names no object.
    pub(crate) fn secret() -> Self {
        Self {
            what: "statement",
            name: "",
            user_op: None,
            secret: true,
        }
    }
}

/// Errors of the driver before they cross the crate edge.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MySqlError {
    /// Opening a session failed.
    #[error("connecting to MySQL through {socket}: {source}")]
    Connect {
        /// The socket path.
        socket: String,
        /// What the client library said.
        #[source]
        source: mysql_async::Error,
    },
    /// A statement failed.
    #[error("{source}")]
    Statement {
        /// What the client library said.
        #[source]
        source: mysql_async::Error,
        /// What the statement was about.
        subject: Option<OwnedSubject>,
    },
}

/// [`Subject`] with an owned name, kept inside [`MySqlError`].
#[derive(Debug, Clone)]
pub(crate) struct OwnedSubject {
    what: &'static str,
    name: String,
    user_op: Option<UserOp>,
    secret: bool,
}

impl OwnedSubject {
    fn borrow(&self) -> Subject<'_> {
        Subject {
            what: self.what,
            name: &self.name,
            user_op: self.user_op,
            secret: self.secret,
        }
    }
}

/// Server errnos that mean "the server cannot serve you right now": too many connections,
/// shutdown in progress, connection killed, and the client-side connection errors (can't
/// connect, server gone away, lost connection).
fn is_unavailable(code: u16) -> bool {
    matches!(
        code,
        1040 | 1053 | 1152 | 1156 | 1158 | 1159 | 1160 | 1161 | 1927 | 2002 | 2003 | 2006 | 2013
    )
}

/// Maps a server error (`code`, server `message`) about `subject` into an API error.
pub(crate) fn classify(code: u16, message: &str, subject: Option<Subject<'_>>) -> Error {
    let named = |default_what: &'static str| match subject {
        Some(s) if !s.name.is_empty() => (s.what, s.name.to_owned()),
        _ => (default_what, String::new()),
    };
    let secret = subject.is_some_and(|s| s.secret);
    let message = if secret {
        format!("the server rejected the statement (error {code})")
    } else {
        message.to_owned()
    };
    match code {
        // ER_DB_CREATE_EXISTS
        1007 => {
            let (what, name) = named("database");
            Error::AlreadyExists { what, name }
        }
        // ER_DB_DROP_EXISTS, ER_BAD_DB_ERROR
        1008 | 1049 => {
            let (what, name) = named("database");
            Error::NotFound { what, name }
        }
        // ER_CANNOT_USER: the account exists (create) or does not (alter, drop, rename).
        1396 => {
            let (what, name) = named("user");
            match subject.and_then(|s| s.user_op) {
                Some(UserOp::Create) => Error::AlreadyExists { what, name },
                _ => Error::NotFound { what, name },
            }
        }
        // ER_PASSWORD_NO_MATCH (no such account), ER_NONEXISTING_GRANT,
        // ER_NONEXISTING_TABLE_GRANT
        1133 | 1141 | 1147 => {
            let (what, name) = named("user");
            Error::NotFound { what, name }
        }
        // ER_OPTION_PREVENTS_STATEMENT (--read-only), ER_READ_ONLY_MODE
        1290 | 1836 => Error::InvalidState {
            operation: "write",
            reason: message,
        },
        // ER_UNKNOWN_SYSTEM_VARIABLE, ER_WRONG_VALUE_FOR_VAR, ER_WRONG_TYPE_FOR_VAR,
        // ER_INCORRECT_GLOBAL_LOCAL_VAR (a read-only variable)
        1193 | 1231 | 1232 | 1238 => Error::InvalidConfig {
            key: subject.map(|s| s.name.to_owned()).unwrap_or_default(),
            reason: message,
        },
        c if is_unavailable(c) => Error::Unavailable {
            message: format!("{message} (error {code})"),
            source: None,
        },
        _ => Error::Datastore {
            code: code.to_string(),
            message,
        },
    }
}

impl From<MySqlError> for Error {
    fn from(e: MySqlError) -> Self {
        match e {
            MySqlError::Connect { socket, source } => {
                if let mysql_async::Error::Server(s) = &source {
                    return Error::Unavailable {
                        message: format!(
                            "the server refused the administrative session: {} (error {})",
                            s.message, s.code
                        ),
                        source: None,
                    };
                }
                Error::Unavailable {
                    message: format!("cannot connect to the server through {socket}"),
                    source: Some(BoxError::from(source)),
                }
            }
            MySqlError::Statement { source, subject } => match source {
                mysql_async::Error::Server(s) => classify(
                    s.code,
                    &s.message,
                    subject.as_ref().map(OwnedSubject::borrow),
                ),
                mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) if source.is_fatal() => {
                    Error::Unavailable {
                        message: "the connection to the server was lost".to_owned(),
                        source: Some(BoxError::from(source)),
                    }
                }
                other => Error::Internal(format!("unexpected answer from the server: {other}")),
            },
        }
    }
}

/// Shorthand: maps a statement error about `subject` straight into an API error.
pub(crate) fn stmt(subject: Option<Subject<'_>>) -> impl FnOnce(mysql_async::Error) -> Error {
    let owned = subject.map(|s| OwnedSubject {
        what: s.what,
        name: s.name.to_owned(),
        user_op: s.user_op,
        secret: s.secret,
    });
    move |source| {
        MySqlError::Statement {
            source,
            subject: owned,
        }
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        let db = Some(Subject::database("app"));
        assert!(matches!(
            classify(1007, "Can't create database 'app'; database exists", db),
            Error::AlreadyExists { what: "database", name } if name == "app"
        ));
        assert!(matches!(
            classify(1049, "Unknown database 'app'", db),
            Error::NotFound {
                what: "database",
                ..
            }
        ));
        assert!(matches!(
            classify(1396, "Operation CREATE USER failed", Some(Subject::new_user("bob@%"))),
            Error::AlreadyExists { what: "user", name } if name == "bob@%"
        ));
        assert!(matches!(
            classify(
                1396,
                "Operation ALTER USER failed",
                Some(Subject::user("bob@%"))
            ),
            Error::NotFound { what: "user", .. }
        ));
        for code in [1040, 1053, 1927, 2002, 2003, 2006, 2013] {
            let e = classify(code, "gone", None);
            assert!(e.is_retryable(), "{code}: {e}");
        }
        assert!(matches!(
            classify(
                1290,
                "The MariaDB server is running with the --read-only option",
                None
            ),
            Error::InvalidState { .. }
        ));
        let e = classify(1064, "You have an error in your SQL syntax", None);
        assert!(
            matches!(&e, Error::Datastore { code, .. } if code == "1064"),
            "{e}"
        );
        assert_eq!(e.kind(), "DatastoreError");
    }

    #[test]
    fn secrets_never_reach_the_message() {
        let subject = Subject::user("bob@%").with_secret();
        let e = classify(
            1064,
            "You have an error in your SQL syntax near 'hunter2''",
            Some(subject),
        );
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = classify(1064, "near 'hunter2'", Some(Subject::secret()));
        assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");
    }
}

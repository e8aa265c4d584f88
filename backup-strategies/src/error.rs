//! The crate's one error type, [`BackupError`], with kinds a caller can act on and
//! [`BackupError::is_retryable`] for the retry policy.
//!
//! Backends keep their raw errors private and map them here at their edge, classifying them into
//! a [`StoreErrorKind`]; no secret (keys, tokens, passwords) ever appears in a message.

use std::fmt;

/// Result with [`BackupError`].
pub type Result<T, E = BackupError> = std::result::Result<T, E>;

/// A boxed underlying error, kept for the source chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why authenticated decryption of a stored backup failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// A chunk or the header failed authentication: bytes were changed, reordered or swapped.
    Tampered,
    /// The stream ended before its authenticated last chunk.
    Truncated,
    /// The backup was encrypted under another instance key.
    WrongKey,
    /// The header is not one this version understands.
    UnsupportedFormat,
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tampered => "the backup failed authentication (tampered or corrupted)",
            Self::Truncated => "the backup is truncated",
            Self::WrongKey => "the backup was encrypted with another key",
            Self::UnsupportedFormat => "the backup's encryption header is not understood",
        })
    }
}

/// What kind of object store failure happened; decides retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The object (or upload) does not exist.
    NotFound,
    /// The store could not be reached or answered 5xx; retrying may help.
    Unavailable,
    /// The store asked us to slow down (429, SlowDown).
    Throttled,
    /// The request timed out.
    Timeout,
    /// Credentials were refused.
    Unauthorized,
    /// The store rejected the request (4xx other than the above); retrying will not help.
    Rejected,
    /// The store answered something this client does not understand.
    Protocol,
}

impl StoreErrorKind {
    fn retryable(self) -> bool {
        matches!(self, Self::Unavailable | Self::Throttled | Self::Timeout)
    }
}

/// Everything the backup crate can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// An object store operation failed.
    #[error("object store {store}: {op} '{key}' failed ({kind:?}): {message}")]
    Store {
        /// Backend name (`s3`, `swift`, `local`, ...).
        store: &'static str,
        /// Operation (`put`, `put_part`, `get` ...).
        op: &'static str,
        /// Object key the operation was about.
        key: String,
        /// Classification.
        kind: StoreErrorKind,
        /// What the store said (never credentials).
        message: String,
        /// Underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// Decryption or authentication failed.
    #[error("{0}")]
    Crypto(CryptoError),
    /// The stored bytes do not match the manifest's checksum or size.
    #[error("checksum mismatch for '{key}': expected {expected}, got {actual}")]
    Checksum {
        /// Object key.
        key: String,
        /// What the manifest says.
        expected: String,
        /// What was read.
        actual: String,
    },
    /// The manifest is missing fields, has another format or does not fit the request.
    #[error("backup manifest '{key}': {reason}")]
    Manifest {
        /// Manifest key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// An incremental backup's parent is not in the store.
    #[error("parent backup '{parent}' of '{child}' is missing")]
    ParentMissing {
        /// The backup being restored or created.
        child: String,
        /// The missing parent (its manifest key).
        parent: String,
    },
    /// The backup or restore tool failed: non-zero exit, killed, or failure on stderr.
    #[error("{program} failed ({exit}): {stderr_tail}")]
    Tool {
        /// Program that ran.
        program: String,
        /// Exit status description.
        exit: String,
        /// The last lines it wrote to stderr.
        stderr_tail: String,
    },
    /// A request argument was rejected before anything ran.
    #[error("invalid argument '{field}': {reason}")]
    InvalidArgument {
        /// The argument.
        field: String,
        /// Why.
        reason: String,
    },
    /// The requested database does not exist on the datastore.
    #[error("database '{name}' does not exist")]
    DatabaseNotFound {
        /// The database name.
        name: String,
    },
    /// The operation was cancelled.
    #[error("operation cancelled")]
    Cancelled,
    /// A local I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A bug or an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl BackupError {
    /// Whether retrying the same call may succeed (store unavailable, throttled or timed out).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store { kind, .. } => kind.retryable(),
            _ => false,
        }
    }

    /// Whether this is an object store "not found".
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::Store {
                kind: StoreErrorKind::NotFound,
                ..
            }
        )
    }

    /// The crypto failure, if this is one.
    pub fn crypto(&self) -> Option<CryptoError> {
        match self {
            Self::Crypto(c) => Some(*c),
            _ => None,
        }
    }

    /// A stable machine-readable name of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Store { .. } => "StoreError",
            Self::Crypto(CryptoError::Tampered) => "Tampered",
            Self::Crypto(CryptoError::Truncated) => "Truncated",
            Self::Crypto(CryptoError::WrongKey) => "WrongKey",
            Self::Crypto(_) => "CryptoError",
            Self::Checksum { .. } => "ChecksumMismatch",
            Self::Manifest { .. } => "ManifestError",
            Self::ParentMissing { .. } => "ParentMissing",
            Self::Tool { .. } => "ToolFailed",
            Self::InvalidArgument { .. } => "InvalidArgument",
            Self::DatabaseNotFound { .. } => "NotFound",
            Self::Cancelled => "Cancelled",
            Self::Io { .. } => "IoError",
            Self::Internal(_) => "InternalError",
        }
    }

    /// Shorthand for [`BackupError::Io`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Shorthand for [`BackupError::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for a [`BackupError::Store`] without a source.
    pub fn store(
        store: &'static str,
        op: &'static str,
        key: impl Into<String>,
        kind: StoreErrorKind,
        message: impl Into<String>,
    ) -> Self {
        Self::Store {
            store,
            op,
            key: key.into(),
            kind,
            message: message.into(),
            source: None,
        }
    }
}

impl From<CryptoError> for BackupError {
    fn from(e: CryptoError) -> Self {
        Self::Crypto(e)
    }
}

impl From<BackupError> for guest_agent_api::Error {
    fn from(e: BackupError) -> Self {
        use guest_agent_api::Error as E;
        match e {
            BackupError::InvalidArgument { field, reason } => E::InvalidArgument { field, reason },
            BackupError::DatabaseNotFound { name } => E::NotFound {
                what: "database",
                name,
            },
            BackupError::ParentMissing { parent, .. } => E::NotFound {
                what: "parent backup",
                name: parent,
            },
            BackupError::Tool {
                program,
                exit,
                stderr_tail,
            } => E::Tool {
                program,
                exit,
                stderr_tail,
            },
            BackupError::Cancelled => E::Cancelled,
            BackupError::Io { context, source } => E::Io { context, source },
            e if e.is_retryable() => E::Unavailable {
                message: e.to_string(),
                source: Some(Box::new(e)),
            },
            e => E::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_only_for_transient_store_errors() {
        let e = |k| BackupError::store("s3", "put", "k", k, "m");
        assert!(e(StoreErrorKind::Unavailable).is_retryable());
        assert!(e(StoreErrorKind::Throttled).is_retryable());
        assert!(e(StoreErrorKind::Timeout).is_retryable());
        assert!(!e(StoreErrorKind::NotFound).is_retryable());
        assert!(!e(StoreErrorKind::Rejected).is_retryable());
        assert!(!BackupError::Crypto(CryptoError::Tampered).is_retryable());
        assert!(e(StoreErrorKind::NotFound).is_not_found());
        assert_eq!(BackupError::from(CryptoError::WrongKey).kind(), "WrongKey");
    }
}

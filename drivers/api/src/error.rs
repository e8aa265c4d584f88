//! The one error type every driver returns, with kinds a control plane can act on.
//!
//! Drivers keep their own private error types and map them into [`Error`] at their crate edge,
//! classifying server error codes into kinds (not found, already exists, unavailable ...).

use std::time::Duration;

/// Result with the driver API's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Boxed source error, kept for the chain but never shown to a remote caller verbatim.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything a driver operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument failed validation before anything ran.
    #[error("invalid argument '{field}': {reason}")]
    InvalidArgument {
        /// The argument (or argument path) that was wrong.
        field: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The named object does not exist.
    #[error("{what} '{name}' not found")]
    NotFound {
        /// Kind of object (`database`, `user` ...).
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// The named object exists already.
    #[error("{what} '{name}' already exists")]
    AlreadyExists {
        /// Kind of object.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// The driver does not support this operation.
    #[error("The '{operation}' operation is not supported for the '{driver}' datastore.")]
    NotSupported {
        /// Operation name (Trove method name where there is one).
        operation: &'static str,
        /// Driver (datastore manager) name.
        driver: &'static str,
    },
    /// A configuration value was rejected.
    #[error("invalid configuration '{key}': {reason}")]
    InvalidConfig {
        /// The configuration key.
        key: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The operation is not allowed in the datastore's current state.
    #[error("{operation} is not possible now: {reason}")]
    InvalidState {
        /// Operation name.
        operation: &'static str,
        /// What is in the way.
        reason: String,
    },
    /// The datastore could not be reached; retrying later may help.
    #[error("datastore unavailable: {message}")]
    Unavailable {
        /// What failed.
        message: String,
        /// Underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// The datastore rejected a statement.
    #[error("datastore error {code}: {message}")]
    Datastore {
        /// Server error code (SQLSTATE, errno).
        code: String,
        /// Server message.
        message: String,
    },
    /// An external tool failed.
    #[error("{program} failed ({exit}): {stderr_tail}")]
    Tool {
        /// Program that ran.
        program: String,
        /// Exit status description.
        exit: String,
        /// The last lines it wrote to stderr.
        stderr_tail: String,
    },
    /// The operation did not finish in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// Operation name.
        operation: &'static str,
        /// How long it was given.
        after: Duration,
    },
    /// The operation was cancelled (shutdown or caller).
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
    /// A driver bug or unexpected server answer.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Shorthand for [`Error::Unavailable`].
    pub fn unavailable(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. })
    }

    /// A stable machine-readable name of the kind, used on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "InvalidArgument",
            Self::NotFound { .. } => "NotFound",
            Self::AlreadyExists { .. } => "AlreadyExists",
            Self::NotSupported { .. } => "NotSupported",
            Self::InvalidConfig { .. } => "InvalidConfig",
            Self::InvalidState { .. } => "InvalidState",
            Self::Unavailable { .. } => "Unavailable",
            Self::Datastore { .. } => "DatastoreError",
            Self::Tool { .. } => "ToolFailed",
            Self::Timeout { .. } => "Timeout",
            Self::Cancelled => "Cancelled",
            Self::Io { .. } => "IoError",
            Self::Internal(_) => "InternalError",
        }
    }
}

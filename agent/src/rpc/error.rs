//! The one error type of an RPC, with a single stable mapping to every transport: an HTTP
//! status and error type name, and oslo's failure payload on AMQP.

use guest_agent_api::Error as DriverError;
use guest_agent_backup::{BackupError, CryptoError, StoreErrorKind};

/// Why an operation failed, as every transport reports it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// No such method.
    #[error("Endpoint does not support RPC method {name}")]
    UnknownMethod {
        /// The method asked for.
        name: String,
    },
    /// The arguments did not fit the method.
    #[error("invalid arguments for {method}: '{field}': {reason}")]
    InvalidArgs {
        /// The method.
        method: String,
        /// The argument (or path inside it) that is wrong.
        field: String,
        /// Why.
        reason: String,
    },
    /// The request body is not a JSON object.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The caller speaks an API version this agent does not.
    #[error("Endpoint does not support RPC version {version}")]
    UnsupportedVersion {
        /// The version asked for.
        version: String,
    },
    /// The agent is shutting down and takes no new work.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// The driver failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// A backup, restore or verification failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// An agent-side failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RpcError {
    /// Shorthand for [`RpcError::InvalidArgs`].
    pub fn invalid_args(
        method: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::InvalidArgs {
            method: method.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Stable error type name on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownMethod { .. } => "NoSuchMethod",
            Self::InvalidArgs { .. } => "InvalidArgument",
            Self::Malformed(_) => "MalformedRequest",
            Self::UnsupportedVersion { .. } => "UnsupportedVersion",
            Self::ShuttingDown => "ShuttingDown",
            Self::Driver(e) => e.kind(),
            Self::Backup(e) => e.kind(),
            Self::Internal(_) => "InternalError",
        }
    }

    /// HTTP status code for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::UnknownMethod { .. } => 404,
            Self::InvalidArgs { .. } | Self::Malformed(_) | Self::UnsupportedVersion { .. } => 400,
            Self::ShuttingDown => 503,
            Self::Internal(_) => 500,
            Self::Driver(e) => match e {
                DriverError::InvalidArgument { .. } | DriverError::InvalidConfig { .. } => 400,
                DriverError::NotFound { .. } => 404,
                DriverError::AlreadyExists { .. } | DriverError::InvalidState { .. } => 409,
                DriverError::NotSupported { .. } => 501,
                DriverError::Unavailable { .. } | DriverError::Cancelled => 503,
                DriverError::Timeout { .. } => 504,
                DriverError::Datastore { .. } => 422,
                _ => 500,
            },
            Self::Backup(e) => match e {
                BackupError::InvalidArgument { .. } => 400,
                BackupError::DatabaseNotFound { .. } | BackupError::ParentMissing { .. } => 404,
                BackupError::Store {
                    kind: StoreErrorKind::NotFound,
                    ..
                } => 404,
                BackupError::Crypto(CryptoError::WrongKey) => 403,
                BackupError::Crypto(_)
                | BackupError::Checksum { .. }
                | BackupError::Manifest { .. } => 422,
                BackupError::Store { .. } | BackupError::Cancelled => 503,
                _ => 500,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_stable() {
        let e = RpcError::UnknownMethod { name: "x".into() };
        assert_eq!((e.kind(), e.http_status()), ("NoSuchMethod", 404));
        let e = RpcError::from(DriverError::NotSupported {
            operation: "get_root_password",
            driver: "postgresql",
        });
        assert_eq!((e.kind(), e.http_status()), ("NotSupported", 501));
        assert_eq!(
            e.to_string(),
            "The 'get_root_password' operation is not supported for the 'postgresql' datastore."
        );
        let e = RpcError::from(DriverError::invalid("user name", "bad"));
        assert_eq!(e.http_status(), 400);
        let e = RpcError::from(BackupError::from(CryptoError::WrongKey));
        assert_eq!((e.kind(), e.http_status()), ("WrongKey", 403));
        let e = RpcError::from(BackupError::ParentMissing {
            child: "b2".into(),
            parent: "i/b1.manifest.json".into(),
        });
        assert_eq!((e.kind(), e.http_status()), ("ParentMissing", 404));
    }
}

//! What a driver supports, declared up front so callers and the conformance kit can tell
//! "not supported" from "broken".

use serde::Serialize;

/// Fine-grained support flags. A flag that is `false` promises that the matching operation
/// returns [`crate::Error::NotSupported`]; the conformance kit checks both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// Create, list and drop databases.
    pub databases: bool,
    /// Databases take a character set and collation.
    pub database_charset: bool,
    /// Create, list, get, drop users and change their passwords.
    pub users: bool,
    /// User host patterns mean something (MySQL `'u'@'host'`); otherwise hosts are ignored.
    pub user_hosts: bool,
    /// Rename a user or change its host with `update_attributes`.
    pub user_rename: bool,
    /// Grant and revoke per-database access.
    pub grants: bool,
    /// Enable and disable a remote root (superuser) account.
    pub root: bool,
    /// Validate and apply configuration overrides.
    pub config: bool,
    /// Replication group available.
    pub replication: bool,
    /// Backup hooks available.
    pub backup: bool,
}

impl Capabilities {
    /// Everything off; set fields with struct update syntax from here.
    pub const fn none() -> Self {
        Self {
            databases: false,
            database_charset: false,
            users: false,
            user_hosts: false,
            user_rename: false,
            grants: false,
            root: false,
            config: false,
            replication: false,
            backup: false,
        }
    }
}

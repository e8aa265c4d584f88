//! Administration group: databases, users, grants and root.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::ident::{DbName, HostPattern, Password, UserName};
use crate::{Error, OpContext, Result};

/// Longest character set or collation name accepted.
const MAX_CHARSET_LEN: usize = 64;

/// Validates a character set or collation name (`utf8mb4`, `en_US.UTF-8`, `C`).
pub fn check_charset(field: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_CHARSET_LEN {
        return Err(Error::invalid(
            field,
            format!("must be 1 to {MAX_CHARSET_LEN} bytes"),
        ));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'))
    {
        return Err(Error::invalid(
            field,
            "allowed are ASCII letters, digits and _ - . @",
        ));
    }
    Ok(())
}

/// A database with optional character set and collation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatabaseSpec {
    /// Its name.
    pub name: DbName,
    /// Character set (MySQL) or encoding (PostgreSQL).
    pub character_set: Option<String>,
    /// Collation.
    pub collate: Option<String>,
}

impl DatabaseSpec {
    /// A database with the server's default character set and collation.
    pub fn named(name: DbName) -> Self {
        Self {
            name,
            character_set: None,
            collate: None,
        }
    }

    /// Builds a spec, validating character set and collation.
    pub fn new(
        name: DbName,
        character_set: Option<String>,
        collate: Option<String>,
    ) -> Result<Self> {
        if let Some(c) = &character_set {
            check_charset("character_set", c)?;
        }
        if let Some(c) = &collate {
            check_charset("collate", c)?;
        }
        Ok(Self {
            name,
            character_set,
            collate,
        })
    }
}

/// A user to create.
#[derive(Debug, Clone)]
pub struct UserSpec {
    /// User name.
    pub name: UserName,
    /// Host pattern (ignored by datastores without host-scoped users).
    pub host: HostPattern,
    /// Initial password.
    pub password: Password,
    /// Databases to grant full access to.
    pub databases: Vec<DbName>,
}

/// A user as the datastore reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    /// User name.
    pub name: UserName,
    /// Host pattern.
    pub host: HostPattern,
    /// Databases the user can access.
    pub databases: Vec<DatabaseSpec>,
}

/// A user name with host, as the key of most user operations.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserRef {
    /// User name.
    pub name: UserName,
    /// Host pattern.
    pub host: HostPattern,
}

/// A new password for a user.
#[derive(Debug, Clone)]
pub struct PasswordChange {
    /// Whose password.
    pub user: UserRef,
    /// The new password.
    pub password: Password,
}

/// Changes for `update_attributes`; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    /// New name.
    pub name: Option<UserName>,
    /// New host pattern.
    pub host: Option<HostPattern>,
    /// New password.
    pub password: Option<Password>,
}

/// Credentials of the root (superuser) account after it was enabled.
#[derive(Debug, Clone, Serialize)]
pub struct RootCredentials {
    /// Account name (`root` for Trove).
    pub name: UserName,
    /// Its password.
    pub password: Password,
}

/// Trove-style pagination: at most `limit` items after `marker` (or from `marker` when
/// `include_marker`), in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PageRequest {
    /// Page size; `None` means everything.
    pub limit: Option<u32>,
    /// The last item of the previous page.
    pub marker: Option<String>,
    /// Whether the marker itself belongs on this page.
    #[serde(default)]
    pub include_marker: bool,
}

/// One page and the marker for the next one (`None` on the last page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass this as `marker` to get the next page.
    pub next_marker: Option<String>,
}

impl<T> Page<T> {
    /// Cuts one page out of `items`, which must be sorted by `key`.
    pub fn from_sorted(items: Vec<T>, key: impl Fn(&T) -> String, req: &PageRequest) -> Self {
        let mut rest: Vec<T> = match &req.marker {
            Some(m) => items
                .into_iter()
                .filter(|it| {
                    let k = key(it);
                    if req.include_marker {
                        k.as_str() >= m.as_str()
                    } else {
                        k.as_str() > m.as_str()
                    }
                })
                .collect(),
            None => items,
        };
        match req.limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)) {
            Some(limit) if rest.len() > limit => {
                rest.truncate(limit);
                let next_marker = rest.last().map(&key);
                Self {
                    items: rest,
                    next_marker,
                }
            }
            _ => Self {
                items: rest,
                next_marker: None,
            },
        }
    }
}

/// Databases, users, grants and root.
///
/// Every method validates through the argument types; drivers quote every identifier with
/// their dialect's helper and pass values as bind parameters where the server allows.
#[async_trait]
pub trait Admin: Send + Sync {
    /// Lists user databases (system databases hidden), in name order.
    async fn list_databases(
        &self,
        ctx: &OpContext,
        page: &PageRequest,
    ) -> Result<Page<DatabaseSpec>>;

    /// Creates databases. Idempotent: an existing database is left as it is.
    async fn create_databases(&self, ctx: &OpContext, dbs: &[DatabaseSpec]) -> Result<()>;

    /// Drops a database. Idempotent: a missing database is not an error.
    async fn drop_database(&self, ctx: &OpContext, name: &DbName) -> Result<()>;

    /// Creates users with their passwords and grants.
    /// # Contract
    /// An existing user fails with [`Error::AlreadyExists`]; users before it in the list stay.
    async fn create_users(&self, ctx: &OpContext, users: &[UserSpec]) -> Result<()>;

    /// One user with its databases, `None` when it does not exist (or is hidden).
    async fn get_user(&self, ctx: &OpContext, user: &UserRef) -> Result<Option<UserInfo>>;

    /// Lists users (administrative and hidden users excluded), in `name@host` order.
    async fn list_users(&self, ctx: &OpContext, page: &PageRequest) -> Result<Page<UserInfo>>;

    /// Drops a user. Idempotent: a missing user is not an error.
    async fn drop_user(&self, ctx: &OpContext, user: &UserRef) -> Result<()>;

    /// Sets new passwords. A missing user fails with [`Error::NotFound`].
    async fn change_passwords(&self, ctx: &OpContext, changes: &[PasswordChange]) -> Result<()>;

    /// Renames a user, moves it to another host or sets its password.
    async fn update_attributes(
        &self,
        ctx: &OpContext,
        user: &UserRef,
        update: &UserUpdate,
    ) -> Result<()>;

    /// Grants full access on each database. Missing user or database: [`Error::NotFound`].
    async fn grant_access(&self, ctx: &OpContext, user: &UserRef, dbs: &[DbName]) -> Result<()>;

    /// Revokes access on one database. Idempotent.
    async fn revoke_access(&self, ctx: &OpContext, user: &UserRef, db: &DbName) -> Result<()>;

    /// Databases the user can access.
    async fn list_access(&self, ctx: &OpContext, user: &UserRef) -> Result<Vec<DatabaseSpec>>;

    /// Enables the remote root account with `password` or a generated one.
    async fn enable_root(
        &self,
        ctx: &OpContext,
        password: Option<Password>,
    ) -> Result<RootCredentials>;

    /// Disables remote root (its password is reset to a random one it is never told).
    async fn disable_root(&self, ctx: &OpContext) -> Result<()>;

    /// Whether remote root is enabled.
    async fn is_root_enabled(&self, ctx: &OpContext) -> Result<bool>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(limit: Option<u32>, marker: Option<&str>, include: bool) -> Page<String> {
        let items: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        Page::from_sorted(
            items,
            Clone::clone,
            &PageRequest {
                limit,
                marker: marker.map(str::to_owned),
                include_marker: include,
            },
        )
    }

    #[test]
    fn pagination() {
        assert_eq!(page(None, None, false).items.len(), 4);
        let p = page(Some(2), None, false);
        assert_eq!(p.items, ["a", "b"]);
        assert_eq!(p.next_marker.as_deref(), Some("b"));
        let p = page(Some(2), Some("b"), false);
        assert_eq!(p.items, ["c", "d"]);
        assert_eq!(p.next_marker, None);
        let p = page(Some(2), Some("b"), true);
        assert_eq!(p.items, ["b", "c"]);
        assert_eq!(p.next_marker.as_deref(), Some("c"));
    }

    #[test]
    fn charset_validation() {
        assert!(check_charset("collate", "en_US.UTF-8").is_ok());
        assert!(check_charset("collate", "x'; drop").is_err());
    }
}

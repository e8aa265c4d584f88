//! Per-run unique identifiers.
//!
//! Every [`Names`] draws one random run token (hex from a v4 UUID) and appends a counter, so
//! names never collide between tests, runs or drivers sharing a server. Names are lower case
//! ASCII (valid unquoted in every dialect), well within [`MAX_NAME_LEN`], and sort in the order
//! they were handed out, which the pagination tests rely on.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use guest_agent_api::ident::{DbName, MAX_NAME_LEN, Password, UserName};

/// Prefix of every database name.
pub const DB_PREFIX: &str = "ktdb";
/// Prefix of every user name.
pub const USER_PREFIX: &str = "ktu";
/// Hex digits of the run token.
const TOKEN_LEN: usize = 12;

/// Hands out unique, valid names and remembers them.
#[derive(Debug)]
pub struct Names {
    token: String,
    counter: AtomicU32,
    issued: Mutex<Vec<String>>,
}

impl Default for Names {
    fn default() -> Self {
        Self::new()
    }
}

impl Names {
    /// A fresh source with its own random run token.
    pub fn new() -> Self {
        let hex = uuid::Uuid::new_v4().simple().to_string();
        Self {
            token: hex[..TOKEN_LEN].to_owned(),
            counter: AtomicU32::new(0),
            issued: Mutex::new(Vec::new()),
        }
    }

    /// The random token shared by every name of this source.
    pub fn token(&self) -> &str {
        &self.token
    }

    fn next(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}_{}_{n:05}", self.token);
        debug_assert!(name.len() <= MAX_NAME_LEN);
        if let Ok(mut issued) = self.issued.lock() {
            issued.push(name.clone());
        }
        name
    }

    /// A new database name (`ktdb_<token>_<n>`).
    pub fn db_name(&self) -> DbName {
        DbName::new(self.next(DB_PREFIX)).expect("generated database names are valid")
    }

    /// A new user name (`ktu_<token>_<n>`).
    pub fn user_name(&self) -> UserName {
        UserName::new(self.next(USER_PREFIX)).expect("generated user names are valid")
    }

    /// A fresh random password.
    pub fn password(&self) -> Password {
        Password::generate(24).expect("the OS random source works")
    }

    /// A unique request id for an operation context.
    pub fn request_id(&self, operation: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("req-{}-{n}-{operation}", self.token)
    }

    /// Every database and user name handed out so far, in order.
    pub fn issued(&self) -> Vec<String> {
        self.issued.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn names_are_valid_unique_and_ordered() {
        let n = Names::new();
        let dbs: Vec<DbName> = (0..50).map(|_| n.db_name()).collect();
        let users: Vec<UserName> = (0..50).map(|_| n.user_name()).collect();
        let all: Vec<&str> = dbs
            .iter()
            .map(DbName::as_str)
            .chain(users.iter().map(UserName::as_str))
            .collect();
        let unique: BTreeSet<&str> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len());
        for s in &all {
            assert!(s.len() <= MAX_NAME_LEN, "{s}");
            assert!(s.contains(n.token()), "{s}");
            assert!(
                s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{s} must be lower case ASCII"
            );
        }
        let mut sorted = dbs.clone();
        sorted.sort();
        assert_eq!(sorted, dbs, "names sort in the order handed out");
        assert_eq!(n.issued().len(), 100);
        assert!(dbs[0].as_str().starts_with(DB_PREFIX));
        assert!(users[0].as_str().starts_with(USER_PREFIX));
    }

    #[test]
    fn sources_do_not_collide() {
        let a = Names::new();
        let b = Names::new();
        assert_ne!(a.token(), b.token());
        assert_ne!(a.db_name(), b.db_name());
        assert_ne!(a.request_id("x"), b.request_id("x"));
    }

    #[test]
    fn names_survive_many_counters() {
        let n = Names::new();
        n.counter.store(u32::MAX - 1, Ordering::Relaxed);
        let a = n.db_name();
        assert!(a.as_str().len() <= MAX_NAME_LEN);
    }

    #[test]
    fn passwords_are_fresh() {
        let n = Names::new();
        assert_ne!(n.password(), n.password());
    }
}

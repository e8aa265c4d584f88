//! Validated identifiers and secrets.
//!
//! Every name that reaches SQL is one of these types, built by `TryFrom` so that a hostile value
//! (quotes, backticks, `;`, `--`, NUL, whitespace, overlong) is rejected before any statement is
//! composed. Drivers still quote every identifier with their dialect's single quoting helper;
//! validation is the first wall, quoting the second.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// Longest database or user name accepted by the API (PostgreSQL's NAMEDATALEN - 1; MySQL
/// allows 64 for databases). Drivers may enforce a lower limit of their own.
pub const MAX_NAME_LEN: usize = 63;
/// Longest host pattern accepted (MySQL's limit on `Host`).
pub const MAX_HOST_LEN: usize = 255;
/// Longest password accepted.
pub const MAX_PASSWORD_LEN: usize = 256;
/// Longest configuration key accepted.
pub const MAX_CONFIG_KEY_LEN: usize = 128;

fn check_name(field: &str, s: &str) -> Result<(), Error> {
    if s.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if s.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            field,
            format!("is {} bytes long; the limit is {MAX_NAME_LEN}", s.len()),
        ));
    }
    let first = s.as_bytes()[0];
    if !(first.is_ascii_alphanumeric() || first == b'_') {
        return Err(Error::invalid(
            field,
            "must start with a letter, a digit or '_'",
        ));
    }
    if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$')))
    {
        return Err(Error::invalid(
            field,
            format!("contains {bad:?}; allowed are ASCII letters, digits, '_', '-' and '$'"),
        ));
    }
    if s.contains("--") {
        return Err(Error::invalid(field, "must not contain '--'"));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` and wraps it.
            pub fn new(s: impl Into<String>) -> Result<Self, Error> {
                let s = s.into();
                check_name($field, &s)?;
                Ok(Self(s))
            }

            /// The validated name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A database (schema) name.
    DbName, "database name"
);
name_type!(
    /// A user (role) name.
    UserName, "user name"
);

/// A host pattern for a user account (`%`, `localhost`, `10.0.0.%`, `::1`, a host name).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct HostPattern(String);

impl HostPattern {
    /// The pattern that matches every host.
    pub fn any() -> Self {
        Self("%".to_owned())
    }

    /// Validates `s` and wraps it.
    pub fn new(s: impl Into<String>) -> Result<Self, Error> {
        let s = s.into();
        let field = "host";
        if s.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if s.len() > MAX_HOST_LEN {
            return Err(Error::invalid(
                field,
                format!("longer than {MAX_HOST_LEN} bytes"),
            ));
        }
        if let Some(bad) = s.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '.' | '%' | '_' | '-' | ':' | '/'))
        }) {
            return Err(Error::invalid(
                field,
                format!("contains {bad:?}; allowed are ASCII letters, digits and . % _ - : /"),
            ));
        }
        if s.contains("--") {
            return Err(Error::invalid(field, "must not contain '--'"));
        }
        Ok(Self(s))
    }

    /// The validated pattern.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the match-everything pattern `%`.
    pub fn is_any(&self) -> bool {
        self.0 == "%"
    }
}

impl Default for HostPattern {
    fn default() -> Self {
        Self::any()
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<&str> for HostPattern {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl Serialize for HostPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

/// A secret string: never shown by `Debug` or `Display`, zeroed on drop is not promised but the
/// value is only reachable through [`Password::expose`], which makes every use greppable.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Validates a password: 1 to [`MAX_PASSWORD_LEN`] bytes, no control characters.
    pub fn new(s: impl Into<String>) -> Result<Self, Error> {
        let s = s.into();
        if s.is_empty() {
            return Err(Error::invalid("password", "must not be empty"));
        }
        if s.len() > MAX_PASSWORD_LEN {
            return Err(Error::invalid(
                "password",
                format!("longer than {MAX_PASSWORD_LEN} bytes"),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(Error::invalid(
                "password",
                "must not contain control characters",
            ));
        }
        Ok(Self(s))
    }

    /// A fresh random password of `len` characters from `[A-Za-z0-9]`, from the OS CSPRNG.
    pub fn generate(len: usize) -> Result<Self, Error> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let len = len.clamp(16, MAX_PASSWORD_LEN);
        let mut out = String::with_capacity(len);
        let mut buf = [0u8; 64];
        while out.len() < len {
            getrandom::fill(&mut buf)
                .map_err(|e| Error::Internal(format!("OS random source failed: {e}")))?;
            // Rejection sampling: 62 * 4 = 248, so bytes >= 248 would bias the choice.
            for b in buf.iter().copied().filter(|b| *b < 248) {
                if out.len() == len {
                    break;
                }
                out.push(char::from(ALPHABET[usize::from(b % 62)]));
            }
        }
        Ok(Self(out))
    }

    /// The secret itself. Call only where it is handed to the datastore.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Password {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Password {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

/// A configuration parameter name (`max_connections`, `innodb_buffer_pool_size`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ConfigKey(String);

impl ConfigKey {
    /// Validates `s`: `[A-Za-z_][A-Za-z0-9_.-]*`, at most [`MAX_CONFIG_KEY_LEN`] bytes.
    pub fn new(s: impl Into<String>) -> Result<Self, Error> {
        let s = s.into();
        let ok_first = s
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !ok_first {
            return Err(Error::InvalidConfig {
                key: s,
                reason: "a key starts with a letter or '_'".to_owned(),
            });
        }
        if s.len() > MAX_CONFIG_KEY_LEN
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(Error::InvalidConfig {
                key: s.chars().take(MAX_CONFIG_KEY_LEN).collect(),
                reason: "a key is at most 128 of [A-Za-z0-9_.-]".to_owned(),
            });
        }
        Ok(Self(s))
    }

    /// The validated key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConfigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for s in ["app", "app_db", "App-1", "_x", "1db", "a$b"] {
            DbName::new(s).unwrap();
            UserName::new(s).unwrap();
        }
    }

    #[test]
    fn hostile_names_fail_with_field() {
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for s in [
            "",
            "a'b",
            "a\"b",
            "a`b",
            "a;b",
            "a--b",
            "a\0b",
            "a b",
            "é",
            "-x",
            long.as_str(),
        ] {
            let e = DbName::new(s).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidArgument { field, .. } if field == "database name"),
                "{s:?}: {e}"
            );
        }
    }

    #[test]
    fn hosts() {
        for s in [
            "%",
            "localhost",
            "10.0.0.%",
            "::1",
            "db-1.example.com",
            "10.0.0.0/255.0.0.0",
        ] {
            HostPattern::new(s).unwrap();
        }
        for s in ["", "a'b", "a b", "a;b", "h--"] {
            HostPattern::new(s).unwrap_err();
        }
    }

    #[test]
    fn password_is_redacted_and_generated() {
        let p = Password::new("s3cr'et\"pw").unwrap();
        assert_eq!(format!("{p:?} {p}"), "Password(<redacted>) <redacted>");
        assert!(Password::new("a\nb").is_err());
        let g = Password::generate(36).unwrap();
        assert_eq!(g.expose().len(), 36);
        assert!(g.expose().chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(g, Password::generate(36).unwrap());
    }

    #[test]
    fn config_keys() {
        ConfigKey::new("max_connections").unwrap();
        ConfigKey::new("auto_explain.log_min_duration").unwrap();
        assert!(ConfigKey::new("x; DROP").is_err());
        assert!(ConfigKey::new("1x").is_err());
    }
}

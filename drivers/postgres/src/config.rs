//! Configuration: the managed include file and `pg_hba.conf` written at prepare time, and the
//! configuration-override group, which this version of the driver does not support yet.
//!
//! `initdb` writes its own `postgresql.conf`; the driver appends one `include` line pointing at
//! [`MANAGED_CONF_FILE`] and keeps everything it decides (addresses, socket, authentication,
//! memory) in that file, so the stock file stays as PostgreSQL ships it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use async_trait::async_trait;
use guest_agent_api::config::{ApplyOutcome, ConfigApply, Overrides, ValidatedOverrides};
use guest_agent_api::{Error, OpContext, Result};

use crate::{DRIVER_NAME, MANAGED_CONF_FILE, PgDriver};

/// Smallest `shared_buffers` the sizing picks, in MiB.
const MIN_SHARED_BUFFERS_MB: u64 = 32;
/// Largest `shared_buffers` the sizing picks, in MiB: beyond this the OS page cache serves
/// better than a bigger buffer pool.
const MAX_SHARED_BUFFERS_MB: u64 = 8 * 1024;
/// Smallest `effective_cache_size` the sizing picks, in MiB.
const MIN_EFFECTIVE_CACHE_MB: u64 = 64;

/// What the managed configuration file says.
#[derive(Debug, Clone)]
pub(crate) struct ManagedConf<'a> {
    /// `listen_addresses`.
    pub(crate) listen: IpAddr,
    /// `port`.
    pub(crate) port: u16,
    /// `unix_socket_directories`.
    pub(crate) socket_dir: &'a Path,
    /// Instance memory for sizing, when known.
    pub(crate) memory_mb: Option<u64>,
}

/// `shared_buffers` and `effective_cache_size` in MiB for an instance with `memory_mb`.
pub(crate) fn memory_sizing(memory_mb: u64) -> (u64, u64) {
    let shared = (memory_mb / 4).clamp(MIN_SHARED_BUFFERS_MB, MAX_SHARED_BUFFERS_MB);
    let cache = (memory_mb / 4 * 3).max(MIN_EFFECTIVE_CACHE_MB);
    (shared, cache)
}

/// Quotes a value for `postgresql.conf`: single-quoted, with `'` and `\` escaped. Line breaks
/// cannot be represented and are refused.
pub(crate) fn conf_string(key: &str, value: &str) -> Result<String> {
    if value.chars().any(char::is_control) {
        return Err(Error::InvalidConfig {
            key: key.to_owned(),
            reason: "must not contain control characters".to_owned(),
        });
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    Ok(out)
}

impl ManagedConf<'_> {
    /// The text of [`MANAGED_CONF_FILE`].
    pub(crate) fn render(&self) -> Result<String> {
        let socket_dir = self
            .socket_dir
            .to_str()
            .ok_or_else(|| Error::InvalidConfig {
                key: "datastore.run_dir".to_owned(),
                reason: "must be valid UTF-8".to_owned(),
            })?;
        let mut s = String::from("# Managed by guest-agent; rewritten on prepare. Do not edit.\n");
        s.push_str(&format!(
            "listen_addresses = {}\n",
            conf_string("listen_addresses", &self.listen.to_string())?
        ));
        s.push_str(&format!("port = {}\n", self.port));
        s.push_str(&format!(
            "unix_socket_directories = {}\n",
            conf_string("unix_socket_directories", socket_dir)?
        ));
        s.push_str("password_encryption = 'scram-sha-256'\n");
        // The server's stderr goes to the runtime's log file in the run directory.
        s.push_str("logging_collector = off\n");
        s.push_str("log_destination = 'stderr'\n");
        if let Some(mem) = self.memory_mb {
            let (shared, cache) = memory_sizing(mem);
            s.push_str(&format!("shared_buffers = '{shared}MB'\n"));
            s.push_str(&format!("effective_cache_size = '{cache}MB'\n"));
        }
        Ok(s)
    }
}

/// The line appended to `postgresql.conf` to pull in the managed file.
pub(crate) fn include_line() -> String {
    format!("\n# Added by guest-agent.\ninclude '{MANAGED_CONF_FILE}'\n")
}

/// `pg_hba.conf`: SCRAM-SHA-256 for every local and remote session, nothing trusted.
pub(crate) fn render_hba() -> String {
    "# Managed by guest-agent; rewritten on prepare. Do not edit.\n\
     # TYPE  DATABASE  USER  ADDRESS     METHOD\n\
     local   all       all               scram-sha-256\n\
     host    all       all   0.0.0.0/0   scram-sha-256\n\
     host    all       all   ::/0        scram-sha-256\n"
        .to_owned()
}

fn not_supported(operation: &'static str) -> Error {
    Error::NotSupported {
        operation,
        driver: DRIVER_NAME,
    }
}

#[async_trait]
impl ConfigApply for PgDriver {
    fn validate(&self, _overrides: &Overrides) -> Result<ValidatedOverrides> {
        Err(not_supported("validate_overrides"))
    }

    async fn apply(
        &self,
        _ctx: &OpContext,
        _overrides: &ValidatedOverrides,
    ) -> Result<ApplyOutcome> {
        Err(not_supported("apply_overrides"))
    }

    async fn remove_overrides(&self, _ctx: &OpContext) -> Result<ApplyOutcome> {
        Err(not_supported("update_overrides"))
    }

    async fn reset_base(&self, _ctx: &OpContext, _contents: &str) -> Result<()> {
        Err(not_supported("reset_configuration"))
    }

    async fn current(&self, _ctx: &OpContext) -> Result<BTreeMap<String, String>> {
        Err(not_supported("get_configuration"))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn sizing_has_floor_and_cap() {
        assert_eq!(memory_sizing(4096), (1024, 3072));
        assert_eq!(memory_sizing(64), (32, 64));
        assert_eq!(memory_sizing(1 << 20), (8192, 786_432));
    }

    #[test]
    fn renders_managed_conf() {
        let conf = ManagedConf {
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 5433,
            socket_dir: Path::new("/run/it's"),
            memory_mb: Some(2048),
        };
        let text = conf.render().unwrap();
        assert!(text.contains("listen_addresses = '127.0.0.1'\n"), "{text}");
        assert!(text.contains("port = 5433\n"));
        assert!(text.contains("unix_socket_directories = '/run/it''s'\n"));
        assert!(text.contains("password_encryption = 'scram-sha-256'\n"));
        assert!(text.contains("shared_buffers = '512MB'\n"));
        assert!(text.contains("effective_cache_size = '1536MB'\n"));
        let no_mem = ManagedConf {
            memory_mb: None,
            ..conf
        };
        assert!(!no_mem.render().unwrap().contains("shared_buffers"));
    }

    #[test]
    fn conf_values_cannot_break_out() {
        assert_eq!(conf_string("k", "a\\b").unwrap(), "'a\\\\b'");
        assert!(conf_string("k", "a\nlisten_addresses = '*'").is_err());
    }

    #[test]
    fn hba_is_scram_only() {
        let hba = render_hba();
        assert!(!hba.contains("trust"));
        assert!(!hba.contains("md5"));
        assert_eq!(hba.matches("scram-sha-256").count(), 3);
        assert!(include_line().contains("include 'guest-agent.conf'"));
    }
}

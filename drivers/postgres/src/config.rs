//! Configuration: the files the driver writes into the data directory, the base
//! configuration sized from the instance's memory, and the configuration-override group.
//!
//! `initdb` writes its own `postgresql.conf`; the driver appends one `include` line pointing at
//! [`MANAGED_CONF_FILE`], which holds everything the driver decides (addresses, socket,
//! authentication, replication essentials, memory sizing) and then includes, in this order:
//!
//! 1. [`BASE_CONF_FILE`]: the known tunables of a base file the control plane sent
//!    (`reset_configuration`, `start_db_with_conf_changes`);
//! 2. [`OVERRIDES_CONF_FILE`]: the managed override set of a configuration group, replaced as
//!    a whole by `apply` (temporary file, fsync, rename);
//! 3. [`ROLE_CONF_FILE`]: what the replication role needs (`primary_conninfo` on a replica,
//!    `default_transaction_read_only` on a read-only primary), read last so that no override
//!    can change it.
//!
//! Every override is checked against the rules shipped with the driver ([`crate::rules`])
//! before anything is written. After writing, the server is asked whether it accepts the
//! file (`pg_file_settings`), reloaded, and asked which parameters wait for a restart
//! (`pg_settings.pending_restart`); while any does, `status` reports `restart required`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use guest_agent_api::config::{
    ApplyOutcome, ConfigApply, ConfigValue, Overrides, ValidatedOverrides,
};
use guest_agent_api::fsutil::{io_err, write_file};
use guest_agent_api::ident::ConfigKey;
use guest_agent_api::{Error, OpContext, Result};
use tokio::time::Instant;

use crate::error::stmt;
use crate::rules::{rules, to_json, validate_overrides};
use crate::{
    ADMIN_USER, BASE_CONF_FILE, MANAGED_CONF_FILE, OVERRIDES_CONF_FILE, PgDriver, ROLE_CONF_FILE,
};

/// Smallest `shared_buffers` the sizing picks, in MiB.
const MIN_SHARED_BUFFERS_MB: u64 = 32;
/// Largest `shared_buffers` the sizing picks, in MiB: beyond this the OS page cache serves
/// better than a bigger buffer pool.
const MAX_SHARED_BUFFERS_MB: u64 = 8 * 1024;
/// Smallest `effective_cache_size` the sizing picks, in MiB.
const MIN_EFFECTIVE_CACHE_MB: u64 = 64;
/// Bounds of the sized `max_connections`: every connection costs memory (`work_mem` per
/// sort), so small instances get few.
const MIN_CONNECTIONS: u64 = 50;
const MAX_CONNECTIONS: u64 = 500;
/// Bounds of the sized `work_mem`, in KiB (PostgreSQL's default, 4 MiB, is the floor).
const MIN_WORK_MEM_KB: u64 = 4 * 1024;
const MAX_WORK_MEM_KB: u64 = 64 * 1024;
/// Bounds of the sized `maintenance_work_mem`, in MiB.
const MIN_MAINTENANCE_MB: u64 = 64;
const MAX_MAINTENANCE_MB: u64 = 2048;
/// How long `apply` waits for its own session to see the reloaded configuration.
const RELOAD_WAIT: Duration = Duration::from_secs(10);
/// Pause between two looks at the configuration load time.
const RELOAD_POLL: Duration = Duration::from_millis(20);
/// Name of the `pg_ident.conf` map that lets the agent's OS account in as the admin role.
pub(crate) const IDENT_MAP: &str = "guest-agent";

/// The base configuration sized from the instance's memory (the documented template).
///
/// | parameter | value |
/// | --- | --- |
/// | `shared_buffers` | 25 % of memory, 32 MiB to 8 GiB |
/// | `effective_cache_size` | 75 % of memory, at least 64 MiB |
/// | `max_connections` | memory / 16 MiB, 50 to 500 |
/// | `work_mem` | what is left after `shared_buffers`, shared by 3 sorts per connection, 4 to 64 MiB |
/// | `maintenance_work_mem` | memory / 16, 64 MiB to 2 GiB |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sizing {
    /// `shared_buffers`, MiB.
    pub(crate) shared_buffers_mb: u64,
    /// `effective_cache_size`, MiB.
    pub(crate) effective_cache_mb: u64,
    /// `max_connections`.
    pub(crate) max_connections: u64,
    /// `work_mem`, KiB.
    pub(crate) work_mem_kb: u64,
    /// `maintenance_work_mem`, MiB.
    pub(crate) maintenance_work_mem_mb: u64,
}

impl Sizing {
    /// The template applied to `memory_mb`.
    pub(crate) fn for_memory(memory_mb: u64) -> Self {
        let shared = (memory_mb / 4).clamp(MIN_SHARED_BUFFERS_MB, MAX_SHARED_BUFFERS_MB);
        let cache = (memory_mb / 4 * 3).max(MIN_EFFECTIVE_CACHE_MB);
        let connections = (memory_mb / 16).clamp(MIN_CONNECTIONS, MAX_CONNECTIONS);
        let work_mem = (memory_mb.saturating_sub(shared) * 1024 / (connections * 3))
            .clamp(MIN_WORK_MEM_KB, MAX_WORK_MEM_KB);
        let maintenance = (memory_mb / 16).clamp(MIN_MAINTENANCE_MB, MAX_MAINTENANCE_MB);
        Self {
            shared_buffers_mb: shared,
            effective_cache_mb: cache,
            max_connections: connections,
            work_mem_kb: work_mem,
            maintenance_work_mem_mb: maintenance,
        }
    }
}

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
        // Streaming replication, and pg_rewind after a failover (it needs hint bits logged).
        s.push_str("wal_level = replica\n");
        s.push_str("max_wal_senders = 10\n");
        s.push_str("max_replication_slots = 10\n");
        s.push_str("hot_standby = on\n");
        s.push_str("wal_log_hints = on\n");
        // WAL kept back for pg_rewind (it reads this server's WAL from the last checkpoint
        // before the histories split) and for replicas re-pointed without a slot yet.
        s.push_str("wal_keep_size = '256MB'\n");
        s.push_str("recovery_target_timeline = 'latest'\n");
        if let Some(mem) = self.memory_mb {
            let z = Sizing::for_memory(mem);
            s.push_str(&format!("# Sized for {mem} MB of memory.\n"));
            s.push_str(&format!("shared_buffers = '{}MB'\n", z.shared_buffers_mb));
            s.push_str(&format!(
                "effective_cache_size = '{}MB'\n",
                z.effective_cache_mb
            ));
            s.push_str(&format!("max_connections = {}\n", z.max_connections));
            s.push_str(&format!("work_mem = '{}kB'\n", z.work_mem_kb));
            s.push_str(&format!(
                "maintenance_work_mem = '{}MB'\n",
                z.maintenance_work_mem_mb
            ));
        }
        for f in [BASE_CONF_FILE, OVERRIDES_CONF_FILE, ROLE_CONF_FILE] {
            s.push_str(&format!("include_if_exists '{f}'\n"));
        }
        Ok(s)
    }
}

/// The line appended to `postgresql.conf` to pull in the managed file.
pub(crate) fn include_line() -> String {
    format!("\n# Added by guest-agent.\ninclude '{MANAGED_CONF_FILE}'\n")
}

/// `pg_hba.conf`: the administrative role over the local socket by the OS identity of the
/// agent (mapped in `pg_ident.conf`) — also for replication connections, which the agent's
/// backup tools (`pg_basebackup`) open —, everything else SCRAM-SHA-256, nothing trusted; the
/// replication role may open replication connections.
///
/// Peer identity rather than a password on the socket lets the driver administer a replica
/// whose catalog (and so the admin role's password) came from another server.
pub(crate) fn render_hba(replication_user: &str) -> String {
    format!(
        "# Managed by guest-agent; rewritten on prepare. Do not edit.\n\
         # TYPE  DATABASE     USER          ADDRESS     METHOD\n\
         local   all          {ADMIN_USER}                  peer map={IDENT_MAP}\n\
         local   replication  {ADMIN_USER}                  peer map={IDENT_MAP}\n\
         local   all          all                       scram-sha-256\n\
         host    all          all           0.0.0.0/0   scram-sha-256\n\
         host    all          all           ::/0        scram-sha-256\n\
         host    replication  {replication_user}    0.0.0.0/0   scram-sha-256\n\
         host    replication  {replication_user}    ::/0        scram-sha-256\n"
    )
}

/// `pg_ident.conf`: the agent's OS account `os_account` may connect as the admin role.
pub(crate) fn render_ident(os_account: &str) -> Result<String> {
    if os_account.is_empty() || !os_account.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Error::InvalidState {
            operation: "write pg_ident.conf",
            reason: format!("the agent's OS account name '{os_account}' cannot be mapped"),
        });
    }
    Ok(format!(
        "# Managed by guest-agent; rewritten on prepare. Do not edit.\n\
         # MAPNAME      SYSTEM-USERNAME  PG-USERNAME\n\
         {IDENT_MAP}    {os_account}    {ADMIN_USER}\n"
    ))
}

/// One value as `postgresql.conf` spells it (integers are in the base unit already).
fn conf_value(key: &str, v: &ConfigValue) -> Result<String> {
    Ok(match v {
        ConfigValue::Bool(true) => "on".to_owned(),
        ConfigValue::Bool(false) => "off".to_owned(),
        ConfigValue::Int(i) => i.to_string(),
        ConfigValue::Float(f) => f.to_string(),
        ConfigValue::Str(s) => conf_string(key, s)?,
    })
}

/// A configuration file holding `values`, one `name = value` line each.
fn render_values(header: &str, values: &BTreeMap<ConfigKey, ConfigValue>) -> Result<String> {
    let mut s = format!("# {header}\n");
    for (k, v) in values {
        s.push_str(&format!(
            "{} = {}\n",
            k.as_str(),
            conf_value(k.as_str(), v)?
        ));
    }
    Ok(s)
}

/// Reads `name = value` lines (quotes removed, `''` unescaped), ignoring comments.
pub(crate) fn parse_conf(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => match line.split_once(char::is_whitespace) {
                Some((k, v)) => (k.trim(), v.trim()),
                None => continue,
            },
        };
        let v = if let Some(inner) = v.strip_prefix('\'') {
            // Up to the closing quote; a trailing comment may follow it.
            let mut value = String::new();
            let mut chars = inner.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\'' if chars.peek() == Some(&'\'') => {
                        chars.next();
                        value.push('\'');
                    }
                    '\'' => break,
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    c => value.push(c),
                }
            }
            value
        } else {
            v.split('#').next().unwrap_or_default().trim().to_owned()
        };
        out.insert(k.to_ascii_lowercase(), v);
    }
    out
}

/// Keeps the tunables of a control-plane base file: known parameters only (validated),
/// everything the driver manages (or does not know) dropped. Returns the typed values and
/// the names that were dropped.
pub(crate) fn base_tunables(
    contents: &str,
) -> Result<(BTreeMap<ConfigKey, ConfigValue>, Vec<String>)> {
    let rules = rules()?;
    let mut keep = Overrides::new();
    let mut dropped = Vec::new();
    for (k, v) in parse_conf(contents) {
        if rules.contains_key(&k) {
            keep.insert(k, serde_json::Value::String(v));
        } else {
            dropped.push(k);
        }
    }
    Ok((validate_overrides(&keep)?.values, dropped))
}

/// Reads a file, `None` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// The `include_if_exists` lines the managed file ends with.
fn include_lines() -> Vec<String> {
    [BASE_CONF_FILE, OVERRIDES_CONF_FILE, ROLE_CONF_FILE]
        .iter()
        .map(|f| format!("include_if_exists '{f}'"))
        .collect()
}

/// `text` with the include lines it lacks appended, or `None` when it has them all.
fn with_includes(text: &str) -> Option<String> {
    let missing: Vec<String> = include_lines()
        .into_iter()
        .filter(|l| !text.lines().any(|t| t.trim() == l))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let mut out = text.to_owned();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    for l in missing {
        out.push_str(&l);
        out.push('\n');
    }
    Some(out)
}

impl PgDriver {
    fn overrides_path(&self) -> PathBuf {
        self.data_dir.join(OVERRIDES_CONF_FILE)
    }

    /// Makes sure the managed file includes the base, override and role files (a cluster
    /// prepared by an earlier version of the driver lacks the lines).
    pub(crate) fn ensure_includes(&self) -> Result<()> {
        let path = self.data_dir.join(MANAGED_CONF_FILE);
        let Some(text) = read_optional(&path)? else {
            return Ok(());
        };
        if let Some(new) = with_includes(&text) {
            let owner = self.owner()?;
            write_file(&path, new.as_bytes(), 0o600, owner.as_ref())?;
            tracing::info!("Added the include lines to the managed configuration file.");
        }
        Ok(())
    }

    /// Writes `values` as the managed override file.
    pub(crate) fn write_overrides(&self, values: &BTreeMap<ConfigKey, ConfigValue>) -> Result<()> {
        let text = render_values(
            "Managed by guest-agent: the configuration group's overrides. Replaced as a whole.",
            values,
        )?;
        let owner = self.owner()?;
        write_file(
            &self.overrides_path(),
            text.as_bytes(),
            0o600,
            owner.as_ref(),
        )
    }

    /// Puts back the previous overrides file (or removes the new one when there was none).
    fn restore_overrides(&self, previous: Option<&str>) {
        let path = self.overrides_path();
        let result = match previous {
            Some(text) => self
                .owner()
                .and_then(|o| write_file(&path, text.as_bytes(), 0o600, o.as_ref())),
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(io_err("removing", &path)(e))
                }
                _ => Ok(()),
            },
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "Could not restore the previous overrides file.");
        }
    }

    /// The first problem the server finds in `file` as it is on disk now, if any.
    async fn file_errors(&self, file: &Path) -> Result<Option<(String, String)>> {
        let client = self.session.client().await?;
        let path = file.display().to_string();
        let row = client
            .query_opt(
                // A changed restart-only parameter is reported as "could not be applied":
                // that is the pending restart, not an error.
                "SELECT coalesce(name, ''), error FROM pg_file_settings \
                 WHERE error IS NOT NULL AND error <> 'setting could not be applied' \
                 AND sourcefile = $1 ORDER BY sourceline LIMIT 1",
                &[&path],
            )
            .await
            .map_err(stmt(None))?;
        match row {
            Some(r) => Ok(Some((
                r.try_get(0).map_err(stmt(None))?,
                r.try_get(1).map_err(stmt(None))?,
            ))),
            None => Ok(None),
        }
    }

    /// Reloads the configuration and waits until the driver's own session has loaded it, so
    /// that `pg_settings` answers for the new files.
    pub(crate) async fn reload_and_wait(&self, ctx: &OpContext) -> Result<()> {
        let client = self.session.client().await?;
        let load_time = "SELECT pg_conf_load_time()::text";
        let before: String = client
            .query_one(load_time, &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(stmt(None))?;
        client
            .simple_query("SELECT pg_reload_conf()")
            .await
            .map_err(stmt(None))?;
        let deadline = Instant::now() + RELOAD_WAIT;
        loop {
            ctx.cancelled()?;
            // Each statement lets the backend process the reload signal first.
            let now: String = client
                .query_one(load_time, &[])
                .await
                .and_then(|r| r.try_get(0))
                .map_err(stmt(None))?;
            if now != before {
                return Ok(());
            }
            if Instant::now() >= deadline {
                tracing::warn!("The reloaded configuration did not reach the driver's session.");
                return Ok(());
            }
            tokio::time::sleep(RELOAD_POLL).await;
        }
    }

    /// Parameters whose new value waits for a restart.
    pub(crate) async fn pending_restart(&self) -> Result<Vec<String>> {
        let client = self.session.client().await?;
        let rows = client
            .query(
                "SELECT name::text FROM pg_settings WHERE pending_restart ORDER BY name",
                &[],
            )
            .await
            .map_err(stmt(None))?;
        rows.iter()
            .map(|r| r.try_get::<_, String>(0).map_err(stmt(None)))
            .collect()
    }

    /// Makes `values` the override set: write, check with the server, reload, report.
    async fn replace_overrides(
        &self,
        ctx: &OpContext,
        values: &BTreeMap<ConfigKey, ConfigValue>,
    ) -> Result<ApplyOutcome> {
        self.ensure_includes()?;
        let path = self.overrides_path();
        let previous = read_optional(&path)?;
        self.write_overrides(values)?;
        if self.ping().await.is_err() {
            // Not running: everything takes effect when it starts.
            tracing::info!(
                parameters = values.len(),
                "Configuration overrides written; the server is not running."
            );
            return Ok(ApplyOutcome {
                dynamic_applied: values.keys().map(ToString::to_string).collect(),
                restart_required: Vec::new(),
            });
        }
        let checked = async {
            if let Some((name, error)) = self.file_errors(&path).await? {
                return Err(Error::InvalidConfig {
                    key: name,
                    reason: format!("refused by the server: {error}"),
                });
            }
            self.reload_and_wait(ctx).await?;
            self.pending_restart().await
        }
        .await;
        let pending = match checked {
            Ok(p) => p,
            Err(e) => {
                self.restore_overrides(previous.as_deref());
                if matches!(e, Error::InvalidConfig { .. }) {
                    return Err(e);
                }
                // Whatever happened, the server reads the previous file again.
                if let Err(r) = self.reload_and_wait(ctx).await {
                    tracing::warn!(error = %r, "Could not reload after restoring the overrides.");
                }
                return Err(e);
            }
        };
        let outcome = ApplyOutcome {
            dynamic_applied: values
                .keys()
                .map(ToString::to_string)
                .filter(|k| !pending.contains(k))
                .collect(),
            restart_required: pending,
        };
        tracing::info!(
            applied = outcome.dynamic_applied.len(),
            restart_required = outcome.restart_required.len(),
            "Configuration overrides applied."
        );
        Ok(outcome)
    }
}

#[async_trait]
impl ConfigApply for PgDriver {
    fn validate(&self, overrides: &Overrides) -> Result<ValidatedOverrides> {
        validate_overrides(overrides)
    }

    async fn apply(&self, ctx: &OpContext, overrides: &ValidatedOverrides) -> Result<ApplyOutcome> {
        ctx.cancelled()?;
        self.require_initialised("apply_overrides")?;
        // Re-check: the set may not have come from `validate`.
        let as_json: Overrides = overrides
            .values
            .iter()
            .map(|(k, v)| (k.to_string(), to_json(v)))
            .collect();
        let checked = validate_overrides(&as_json)?;
        self.replace_overrides(ctx, &checked.values).await
    }

    async fn remove_overrides(&self, ctx: &OpContext) -> Result<ApplyOutcome> {
        ctx.cancelled()?;
        self.require_initialised("update_overrides")?;
        self.replace_overrides(ctx, &BTreeMap::new()).await
    }

    async fn reset_base(&self, ctx: &OpContext, contents: &str) -> Result<()> {
        ctx.cancelled()?;
        self.require_initialised("reset_configuration")?;
        let (values, dropped) = base_tunables(contents)?;
        if !dropped.is_empty() {
            tracing::info!(
                dropped = %dropped.join(", "),
                "Kept the known tunables of the base configuration; the rest is the driver's."
            );
        }
        let text = render_values(
            "Managed by guest-agent: tunables of the control plane's base configuration.",
            &values,
        )?;
        self.ensure_includes()?;
        let owner = self.owner()?;
        write_file(
            &self.data_dir.join(BASE_CONF_FILE),
            text.as_bytes(),
            0o600,
            owner.as_ref(),
        )
    }

    async fn current(&self, ctx: &OpContext) -> Result<BTreeMap<String, String>> {
        ctx.cancelled()?;
        Ok(read_optional(&self.overrides_path())?
            .as_deref()
            .map(parse_conf)
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use serde_json::json;

    use super::*;

    #[test]
    fn sizing_follows_the_template() {
        let z = Sizing::for_memory(4096);
        assert_eq!(
            (z.shared_buffers_mb, z.effective_cache_mb, z.max_connections),
            (1024, 3072, 256)
        );
        assert_eq!(z.work_mem_kb, 4096);
        assert_eq!(z.maintenance_work_mem_mb, 256);
        let small = Sizing::for_memory(64);
        assert_eq!(
            (small.shared_buffers_mb, small.effective_cache_mb),
            (32, 64)
        );
        assert_eq!(small.max_connections, 50);
        assert_eq!(small.work_mem_kb, MIN_WORK_MEM_KB);
        let huge = Sizing::for_memory(1 << 20);
        assert_eq!(huge.shared_buffers_mb, 8192);
        assert_eq!(huge.max_connections, 500);
        assert_eq!(huge.work_mem_kb, MAX_WORK_MEM_KB);
        assert_eq!(huge.maintenance_work_mem_mb, 2048);
        // Every sized value is accepted by the rules.
        for mem in [64, 512, 4096, 1 << 20] {
            let z = Sizing::for_memory(mem);
            let o: Overrides = json!({
                "shared_buffers": format!("{}MB", z.shared_buffers_mb),
                "effective_cache_size": format!("{}MB", z.effective_cache_mb),
                "max_connections": z.max_connections,
                "work_mem": format!("{}kB", z.work_mem_kb),
                "maintenance_work_mem": format!("{}MB", z.maintenance_work_mem_mb),
            })
            .as_object()
            .unwrap()
            .clone();
            validate_overrides(&o).unwrap();
        }
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
        assert!(text.contains("max_connections = 128\n"));
        assert!(text.contains("wal_log_hints = on\n"));
        assert!(text.contains("wal_level = replica\n"));
        // The includes come last, the role file after the overrides.
        let base = text.find(BASE_CONF_FILE).unwrap();
        let over = text.find(OVERRIDES_CONF_FILE).unwrap();
        let role = text.find(ROLE_CONF_FILE).unwrap();
        assert!(base < over && over < role, "{text}");
        assert!(text.trim_end().ends_with(&format!("'{ROLE_CONF_FILE}'")));
        let no_mem = ManagedConf {
            memory_mb: None,
            ..conf
        };
        assert!(!no_mem.render().unwrap().contains("shared_buffers"));
    }

    #[test]
    fn missing_include_lines_are_added_once() {
        let old = "port = 5432\ninclude_if_exists 'guest-agent-base.conf'";
        let new = with_includes(old).unwrap();
        assert!(new.starts_with("port = 5432\ninclude_if_exists 'guest-agent-base.conf'\n"));
        assert_eq!(new.matches("include_if_exists").count(), 3);
        assert!(new.ends_with(&format!("include_if_exists '{ROLE_CONF_FILE}'\n")));
        assert_eq!(with_includes(&new), None);
        let current = ManagedConf {
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 1,
            socket_dir: Path::new("/run"),
            memory_mb: None,
        };
        assert_eq!(with_includes(&current.render().unwrap()), None);
    }

    #[test]
    fn conf_values_cannot_break_out() {
        assert_eq!(conf_string("k", "a\\b").unwrap(), "'a\\\\b'");
        assert!(conf_string("k", "a\nlisten_addresses = '*'").is_err());
    }

    #[test]
    fn hba_and_ident() {
        let hba = render_hba("replicator");
        assert!(!hba.contains("trust"));
        assert!(!hba.contains("md5"));
        assert_eq!(hba.matches("scram-sha-256").count(), 5);
        assert!(
            hba.contains("local   all          postgres                  peer map=guest-agent")
        );
        assert!(hba.contains("host    replication  replicator"));
        assert!(
            hba.contains("local   replication  postgres                  peer map=guest-agent")
        );
        // The admin line comes before the catch-all local line (first match wins).
        assert!(hba.find("peer").unwrap() < hba.find("local   all          all").unwrap());
        assert!(include_line().contains("include 'guest-agent.conf'"));
        let ident = render_ident("root").unwrap();
        assert!(ident.contains("guest-agent    root    postgres"), "{ident}");
        assert!(render_ident("a b").is_err());
        assert!(render_ident("").is_err());
    }

    #[test]
    fn override_files_round_trip() {
        let v = validate_overrides(
            json!({"work_mem": "8MB", "autovacuum": false, "log_line_prefix": "%m [%p] 'q' ",
                   "random_page_cost": 1.5})
            .as_object()
            .unwrap(),
        )
        .unwrap();
        let text = render_values("test", &v.values).unwrap();
        assert!(text.contains("work_mem = 8192\n"), "{text}");
        assert!(text.contains("autovacuum = off\n"), "{text}");
        assert!(text.contains("random_page_cost = 1.5\n"), "{text}");
        let back = parse_conf(&text);
        assert_eq!(back["work_mem"], "8192");
        assert_eq!(back["log_line_prefix"], "%m [%p] 'q' ");
        assert_eq!(back["autovacuum"], "off");
        assert_eq!(back.len(), 4);
    }

    #[test]
    fn base_file_keeps_known_tunables_only() {
        let template = "# Trove template\n\
             listen_addresses = '*'\n\
             port = 5432\n\
             shared_buffers = 128MB   # sized\n\
             work_mem = '16MB'\n\
             archive_command = 'cp %p /x/%f'\n\
             include_dir = '/etc/postgresql/conf.d'\n\
             autovacuum on\n";
        let (values, mut dropped) = base_tunables(template).unwrap();
        dropped.sort();
        assert_eq!(
            dropped,
            ["archive_command", "include_dir", "listen_addresses", "port"]
        );
        let keys: Vec<&str> = values.keys().map(ConfigKey::as_str).collect();
        assert_eq!(keys, ["autovacuum", "shared_buffers", "work_mem"]);
        assert_eq!(
            values[&ConfigKey::new("shared_buffers").unwrap()],
            ConfigValue::Int(16384)
        );
        // A known parameter with a bad value refuses the whole file.
        let e = base_tunables("work_mem = 'lots'\n").unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfig { key, .. } if key == "work_mem"),
            "{e}"
        );
    }
}

//! Configuration: the base `my.cnf` written at prepare time from a documented template, the
//! validation rules shipped with the driver, and the configuration-override group.
//!
//! Layout (all in the configuration directory, never in the data directory, so backups do not
//! carry it):
//! - `my.cnf`: paths, port, replication essentials and memory sizing; rewritten only by
//!   prepare; it ends with `!includedir conf.d/`;
//! - `conf.d/10-base.cnf`: the tunables of a base file the control plane sent
//!   (`reset_base`);
//! - `conf.d/50-guest-agent-overrides.cnf`: the managed override set, replaced as a whole
//!   by `apply` (temporary file, fsync, rename);
//! - `conf.d/60-guest-agent-role.cnf`: `read_only` on replicas, read last so an override
//!   cannot make a replica writable.
//!
//! Only parameters in [`RULES`] are accepted; whatever the driver decides itself (paths, port,
//! `server_id`, binary log and GTID settings, `read_only`) is not in the table and is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use guest_agent_api::admin::check_charset;
use guest_agent_api::config::{
    ApplyOutcome, ConfigApply, ConfigValue, Overrides, ValidatedOverrides,
};
use guest_agent_api::fsutil::write_file;
use guest_agent_api::ident::ConfigKey;
use guest_agent_api::{Error, OpContext, Result};
use serde_json::Value;

use crate::error::Subject;
use crate::sql::{Flavor, ServerVersion, Session, quote_string};
use crate::{CONF_D, MySqlDriver, OVERRIDES_FILE};

/// File in `conf.d/` with the tunables of the control plane's base configuration.
pub(crate) const BASE_FILE: &str = "10-base.cnf";

/// Smallest buffer pool the sizing picks, in MiB.
const MIN_BUFFER_POOL_MB: u64 = 64;
/// Smallest and largest redo log the sizing picks, in MiB.
const MIN_LOG_FILE_MB: u64 = 48;
const MAX_LOG_FILE_MB: u64 = 2048;
/// Bounds of the sized `max_connections`.
const MIN_CONNECTIONS: u64 = 50;
const MAX_CONNECTIONS: u64 = 10_000;

/// The type and range of one parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamKind {
    /// `ON`/`OFF` (JSON `true`/`false`, `0`/`1`, or the words).
    Bool,
    /// A whole number in `min..=max`.
    Int {
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
    },
    /// Bytes in `min..=max`, also written with a `K`, `M`, `G` or `T` suffix (powers of 1024).
    Size {
        /// Smallest value in bytes.
        min: i64,
        /// Largest value in bytes.
        max: i64,
    },
    /// A real number in `min..=max`.
    Float {
        /// Smallest value.
        min: f64,
        /// Largest value.
        max: f64,
    },
    /// One of these words (case-insensitive; stored as written here).
    Enum(&'static [&'static str]),
    /// A character set or collation name.
    Charset,
    /// A comma-separated list of SQL mode words (`STRICT_TRANS_TABLES,…`), possibly empty.
    SqlMode,
}

/// One parameter the driver accepts as an override.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamRule {
    /// Canonical name (underscores).
    pub name: &'static str,
    /// Type and range.
    pub kind: ParamKind,
    /// Whether `SET GLOBAL` applies it at once (otherwise it waits for a restart).
    pub dynamic: bool,
    /// The only flavour that knows it, `None` for both.
    pub only: Option<Flavor>,
}

const fn rule(name: &'static str, kind: ParamKind, dynamic: bool) -> ParamRule {
    ParamRule {
        name,
        kind,
        dynamic,
        only: None,
    }
}

const fn int(min: i64, max: i64) -> ParamKind {
    ParamKind::Int { min, max }
}

const fn size(min: i64, max: i64) -> ParamKind {
    ParamKind::Size { min, max }
}

const GIB: i64 = 1 << 30;
const U32_MAX: i64 = 4_294_967_295;

/// The parameters the driver accepts, with their types, ranges and whether they apply at
/// once. Ranges are the servers' own (MariaDB 10.11 and MySQL 8.0 documentation), narrowed
/// where a value would make the server unusable.
pub static RULES: &[ParamRule] = &[
    rule("autocommit", ParamKind::Bool, true),
    rule("auto_increment_increment", int(1, 65_535), true),
    rule("auto_increment_offset", int(1, 65_535), true),
    rule("binlog_cache_size", size(4096, i64::MAX), true),
    rule("binlog_expire_logs_seconds", int(0, U32_MAX), true),
    rule("bulk_insert_buffer_size", size(0, i64::MAX), true),
    rule("character_set_server", ParamKind::Charset, true),
    rule("collation_server", ParamKind::Charset, true),
    rule("connect_timeout", int(2, 31_536_000), true),
    rule("event_scheduler", ParamKind::Enum(&["ON", "OFF"]), true),
    ParamRule {
        only: Some(Flavor::MariaDb),
        ..rule("expire_logs_days", int(0, 99), true)
    },
    rule("group_concat_max_len", int(4, i64::MAX), true),
    rule("innodb_buffer_pool_size", size(5 << 20, i64::MAX), false),
    rule("innodb_file_per_table", ParamKind::Bool, true),
    rule("innodb_flush_log_at_trx_commit", int(0, 2), true),
    rule("innodb_io_capacity", int(100, U32_MAX), true),
    rule("innodb_lock_wait_timeout", int(1, 1_073_741_824), true),
    rule("innodb_log_buffer_size", size(256 << 10, U32_MAX), false),
    rule("innodb_log_file_size", size(4 << 20, 512 * GIB), false),
    rule("innodb_open_files", int(10, U32_MAX), false),
    rule("innodb_thread_concurrency", int(0, 1000), true),
    rule("interactive_timeout", int(1, 31_536_000), true),
    rule("join_buffer_size", size(128, i64::MAX), true),
    rule("key_buffer_size", size(8, i64::MAX), true),
    rule("local_infile", ParamKind::Bool, true),
    rule("lock_wait_timeout", int(1, 31_536_000), true),
    rule("log_bin_trust_function_creators", ParamKind::Bool, true),
    rule(
        "long_query_time",
        ParamKind::Float {
            min: 0.0,
            max: 31_536_000.0,
        },
        true,
    ),
    rule("max_allowed_packet", size(1024, GIB), true),
    rule("max_connect_errors", int(1, U32_MAX), true),
    rule("max_connections", int(10, 100_000), true),
    rule("max_heap_table_size", size(16_384, i64::MAX), true),
    rule("max_user_connections", int(0, U32_MAX), true),
    rule("net_read_timeout", int(1, 31_536_000), true),
    rule("net_write_timeout", int(1, 31_536_000), true),
    rule("performance_schema", ParamKind::Bool, false),
    ParamRule {
        only: Some(Flavor::MariaDb),
        ..rule("query_cache_size", size(0, i64::MAX), true)
    },
    ParamRule {
        only: Some(Flavor::MariaDb),
        ..rule(
            "query_cache_type",
            ParamKind::Enum(&["OFF", "ON", "DEMAND"]),
            true,
        )
    },
    rule("read_buffer_size", size(8192, 2 * GIB), true),
    rule("read_rnd_buffer_size", size(1, 2 * GIB), true),
    rule("slow_query_log", ParamKind::Bool, true),
    rule("sort_buffer_size", size(32_768, i64::MAX), true),
    rule("sql_mode", ParamKind::SqlMode, true),
    rule("sync_binlog", int(0, U32_MAX), true),
    rule("table_definition_cache", int(400, 2_097_152), true),
    rule("table_open_cache", int(1, 1_048_576), true),
    rule("thread_cache_size", int(0, 16_384), true),
    rule("tmp_table_size", size(1024, i64::MAX), true),
    ParamRule {
        only: Some(Flavor::MariaDb),
        ..rule(
            "tx_isolation",
            ParamKind::Enum(&[
                "READ-UNCOMMITTED",
                "READ-COMMITTED",
                "REPEATABLE-READ",
                "SERIALIZABLE",
            ]),
            true,
        )
    },
    ParamRule {
        only: Some(Flavor::MySql),
        ..rule(
            "transaction_isolation",
            ParamKind::Enum(&[
                "READ-UNCOMMITTED",
                "READ-COMMITTED",
                "REPEATABLE-READ",
                "SERIALIZABLE",
            ]),
            true,
        )
    },
    rule("wait_timeout", int(1, 31_536_000), true),
];

/// The rule for `key` (`-` and `_` are the same in option names, as the server reads them).
pub(crate) fn find_rule(key: &str) -> Option<&'static ParamRule> {
    let norm = key.replace('-', "_").to_ascii_lowercase();
    RULES.iter().find(|r| r.name == norm)
}

fn invalid(key: &str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Parses `512M`, `1G`, `4096` into bytes.
fn parse_size(text: &str) -> Option<i64> {
    let t = text.trim();
    let (digits, shift) = match t.chars().last()?.to_ascii_uppercase() {
        'K' => (&t[..t.len() - 1], 10),
        'M' => (&t[..t.len() - 1], 20),
        'G' => (&t[..t.len() - 1], 30),
        'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse::<i64>().ok()?.checked_mul(1i64 << shift)
}

impl ParamKind {
    /// Checks a JSON value against the kind, returning the typed value.
    fn check(&self, key: &str, v: &Value) -> Result<ConfigValue> {
        match *self {
            ParamKind::Bool => {
                let b = match v {
                    Value::Bool(b) => Some(*b),
                    Value::Number(n) => match n.as_i64() {
                        Some(0) => Some(false),
                        Some(1) => Some(true),
                        _ => None,
                    },
                    Value::String(s) => match s.to_ascii_uppercase().as_str() {
                        "ON" | "TRUE" | "1" | "YES" => Some(true),
                        "OFF" | "FALSE" | "0" | "NO" => Some(false),
                        _ => None,
                    },
                    _ => None,
                };
                b.map(ConfigValue::Bool)
                    .ok_or_else(|| invalid(key, "must be a boolean (true/false, 1/0, ON/OFF)"))
            }
            ParamKind::Int { min, max } => {
                let n = match v {
                    Value::Number(n) => n.as_i64(),
                    Value::String(s) => s.trim().parse::<i64>().ok(),
                    _ => None,
                }
                .ok_or_else(|| invalid(key, "must be a whole number"))?;
                if !(min..=max).contains(&n) {
                    return Err(invalid(key, format!("must be {min} to {max}, got {n}")));
                }
                Ok(ConfigValue::Int(n))
            }
            ParamKind::Size { min, max } => {
                let n = match v {
                    Value::Number(n) => n.as_i64(),
                    Value::String(s) => parse_size(s),
                    _ => None,
                }
                .ok_or_else(|| {
                    invalid(key, "must be a size in bytes, optionally with K, M, G or T")
                })?;
                if !(min..=max).contains(&n) {
                    return Err(invalid(
                        key,
                        format!("must be {min} to {max} bytes, got {n}"),
                    ));
                }
                Ok(ConfigValue::Int(n))
            }
            ParamKind::Float { min, max } => {
                let f = match v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok(),
                    _ => None,
                }
                .filter(|f| f.is_finite())
                .ok_or_else(|| invalid(key, "must be a number"))?;
                if !(min..=max).contains(&f) {
                    return Err(invalid(key, format!("must be {min} to {max}, got {f}")));
                }
                Ok(ConfigValue::Float(f))
            }
            ParamKind::Enum(allowed) => {
                let s = v.as_str().ok_or_else(|| {
                    invalid(key, format!("must be one of {}", allowed.join(", ")))
                })?;
                allowed
                    .iter()
                    .find(|a| a.eq_ignore_ascii_case(s.trim()))
                    .map(|a| ConfigValue::Str((*a).to_owned()))
                    .ok_or_else(|| invalid(key, format!("must be one of {}", allowed.join(", "))))
            }
            ParamKind::Charset => {
                let s = v
                    .as_str()
                    .ok_or_else(|| invalid(key, "must be a character set or collation name"))?;
                check_charset(key, s).map_err(|e| invalid(key, e.to_string()))?;
                Ok(ConfigValue::Str(s.to_owned()))
            }
            ParamKind::SqlMode => {
                let s = v
                    .as_str()
                    .ok_or_else(|| invalid(key, "must be a comma-separated list of modes"))?;
                let modes: Vec<String> = s
                    .split(',')
                    .map(|m| m.trim().to_ascii_uppercase())
                    .filter(|m| !m.is_empty())
                    .collect();
                if modes
                    .iter()
                    .any(|m| m.len() > 64 || !m.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
                {
                    return Err(invalid(key, "modes are words of A-Z and _"));
                }
                Ok(ConfigValue::Str(modes.join(",")))
            }
        }
    }
}

/// The value as the server's option files write it.
fn cnf_value(v: &ConfigValue) -> String {
    match v {
        ConfigValue::Bool(true) => "ON".to_owned(),
        ConfigValue::Bool(false) => "OFF".to_owned(),
        ConfigValue::Int(n) => n.to_string(),
        ConfigValue::Float(f) => f.to_string(),
        ConfigValue::Str(s) => s.clone(),
    }
}

/// The value as `SET GLOBAL` takes it: numbers and `ON`/`OFF` bare, words as literals.
fn sql_value(v: &ConfigValue) -> Result<String> {
    Ok(match v {
        ConfigValue::Bool(_) | ConfigValue::Int(_) | ConfigValue::Float(_) => cnf_value(v),
        ConfigValue::Str(s) => quote_string(s)?,
    })
}

fn to_json(v: &ConfigValue) -> Value {
    match v {
        ConfigValue::Bool(b) => Value::Bool(*b),
        ConfigValue::Int(n) => Value::from(*n),
        ConfigValue::Float(f) => Value::from(*f),
        ConfigValue::Str(s) => Value::String(s.clone()),
    }
}

/// Validates overrides against [`RULES`]; `flavor`, when known, refuses the other flavour's
/// parameters. Pure.
pub(crate) fn validate_overrides(
    overrides: &Overrides,
    flavor: Option<Flavor>,
) -> Result<ValidatedOverrides> {
    let mut out = ValidatedOverrides::default();
    for (key, value) in overrides {
        ConfigKey::new(key.as_str())?;
        let rule = find_rule(key).ok_or_else(|| {
            invalid(
                key,
                "not a parameter this driver accepts (paths, ports, server_id, binary log, GTID \
                 and read_only settings are managed by the driver)",
            )
        })?;
        check_flavor(key, rule, flavor)?;
        let typed = rule.kind.check(key, value)?;
        let canonical = ConfigKey::new(rule.name)?;
        if out.values.insert(canonical.clone(), typed).is_some() {
            return Err(invalid(key, format!("'{}' is given twice", rule.name)));
        }
        if !rule.dynamic {
            out.restart_required.push(canonical);
        }
    }
    Ok(out)
}

fn check_flavor(key: &str, rule: &ParamRule, flavor: Option<Flavor>) -> Result<()> {
    let Some(only) = rule.only else {
        return Ok(());
    };
    let Some(f) = flavor else {
        return Ok(());
    };
    let mysql_like = |x: Flavor| matches!(x, Flavor::MySql | Flavor::Percona);
    if only == f || (mysql_like(only) && mysql_like(f)) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!(
                "only {} servers know this parameter",
                if only == Flavor::MariaDb {
                    "MariaDB"
                } else {
                    "MySQL"
                }
            ),
        ))
    }
}

/// Renders an option file `[mysqld]` section from typed values.
fn render_section(header: &str, values: &BTreeMap<ConfigKey, ConfigValue>) -> String {
    let mut s = format!("# {header}\n[mysqld]\n");
    for (k, v) in values {
        let _ = writeln!(s, "{k} = {}", cnf_value(v));
    }
    s
}

/// Reads `key = value` lines of an option file written by this module.
pub(crate) fn parse_option_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[', '!']))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

/// `innodb_buffer_pool_size`, `innodb_log_file_size` (MiB) and `max_connections` for an
/// instance with `memory_mb`: half the memory for the buffer pool (the server is the only
/// tenant), a quarter of the pool for the redo log, and one connection per 5 MiB (Trove's
/// template ratio of 100 per 512 MiB).
pub(crate) fn memory_sizing(memory_mb: u64) -> (u64, u64, u64) {
    let pool = (memory_mb / 2).max(MIN_BUFFER_POOL_MB);
    let log = (pool / 4).clamp(MIN_LOG_FILE_MB, MAX_LOG_FILE_MB);
    let conns = (memory_mb / 5).clamp(MIN_CONNECTIONS, MAX_CONNECTIONS);
    (pool, log, conns)
}

/// What the base `my.cnf` says.
#[derive(Debug, Clone)]
pub(crate) struct BaseConf<'a> {
    /// The server's flavour (chooses the GTID settings).
    pub(crate) flavor: Flavor,
    /// `user =` line, needed only when the server runs as root.
    pub(crate) run_as_root: bool,
    /// `datadir`.
    pub(crate) data_dir: &'a Path,
    /// `tmpdir`.
    pub(crate) tmp_dir: &'a Path,
    /// `socket`.
    pub(crate) socket: &'a Path,
    /// `pid-file`.
    pub(crate) pid_file: &'a Path,
    /// `bind-address`.
    pub(crate) bind: IpAddr,
    /// `port`.
    pub(crate) port: u16,
    /// `server_id`.
    pub(crate) server_id: u32,
    /// `!includedir`.
    pub(crate) conf_d: &'a Path,
    /// Instance memory for sizing, when known.
    pub(crate) memory_mb: Option<u64>,
}

fn path_text<'p>(key: &str, p: &'p Path) -> Result<&'p str> {
    let s = p
        .to_str()
        .ok_or_else(|| invalid(key, "must be valid UTF-8"))?;
    if s.chars()
        .any(|c| c.is_control() || c == '#' || c == '"' || c == '\'')
    {
        return Err(invalid(
            key,
            "must not contain control characters, quotes or '#' (option files cannot hold them)",
        ));
    }
    Ok(s)
}

impl BaseConf<'_> {
    /// The text of `my.cnf`.
    pub(crate) fn render(&self) -> Result<String> {
        let data_dir = path_text("datastore.data_dir", self.data_dir)?;
        let tmp_dir = path_text("datastore.options.tmp_dir", self.tmp_dir)?;
        let socket = path_text("datastore.run_dir", self.socket)?;
        let pid_file = path_text("datastore.run_dir", self.pid_file)?;
        let conf_d = path_text("datastore.options.config_dir", self.conf_d)?;
        let mut s = String::from(
            "# Managed by guest-agent; written by prepare. Overrides belong in conf.d/.\n",
        );
        let _ = write!(
            s,
            "[client]\nsocket = {socket}\nport = {port}\n\n[mysqld]\n",
            port = self.port
        );
        if self.run_as_root {
            // mariadbd refuses to run as root unless told to.
            s.push_str("user = root\n");
        }
        let _ = write!(
            s,
            "datadir = {data_dir}\ntmpdir = {tmp_dir}\nsocket = {socket}\npid-file = {pid_file}\n\
             port = {port}\nbind-address = {bind}\nskip-name-resolve\n",
            port = self.port,
            bind = self.bind,
        );
        s.push_str(
            "# Clients never make the server read files from its own disk.\nlocal_infile = 0\n\
             character_set_server = utf8mb4\ncollation_server = utf8mb4_general_ci\n\
             # Durable commits: a replica may be promoted from what a crashed primary flushed.\n\
             innodb_flush_log_at_trx_commit = 1\nsync_binlog = 1\n\
             # Every server logs row-based binary logs with GTIDs, so any one can become the\n\
             # primary and any replica can be re-pointed by GTID.\n",
        );
        let _ = write!(
            s,
            "server_id = {}\nlog_bin = mysql-bin\nrelay_log = relay-bin\nbinlog_format = ROW\n\
             log_slave_updates = ON\nrelay_log_recovery = ON\n",
            self.server_id
        );
        match self.flavor {
            Flavor::MariaDb => s.push_str("gtid_strict_mode = ON\n"),
            Flavor::MySql | Flavor::Percona => {
                s.push_str("gtid_mode = ON\nenforce_gtid_consistency = ON\n");
            }
        }
        if let Some(mem) = self.memory_mb {
            let (pool, log, conns) = memory_sizing(mem);
            let _ = write!(
                s,
                "# Sized for {mem} MiB of memory.\ninnodb_buffer_pool_size = {pool}M\n\
                 innodb_log_file_size = {log}M\nmax_connections = {conns}\n"
            );
        }
        let _ = write!(s, "\n!includedir {conf_d}\n");
        Ok(s)
    }
}

/// Keeps the tunables of a control-plane base file: `[mysqld]`-like sections only, known
/// parameters only (validated), everything the driver manages dropped. Returns the typed
/// values and the names that were dropped.
pub(crate) fn base_tunables(
    contents: &str,
    flavor: Option<Flavor>,
) -> Result<(BTreeMap<ConfigKey, ConfigValue>, Vec<String>)> {
    let mut keep = Overrides::new();
    let mut dropped = Vec::new();
    let mut in_server = false;
    for line in contents.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(['#', ';', '!']) {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.trim();
            in_server = matches!(section, "mysqld" | "server" | "mariadb" | "mariadbd")
                || section.starts_with("mysqld-")
                || section.starts_with("mariadb-");
            continue;
        }
        if !in_server {
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or((line, "ON"));
        let (k, v) = (k.trim(), v.trim().trim_matches(['"', '\'']));
        match find_rule(k) {
            Some(r) if check_flavor(k, r, flavor).is_ok() => {
                keep.insert(r.name.to_owned(), Value::String(v.to_owned()));
            }
            _ => dropped.push(k.to_owned()),
        }
    }
    let validated = validate_overrides(&keep, flavor)?;
    Ok((validated.values, dropped))
}

impl MySqlDriver {
    fn overrides_path(&self) -> PathBuf {
        self.config_dir.join(CONF_D).join(OVERRIDES_FILE)
    }

    /// Reads a file, `None` when it does not exist.
    fn read_optional(path: &Path) -> Result<Option<String>> {
        match std::fs::read_to_string(path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Puts back the previous overrides file (or removes the new one when there was none).
    fn restore_overrides(&self, previous: Option<&str>) {
        let path = self.overrides_path();
        let result = match previous {
            Some(text) => write_file(&path, text.as_bytes(), 0o644, None),
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(Error::io(format!("removing {}", path.display()), e))
                }
                _ => Ok(()),
            },
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "Could not restore the previous overrides file.");
        }
    }

    /// `SET GLOBAL` for each value, undoing the ones already set when one fails.
    async fn set_globals(
        &self,
        session: &mut Session,
        values: &[(&'static str, &ConfigValue)],
    ) -> Result<()> {
        let mut undo: Vec<(&'static str, Option<String>)> = Vec::new();
        for (name, value) in values {
            let old = session.global(&format!("SELECT @@GLOBAL.{name}")).await?;
            let sql = format!("SET GLOBAL {name} = {}", sql_value(value)?);
            if let Err(e) = session
                .exec(
                    &sql,
                    Some(Subject {
                        what: "parameter",
                        ..Subject::database(name)
                    }),
                )
                .await
            {
                for (n, old) in undo.iter().rev() {
                    let Some(old) = old else { continue };
                    let literal = if old.parse::<f64>().is_ok() {
                        old.clone()
                    } else {
                        quote_string(old)?
                    };
                    if let Err(u) = session
                        .exec(&format!("SET GLOBAL {n} = {literal}"), None)
                        .await
                    {
                        tracing::error!(parameter = n, error = %u, "Could not undo a parameter change.");
                    }
                }
                return Err(e);
            }
            undo.push((name, old));
        }
        Ok(())
    }
}

#[async_trait]
impl ConfigApply for MySqlDriver {
    fn validate(&self, overrides: &Overrides) -> Result<ValidatedOverrides> {
        validate_overrides(overrides, self.connector.known_version().map(|v| v.flavor))
    }

    async fn apply(&self, ctx: &OpContext, overrides: &ValidatedOverrides) -> Result<ApplyOutcome> {
        ctx.cancelled()?;
        let mut session = self.connector.connect().await?;
        let server: ServerVersion = session.server;
        // Re-check: the set may not have come from `validate`, and the flavour is known now.
        let as_json: Overrides = overrides
            .values
            .iter()
            .map(|(k, v)| (k.to_string(), to_json(v)))
            .collect();
        let checked = validate_overrides(&as_json, Some(server.flavor))?;
        let path = self.overrides_path();
        let previous = Self::read_optional(&path)?;
        let previous_keys: BTreeSet<String> = previous
            .as_deref()
            .map(parse_option_file)
            .unwrap_or_default()
            .into_keys()
            .collect();
        let text = render_section(
            "Managed by guest-agent: the configuration overrides. Replaced as a whole.",
            &checked.values,
        );
        write_file(&path, text.as_bytes(), 0o644, None)?;

        let mut dynamic: Vec<(&'static str, &ConfigValue)> = Vec::new();
        let mut outcome = ApplyOutcome::default();
        for (key, value) in &checked.values {
            let Some(rule) = find_rule(key.as_str()) else {
                continue;
            };
            if rule.dynamic {
                dynamic.push((rule.name, value));
                outcome.dynamic_applied.push(rule.name.to_owned());
            } else {
                outcome.restart_required.push(rule.name.to_owned());
            }
        }
        // A parameter dropped from the set keeps its running value until the next restart.
        for gone in previous_keys {
            if !checked.values.keys().any(|k| k.as_str() == gone) {
                outcome.restart_required.push(gone);
            }
        }
        if let Err(e) = self.set_globals(&mut session, &dynamic).await {
            self.restore_overrides(previous.as_deref());
            session.close().await;
            return Err(e);
        }
        session.close().await;
        tracing::info!(
            applied = outcome.dynamic_applied.len(),
            restart_required = outcome.restart_required.len(),
            "Configuration overrides applied."
        );
        Ok(outcome)
    }

    async fn remove_overrides(&self, ctx: &OpContext) -> Result<ApplyOutcome> {
        self.apply(ctx, &ValidatedOverrides::default()).await
    }

    async fn reset_base(&self, ctx: &OpContext, contents: &str) -> Result<()> {
        ctx.cancelled()?;
        let flavor = self.connector.known_version().map(|v| v.flavor);
        let (values, dropped) = base_tunables(contents, flavor)?;
        if !dropped.is_empty() {
            tracing::info!(
                dropped = %dropped.join(", "),
                "Kept the known tunables of the base configuration; the rest is the driver's."
            );
        }
        let text = render_section(
            "Managed by guest-agent: tunables of the control plane's base configuration.",
            &values,
        );
        write_file(
            &self.config_dir.join(CONF_D).join(BASE_FILE),
            text.as_bytes(),
            0o644,
            None,
        )
    }

    async fn current(&self, ctx: &OpContext) -> Result<BTreeMap<String, String>> {
        ctx.cancelled()?;
        Ok(Self::read_optional(&self.overrides_path())?
            .as_deref()
            .map(parse_option_file)
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use serde_json::json;

    use super::*;

    fn overrides(v: Value) -> Overrides {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn rules_are_unique_and_sane() {
        let mut names = BTreeSet::new();
        for r in RULES {
            assert!(names.insert(r.name), "{} twice", r.name);
            assert!(ConfigKey::new(r.name).is_ok());
            assert!(r.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            if let ParamKind::Int { min, max } | ParamKind::Size { min, max } = r.kind {
                assert!(min <= max, "{}", r.name);
            }
        }
        assert!(find_rule("max-connections").is_some());
        assert!(find_rule("MAX_CONNECTIONS").is_some());
        for managed in [
            "datadir",
            "server_id",
            "log_bin",
            "read_only",
            "port",
            "gtid_mode",
        ] {
            assert!(find_rule(managed).is_none(), "{managed}");
        }
    }

    #[test]
    fn typed_values_and_restart_flags() {
        let v = validate_overrides(
            &overrides(json!({
                "max_connections": 200,
                "innodb_buffer_pool_size": "512M",
                "long_query_time": "0.5",
                "slow_query_log": 1,
                "local-infile": false,
                "query_cache_type": "demand",
                "sql_mode": "strict_trans_tables, NO_ZERO_DATE",
                "character_set_server": "utf8mb4",
                "max_allowed_packet": "64m",
            })),
            Some(Flavor::MariaDb),
        )
        .unwrap();
        let get = |k: &str| v.values.get(&ConfigKey::new(k).unwrap()).cloned();
        assert_eq!(get("max_connections"), Some(ConfigValue::Int(200)));
        assert_eq!(
            get("innodb_buffer_pool_size"),
            Some(ConfigValue::Int(512 << 20))
        );
        assert_eq!(get("long_query_time"), Some(ConfigValue::Float(0.5)));
        assert_eq!(get("slow_query_log"), Some(ConfigValue::Bool(true)));
        assert_eq!(get("local_infile"), Some(ConfigValue::Bool(false)));
        assert_eq!(
            get("query_cache_type"),
            Some(ConfigValue::Str("DEMAND".into()))
        );
        assert_eq!(
            get("sql_mode"),
            Some(ConfigValue::Str("STRICT_TRANS_TABLES,NO_ZERO_DATE".into()))
        );
        assert_eq!(get("max_allowed_packet"), Some(ConfigValue::Int(64 << 20)));
        assert_eq!(
            v.restart_required,
            [ConfigKey::new("innodb_buffer_pool_size").unwrap()]
        );
    }

    #[test]
    fn bad_values_name_the_key_and_rule() {
        for (input, key, needle) in [
            (
                json!({"max_connections": 0}),
                "max_connections",
                "10 to 100000",
            ),
            (
                json!({"max_connections": "many"}),
                "max_connections",
                "whole number",
            ),
            (
                json!({"slow_query_log": "maybe"}),
                "slow_query_log",
                "boolean",
            ),
            (
                json!({"max_allowed_packet": "1Q"}),
                "max_allowed_packet",
                "size",
            ),
            (
                json!({"query_cache_type": "SOMETIMES"}),
                "query_cache_type",
                "one of",
            ),
            (json!({"sql_mode": "X'; DROP"}), "sql_mode", "modes"),
            (
                json!({"character_set_server": "utf8'"}),
                "character_set_server",
                "ASCII",
            ),
            (
                json!({"datadir": "/tmp"}),
                "datadir",
                "managed by the driver",
            ),
            (json!({"x; DROP": 1}), "x; DROP", "key"),
            (json!({"long_query_time": -1}), "long_query_time", "0 to"),
            (
                json!({"innodb_buffer_pool_size": "99999999999999999999T"}),
                "innodb_buffer_pool_size",
                "size",
            ),
        ] {
            match validate_overrides(&overrides(input.clone()), None) {
                Err(Error::InvalidConfig { key: k, reason }) => {
                    assert_eq!(k, key, "{input}");
                    assert!(reason.contains(needle), "{input}: {reason}");
                }
                other => panic!("{input}: {other:?}"),
            }
        }
        // One bad value fails the whole set.
        assert!(
            validate_overrides(
                &overrides(json!({"max_connections": 100, "wait_timeout": 0})),
                None
            )
            .is_err()
        );
        // The same parameter twice (spelled differently).
        let e = validate_overrides(
            &overrides(json!({"max_connections": 100, "max-connections": 200})),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        // Flavour-specific parameters.
        assert!(
            validate_overrides(
                &overrides(json!({"query_cache_size": 0})),
                Some(Flavor::MySql)
            )
            .is_err()
        );
        assert!(
            validate_overrides(
                &overrides(json!({"transaction_isolation": "READ-COMMITTED"})),
                Some(Flavor::Percona)
            )
            .is_ok()
        );
    }

    #[test]
    fn sizing_has_floor_and_cap() {
        assert_eq!(memory_sizing(4096), (2048, 512, 819));
        assert_eq!(memory_sizing(64), (64, 48, 50));
        assert_eq!(memory_sizing(1 << 20), (524_288, 2048, 10_000));
    }

    #[test]
    fn renders_base_conf() {
        let conf = BaseConf {
            flavor: Flavor::MariaDb,
            run_as_root: true,
            data_dir: Path::new("/srv/db/data"),
            tmp_dir: Path::new("/srv/db/tmp"),
            socket: Path::new("/run/db/mysqld.sock"),
            pid_file: Path::new("/run/db/mysqld.pid"),
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 3307,
            server_id: 42,
            conf_d: Path::new("/srv/db/conf/conf.d"),
            memory_mb: Some(2048),
        };
        let text = conf.render().unwrap();
        for line in [
            "user = root\n",
            "datadir = /srv/db/data\n",
            "tmpdir = /srv/db/tmp\n",
            "socket = /run/db/mysqld.sock\n",
            "bind-address = 127.0.0.1\n",
            "port = 3307\n",
            "server_id = 42\n",
            "binlog_format = ROW\n",
            "log_slave_updates = ON\n",
            "gtid_strict_mode = ON\n",
            "innodb_buffer_pool_size = 1024M\n",
            "max_connections = 409\n",
            "local_infile = 0\n",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
        assert!(text.ends_with("!includedir /srv/db/conf/conf.d\n"));
        let mysql = BaseConf {
            flavor: Flavor::MySql,
            run_as_root: false,
            memory_mb: None,
            ..conf.clone()
        };
        let text = mysql.render().unwrap();
        assert!(text.contains("gtid_mode = ON\nenforce_gtid_consistency = ON\n"));
        assert!(!text.contains("user = root") && !text.contains("innodb_buffer_pool_size"));
        let bad = BaseConf {
            data_dir: Path::new("/srv/x\n[client]"),
            ..conf
        };
        assert!(bad.render().is_err());
    }

    #[test]
    fn option_files_round_trip() {
        let v = validate_overrides(
            &overrides(json!({"max_connections": 300, "slow_query_log": true})),
            None,
        )
        .unwrap();
        let text = render_section("test", &v.values);
        assert!(text.starts_with("# test\n[mysqld]\n"));
        let back = parse_option_file(&text);
        assert_eq!(back.get("max_connections").map(String::as_str), Some("300"));
        assert_eq!(back.get("slow_query_log").map(String::as_str), Some("ON"));
        assert_eq!(back.len(), 2);
    }

    #[test]
    fn base_file_keeps_known_tunables_only() {
        let trove_template = "[client]\nport = 3306\n\n[mysqld_safe]\nnice = 0\n\n[mysqld]\n\
            user = mysql\ndatadir = /var/lib/mysql/data\nmax_connections = 400\n\
            innodb_buffer_pool_size = 600M\nperformance_schema = ON\nserver_id = 7\n\
            skip-external-locking\n!includedir /etc/mysql/conf.d/\n";
        let (values, dropped) = base_tunables(trove_template, Some(Flavor::MariaDb)).unwrap();
        let keys: Vec<&str> = values.keys().map(ConfigKey::as_str).collect();
        assert_eq!(
            keys,
            [
                "innodb_buffer_pool_size",
                "max_connections",
                "performance_schema"
            ]
        );
        assert_eq!(
            dropped,
            ["user", "datadir", "server_id", "skip-external-locking"]
        );
        assert!(base_tunables("[mysqld]\nmax_connections = 0\n", None).is_err());
        assert!(parse_size("8K") == Some(8192) && parse_size("M").is_none());
    }
}

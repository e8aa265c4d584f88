//! The driver value: settings checked at build time, the runtime, the cached administrative
//! session, and the [`Driver`] entry point handing out the operation groups.
//!
//! Building never connects and never touches the disk: the server may not exist yet.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use guest_agent_api::admin::Admin;
use guest_agent_api::backup::BackupHooks;
use guest_agent_api::config::ConfigApply;
use guest_agent_api::health::Health;
use guest_agent_api::lifecycle::Lifecycle;
use guest_agent_api::replication::Replication;
use guest_agent_api::runtime::{DatastoreRuntime, ServerSpec, find_program};
use guest_agent_api::{Capabilities, Driver, DriverInfo, DriverSettings, Error, Result};
use serde::Deserialize;

use crate::sql::{AdminSession, Connector};
use crate::{ADMIN_USER, DRIVER_NAME, MANAGERS, REPLICATION_USER, ROOT_USER};

/// Where distributions install PostgreSQL's server binaries, one directory per major version.
const PG_LIB_DIR: &str = "/usr/lib/postgresql";
/// Name of the server's log file in the run directory.
pub(crate) const LOG_FILE: &str = "postgres.log";
/// Roles never shown to or changed by Trove's user operations.
const RESERVED_USERS: &[&str] = &[ADMIN_USER, ROOT_USER, REPLICATION_USER, "os_admin"];
/// Databases never shown to or changed by Trove's database operations.
const RESERVED_DBS: &[&str] = &["postgres", "template0", "template1", "os_admin"];

/// Driver options, the `[datastore.options]` table. Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct PgOptions {
    /// Seconds to wait for the server to accept sessions after starting it.
    pub start_timeout_secs: u64,
    /// Seconds to wait for the server to stop before it is killed.
    pub stop_timeout_secs: u64,
    /// Seconds to wait for a session to open.
    pub connect_timeout_secs: u64,
    /// `statement_timeout` of the driver's sessions, in seconds.
    pub statement_timeout_secs: u64,
    /// `lock_timeout` of the driver's sessions, in seconds.
    pub lock_timeout_secs: u64,
    /// Further roles hidden from Trove's user operations.
    pub ignore_users: Vec<String>,
    /// Further databases hidden from Trove's database operations.
    pub ignore_dbs: Vec<String>,
    /// Host or address replicas connect to (default: the bind address).
    pub advertise_host: Option<String>,
    /// Seconds `pg_basebackup` may take to seed a replica.
    pub basebackup_timeout_secs: u64,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            start_timeout_secs: 60,
            stop_timeout_secs: 60,
            connect_timeout_secs: 10,
            statement_timeout_secs: 120,
            lock_timeout_secs: 30,
            ignore_users: Vec::new(),
            ignore_dbs: Vec::new(),
            advertise_host: None,
            basebackup_timeout_secs: 6 * 3600,
        }
    }
}

impl PgOptions {
    /// Parses and checks the options value (`null` means all defaults).
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let opts: PgOptions = if value.is_null() {
            PgOptions::default()
        } else {
            serde_json::from_value(value.clone()).map_err(|e| Error::InvalidConfig {
                key: "datastore.options".to_owned(),
                reason: e.to_string(),
            })?
        };
        for (key, v) in [
            ("start_timeout_secs", opts.start_timeout_secs),
            ("stop_timeout_secs", opts.stop_timeout_secs),
            ("connect_timeout_secs", opts.connect_timeout_secs),
            ("statement_timeout_secs", opts.statement_timeout_secs),
            ("lock_timeout_secs", opts.lock_timeout_secs),
            ("basebackup_timeout_secs", opts.basebackup_timeout_secs),
        ] {
            if !(1..=86_400).contains(&v) {
                return Err(Error::InvalidConfig {
                    key: format!("datastore.options.{key}"),
                    reason: "must be 1 to 86400 seconds".to_owned(),
                });
            }
        }
        if let Some(h) = &opts.advertise_host
            && (h.is_empty() || h.len() > 255 || h.chars().any(|c| c.is_control() || c == ' '))
        {
            return Err(Error::InvalidConfig {
                key: "datastore.options.advertise_host".to_owned(),
                reason: "must be a host name or address".to_owned(),
            });
        }
        Ok(opts)
    }
}

/// The PostgreSQL driver.
pub struct PgDriver {
    pub(crate) info: DriverInfo,
    pub(crate) data_dir: PathBuf,
    pub(crate) run_dir: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) bind_address: IpAddr,
    pub(crate) port: u16,
    pub(crate) bin_dirs: Vec<PathBuf>,
    pub(crate) os_user: Option<String>,
    pub(crate) runtime: Arc<dyn DatastoreRuntime>,
    pub(crate) opts: PgOptions,
    pub(crate) session: AdminSession,
}

impl fmt::Debug for PgDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgDriver")
            .field("data_dir", &self.data_dir)
            .field("run_dir", &self.run_dir)
            .field("state_dir", &self.state_dir)
            .field("bind_address", &self.bind_address)
            .field("port", &self.port)
            .field("os_user", &self.os_user)
            .field("runtime", &self.runtime.kind())
            .finish_non_exhaustive()
    }
}

fn config_err(key: &str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// What this driver supports.
fn capabilities() -> Capabilities {
    let mut c = Capabilities::none();
    c.databases = true;
    c.database_charset = true;
    c.users = true;
    c.user_hosts = false;
    c.user_rename = true;
    c.grants = true;
    c.root = true;
    c.config = true;
    c.replication = true;
    c.backup = true;
    c
}

impl PgDriver {
    /// Builds the driver from `settings`, checking them; never connects.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for unknown or out-of-range options, relative paths, a state or
    /// run directory inside the data directory, or a root agent without an OS user to run the
    /// server as (PostgreSQL refuses to run as root).
    pub fn new(settings: DriverSettings) -> Result<Self> {
        let opts = PgOptions::from_json(&settings.options)?;
        for (key, p) in [
            ("datastore.data_dir", &settings.data_dir),
            ("datastore.run_dir", &settings.run_dir),
            ("state_dir", &settings.state_dir),
        ] {
            if !p.is_absolute() {
                return Err(config_err(key, "must be an absolute path"));
            }
        }
        for (key, p) in [
            ("state_dir", &settings.state_dir),
            ("datastore.run_dir", &settings.run_dir),
        ] {
            if p.starts_with(&settings.data_dir) || settings.data_dir.starts_with(p) {
                return Err(config_err(
                    key,
                    "must not be inside the data directory (nor contain it)",
                ));
            }
        }
        if settings.port == 0 {
            return Err(config_err("datastore.port", "must not be 0"));
        }
        if settings.os_user.is_none() && nix::unistd::geteuid().is_root() {
            return Err(config_err(
                "datastore.os_user",
                "is required when the agent runs as root: PostgreSQL refuses to run as root",
            ));
        }
        let connector = Connector {
            socket_dir: settings.run_dir.clone(),
            port: settings.port,
            password_file: Connector::admin_password_path(&settings.state_dir),
            connect_timeout: Duration::from_secs(opts.connect_timeout_secs),
            statement_timeout: Duration::from_secs(opts.statement_timeout_secs),
            lock_timeout: Duration::from_secs(opts.lock_timeout_secs),
        };
        Ok(Self {
            info: DriverInfo {
                name: DRIVER_NAME,
                managers: MANAGERS,
                capabilities: capabilities(),
                data_dir: settings.data_dir.clone(),
            },
            data_dir: settings.data_dir,
            run_dir: settings.run_dir,
            state_dir: settings.state_dir,
            bind_address: settings.bind_address,
            port: settings.port,
            bin_dirs: settings.bin_dirs,
            os_user: settings.os_user,
            runtime: settings.runtime,
            opts,
            session: AdminSession::new(connector),
        })
    }

    /// Directories searched for server binaries: the configured ones, or the highest
    /// `/usr/lib/postgresql/<major>/bin`.
    pub(crate) fn bin_dirs(&self) -> Vec<PathBuf> {
        if !self.bin_dirs.is_empty() {
            return self.bin_dirs.clone();
        }
        newest_versioned_bin(Path::new(PG_LIB_DIR))
            .into_iter()
            .collect()
    }

    /// Absolute path of the server binary `name` (`initdb`, `postgres`).
    pub(crate) fn program(&self, name: &str) -> Result<PathBuf> {
        let dirs = self.bin_dirs();
        find_program(name, &dirs).ok_or_else(|| Error::InvalidState {
            operation: "find PostgreSQL binaries",
            reason: format!(
                "'{name}' not found in {}",
                if dirs.is_empty() {
                    format!("{PG_LIB_DIR}/*/bin")
                } else {
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        })
    }

    /// The server's `postmaster.pid`.
    pub(crate) fn pid_file(&self) -> PathBuf {
        self.data_dir.join("postmaster.pid")
    }

    /// How the runtime runs the server.
    pub(crate) fn server_spec(&self) -> Result<ServerSpec> {
        Ok(ServerSpec {
            name: "postgres".to_owned(),
            program: self.program("postgres")?,
            args: vec!["-D".into(), self.data_dir.clone().into_os_string()],
            env: Vec::new(),
            run_as: self.os_user.clone(),
            workdir: Some(self.data_dir.clone()),
            log_file: Some(self.run_dir.join(LOG_FILE)),
            pid_file: Some(self.pid_file()),
        })
    }

    /// Whether the role `name` is hidden from (and protected against) Trove's user operations.
    pub(crate) fn is_hidden_user(&self, name: &str) -> bool {
        RESERVED_USERS.contains(&name)
            || name.starts_with("pg_")
            || self.opts.ignore_users.iter().any(|u| u == name)
    }

    /// Whether the database `name` is hidden from (and protected against) Trove's operations.
    pub(crate) fn is_hidden_db(&self, name: &str) -> bool {
        RESERVED_DBS.contains(&name) || self.opts.ignore_dbs.iter().any(|d| d == name)
    }

    /// Start timeout.
    pub(crate) fn start_timeout(&self) -> Duration {
        Duration::from_secs(self.opts.start_timeout_secs)
    }

    /// Stop timeout.
    pub(crate) fn stop_timeout(&self) -> Duration {
        Duration::from_secs(self.opts.stop_timeout_secs)
    }
}

/// The `bin` directory of the highest numeric major version under `root`.
fn newest_versioned_bin(root: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let version = version_key(name.to_str()?)?;
            let bin = e.path().join("bin");
            bin.is_dir().then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// `15` -> `[15]`, `9.6` -> `[9, 6]`; anything else is not a version directory.
fn version_key(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|p| p.parse().ok()).collect()
}

impl Driver for PgDriver {
    fn info(&self) -> &DriverInfo {
        &self.info
    }

    fn lifecycle(&self) -> &dyn Lifecycle {
        self
    }

    fn admin(&self) -> &dyn Admin {
        self
    }

    fn config(&self) -> &dyn ConfigApply {
        self
    }

    fn health(&self) -> &dyn Health {
        self
    }

    fn replication(&self) -> Option<&dyn Replication> {
        Some(self)
    }

    fn backup(&self) -> Option<&dyn BackupHooks> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use guest_agent_api::runtime::ProcessRuntime;
    use serde_json::json;

    use super::*;

    fn settings(options: serde_json::Value) -> DriverSettings {
        let mut s = DriverSettings::new(
            "postgresql",
            "/srv/pg/data",
            "/srv/pg/run",
            "/srv/agent/state",
            5432,
            Arc::new(ProcessRuntime::new()),
        );
        s.os_user = Some("postgres".into());
        s.options = options;
        s
    }

    #[test]
    fn options_defaults_and_unknown_keys() {
        let d = PgDriver::new(settings(serde_json::Value::Null)).unwrap();
        assert_eq!(d.opts, PgOptions::default());
        let d = PgDriver::new(settings(json!({
            "start_timeout_secs": 5, "ignore_users": ["monitor"], "ignore_dbs": ["ops"]
        })))
        .unwrap();
        assert_eq!(d.start_timeout(), Duration::from_secs(5));
        assert!(d.is_hidden_user("monitor") && d.is_hidden_user("pg_monitor"));
        assert!(d.is_hidden_user("postgres") && d.is_hidden_user("root"));
        assert!(!d.is_hidden_user("app"));
        assert!(d.is_hidden_db("ops") && d.is_hidden_db("template0"));
        let e = PgDriver::new(settings(json!({"start_timeout": 5}))).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfig { key, reason }
                if key == "datastore.options" && reason.contains("start_timeout")),
            "{e}"
        );
        let e = PgDriver::new(settings(json!({"stop_timeout_secs": 0}))).unwrap_err();
        assert!(e.to_string().contains("stop_timeout_secs"), "{e}");
    }

    #[test]
    fn paths_are_checked() {
        let mut s = settings(serde_json::Value::Null);
        s.state_dir = "/srv/pg/data/state".into();
        assert!(
            matches!(PgDriver::new(s), Err(Error::InvalidConfig { key, .. }) if key == "state_dir")
        );
        let mut s = settings(serde_json::Value::Null);
        s.run_dir = "run".into();
        assert!(PgDriver::new(s).is_err());
    }

    #[test]
    fn capabilities_match_the_scope() {
        let d = PgDriver::new(settings(serde_json::Value::Null)).unwrap();
        let c = d.info().capabilities;
        assert!(c.databases && c.users && c.grants && c.root && c.user_rename);
        assert!(c.config && c.replication);
        assert!(!c.user_hosts && c.backup);
        assert!(d.replication().is_some());
        assert_eq!(
            d.backup().map(guest_agent_api::BackupHooks::strategies),
            Some(&["pg_basebackup", "pg_dump"][..])
        );
        assert_eq!(d.info().managers, ["postgresql"]);
    }

    #[test]
    fn newest_bin_dir_wins() {
        let root = tempfile::tempdir().unwrap();
        for v in ["9.6", "13", "15", "notaversion"] {
            std::fs::create_dir_all(root.path().join(v).join("bin")).unwrap();
        }
        std::fs::create_dir_all(root.path().join("16")).unwrap(); // no bin: skipped
        assert_eq!(
            newest_versioned_bin(root.path()).unwrap(),
            root.path().join("15").join("bin")
        );
        assert_eq!(version_key("9.6"), Some(vec![9, 6]));
        assert_eq!(version_key("x"), None);
    }

    #[test]
    fn server_spec_runs_as_os_user() {
        let mut s = settings(serde_json::Value::Null);
        let bin = tempfile::tempdir().unwrap();
        std::fs::write(bin.path().join("postgres"), b"").unwrap();
        s.bin_dirs = vec![bin.path().to_owned()];
        let d = PgDriver::new(s).unwrap();
        let spec = d.server_spec().unwrap();
        assert_eq!(spec.program, bin.path().join("postgres"));
        assert_eq!(spec.args, ["-D", "/srv/pg/data"]);
        assert_eq!(spec.run_as.as_deref(), Some("postgres"));
        assert_eq!(
            spec.pid_file.unwrap(),
            Path::new("/srv/pg/data/postmaster.pid")
        );
        assert_eq!(
            spec.log_file.unwrap(),
            Path::new("/srv/pg/run/postgres.log")
        );
        assert!(matches!(
            d.program("initdb"),
            Err(Error::InvalidState { .. })
        ));
    }
}

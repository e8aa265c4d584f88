//! The driver value: settings checked at build time, the runtime, the connector to the
//! server, and the [`Driver`] entry point handing out the operation groups.
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

use crate::sql::Connector;
use crate::{
    ADMIN_PASSWORD_FILE, ADMIN_USER, CONF_D, DRIVER_NAME, MANAGERS, MY_CNF,
    REPLICATION_USER_PREFIX, ROOT_USER,
};

/// Where distributions install the server and its tools, searched when no `bin_dirs` are set.
const DEFAULT_BIN_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/usr/local/mysql/bin"];
/// Server binaries, preferred first (MariaDB 10.5+ names it `mariadbd`).
const SERVER_PROGRAMS: &[&str] = &["mariadbd", "mysqld"];
/// Name of the server's log file (its stdout and stderr) in the run directory.
pub(crate) const LOG_FILE: &str = "mysqld.log";
/// Name of the server's socket in the run directory.
pub(crate) const SOCKET_FILE: &str = "mysqld.sock";
/// Name of the server's pid file in the run directory.
pub(crate) const PID_FILE: &str = "mysqld.pid";
/// Accounts never shown to or changed by Trove's user operations.
const RESERVED_USERS: &[&str] = &[
    ADMIN_USER,
    ROOT_USER,
    "mariadb.sys",
    "mysql.sys",
    "mysql.session",
    "mysql.infoschema",
    "PUBLIC",
];
/// Databases never shown to or changed by Trove's database operations.
const RESERVED_DBS: &[&str] = &[
    "mysql",
    "information_schema",
    "performance_schema",
    "sys",
    "lost+found",
];

/// Driver options, the `[datastore.options]` table. Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct MySqlOptions {
    /// Seconds to wait for the server to accept sessions after starting it (crash recovery
    /// of a large buffer pool takes a while).
    pub start_timeout_secs: u64,
    /// Seconds to wait for the server to stop before it is killed.
    pub stop_timeout_secs: u64,
    /// Seconds to wait for a session to open.
    pub connect_timeout_secs: u64,
    /// Directory of `my.cnf` and its `conf.d/`; default: `conf` beside the data directory.
    pub config_dir: Option<PathBuf>,
    /// The server's private `tmpdir` (temporary tables and sort files); default: `tmp` beside
    /// the data directory. Private because servers sharing `/tmp` have removed each other's
    /// temporary files.
    pub tmp_dir: Option<PathBuf>,
    /// `server_id`; default: a random one chosen at prepare time. Every server of a
    /// replication set needs its own.
    pub server_id: Option<u32>,
    /// Host or address replicas use to reach this server; default: the bind address.
    pub replication_host: Option<String>,
    /// `MASTER_CONNECT_RETRY` of a replica, in seconds.
    pub replication_connect_retry_secs: u32,
    /// Further accounts hidden from Trove's user operations.
    pub ignore_users: Vec<String>,
    /// Further databases hidden from Trove's database operations.
    pub ignore_dbs: Vec<String>,
}

impl Default for MySqlOptions {
    fn default() -> Self {
        Self {
            start_timeout_secs: 120,
            stop_timeout_secs: 120,
            connect_timeout_secs: 10,
            config_dir: None,
            tmp_dir: None,
            server_id: None,
            replication_host: None,
            replication_connect_retry_secs: 5,
            ignore_users: Vec::new(),
            ignore_dbs: Vec::new(),
        }
    }
}

impl MySqlOptions {
    /// Parses and checks the options value (`null` means all defaults).
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let opts: MySqlOptions = if value.is_null() {
            MySqlOptions::default()
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
            (
                "replication_connect_retry_secs",
                u64::from(opts.replication_connect_retry_secs),
            ),
        ] {
            if !(1..=86_400).contains(&v) {
                return Err(config_err(
                    &format!("datastore.options.{key}"),
                    "must be 1 to 86400 seconds",
                ));
            }
        }
        if opts.server_id == Some(0) {
            return Err(config_err(
                "datastore.options.server_id",
                "must be 1 to 4294967295 (0 disables replication)",
            ));
        }
        if let Some(h) = &opts.replication_host
            && (h.is_empty()
                || h.len() > 255
                || !h
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_')))
        {
            return Err(config_err(
                "datastore.options.replication_host",
                "must be a host name or an IP address",
            ));
        }
        Ok(opts)
    }
}

/// The MySQL/MariaDB driver.
pub struct MySqlDriver {
    pub(crate) info: DriverInfo,
    pub(crate) data_dir: PathBuf,
    pub(crate) run_dir: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) config_dir: PathBuf,
    pub(crate) tmp_dir: PathBuf,
    pub(crate) bind_address: IpAddr,
    pub(crate) port: u16,
    pub(crate) bin_dirs: Vec<PathBuf>,
    pub(crate) os_user: Option<String>,
    pub(crate) runtime: Arc<dyn DatastoreRuntime>,
    pub(crate) opts: MySqlOptions,
    pub(crate) connector: Connector,
}

impl fmt::Debug for MySqlDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlDriver")
            .field("data_dir", &self.data_dir)
            .field("run_dir", &self.run_dir)
            .field("state_dir", &self.state_dir)
            .field("config_dir", &self.config_dir)
            .field("tmp_dir", &self.tmp_dir)
            .field("bind_address", &self.bind_address)
            .field("port", &self.port)
            .field("os_user", &self.os_user)
            .field("runtime", &self.runtime.kind())
            .finish_non_exhaustive()
    }
}

pub(crate) fn config_err(key: &str, reason: impl Into<String>) -> Error {
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
    c.user_hosts = true;
    c.user_rename = true;
    c.grants = true;
    c.root = true;
    c.config = true;
    c.replication = true;
    c.backup = true;
    c
}

/// Whether two paths overlap (one contains the other).
fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

impl MySqlDriver {
    /// Builds the driver from `settings`, checking them; never connects.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for unknown or out-of-range options, relative paths, or
    /// state, run or configuration directories inside the data directory (or containing it).
    pub fn new(settings: DriverSettings) -> Result<Self> {
        let opts = MySqlOptions::from_json(&settings.options)?;
        let beside_data = |name: &str| {
            settings
                .data_dir
                .parent()
                .map(|p| p.join(name))
                .ok_or_else(|| {
                    config_err(
                        "datastore.data_dir",
                        "must not be the root directory (configuration and tmpdir go beside it)",
                    )
                })
        };
        let config_dir = match &opts.config_dir {
            Some(d) => d.clone(),
            None => beside_data("conf")?,
        };
        let tmp_dir = match &opts.tmp_dir {
            Some(d) => d.clone(),
            None => beside_data("tmp")?,
        };
        for (key, p) in [
            ("datastore.data_dir", &settings.data_dir),
            ("datastore.run_dir", &settings.run_dir),
            ("state_dir", &settings.state_dir),
            ("datastore.options.config_dir", &config_dir),
            ("datastore.options.tmp_dir", &tmp_dir),
        ] {
            if !p.is_absolute() {
                return Err(config_err(key, "must be an absolute path"));
            }
        }
        for (key, p) in [
            ("state_dir", &settings.state_dir),
            ("datastore.run_dir", &settings.run_dir),
            ("datastore.options.config_dir", &config_dir),
            ("datastore.options.tmp_dir", &tmp_dir),
        ] {
            if overlaps(p, &settings.data_dir) {
                return Err(config_err(
                    key,
                    "must not be inside the data directory (nor contain it)",
                ));
            }
        }
        if overlaps(&config_dir, &settings.state_dir) {
            return Err(config_err(
                "datastore.options.config_dir",
                "must not overlap the state directory (the server reads it)",
            ));
        }
        if settings.port == 0 {
            return Err(config_err("datastore.port", "must not be 0"));
        }
        let connector = Connector::new(
            settings.run_dir.join(SOCKET_FILE),
            settings.state_dir.join(ADMIN_PASSWORD_FILE),
            Duration::from_secs(opts.connect_timeout_secs),
        );
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
            config_dir,
            tmp_dir,
            bind_address: settings.bind_address,
            port: settings.port,
            bin_dirs: settings.bin_dirs,
            os_user: settings.os_user,
            runtime: settings.runtime,
            opts,
            connector,
        })
    }

    /// Directories searched for binaries: the configured ones or the distribution's.
    pub(crate) fn bin_dirs(&self) -> Vec<PathBuf> {
        if self.bin_dirs.is_empty() {
            DEFAULT_BIN_DIRS.iter().map(PathBuf::from).collect()
        } else {
            self.bin_dirs.clone()
        }
    }

    /// Absolute path of the first of `names` found in the binary directories.
    pub(crate) fn program(&self, names: &[&str]) -> Result<PathBuf> {
        let dirs = self.bin_dirs();
        names
            .iter()
            .find_map(|n| find_program(n, &dirs))
            .ok_or_else(|| Error::InvalidState {
                operation: "find MySQL/MariaDB binaries",
                reason: format!(
                    "none of {} found in {}",
                    names.join(", "),
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    /// The base configuration file.
    pub(crate) fn my_cnf(&self) -> PathBuf {
        self.config_dir.join(MY_CNF)
    }

    /// The directory `my.cnf` includes.
    pub(crate) fn conf_d(&self) -> PathBuf {
        self.config_dir.join(CONF_D)
    }

    /// The server's pid file.
    pub(crate) fn pid_file(&self) -> PathBuf {
        self.run_dir.join(PID_FILE)
    }

    /// How the runtime runs the server: `--defaults-file` first, as the server requires.
    pub(crate) fn server_spec(&self) -> Result<ServerSpec> {
        let mut defaults = std::ffi::OsString::from("--defaults-file=");
        defaults.push(self.my_cnf());
        Ok(ServerSpec {
            name: "mysqld".to_owned(),
            program: self.program(SERVER_PROGRAMS)?,
            args: vec![defaults],
            env: Vec::new(),
            run_as: self.os_user.clone(),
            workdir: Some(self.data_dir.clone()),
            log_file: Some(self.run_dir.join(LOG_FILE)),
            pid_file: Some(self.pid_file()),
        })
    }

    /// The server binary.
    pub(crate) fn server_program(&self) -> Result<PathBuf> {
        self.program(SERVER_PROGRAMS)
    }

    /// Whether the account `name` is hidden from (and protected against) Trove's user
    /// operations.
    pub(crate) fn is_hidden_user(&self, name: &str) -> bool {
        name.is_empty()
            || RESERVED_USERS.contains(&name)
            || name.starts_with(REPLICATION_USER_PREFIX)
            || self.opts.ignore_users.iter().any(|u| u == name)
    }

    /// Whether the database `name` is hidden from (and protected against) Trove's operations.
    pub(crate) fn is_hidden_db(&self, name: &str) -> bool {
        RESERVED_DBS.contains(&name)
            || name.starts_with("#mysql50#")
            || self.opts.ignore_dbs.iter().any(|d| d == name)
    }

    /// Start timeout.
    pub(crate) fn start_timeout(&self) -> Duration {
        Duration::from_secs(self.opts.start_timeout_secs)
    }

    /// Stop timeout.
    pub(crate) fn stop_timeout(&self) -> Duration {
        Duration::from_secs(self.opts.stop_timeout_secs)
    }

    /// The host replicas connect to.
    pub(crate) fn replication_host(&self) -> String {
        self.opts
            .replication_host
            .clone()
            .unwrap_or_else(|| self.bind_address.to_string())
    }
}

impl Driver for MySqlDriver {
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
            "mariadb",
            "/srv/mysql/data",
            "/run/mysql",
            "/srv/agent/state",
            3306,
            Arc::new(ProcessRuntime::new()),
        );
        s.os_user = Some("mysql".into());
        s.options = options;
        s
    }

    #[test]
    fn options_defaults_and_unknown_keys() {
        let d = MySqlDriver::new(settings(serde_json::Value::Null)).unwrap();
        assert_eq!(d.opts, MySqlOptions::default());
        assert_eq!(d.config_dir, Path::new("/srv/mysql/conf"));
        assert_eq!(d.tmp_dir, Path::new("/srv/mysql/tmp"));
        assert_eq!(d.my_cnf(), Path::new("/srv/mysql/conf/my.cnf"));
        assert_eq!(d.replication_host(), "127.0.0.1");
        let d = MySqlDriver::new(settings(json!({
            "start_timeout_secs": 5, "ignore_users": ["monitor"], "ignore_dbs": ["ops"],
            "config_dir": "/etc/mysql", "server_id": 7, "replication_host": "db-1.example"
        })))
        .unwrap();
        assert_eq!(d.start_timeout(), Duration::from_secs(5));
        assert!(d.is_hidden_user("monitor") && d.is_hidden_user("os_admin"));
        assert!(d.is_hidden_user("root") && d.is_hidden_user("os_repl_1a2b"));
        assert!(d.is_hidden_user("mariadb.sys") && d.is_hidden_user(""));
        assert!(!d.is_hidden_user("app"));
        assert!(d.is_hidden_db("ops") && d.is_hidden_db("mysql") && d.is_hidden_db("sys"));
        assert!(!d.is_hidden_db("app"));
        assert_eq!(d.replication_host(), "db-1.example");
        let e = MySqlDriver::new(settings(json!({"start_timeout": 5}))).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfig { key, reason }
                if key == "datastore.options" && reason.contains("start_timeout")),
            "{e}"
        );
        for bad in [
            json!({"stop_timeout_secs": 0}),
            json!({"server_id": 0}),
            json!({"replication_host": "a b"}),
        ] {
            assert!(MySqlDriver::new(settings(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_are_checked() {
        let mut s = settings(serde_json::Value::Null);
        s.state_dir = "/srv/mysql/data/state".into();
        assert!(
            matches!(MySqlDriver::new(s), Err(Error::InvalidConfig { key, .. }) if key == "state_dir")
        );
        let mut s = settings(serde_json::Value::Null);
        s.run_dir = "run".into();
        assert!(MySqlDriver::new(s).is_err());
        let s = settings(json!({"config_dir": "/srv/mysql/data/etc"}));
        assert!(MySqlDriver::new(s).is_err());
        let s = settings(json!({"tmp_dir": "/srv/mysql/data/tmp"}));
        assert!(MySqlDriver::new(s).is_err());
        let s = settings(json!({"config_dir": "/srv/agent/state/etc"}));
        assert!(MySqlDriver::new(s).is_err());
        let mut s = settings(serde_json::Value::Null);
        s.data_dir = "/".into();
        assert!(MySqlDriver::new(s).is_err());
    }

    #[test]
    fn capabilities_match_the_scope() {
        let d = MySqlDriver::new(settings(serde_json::Value::Null)).unwrap();
        let c = d.info().capabilities;
        assert!(c.databases && c.database_charset && c.users && c.user_hosts);
        assert!(c.user_rename && c.grants && c.root && c.config && c.replication && c.backup);
        assert!(d.replication().is_some() && d.backup().is_some());
        assert_eq!(d.info().managers, ["mysql", "mariadb"]);
    }

    #[test]
    fn server_spec_runs_as_os_user_with_defaults_file_first() {
        let mut s = settings(serde_json::Value::Null);
        let bin = tempfile::tempdir().unwrap();
        std::fs::write(bin.path().join("mysqld"), b"").unwrap();
        s.bin_dirs = vec![bin.path().to_owned()];
        let d = MySqlDriver::new(s).unwrap();
        let spec = d.server_spec().unwrap();
        assert_eq!(spec.program, bin.path().join("mysqld"));
        assert_eq!(spec.args, ["--defaults-file=/srv/mysql/conf/my.cnf"]);
        assert_eq!(spec.run_as.as_deref(), Some("mysql"));
        assert_eq!(spec.pid_file.unwrap(), Path::new("/run/mysql/mysqld.pid"));
        std::fs::write(bin.path().join("mariadbd"), b"").unwrap();
        assert_eq!(d.server_program().unwrap(), bin.path().join("mariadbd"));
        assert!(matches!(
            d.program(&["mariadb-install-db"]),
            Err(Error::InvalidState { .. })
        ));
    }
}

//! # guest-agent-mysql
//!
//! The MySQL/MariaDB driver of guest-agent: it initialises a data directory
//! (`mariadb-install-db`, or `mysqld --initialize-insecure` where only MySQL is installed),
//! writes a base `my.cnf` sized from the instance memory, runs the server through the agent's
//! [`DatastoreRuntime`](guest_agent_api::runtime::DatastoreRuntime), and administers databases,
//! users, grants, root, configuration overrides and GTID replication with Trove's semantics.
//!
//! The flavour (MariaDB, MySQL, Percona) and version are read from the server with
//! `SELECT VERSION(), @@version_comment` on the first session and choose the SQL where the
//! dialects differ (`CHANGE MASTER` / `CHANGE REPLICATION SOURCE`, `gtid_binlog_pos` /
//! `gtid_executed`, `MASTER_GTID_WAIT` / `WAIT_FOR_EXECUTED_GTID_SET` ...).
//!
//! The driver talks to its own server over the Unix socket in the run directory as
//! [`ADMIN_USER`]`@localhost`, whose password is generated at prepare time and kept in a private
//! file in the state directory ([`ADMIN_PASSWORD_FILE`]).
//!
//! ```no_run
//! let mut registry = guest_agent_api::Registry::new();
//! registry.register(guest_agent_mysql::factory()).unwrap();
//! assert_eq!(registry.managers(), ["mariadb", "mysql"]);
//! ```

mod admin;
mod backup;
mod config;
mod driver;
mod error;
mod health;
mod lifecycle;
mod position;
mod replication;
pub mod sql;

use std::sync::Arc;

use futures::future::BoxFuture;
use guest_agent_api::{Driver, DriverFactory, DriverSettings, Result};

pub use config::{ParamKind, ParamRule, RULES};
pub use driver::{MySqlDriver, MySqlOptions};
pub use sql::{Flavor, ServerVersion};

/// The driver's name, as in [`guest_agent_api::Error::NotSupported`].
pub const DRIVER_NAME: &str = "mysql";

/// Trove manager names this driver serves.
pub const MANAGERS: &[&str] = &["mysql", "mariadb"];

/// The administrative account the driver connects as (always `@localhost`, on the socket).
pub const ADMIN_USER: &str = "os_admin";

/// The account Trove's root operations manage (`root@'%'`).
pub const ROOT_USER: &str = "root";

/// Prefix of the replication accounts the driver creates (hidden from user listings).
pub const REPLICATION_USER_PREFIX: &str = "os_repl_";

/// File in the state directory holding the administrative password (mode 0600).
pub const ADMIN_PASSWORD_FILE: &str = "mysql-admin.password";

/// Name of the base configuration file in the configuration directory.
pub const MY_CNF: &str = "my.cnf";

/// Directory (under the configuration directory) included by `my.cnf` with `!includedir`.
pub const CONF_D: &str = "conf.d";

/// The managed overrides file in [`CONF_D`], rewritten as a whole by `apply`.
pub const OVERRIDES_FILE: &str = "50-guest-agent-overrides.cnf";

/// The managed replication-role file in [`CONF_D`] (read-only on replicas), read after the
/// overrides so that a user override cannot make a replica writable.
pub const ROLE_FILE: &str = "60-guest-agent-role.cnf";

/// The factory the agent registers: builds a [`MySqlDriver`] without connecting.
pub fn factory() -> DriverFactory {
    DriverFactory {
        managers: MANAGERS,
        build,
    }
}

fn build(settings: DriverSettings) -> BoxFuture<'static, Result<Arc<dyn Driver>>> {
    Box::pin(async move {
        let driver: Arc<dyn Driver> = Arc::new(MySqlDriver::new(settings)?);
        Ok(driver)
    })
}

//! # guest-agent-postgres
//!
//! The PostgreSQL driver of guest-agent: it initialises a cluster with `initdb`, writes a
//! managed configuration sized from the instance's memory, runs the server through the
//! agent's [`DatastoreRuntime`](guest_agent_api::runtime::DatastoreRuntime), administers
//! databases, users, grants and the `root` superuser with Trove's semantics, applies
//! configuration groups validated against rules shipped with the driver, and runs physical
//! streaming replication (slots, `pg_basebackup`, `pg_promote`, `pg_rewind`).
//!
//! The driver talks to its own server over the Unix socket in the run directory as the
//! `postgres` role, admitted by the peer identity of the agent's OS account (mapped in
//! `pg_ident.conf`), so it can administer a replica whose catalog came from its primary. The
//! role's password, generated at prepare time and kept in a private file in the state
//! directory ([`ADMIN_PASSWORD_FILE`]), is what TCP logins need. Passwords of users are sent
//! to the server only as SCRAM-SHA-256 verifiers computed here, so the plaintext never
//! reaches the server or its logs.
//!
//! ```no_run
//! let mut registry = guest_agent_api::Registry::new();
//! registry.register(guest_agent_postgres::factory()).unwrap();
//! assert_eq!(registry.managers(), ["postgresql"]);
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
mod rules;
pub mod sql;

use std::sync::Arc;

use futures::future::BoxFuture;
use guest_agent_api::{Driver, DriverFactory, DriverSettings, Result};

pub use driver::{PgDriver, PgOptions};

/// The driver's name, as in [`guest_agent_api::Error::NotSupported`].
pub const DRIVER_NAME: &str = "postgresql";

/// Trove manager names this driver serves.
pub const MANAGERS: &[&str] = &["postgresql"];

/// The administrative role the driver connects as.
pub const ADMIN_USER: &str = "postgres";

/// The role Trove's root operations manage.
pub const ROOT_USER: &str = "root";

/// File in the state directory holding the administrative password (mode 0600).
pub const ADMIN_PASSWORD_FILE: &str = "postgres-admin.password";

/// Name of the managed configuration file the driver writes into the data directory and
/// includes from `postgresql.conf`.
pub const MANAGED_CONF_FILE: &str = "guest-agent.conf";

/// The tunables of the control plane's base configuration, included by [`MANAGED_CONF_FILE`].
pub const BASE_CONF_FILE: &str = "guest-agent-base.conf";

/// The managed override set of a configuration group, included after [`BASE_CONF_FILE`].
pub const OVERRIDES_CONF_FILE: &str = "guest-agent-overrides.conf";

/// Settings of the replication role (replica connection, read-only primary), included last.
pub const ROLE_CONF_FILE: &str = "guest-agent-role.conf";

/// The role replicas connect as (and `pg_rewind` reads the source with).
pub const REPLICATION_USER: &str = "replicator";

/// File in the state directory holding the replication role's password (mode 0600).
pub const REPLICATION_PASSWORD_FILE: &str = "postgres-replication.password";

/// The factory the agent registers: builds a [`PgDriver`] without connecting.
pub fn factory() -> DriverFactory {
    DriverFactory {
        managers: MANAGERS,
        build,
    }
}

fn build(settings: DriverSettings) -> BoxFuture<'static, Result<Arc<dyn Driver>>> {
    Box::pin(async move {
        let driver: Arc<dyn Driver> = Arc::new(PgDriver::new(settings)?);
        Ok(driver)
    })
}

//! The registry: Trove manager names (`mysql`, `mariadb`, `postgresql`) to driver factories.
//!
//! Factories are registered explicitly by the agent; there is no link-time magic.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::driver::Driver;
use crate::runtime::DatastoreRuntime;
use crate::{Error, Result};

/// Everything a driver is built from. Building never connects: the server may not exist yet.
#[derive(Clone)]
pub struct DriverSettings {
    /// The manager name the driver was chosen by.
    pub manager: String,
    /// Datastore version the control plane expects, if known.
    pub version: Option<String>,
    /// Data directory of the server.
    pub data_dir: PathBuf,
    /// Directory for sockets, pid files and logs of the server.
    pub run_dir: PathBuf,
    /// Private (0700) persistent directory for the driver's own state, such as the
    /// administrative credentials. Never inside the data directory, so backups do not carry it.
    pub state_dir: PathBuf,
    /// Address the server listens on.
    pub bind_address: IpAddr,
    /// Port the server listens on.
    pub port: u16,
    /// Directories searched for the server's binaries, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// OS user the server runs as (when the agent runs as root).
    pub os_user: Option<String>,
    /// How the server process is run.
    pub runtime: Arc<dyn DatastoreRuntime>,
    /// Driver-specific options (the `[datastore.options]` table).
    pub options: serde_json::Value,
}

impl fmt::Debug for DriverSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverSettings")
            .field("manager", &self.manager)
            .field("version", &self.version)
            .field("data_dir", &self.data_dir)
            .field("run_dir", &self.run_dir)
            .field("state_dir", &self.state_dir)
            .field("bind_address", &self.bind_address)
            .field("port", &self.port)
            .field("bin_dirs", &self.bin_dirs)
            .field("os_user", &self.os_user)
            .field("runtime", &self.runtime.kind())
            .finish_non_exhaustive()
    }
}

impl DriverSettings {
    /// Settings with loopback, the given directories and port, no options.
    pub fn new(
        manager: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        run_dir: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
        port: u16,
        runtime: Arc<dyn DatastoreRuntime>,
    ) -> Self {
        Self {
            manager: manager.into(),
            version: None,
            data_dir: data_dir.into(),
            run_dir: run_dir.into(),
            state_dir: state_dir.into(),
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
            bin_dirs: Vec::new(),
            os_user: None,
            runtime,
            options: serde_json::Value::Null,
        }
    }
}

/// Builds a driver from settings.
pub type BuildFn = fn(DriverSettings) -> BoxFuture<'static, Result<Arc<dyn Driver>>>;

/// One driver's entry in the registry.
#[derive(Clone, Copy)]
pub struct DriverFactory {
    /// Trove manager names it serves.
    pub managers: &'static [&'static str],
    /// Its constructor.
    pub build: BuildFn,
}

impl fmt::Debug for DriverFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverFactory")
            .field("managers", &self.managers)
            .finish_non_exhaustive()
    }
}

/// Manager name to factory.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    factories: Vec<DriverFactory>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a factory. A manager name registered twice is a programming error, reported here.
    pub fn register(&mut self, factory: DriverFactory) -> Result<&mut Self> {
        if let Some(dup) = factory.managers.iter().find(|m| self.lookup(m).is_some()) {
            return Err(Error::Internal(format!(
                "datastore manager '{dup}' registered twice"
            )));
        }
        self.factories.push(factory);
        Ok(self)
    }

    fn lookup(&self, manager: &str) -> Option<&DriverFactory> {
        self.factories
            .iter()
            .find(|f| f.managers.contains(&manager))
    }

    /// Every registered manager name, sorted.
    pub fn managers(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self
            .factories
            .iter()
            .flat_map(|f| f.managers.iter().copied())
            .collect();
        v.sort_unstable();
        v
    }

    /// The factory for `manager`, or an error listing the known names.
    pub fn get(&self, manager: &str) -> Result<&DriverFactory> {
        self.lookup(manager).ok_or_else(|| Error::InvalidConfig {
            key: "datastore.manager".to_owned(),
            reason: format!(
                "unknown datastore manager '{manager}'; known: {}",
                self.managers().join(", ")
            ),
        })
    }

    /// Builds the driver for `settings.manager`.
    pub async fn build(&self, settings: DriverSettings) -> Result<Arc<dyn Driver>> {
        let factory = self.get(&settings.manager)?;
        (factory.build)(settings).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never(_: DriverSettings) -> BoxFuture<'static, Result<Arc<dyn Driver>>> {
        Box::pin(async { Err(Error::Internal("not built in this test".into())) })
    }

    #[test]
    fn unknown_manager_lists_known() {
        let mut r = Registry::new();
        r.register(DriverFactory {
            managers: &["postgresql"],
            build: never,
        })
        .unwrap();
        r.register(DriverFactory {
            managers: &["mysql", "mariadb"],
            build: never,
        })
        .unwrap();
        let e = r.get("redis").unwrap_err().to_string();
        assert!(
            e.contains("'redis'") && e.contains("mariadb, mysql, postgresql"),
            "{e}"
        );
        assert!(
            r.register(DriverFactory {
                managers: &["mysql"],
                build: never
            })
            .is_err()
        );
        assert_eq!(r.get("mariadb").unwrap().managers, &["mysql", "mariadb"]);
    }
}

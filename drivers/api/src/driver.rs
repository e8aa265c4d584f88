//! The entry trait a datastore driver implements.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::admin::Admin;
use crate::backup::BackupHooks;
use crate::capability::Capabilities;
use crate::config::ConfigApply;
use crate::health::Health;
use crate::lifecycle::Lifecycle;
use crate::replication::Replication;

/// What a driver is and can do.
#[derive(Debug, Clone, Serialize)]
pub struct DriverInfo {
    /// Driver name, also the `driver` of [`crate::Error::NotSupported`] (`postgresql`).
    pub name: &'static str,
    /// Trove manager names this driver serves.
    pub managers: &'static [&'static str],
    /// Supported operations.
    pub capabilities: Capabilities,
    /// The data directory (for file system statistics).
    pub data_dir: PathBuf,
}

/// A datastore driver: one entry point handing out its operation groups.
///
/// Optional groups are `Option`s; fine-grained support is in [`DriverInfo::capabilities`], and
/// an unsupported operation returns [`crate::Error::NotSupported`].
pub trait Driver: Send + Sync + fmt::Debug + 'static {
    /// Name, managers, capabilities.
    fn info(&self) -> &DriverInfo;
    /// Prepare, start, stop, restart, status.
    fn lifecycle(&self) -> &dyn Lifecycle;
    /// Databases, users, grants, root.
    fn admin(&self) -> &dyn Admin;
    /// Configuration overrides.
    fn config(&self) -> &dyn ConfigApply;
    /// Health probes and position.
    fn health(&self) -> &dyn Health;
    /// Replication, when supported.
    fn replication(&self) -> Option<&dyn Replication>;
    /// Backup hooks, when supported.
    fn backup(&self) -> Option<&dyn BackupHooks>;
}

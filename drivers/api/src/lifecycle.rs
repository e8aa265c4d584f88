//! Lifecycle group: prepare, start, stop, restart and status of the datastore server.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::admin::{DatabaseSpec, UserSpec};
use crate::config::Overrides;
use crate::ident::Password;
use crate::{OpContext, Result};

/// What `prepare` is asked to build (Trove's `prepare` arguments, validated).
#[derive(Debug, Clone, Default)]
pub struct PrepareSpec {
    /// Memory of the instance, for sizing the base configuration.
    pub memory_mb: Option<u64>,
    /// Databases to create once the server runs.
    pub databases: Vec<DatabaseSpec>,
    /// Users to create once the server runs.
    pub users: Vec<UserSpec>,
    /// When set, root (superuser) is enabled with this password.
    pub root_password: Option<Password>,
    /// A full base configuration file to use instead of the driver's template.
    pub config_contents: Option<String>,
    /// Configuration overrides to apply on top.
    pub overrides: Option<Overrides>,
    /// The datastore version the control plane expects.
    pub ds_version: Option<String>,
}

/// How hard to stop the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopMode {
    /// Wait for clients to disconnect.
    Smart,
    /// Roll back open transactions and stop cleanly (the default).
    #[default]
    Fast,
    /// Stop at once; the server recovers on the next start.
    Immediate,
}

/// Datastore status as Trove's control plane knows it. The wire form is the description
/// string (`healthy`, `failed to spawn` ...), which is what heartbeats carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DatastoreStatus {
    /// Nothing prepared yet.
    New,
    /// Prepare is running.
    Building,
    /// The server process runs but is not (yet) answering.
    Running,
    /// The server answers queries.
    Healthy,
    /// The server is stopped on purpose.
    Shutdown,
    /// The server stopped without being asked to.
    Crashed,
    /// Prepare failed.
    FailedToSpawn,
    /// Configuration changes wait for a restart.
    RestartRequired,
    /// A restart is in progress.
    Restarting,
    /// Promotion of a replica is in progress.
    PromotingReplica,
    /// The replica source is being ejected.
    EjectingReplicaSource,
    /// Status could not be determined.
    Unknown,
    /// The agent itself is in error.
    GuestAgentError,
}

impl DatastoreStatus {
    /// Trove's description string, the form that goes on the wire.
    pub fn description(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Building => "building",
            Self::Running => "running",
            Self::Healthy => "healthy",
            Self::Shutdown => "shutdown",
            Self::Crashed => "crashed",
            Self::FailedToSpawn => "failed to spawn",
            Self::RestartRequired => "restart required",
            Self::Restarting => "restarting",
            Self::PromotingReplica => "promoting replica",
            Self::EjectingReplicaSource => "ejecting replica source",
            Self::Unknown => "unknown",
            Self::GuestAgentError => "guestagent error",
        }
    }

    /// Every status, for tables and tests.
    pub const ALL: [DatastoreStatus; 13] = [
        Self::New,
        Self::Building,
        Self::Running,
        Self::Healthy,
        Self::Shutdown,
        Self::Crashed,
        Self::FailedToSpawn,
        Self::RestartRequired,
        Self::Restarting,
        Self::PromotingReplica,
        Self::EjectingReplicaSource,
        Self::Unknown,
        Self::GuestAgentError,
    ];

    /// Parses a description string.
    pub fn from_description(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.description() == s)
    }
}

impl fmt::Display for DatastoreStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

impl Serialize for DatastoreStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.description())
    }
}

/// Lifecycle of the datastore server.
#[async_trait]
pub trait Lifecycle: Send + Sync {
    /// Initialises the data directory, writes the configuration, starts the server, sets the
    /// administrative credentials and creates the requested databases and users.
    ///
    /// # Contract
    /// Not idempotent across different specs; calling it on an initialised data directory
    /// fails with [`crate::Error::InvalidState`] and changes nothing. On cancellation the server
    /// may be left stopped; the data directory is never half-deleted.
    async fn prepare(&self, ctx: &OpContext, spec: &PrepareSpec) -> Result<()>;

    /// Starts the server and waits until it answers. Idempotent: a running server is left alone.
    async fn start(&self, ctx: &OpContext) -> Result<()>;

    /// Stops the server. Idempotent: a stopped server is left alone.
    async fn stop(&self, ctx: &OpContext, mode: StopMode) -> Result<()>;

    /// Stops (fast) and starts the server, waiting until it answers.
    async fn restart(&self, ctx: &OpContext) -> Result<()>;

    /// The server's status right now. Never fails: an unreachable server is a status.
    async fn status(&self, ctx: &OpContext) -> DatastoreStatus;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_roundtrip() {
        for st in DatastoreStatus::ALL {
            assert_eq!(
                DatastoreStatus::from_description(st.description()),
                Some(st)
            );
        }
        assert_eq!(
            DatastoreStatus::FailedToSpawn.to_string(),
            "failed to spawn"
        );
        assert_eq!(DatastoreStatus::from_description("upgrading"), None);
    }
}

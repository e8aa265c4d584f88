//! Health group: liveness, readiness, details and the transaction position.

use async_trait::async_trait;
use serde::Serialize;

use crate::position::Position;
use crate::{OpContext, Result};

/// Replication health as seen from this server.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReplicationHealth {
    /// `primary`, `replica` or `standalone`.
    pub role: String,
    /// Bytes (LSN) or transactions behind the source, when known.
    pub lag_bytes: Option<u64>,
    /// Seconds behind the source, when known.
    pub lag_seconds: Option<f64>,
    /// Receiver / IO thread state.
    pub receiver_state: Option<String>,
    /// Last replication error text.
    pub last_error: Option<String>,
    /// What a replica has received from its source (PostgreSQL: the receive LSN).
    pub received: Option<Position>,
    /// What a replica has applied (PostgreSQL: the replay LSN).
    pub applied: Option<Position>,
}

/// Disk use of the data directory's file system.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DiskUsage {
    /// Bytes in the file system.
    pub total_bytes: u64,
    /// Bytes used.
    pub used_bytes: u64,
    /// Bytes available to unprivileged users.
    pub available_bytes: u64,
}

/// Details for operators and the control plane.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HealthDetails {
    /// Server version string.
    pub version: Option<String>,
    /// Seconds since the server started.
    pub uptime_seconds: Option<u64>,
    /// Open client connections.
    pub connections: Option<u64>,
    /// Connection limit.
    pub max_connections: Option<u64>,
    /// Replication state.
    pub replication: Option<ReplicationHealth>,
    /// Data directory disk use.
    pub disk: Option<DiskUsage>,
}

/// Health probes.
#[async_trait]
pub trait Health: Send + Sync {
    /// The server process is up (it may not accept queries yet).
    async fn liveness(&self, ctx: &OpContext) -> Result<()>;

    /// The server accepts queries.
    async fn readiness(&self, ctx: &OpContext) -> Result<()>;

    /// Details; fields the driver cannot tell stay `None`.
    async fn details(&self, ctx: &OpContext) -> Result<HealthDetails>;

    /// The latest transaction position (LSN or GTID set).
    async fn position(&self, ctx: &OpContext) -> Result<Position>;

    /// Datastore-specific figures for `get_filesystem_stats`'s `mgr_extra_info`.
    async fn filesystem_extra(
        &self,
        ctx: &OpContext,
    ) -> Result<serde_json::Map<String, serde_json::Value>>;
}

//! Replication group: snapshot for a new replica, attach, detach, promote, demote, read-only,
//! and waiting for a position.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::ident::{Password, UserName};
use crate::position::Position;
use crate::{OpContext, Result};

/// Where a replica connects and as whom.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicationSource {
    /// Host or address of the source.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Replication user.
    pub user: UserName,
    /// Its password.
    pub password: Password,
    /// Datastore-specific extras (slot name, channel ...).
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// What a primary hands out for a new replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaSnapshot {
    /// How to connect to the primary.
    pub source: ReplicationSource,
    /// Position the snapshot is consistent at, if known.
    pub position: Option<Position>,
    /// Datastore-specific extras (backup location ...).
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Replication control.
#[async_trait]
pub trait Replication: Send + Sync {
    /// Prepares this server (a primary) to feed a new replica: replication user, slot, and the
    /// position the replica starts from.
    async fn snapshot_for_replica(
        &self,
        ctx: &OpContext,
        replica_id: &str,
    ) -> Result<ReplicaSnapshot>;

    /// Makes this server a replica of `source` and starts streaming.
    async fn attach(&self, ctx: &OpContext, source: &ReplicationSource) -> Result<()>;

    /// Stops replicating; the server keeps its data and becomes standalone.
    async fn detach(&self, ctx: &OpContext, for_failover: bool) -> Result<()>;

    /// Promotes this replica to a writable primary.
    async fn promote(&self, ctx: &OpContext) -> Result<()>;

    /// Turns this primary into a replica-to-be (read-only, ready for `attach`).
    async fn demote(&self, ctx: &OpContext) -> Result<()>;

    /// Sets or clears read-only mode.
    async fn set_read_only(&self, ctx: &OpContext, read_only: bool) -> Result<()>;

    /// How a replica should connect to this server.
    async fn replica_context(&self, ctx: &OpContext) -> Result<ReplicationSource>;

    /// Waits until this server has applied `target`; [`crate::Error::Timeout`] after `timeout`.
    async fn wait_for(&self, ctx: &OpContext, target: &Position, timeout: Duration) -> Result<()>;
}

//! Transports: how operations arrive (inbound, [`Transport`]) and how the agent reports to the
//! control plane (outbound, [`ControlPlane`]). The dispatcher knows no transport.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use guest_agent_api::DatastoreStatus;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::rpc::Dispatcher;

pub mod http;

/// A transport failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// TLS material is missing or invalid, or the setup is unsafe.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// Sending to the control plane failed.
    #[error("control plane unreachable: {0}")]
    Unreachable(String),
    /// The control plane answered with an error.
    #[error("control plane rejected the report: {0}")]
    Rejected(String),
    /// An HTTP request made by [`http::HttpClient`] got no answer (connection, TLS or
    /// timeout failure) or an unreadable one.
    #[error("request to {url} failed: {reason}")]
    Request {
        /// The URL requested.
        url: String,
        /// Why, with the underlying causes.
        reason: String,
    },
    /// Other I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        source: std::io::Error,
    },
}

/// An inbound transport serving the dispatcher until `shutdown` fires, then draining.
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug {
    /// `http` or `amqp`.
    fn kind(&self) -> &'static str;
    /// Serves until `shutdown`; stops accepting then and returns once in-flight requests
    /// have been answered.
    async fn serve(
        &self,
        dispatcher: Arc<Dispatcher>,
        shutdown: CancellationToken,
    ) -> Result<(), TransportError>;
}

/// One heartbeat, as Trove's conductor `heartbeat` cast carries it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Heartbeat {
    /// Instance (guest) id.
    pub instance_id: String,
    /// `{"service_status": "<description>"}`.
    pub payload: HeartbeatPayload,
    /// Float seconds since the epoch with microseconds; the conductor drops stale ones.
    pub sent: f64,
}

/// The heartbeat payload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeartbeatPayload {
    /// Status description string.
    pub service_status: DatastoreStatus,
}

/// A backup's state, as Trove's `DBBackup.state` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum BackupState {
    /// Running.
    Building,
    /// Stored and committed.
    Completed,
    /// Failed; nothing of it is left in the store.
    Failed,
}

/// One `update_backup` report, as Trove's conductor takes it: `instance_id`, `backup_id`,
/// `sent` and the backup's fields flattened beside them (fields that are `None` are left out,
/// so the conductor leaves those columns alone).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupUpdate {
    /// Instance (guest) id.
    pub instance_id: String,
    /// Trove's backup id.
    pub backup_id: String,
    /// Float seconds since the epoch; the conductor drops reports older than the last one.
    pub sent: f64,
    /// `BUILDING`, `COMPLETED` or `FAILED`.
    pub state: BackupState,
    /// Stored size in GB (so far, while building).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<f64>,
    /// `full` or `incremental`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_type: Option<String>,
    /// SHA-256 of the stored object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Where the backup is (its manifest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Whether it succeeded (on the final report).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    /// Why it failed (extension; Trove ignores unknown fields).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Outbound reports to the control plane.
#[async_trait]
pub trait ControlPlane: Send + Sync + fmt::Debug {
    /// Sends one heartbeat.
    async fn heartbeat(&self, beat: &Heartbeat) -> Result<(), TransportError>;

    /// Sends one backup progress or outcome report (Trove's `update_backup`).
    async fn update_backup(&self, update: &BackupUpdate) -> Result<(), TransportError>;
}

/// A control plane that only logs (the embedded default): the last heartbeat is also
/// visible at `GET /v1/status`.
#[derive(Debug, Default)]
pub struct LogControlPlane;

#[async_trait]
impl ControlPlane for LogControlPlane {
    async fn heartbeat(&self, beat: &Heartbeat) -> Result<(), TransportError> {
        tracing::debug!(status = %beat.payload.service_status, "Heartbeat.");
        Ok(())
    }

    async fn update_backup(&self, u: &BackupUpdate) -> Result<(), TransportError> {
        tracing::info!(
            backup_id = %u.backup_id, state = ?u.state, size_gb = u.size,
            location = u.location.as_deref().unwrap_or("-"), "Backup update."
        );
        Ok(())
    }
}

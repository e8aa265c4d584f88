//! The heartbeat loop: a reconcile loop that reads the status, reports it, and sleeps until
//! the next interval or until the status may have changed (prepare began or ended, a restart,
//! a stop), whichever comes first. Failed reports back off (1 s doubling, capped at the
//! interval) without ever stopping the loop.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::rpc::Dispatcher;
use crate::transport::{ControlPlane, Heartbeat, HeartbeatPayload};

/// Runs until `shutdown` fires, then sends one last heartbeat.
pub async fn run(
    dispatcher: Arc<Dispatcher>,
    control_plane: Arc<dyn ControlPlane>,
    instance_id: String,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut last = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        let status = dispatcher.current_status().await;
        dispatcher.metrics().set_status(status);
        if last != Some(status) {
            tracing::info!(%status, "Datastore status.");
            last = Some(status);
        }
        let beat = Heartbeat {
            instance_id: instance_id.clone(),
            payload: HeartbeatPayload {
                service_status: status,
            },
            sent: now(),
        };
        let next = match control_plane.heartbeat(&beat).await {
            Ok(()) => {
                dispatcher.metrics().heartbeat(true);
                backoff = Duration::from_secs(1);
                interval
            }
            Err(e) => {
                dispatcher.metrics().heartbeat(false);
                tracing::warn!(error = %e, retry_in = ?backoff, "Heartbeat failed.");
                let wait = backoff.min(interval);
                backoff = (backoff * 2).min(interval);
                wait
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(next) => {}
            () = dispatcher.state().changed.notified() => {}
        }
    }
}

/// Seconds since the epoch with microseconds, like Trove's `utcnow_ts(microsecond=True)`.
pub(crate) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

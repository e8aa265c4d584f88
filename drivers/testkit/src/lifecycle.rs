//! Conformance functions for the `lifecycle` group.

use crate::Harness;

/// `status_is_healthy_when_running`.
pub async fn status_is_healthy_when_running(h: &Harness) {
    let _ = h;
    unimplemented!("status_is_healthy_when_running");
}

/// `stop_then_status_shutdown_and_start_again`.
pub async fn stop_then_status_shutdown_and_start_again(h: &Harness) {
    let _ = h;
    unimplemented!("stop_then_status_shutdown_and_start_again");
}

/// `stop_is_idempotent`.
pub async fn stop_is_idempotent(h: &Harness) {
    let _ = h;
    unimplemented!("stop_is_idempotent");
}

/// `restart_keeps_data`.
pub async fn restart_keeps_data(h: &Harness) {
    let _ = h;
    unimplemented!("restart_keeps_data");
}

/// `crash_is_reported`.
pub async fn crash_is_reported(h: &Harness) {
    let _ = h;
    unimplemented!("crash_is_reported");
}

/// `prepare_on_initialised_datadir_is_refused`.
pub async fn prepare_on_initialised_datadir_is_refused(h: &Harness) {
    let _ = h;
    unimplemented!("prepare_on_initialised_datadir_is_refused");
}

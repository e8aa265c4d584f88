//! Conformance functions for the lifecycle group: status, stop, start, restart, crash
//! detection and the refusal to prepare twice.
//!
//! Whether the server is really up or down is checked with the probe (a committed write),
//! not only with the driver's `status`.

use guest_agent_api::admin::DatabaseSpec;
use guest_agent_api::lifecycle::PrepareSpec;
use guest_agent_api::{DatastoreStatus, StopMode};
use tokio::time::{Instant, sleep};

use crate::Harness;
use crate::check::{POLL_INTERVAL, POLL_TIMEOUT, caps, fresh_db, ok, within};

/// The driver's status right now.
pub async fn status(h: &Harness) -> DatastoreStatus {
    let ctx = h.ctx("status");
    within("status", h.driver.lifecycle().status(&ctx)).await
}

async fn stop(h: &Harness, mode: StopMode) {
    let ctx = h.ctx("stop");
    ok(
        &format!("stop({mode:?})"),
        within("stop", h.driver.lifecycle().stop(&ctx, mode)).await,
    );
}

async fn start(h: &Harness) {
    let ctx = h.ctx("start");
    ok(
        "start",
        within("start", h.driver.lifecycle().start(&ctx)).await,
    );
}

/// Asserts the server is up: status `Healthy`, readiness passes, the probe commits a write.
pub async fn assert_up(h: &Harness, when: &str) {
    assert_eq!(status(h).await, DatastoreStatus::Healthy, "status {when}");
    let ctx = h.ctx("readiness");
    ok(
        &format!("readiness {when}"),
        within("readiness", h.driver.health().readiness(&ctx)).await,
    );
    if let Err(e) = h.probe.write_something().await {
        panic!("the probe cannot write {when}: {e}");
    }
}

/// Asserts the server is down: readiness fails and the probe cannot write.
async fn assert_down(h: &Harness, when: &str) {
    let ctx = h.ctx("readiness");
    let r = within("readiness", h.driver.health().readiness(&ctx)).await;
    assert!(r.is_err(), "readiness passes {when}");
    assert!(
        h.probe.write_something().await.is_err(),
        "the probe can still write {when}"
    );
}

/// A database created through the driver when it can, for checking that data survives.
async fn marker_db(h: &Harness) -> Option<String> {
    if caps(h).databases {
        Some(fresh_db(h).await.as_str().to_owned())
    } else {
        None
    }
}

async fn assert_marker(h: &Harness, db: Option<&str>, when: &str) {
    if let Some(db) = db {
        assert!(
            h.probe.database_exists(db).await,
            "database {db} is gone {when}"
        );
    }
}

/// A prepared, running server reports `Healthy` and takes writes.
pub async fn status_is_healthy_when_running(h: &Harness) {
    assert_up(h, "on a running server").await;
}

/// `stop` gives `Shutdown` and a server that does not answer; `start` brings it back with
/// its data.
pub async fn stop_then_status_shutdown_and_start_again(h: &Harness) {
    let db = marker_db(h).await;
    stop(h, StopMode::Fast).await;
    assert_eq!(
        status(h).await,
        DatastoreStatus::Shutdown,
        "status after stop"
    );
    assert_down(h, "after stop").await;
    start(h).await;
    assert_up(h, "after start").await;
    assert_marker(h, db.as_deref(), "after stop and start").await;
}

/// Stopping a stopped server and starting a running one are no-ops, not errors.
pub async fn stop_is_idempotent(h: &Harness) {
    let db = marker_db(h).await;
    stop(h, StopMode::Fast).await;
    stop(h, StopMode::Fast).await;
    stop(h, StopMode::Immediate).await;
    assert_eq!(
        status(h).await,
        DatastoreStatus::Shutdown,
        "status after repeated stop"
    );
    assert_down(h, "after repeated stop").await;
    start(h).await;
    start(h).await;
    assert_up(h, "after repeated start").await;
    assert_marker(h, db.as_deref(), "after repeated stop and start").await;
}

/// `restart` leaves a healthy server with its data.
pub async fn restart_keeps_data(h: &Harness) {
    let db = marker_db(h).await;
    if let Err(e) = h.probe.write_something().await {
        panic!("the probe cannot write before restart: {e}");
    }
    let ctx = h.ctx("restart");
    ok(
        "restart",
        within("restart", h.driver.lifecycle().restart(&ctx)).await,
    );
    assert_up(h, "after restart").await;
    assert_marker(h, db.as_deref(), "after restart").await;
}

/// A server killed behind the driver's back is reported `Crashed` (not `Shutdown`), and
/// `start` recovers it.
pub async fn crash_is_reported(h: &Harness) {
    let db = marker_db(h).await;
    if let Err(e) = h.probe.kill_server().await {
        panic!("the probe could not kill the server: {e}");
    }
    let deadline = Instant::now() + POLL_TIMEOUT;
    let mut last = status(h).await;
    while last != DatastoreStatus::Crashed && Instant::now() < deadline {
        sleep(POLL_INTERVAL).await;
        last = status(h).await;
    }
    assert_eq!(
        last,
        DatastoreStatus::Crashed,
        "status after SIGKILL must become Crashed within {POLL_TIMEOUT:?}"
    );
    let ctx = h.ctx("liveness");
    let r = within("liveness", h.driver.health().liveness(&ctx)).await;
    assert!(r.is_err(), "liveness passes on a killed server");
    start(h).await;
    assert_up(h, "after start following a crash").await;
    assert_marker(h, db.as_deref(), "after crash recovery").await;
}

/// A second `prepare` on an initialised data directory fails with `InvalidState` and changes
/// nothing.
pub async fn prepare_on_initialised_datadir_is_refused(h: &Harness) {
    let db = marker_db(h).await;
    let new_db = h.names.db_name();
    let spec = PrepareSpec {
        databases: if caps(h).databases {
            vec![DatabaseSpec::named(new_db.clone())]
        } else {
            Vec::new()
        },
        ..PrepareSpec::default()
    };
    let ctx = h.ctx("prepare");
    let r = within("prepare", h.driver.lifecycle().prepare(&ctx, &spec)).await;
    match r {
        Err(guest_agent_api::Error::InvalidState { .. }) => {}
        other => panic!("a second prepare must fail with InvalidState, got {other:?}"),
    }
    assert_up(h, "after a refused prepare").await;
    assert_marker(h, db.as_deref(), "after a refused prepare").await;
    assert!(
        !h.probe.database_exists(new_db.as_str()).await,
        "a refused prepare created database {new_db}"
    );
}

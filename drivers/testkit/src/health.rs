//! Conformance functions for the health group: probes, details and the transaction position.

use guest_agent_api::Position;
use guest_agent_api::position::{GtidSet, Lsn, PositionError};

use crate::Harness;
use crate::check::{POLL_INTERVAL, POLL_TIMEOUT, ok, within};
use tokio::time::{Instant, sleep};

async fn position(h: &Harness) -> Position {
    let ctx = h.ctx("position");
    ok(
        "position",
        within("position", h.driver.health().position(&ctx)).await,
    )
}

/// Liveness and readiness pass on a running server.
pub async fn liveness_and_readiness_ok(h: &Harness) {
    let health = h.driver.health();
    let ctx = h.ctx("liveness");
    ok("liveness", within("liveness", health.liveness(&ctx)).await);
    let ctx = h.ctx("readiness");
    ok(
        "readiness",
        within("readiness", health.readiness(&ctx)).await,
    );
    if let Err(e) = h.probe.write_something().await {
        panic!("readiness passed but the probe cannot write: {e}");
    }
}

/// Details name the server version and count at least one connection (the one asking).
pub async fn details_report_version_and_connections(h: &Harness) {
    let ctx = h.ctx("details");
    let d = ok(
        "details",
        within("details", h.driver.health().details(&ctx)).await,
    );
    let version = d.version.as_deref().unwrap_or_default();
    assert!(
        version.chars().any(|c| c.is_ascii_digit()),
        "details must report the server version, got {:?}",
        d.version
    );
    let connections = d
        .connections
        .unwrap_or_else(|| panic!("details must report connections: {d:?}"));
    assert!(
        connections >= 1,
        "at least the asking session is connected: {d:?}"
    );
    if let Some(max) = d.max_connections {
        assert!(
            max >= connections,
            "max_connections below connections: {d:?}"
        );
    }
    if let Some(disk) = d.disk {
        assert!(disk.total_bytes > 0, "disk total is zero: {d:?}");
        assert!(
            disk.used_bytes <= disk.total_bytes,
            "disk used > total: {d:?}"
        );
        assert!(
            disk.available_bytes <= disk.total_bytes,
            "disk available > total: {d:?}"
        );
    }
}

/// A committed write advances the position: the new one reaches the old, not the reverse.
pub async fn position_advances_on_write(h: &Harness) {
    let before = position(h).await;
    assert_eq!(
        before.reached(&before),
        Ok(true),
        "a position reaches itself"
    );
    if let Err(e) = h.probe.write_something().await {
        panic!("the probe cannot write: {e}");
    }
    // The commit is durable when the probe returns; allow a moment for drivers that read a
    // flushed rather than the inserted position.
    let deadline = Instant::now() + POLL_TIMEOUT;
    let mut after = position(h).await;
    while after == before && Instant::now() < deadline {
        sleep(POLL_INTERVAL).await;
        after = position(h).await;
    }
    assert_ne!(
        after, before,
        "the position did not move after a committed write"
    );
    assert_eq!(
        after.reached(&before),
        Ok(true),
        "{after} must reach the earlier {before}"
    );
    assert_eq!(
        before.reached(&after),
        Ok(false),
        "{before} must not reach the later {after}"
    );
    let json = serde_json::to_string(&after).expect("positions serialize");
    let back: Position = serde_json::from_str(&json).expect("positions deserialize");
    assert_eq!(back, after, "position serde round trip");
}

/// Comparing an LSN with a GTID set is an error, never a silent `false`.
pub async fn position_mixed_kinds_is_error(h: &Harness) {
    let p = position(h).await;
    let other = match &p {
        Position::Lsn(_) => Position::Gtid(GtidSet::parse("0-1-1").expect("valid GTID")),
        Position::Gtid(_) => Position::Lsn(Lsn(0)),
    };
    for (a, b) in [(&p, &other), (&other, &p)] {
        match a.reached(b) {
            Err(PositionError::KindMismatch { .. }) => {}
            r => panic!("comparing {a:?} with {b:?} must be a KindMismatch, got {r:?}"),
        }
    }
}

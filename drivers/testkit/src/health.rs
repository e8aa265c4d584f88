//! Conformance functions for the `health` group.

use crate::Harness;

/// `liveness_and_readiness_ok`.
pub async fn liveness_and_readiness_ok(h: &Harness) {
    let _ = h;
    unimplemented!("liveness_and_readiness_ok");
}

/// `details_report_version_and_connections`.
pub async fn details_report_version_and_connections(h: &Harness) {
    let _ = h;
    unimplemented!("details_report_version_and_connections");
}

/// `position_advances_on_write`.
pub async fn position_advances_on_write(h: &Harness) {
    let _ = h;
    unimplemented!("position_advances_on_write");
}

/// `position_mixed_kinds_is_error`.
pub async fn position_mixed_kinds_is_error(h: &Harness) {
    let _ = h;
    unimplemented!("position_mixed_kinds_is_error");
}

//! Conformance functions for the `hostile` group.

use crate::Harness;

/// `hostile_identifiers_rejected`.
pub async fn hostile_identifiers_rejected(h: &Harness) {
    let _ = h;
    unimplemented!("hostile_identifiers_rejected");
}

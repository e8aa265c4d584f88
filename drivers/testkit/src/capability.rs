//! Conformance functions for the `capability` group.

use crate::Harness;

/// `unsupported_groups_say_not_supported`.
pub async fn unsupported_groups_say_not_supported(h: &Harness) {
    let _ = h;
    unimplemented!("unsupported_groups_say_not_supported");
}

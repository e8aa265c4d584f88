//! # guest-agent-testkit
//!
//! The conformance suite every guest-agent datastore driver must pass. Each behaviour is a
//! plain `pub async fn name(h: &Harness)` in the module of its API group ([`admin`],
//! [`lifecycle`], [`health`], [`config`], [`replication`], [`backup`], [`capability`], [`hostile`]). A driver runs the whole suite with
//! one macro call in its `tests/conformance.rs`:
//!
//! ```no_run
//! use guest_agent_testkit::Harness;
//!
//! // In a driver crate this lives in `tests/support/mod.rs`: start a fresh server in a
//! // temporary directory, prepare it through the driver, build the probe.
//! async fn make_harness() -> Harness {
//!     unimplemented!("driver-specific")
//! }
//!
//! guest_agent_testkit::conformance_tests!(make_harness);
//! # fn main() {}
//! ```
//!
//! where `async fn make_harness() -> Harness` returns a [`Harness`] on a fresh, prepared,
//! running server. Every kit function becomes its own `#[tokio::test]`, named
//! `<group>::<function>`.
//!
//! Effects are checked through the [`Probe`], a raw client the driver's tests implement outside
//! the driver's code path. Optional behaviour is gated by the driver's declared
//! [`Capabilities`](guest_agent_api::Capabilities): an undeclared capability must answer
//! [`Error::NotSupported`](guest_agent_api::Error::NotSupported); no test passes by doing
//! nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod admin;
pub mod backup;
pub mod capability;
pub mod check;
pub mod config;
pub mod harness;
pub mod health;
pub mod hostile;
pub mod lifecycle;
pub mod names;
pub mod replication;

pub use async_trait::async_trait;
pub use harness::{ConfigSample, Harness, PeerMaker, Probe, SampleSetting};
pub use names::Names;

#[doc(hidden)]
pub mod __private {
    pub use tokio;
}

/// Expands to one `#[tokio::test]` per kit function, each on a fresh harness from `$make`
/// (an `async fn() -> Harness`). Tests are grouped in modules named after the kit modules, so
/// `cargo test admin::` runs the administration group.
#[macro_export]
macro_rules! conformance_tests {
    ($make:path) => {
        async fn __guest_agent_testkit_make() -> $crate::Harness {
            $make().await
        }
        $crate::__kit_group!(admin;
            create_database_visible_to_probe,
            create_database_is_idempotent,
            drop_database_idempotent,
            list_databases_paginates,
            create_database_with_charset,
            create_user_then_login,
            create_existing_user_is_already_exists,
            get_user_missing_is_none,
            list_users_hides_admin_and_paginates,
            user_hosts_are_respected_or_ignored,
            drop_user_then_login_fails,
            change_password_old_fails_new_works,
            change_password_missing_user_is_not_found,
            update_attributes_rename,
            grant_then_write_and_revoke_denies,
            list_access_matches_grants,
            grant_to_missing_database_is_not_found,
            root_enable_login_disable,
            root_enable_with_given_password,
        );
        $crate::__kit_group!(hostile;
            hostile_identifiers_rejected,
        );
        $crate::__kit_group!(lifecycle;
            status_is_healthy_when_running,
            stop_then_status_shutdown_and_start_again,
            stop_is_idempotent,
            restart_keeps_data,
            crash_is_reported,
            prepare_on_initialised_datadir_is_refused,
        );
        $crate::__kit_group!(health;
            liveness_and_readiness_ok,
            details_report_version_and_connections,
            position_advances_on_write,
            position_mixed_kinds_is_error,
        );
        $crate::__kit_group!(capability;
            unsupported_groups_say_not_supported,
        );
        $crate::__kit_group!(config;
            dynamic_vs_restart_required,
            invalid_overrides_rejected_and_files_untouched,
        );
        $crate::__kit_group!(replication;
            attach_wait_promote,
        );
        $crate::__kit_group!(backup;
            tool_access_is_usable,
        );
    };
}

/// One module of tests for one kit module; used by [`conformance_tests!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __kit_group {
    ($group:ident; $($name:ident),* $(,)?) => {
        mod $group {
            $(
                #[$crate::__private::tokio::test(
                    crate = "guest_agent_testkit::__private::tokio",
                    flavor = "multi_thread",
                    worker_threads = 2
                )]
                async fn $name() {
                    let h = super::__guest_agent_testkit_make().await;
                    $crate::$group::$name(&h).await;
                }
            )*
        }
    };
}

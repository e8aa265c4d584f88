//! The suite must fail a driver that lies: each case plants one defect in the in-memory
//! driver and asserts that the kit function meant to catch it panics.

mod support;

use std::future::Future;
use std::pin::Pin;

use guest_agent_testkit::{Harness, admin, capability, config, health, lifecycle};
use support::{Bug, buggy};

type KitFn = for<'a> fn(&'a Harness) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

async fn must_fail(bug: Bug, name: &str, kit: KitFn) {
    let outcome = tokio::spawn(async move {
        let h = buggy(bug);
        kit(&h).await;
    })
    .await;
    match outcome {
        Err(e) if e.is_panic() => {}
        other => panic!("{name} passed a driver with {bug:?}: {other:?}"),
    }
}

macro_rules! catches {
    ($($test:ident: $bug:ident => $($module:ident)::+;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                must_fail(Bug::$bug, stringify!($($module)::+), |h| Box::pin($($module)::+(h)))
                    .await;
            }
        )*
    };
}

catches! {
    unsupported_ok_fails_admin: UnsupportedOk => admin::create_database_visible_to_probe;
    unsupported_ok_fails_users: UnsupportedOk => admin::create_user_then_login;
    unsupported_ok_fails_root: UnsupportedOk => admin::root_enable_login_disable;
    unsupported_ok_fails_config: UnsupportedOk => capability::unsupported_groups_say_not_supported;
    drop_user_noop: DropUserNoop => admin::drop_user_then_login_fails;
    revoke_noop: RevokeNoop => admin::grant_then_write_and_revoke_denies;
    revoke_noop_list_access: RevokeNoop => admin::list_access_matches_grants;
    password_unchanged: PasswordUnchanged => admin::change_password_old_fails_new_works;
    crash_looks_like_shutdown: CrashLooksLikeShutdown => lifecycle::crash_is_reported;
    marker_always_included: MarkerAlwaysIncluded => admin::list_databases_paginates;
    position_stuck: PositionStuck => health::position_advances_on_write;
    lists_root: ListsRoot => admin::root_enable_login_disable;
    prepare_twice: PrepareTwice => lifecycle::prepare_on_initialised_datadir_is_refused;
    restart_unreported: RestartUnreported => config::dynamic_vs_restart_required;
}

catches! {
    unsupported_ok_fails_update_attributes: UnsupportedOk => admin::update_attributes_rename;
    unsupported_ok_fails_grants: UnsupportedOk => admin::list_access_matches_grants;
}

//! Conformance functions for declared capabilities: what a driver leaves out must say
//! `NotSupported`, and what it declares must be there.
//!
//! The group modules test each declared capability in depth; this one checks the
//! declaration itself: optional groups present exactly when declared, flags consistent with
//! each other, and a `NotSupported` from every undeclared group.

use guest_agent_api::Error;
use guest_agent_api::admin::PageRequest;
use guest_agent_api::config::{Overrides, ValidatedOverrides};

use crate::Harness;
use crate::check::{assert_not_supported, caps, ok, user_ref, within};

/// Optional groups exist exactly when declared; the configuration group answers
/// `NotSupported` when `config` is not declared and validates when it is.
pub async fn unsupported_groups_say_not_supported(h: &Harness) {
    let c = caps(h);
    let info = h.driver.info();
    assert!(!info.name.is_empty(), "a driver has a name");
    assert!(
        !info.managers.is_empty(),
        "a driver serves at least one manager"
    );

    assert_eq!(
        h.driver.replication().is_some(),
        c.replication,
        "replication() must be Some exactly when the replication capability is declared"
    );
    assert_eq!(
        h.driver.backup().is_some(),
        c.backup,
        "backup() must be Some exactly when the backup capability is declared"
    );
    if let Some(b) = h.driver.backup() {
        assert!(
            !b.strategies().is_empty(),
            "a driver with backup hooks names at least one strategy"
        );
    }
    if c.user_rename || c.user_hosts {
        assert!(
            c.users,
            "user_rename and user_hosts need the users capability"
        );
    }
    if c.database_charset {
        assert!(
            c.databases,
            "database_charset needs the databases capability"
        );
    }

    // Each undeclared administrative capability answers NotSupported on a read-only call
    // (the admin functions check every call of the group).
    let a = h.driver.admin();
    let all = PageRequest::default();
    let someone = user_ref(&h.names.user_name());
    if !c.databases {
        let r = within(
            "list_databases",
            a.list_databases(&h.ctx("list_databases"), &all),
        )
        .await;
        assert_not_supported(h, "list_databases", r);
    }
    if !c.users {
        let r = within("list_users", a.list_users(&h.ctx("list_users"), &all)).await;
        assert_not_supported(h, "list_users", r);
    }
    if !c.grants {
        let r = within(
            "list_access",
            a.list_access(&h.ctx("list_access"), &someone),
        )
        .await;
        assert_not_supported(h, "list_access", r);
    }
    if !c.root {
        let r = within(
            "is_root_enabled",
            a.is_root_enabled(&h.ctx("is_root_enabled")),
        )
        .await;
        assert_not_supported(h, "is_root_enabled", r);
    }

    let cfg = h.driver.config();
    let mut hostile = Overrides::new();
    hostile.insert("x; DROP".to_owned(), serde_json::Value::from(1));
    if c.config {
        let v = ok("validate of no overrides", cfg.validate(&Overrides::new()));
        assert!(v.values.is_empty() && v.restart_required.is_empty());
        match cfg.validate(&hostile) {
            Err(Error::InvalidConfig { .. }) => {}
            r => panic!("a hostile configuration key must be InvalidConfig, got {r:?}"),
        }
        let ctx = h.ctx("current");
        ok("current", within("current", cfg.current(&ctx)).await);
    } else {
        assert_not_supported(h, "validate", cfg.validate(&Overrides::new()));
        let ctx = h.ctx("apply");
        let r = within("apply", cfg.apply(&ctx, &ValidatedOverrides::default())).await;
        assert_not_supported(h, "apply", r);
        let ctx = h.ctx("current");
        let r = within("current", cfg.current(&ctx)).await;
        assert_not_supported(h, "current", r);
        let ctx = h.ctx("remove_overrides");
        let r = within("remove_overrides", cfg.remove_overrides(&ctx)).await;
        assert_not_supported(h, "remove_overrides", r);
    }
}

//! Conformance functions for declared capabilities: what a driver leaves out must say
//! `NotSupported`, and what it declares must be there.

use guest_agent_api::Error;
use guest_agent_api::config::{Overrides, ValidatedOverrides};

use crate::Harness;
use crate::check::{assert_not_supported, caps, ok, within};

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

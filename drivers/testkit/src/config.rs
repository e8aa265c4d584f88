//! Conformance functions for the configuration group: a dynamic parameter takes effect
//! without a restart, a restart-required one is reported as such and takes effect after the
//! restart, and an invalid set is refused whole, leaving the managed set as it was.
//!
//! The parameters come from the harness ([`Harness::config_sample`]) or, for the drivers of
//! this workspace, from [`known_sample`]. Effects are read back through
//! [`Probe::setting`](crate::Probe::setting) when the probe can.

use guest_agent_api::config::Overrides;
use serde_json::{Value, json};

use crate::Harness;
use crate::check::{assert_not_supported, caps, ok, within};
use crate::harness::{ConfigSample, SampleSetting};

/// Samples for the drivers of this workspace, by driver name.
pub fn known_sample(driver: &str) -> Option<ConfigSample> {
    match driver {
        "postgresql" => Some(ConfigSample {
            dynamic: SampleSetting {
                key: "work_mem",
                value: json!("24MB"),
                shown: "24MB",
            },
            restart: SampleSetting {
                key: "shared_buffers",
                value: json!("48MB"),
                shown: "48MB",
            },
        }),
        "mysql" | "mariadb" => Some(ConfigSample {
            dynamic: SampleSetting {
                key: "max_connections",
                value: json!(123),
                shown: "123",
            },
            restart: SampleSetting {
                key: "performance_schema",
                value: json!(true),
                shown: "1",
            },
        }),
        _ => None,
    }
}

fn sample(h: &Harness) -> ConfigSample {
    h.config_sample
        .clone()
        .or_else(|| known_sample(h.driver_name()))
        .unwrap_or_else(|| {
            panic!(
                "driver '{}' declares the config capability: its test support must name a \
                 dynamic and a restart-required parameter (Harness::with_config_sample)",
                h.driver_name()
            )
        })
}

fn set(pairs: &[(&str, &Value)]) -> Overrides {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).clone()))
        .collect()
}

async fn current(h: &Harness) -> std::collections::BTreeMap<String, String> {
    let ctx = h.ctx("current");
    ok(
        "current",
        within("current", h.driver.config().current(&ctx)).await,
    )
}

/// Checks the probe's view of `s` when the probe can read settings.
async fn assert_in_effect(h: &Harness, s: &SampleSetting, when: &str) {
    if let Ok(shown) = h.probe.setting(s.key).await {
        assert_eq!(shown, s.shown, "{} {when}", s.key);
    }
}

/// A dynamic parameter is applied without a restart; a restart-required one is reported and
/// takes effect after the restart; both stay in the managed set.
pub async fn dynamic_vs_restart_required(h: &Harness) {
    let cfg = h.driver.config();
    if !caps(h).config {
        assert_not_supported(h, "validate", cfg.validate(&Overrides::new()));
        return;
    }
    let ConfigSample { dynamic, restart } = sample(h);

    let v = ok(
        "validate (dynamic)",
        cfg.validate(&set(&[(dynamic.key, &dynamic.value)])),
    );
    assert!(
        v.restart_required.is_empty(),
        "{} is dynamic but validate says it needs a restart",
        dynamic.key
    );
    let ctx = h.ctx("apply");
    let out = ok(
        "apply (dynamic)",
        within("apply", cfg.apply(&ctx, &v)).await,
    );
    assert!(
        out.dynamic_applied.iter().any(|k| k == dynamic.key)
            && !out.restart_required.iter().any(|k| k == dynamic.key),
        "applying {} must report it applied, not waiting for a restart: {out:?}",
        dynamic.key
    );
    assert_in_effect(h, &dynamic, "after apply, without a restart").await;
    assert!(current(h).await.contains_key(dynamic.key));

    let v = ok(
        "validate (restart)",
        cfg.validate(&set(&[
            (dynamic.key, &dynamic.value),
            (restart.key, &restart.value),
        ])),
    );
    let needs: Vec<&str> = v.restart_required.iter().map(|k| k.as_str()).collect();
    assert_eq!(needs, [restart.key], "validate's restart-required keys");
    let ctx = h.ctx("apply");
    let out = ok(
        "apply (restart)",
        within("apply", cfg.apply(&ctx, &v)).await,
    );
    assert!(
        out.restart_required.iter().any(|k| k == restart.key),
        "applying {} must report that it needs a restart: {out:?}",
        restart.key
    );
    assert!(
        out.dynamic_applied.iter().any(|k| k == dynamic.key),
        "{out:?}"
    );
    let ctx = h.ctx("restart");
    ok(
        "restart",
        within("restart", h.driver.lifecycle().restart(&ctx)).await,
    );
    assert_in_effect(h, &restart, "after the restart").await;
    assert_in_effect(h, &dynamic, "after the restart").await;
    let now = current(h).await;
    assert!(
        now.contains_key(dynamic.key) && now.contains_key(restart.key),
        "{now:?}"
    );
}

/// Unknown keys, wrong types and a bad key among good ones are refused with `InvalidConfig`
/// naming the key; the managed set and the server's values stay as they were.
pub async fn invalid_overrides_rejected_and_files_untouched(h: &Harness) {
    let cfg = h.driver.config();
    if !caps(h).config {
        assert_not_supported(h, "validate", cfg.validate(&Overrides::new()));
        return;
    }
    let ConfigSample { dynamic, .. } = sample(h);
    let v = ok(
        "validate",
        cfg.validate(&set(&[(dynamic.key, &dynamic.value)])),
    );
    let ctx = h.ctx("apply");
    ok("apply", within("apply", cfg.apply(&ctx, &v)).await);
    let before = current(h).await;
    let shown_before = h.probe.setting(dynamic.key).await;

    let unknown = "guest_agent_kit_no_such_parameter";
    let cases: Vec<(Overrides, &str)> = vec![
        (set(&[(unknown, &json!(1))]), unknown),
        (set(&[(dynamic.key, &json!([1, 2]))]), dynamic.key),
        (set(&[(dynamic.key, &json!({"x": 1}))]), dynamic.key),
        (
            set(&[(dynamic.key, &dynamic.value), (unknown, &json!("x"))]),
            unknown,
        ),
        (set(&[("x'; DROP TABLE t; --", &json!(1))]), "x'; DROP"),
    ];
    for (bad, key) in cases {
        match cfg.validate(&bad) {
            Err(guest_agent_api::Error::InvalidConfig { key: k, reason }) => {
                assert!(
                    k.starts_with(key),
                    "the error must name '{key}', it names '{k}': {reason}"
                );
                assert!(!reason.is_empty());
            }
            other => panic!("{bad:?} must be refused with InvalidConfig, got {other:?}"),
        }
    }
    assert_eq!(
        current(h).await,
        before,
        "a refused set changed the overrides"
    );
    assert_eq!(
        h.probe.setting(dynamic.key).await,
        shown_before,
        "a refused set changed the server"
    );
}

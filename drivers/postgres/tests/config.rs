//! Configuration groups on a real PostgreSQL 15 server: a dynamic change in effect after a
//! reload, a restart-required change reported until the restart, invalid sets refused with
//! the files untouched, removal, the control plane's base file, overrides at prepare time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use guest_agent_api::config::Overrides;
use guest_agent_api::lifecycle::PrepareSpec;
use guest_agent_api::{ConfigApply, DatastoreStatus, Lifecycle, OpContext};
use guest_agent_postgres::{MANAGED_CONF_FILE, OVERRIDES_CONF_FILE};
use support::{PgProbe, prepared, small_spec};

fn ctx(op: &str) -> OpContext {
    OpContext::new(format!("test-{op}"))
}

fn set(v: serde_json::Value) -> Overrides {
    v.as_object().unwrap().clone()
}

async fn show(probe: &PgProbe, name: &str) -> String {
    let c = probe.admin("postgres").await.unwrap();
    c.query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_restart_required_invalid_and_removed() {
    let (driver, guard) = prepared(&small_spec()).await;
    let probe = PgProbe::new(&guard);
    let data = guard.layout().data_dir.clone();
    let pid = guard.layout().postmaster_pid();

    // Dynamic: in effect at once, no restart, same postmaster.
    let v = driver
        .validate(&set(
            serde_json::json!({"work_mem": "24MB", "autovacuum_naptime": "30s"}),
        ))
        .unwrap();
    let out = driver.apply(&ctx("apply"), &v).await.unwrap();
    assert_eq!(out.dynamic_applied, ["autovacuum_naptime", "work_mem"]);
    assert!(out.restart_required.is_empty(), "{out:?}");
    assert_eq!(show(&probe, "work_mem").await, "24MB");
    assert_eq!(show(&probe, "autovacuum_naptime").await, "30s");
    assert_eq!(
        driver.status(&ctx("status")).await,
        DatastoreStatus::Healthy
    );
    assert_eq!(guard.layout().postmaster_pid(), pid);
    let current = driver.current(&ctx("current")).await.unwrap();
    assert_eq!(current["work_mem"], "24576");

    // Restart required: reported, status says so until the restart, then in effect.
    let v = driver
        .validate(&set(
            serde_json::json!({"work_mem": "24MB", "shared_buffers": "64MB"}),
        ))
        .unwrap();
    assert_eq!(v.restart_required.len(), 1);
    let out = driver.apply(&ctx("apply"), &v).await.unwrap();
    assert_eq!(out.restart_required, ["shared_buffers"], "{out:?}");
    assert_eq!(out.dynamic_applied, ["work_mem"]);
    assert_eq!(show(&probe, "shared_buffers").await, "128MB");
    assert_eq!(
        driver.status(&ctx("status")).await,
        DatastoreStatus::RestartRequired
    );
    driver.restart(&ctx("restart")).await.unwrap();
    assert_eq!(show(&probe, "shared_buffers").await, "64MB");
    assert_eq!(
        driver.status(&ctx("status")).await,
        DatastoreStatus::Healthy
    );

    // Invalid sets are refused before anything is written.
    let files = |names: &[&str]| -> Vec<Vec<u8>> {
        names
            .iter()
            .map(|n| std::fs::read(data.join(n)).unwrap())
            .collect()
    };
    let before = files(&[OVERRIDES_CONF_FILE, MANAGED_CONF_FILE, "postgresql.conf"]);
    for bad in [
        serde_json::json!({"work_mem": "8MB", "no_such_parameter": 1}),
        serde_json::json!({"work_mem": 1}),
        serde_json::json!({"port": 1}),
        serde_json::json!({"autovacuum": "sometimes"}),
    ] {
        let e = driver.validate(&set(bad.clone())).unwrap_err();
        assert_eq!(e.kind(), "InvalidConfig", "{bad}: {e}");
    }
    assert_eq!(
        files(&[OVERRIDES_CONF_FILE, MANAGED_CONF_FILE, "postgresql.conf"]),
        before
    );
    assert_eq!(show(&probe, "work_mem").await, "24MB");

    // Removing the overrides: the dynamic one is back to its default at once, the restart
    // one waits for the restart.
    let out = driver.remove_overrides(&ctx("remove")).await.unwrap();
    assert_eq!(out.restart_required, ["shared_buffers"], "{out:?}");
    assert_eq!(show(&probe, "work_mem").await, "4MB");
    assert!(driver.current(&ctx("current")).await.unwrap().is_empty());
    assert_eq!(
        driver.status(&ctx("status")).await,
        DatastoreStatus::RestartRequired
    );
    driver.restart(&ctx("restart")).await.unwrap();
    assert_eq!(
        driver.status(&ctx("status")).await,
        DatastoreStatus::Healthy
    );
    assert_eq!(show(&probe, "shared_buffers").await, "128MB");

    // A stopped server takes the overrides at its next start.
    driver
        .stop(&ctx("stop"), guest_agent_api::StopMode::Fast)
        .await
        .unwrap();
    let v = driver
        .validate(&set(serde_json::json!({"max_connections": 42})))
        .unwrap();
    let out = driver.apply(&ctx("apply"), &v).await.unwrap();
    assert!(out.restart_required.is_empty(), "{out:?}");
    driver.start(&ctx("start")).await.unwrap();
    assert_eq!(show(&probe, "max_connections").await, "42");

    // The control plane's base file keeps its known tunables only; overrides still win.
    driver
        .reset_base(
            &ctx("reset"),
            "listen_addresses = '*'\nport = 1\nmax_connections = 60\nrandom_page_cost = 1.5\n",
        )
        .await
        .unwrap();
    driver.restart(&ctx("restart")).await.unwrap();
    assert_eq!(show(&probe, "random_page_cost").await, "1.5");
    assert_eq!(show(&probe, "max_connections").await, "42");
    assert_eq!(show(&probe, "port").await, guard.layout().port.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_sizes_memory_and_takes_overrides() {
    let spec = PrepareSpec {
        memory_mb: Some(2048),
        overrides: Some(set(
            serde_json::json!({"work_mem": "12MB", "max_connections": 77}),
        )),
        ..PrepareSpec::default()
    };
    let (driver, guard) = prepared(&spec).await;
    let probe = PgProbe::new(&guard);
    assert_eq!(show(&probe, "shared_buffers").await, "512MB");
    assert_eq!(show(&probe, "effective_cache_size").await, "1536MB");
    assert_eq!(show(&probe, "maintenance_work_mem").await, "128MB");
    assert_eq!(show(&probe, "work_mem").await, "12MB");
    assert_eq!(show(&probe, "max_connections").await, "77");
    assert_eq!(show(&probe, "wal_log_hints").await, "on");
    assert_eq!(
        driver.status(&ctx("status")).await,
        DatastoreStatus::Healthy
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_reach_a_cluster_prepared_without_include_lines() {
    let (driver, guard) = prepared(&small_spec()).await;
    let probe = PgProbe::new(&guard);
    // As an earlier version of the driver wrote it: no include lines.
    let managed = guard.layout().data_dir.join(MANAGED_CONF_FILE);
    let text = std::fs::read_to_string(&managed).unwrap();
    let old: String = text
        .lines()
        .filter(|l| !l.starts_with("include_if_exists"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&managed, old).unwrap();
    let v = driver
        .validate(&set(serde_json::json!({"work_mem": "20MB"})))
        .unwrap();
    driver.apply(&ctx("apply"), &v).await.unwrap();
    assert_eq!(show(&probe, "work_mem").await, "20MB");
    let text = std::fs::read_to_string(&managed).unwrap();
    assert_eq!(text.matches("include_if_exists").count(), 3, "{text}");
}

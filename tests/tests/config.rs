//! Configuration groups through the agent over HTTPS, against a real PostgreSQL 15: a dynamic
//! override takes effect without a restart, a restart-required one is reported (reply and
//! status) and takes effect after `restart`, invalid overrides are refused leaving the files
//! untouched, and removing the overrides restores the defaults. Values are read with direct
//! logins, not through the agent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use guest_agent_e2e::services::postgres::{login, postmaster_pid};
use guest_agent_e2e::{ROOT_PASSWORD, ROOT_USER, TestEnv};
use serde_json::json;

async fn show(env: &TestEnv, name: &str) -> String {
    let c = login(env.pg_port, ROOT_USER, ROOT_PASSWORD, "postgres").await;
    c.query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// The configuration files the driver writes, for "untouched" checks.
fn conf_files(env: &TestEnv) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&env.data_dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.ends_with(".conf")
        })
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn dynamic_restart_required_and_invalid_overrides() {
    let env = TestEnv::new();
    let (_agent, c) = env.prepared_agent().await;
    let pid = postmaster_pid(&env.data_dir);
    assert_eq!(show(&env, "work_mem").await, "4MB");

    // Dynamic: in effect at once, same server process, status stays healthy.
    let out = c
        .call(
            "update_overrides",
            json!({"overrides": {"work_mem": "24MB"}, "remove": false}),
        )
        .await;
    assert_eq!(
        out,
        json!({"dynamic_applied": ["work_mem"], "restart_required": []})
    );
    c.call(
        "apply_overrides",
        json!({"overrides": {"work_mem": "24MB"}}),
    )
    .await;
    assert_eq!(show(&env, "work_mem").await, "24MB");
    assert_eq!(postmaster_pid(&env.data_dir), pid);
    assert_eq!(c.service_status().await, "healthy");

    // Restart required: reported by the reply and the status until the restart.
    let out = c
        .call(
            "update_overrides",
            json!({"overrides": {"work_mem": "24MB", "shared_buffers": "48MB"}}),
        )
        .await;
    assert_eq!(out["restart_required"], json!(["shared_buffers"]), "{out}");
    assert_eq!(show(&env, "shared_buffers").await, "128MB");
    c.wait_status("restart required").await;
    let st = c.get("/v1/status").await;
    assert_eq!(st.body["service_status"], "restart required", "{}", st.body);
    c.call("restart", json!({})).await;
    c.wait_status("healthy").await;
    assert_eq!(show(&env, "shared_buffers").await, "48MB");
    assert_eq!(show(&env, "work_mem").await, "24MB");

    // Invalid overrides: refused naming the key, files and values untouched.
    let before = conf_files(&env);
    for (bad, key) in [
        (
            json!({"work_mem": "8MB", "no_such_parameter": 1}),
            "no_such_parameter",
        ),
        (json!({"work_mem": 10}), "work_mem"),
        (json!({"max_connections": "many"}), "max_connections"),
        (json!({"listen_addresses": "*"}), "listen_addresses"),
    ] {
        let r = c
            .call_err("update_overrides", json!({"overrides": bad}))
            .await;
        r.assert_error(400, "InvalidConfig");
        let msg = r.error_message().unwrap_or_default();
        assert!(msg.contains(key), "{msg}");
    }
    assert_eq!(conf_files(&env), before, "a refused set changed the files");
    assert_eq!(show(&env, "work_mem").await, "24MB");
    assert_eq!(c.service_status().await, "healthy");

    // Removing the overrides: dynamic ones back at once, restart ones after the restart.
    let out = c
        .call("update_overrides", json!({"overrides": {}, "remove": true}))
        .await;
    assert_eq!(out["restart_required"], json!(["shared_buffers"]), "{out}");
    assert_eq!(show(&env, "work_mem").await, "4MB");
    c.call("restart", json!({})).await;
    c.wait_status("healthy").await;
    assert_eq!(show(&env, "shared_buffers").await, "128MB");

    // The control plane's base file: known tunables kept, the rest is the driver's.
    c.call(
        "reset_configuration",
        json!({"configuration": {"config_contents":
            "listen_addresses = '*'\nport = 1\nrandom_page_cost = 1.5\n"}}),
    )
    .await;
    c.call("restart", json!({})).await;
    c.wait_status("healthy").await;
    assert_eq!(show(&env, "random_page_cost").await, "1.5");
    assert_eq!(show(&env, "port").await, env.pg_port.to_string());
}

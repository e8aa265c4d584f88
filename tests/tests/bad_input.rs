//! Hostile and broken input: bad requests are refused with 4xx naming the problem and leave
//! the database untouched; bad client certificates are refused at the TLS layer; bad
//! configurations stop the agent before it binds, with exit code 64.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use guest_agent_e2e::agent::{run_to_exit, write_config};
use guest_agent_e2e::certs::Identity;
use guest_agent_e2e::services::postgres::{database_names, login_role_names};
use guest_agent_e2e::{RpcClient, TestEnv};
use serde_json::{Value, json};

/// Names the agent must refuse, each with what makes it hostile.
fn hostile_names() -> Vec<(&'static str, String)> {
    vec![
        ("single quote", "x'y".to_owned()),
        ("double quote", "x\"y".to_owned()),
        ("semicolon", "x;DROP DATABASE app".to_owned()),
        ("backtick", "x`y".to_owned()),
        ("comment", "x--y".to_owned()),
        ("NUL", "x\u{0}y".to_owned()),
        ("64 characters", "a".repeat(64)),
        ("empty", String::new()),
    ]
}

/// Databases and login roles as the superuser sees them.
async fn snapshot(env: &TestEnv) -> (Vec<String>, Vec<String>) {
    let root = env.root_login("postgres").await;
    (database_names(&root).await, login_role_names(&root).await)
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let env = TestEnv::new();
    let (mut agent, c) = env.prepared_agent().await;
    let before = snapshot(&env).await;

    // Unknown method: 404 naming it.
    let r = c.call_err("drop_everything", json!({})).await;
    r.assert_error(404, "NoSuchMethod");
    assert!(
        r.error_message().unwrap().contains("drop_everything"),
        "{}",
        r.body
    );

    // Malformed JSON, non-object arguments, wrong content type, oversized body.
    let r = c
        .post_raw(
            "/v1/rpc/list_databases",
            Some("application/json"),
            b"{\"limit\": ".to_vec(),
        )
        .await;
    assert_eq!(r.status, 400, "malformed JSON: {}", r.body);
    assert!(r.error_type().is_some(), "malformed JSON: {}", r.body);
    for body in ["[1, 2]", "\"databases\"", "42", "true"] {
        let r = c
            .post_raw(
                "/v1/rpc/create_database",
                Some("application/json"),
                body.into(),
            )
            .await;
        assert_eq!(r.status, 400, "non-object args {body}: {}", r.body);
        assert!(
            r.error_type().is_some(),
            "non-object args {body}: {}",
            r.body
        );
    }
    let r = c
        .post_raw("/v1/rpc/rpc_ping", Some("text/plain"), b"{}".to_vec())
        .await;
    assert_eq!(r.status, 415, "text/plain body: {}", r.body);
    // Over HTTP/2: on HTTP/1.1 the agent closes the connection while the client is still
    // sending, and the client sees a broken pipe instead of the 413.
    let h2 = RpcClient::mtls_with(&env.https_url(), &env.certs, Identity::Client, true);
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(2 << 20));
    let r = h2
        .post_raw(
            "/v1/rpc/rpc_ping",
            Some("application/json"),
            big.into_bytes(),
        )
        .await;
    assert_eq!(r.status, 413, "2 MiB body: {}", r.body);

    // Missing and mistyped required arguments name the argument.
    let r = c.call_err("delete_database", json!({})).await;
    r.assert_error(400, "InvalidArgument");
    assert!(
        r.error_message().unwrap().contains("database"),
        "{}",
        r.body
    );
    let r = c
        .call_err(
            "grant_access",
            json!({"username": "app_user", "hostname": "%"}),
        )
        .await;
    r.assert_error(400, "InvalidArgument");
    assert!(
        r.error_message().unwrap().contains("databases"),
        "{}",
        r.body
    );
    let r = c.call_err("list_databases", json!({"limit": "ten"})).await;
    r.assert_error(400, "InvalidArgument");
    assert!(r.error_message().unwrap().contains("limit"), "{}", r.body);

    // Hostile identifiers, in every place an identifier goes.
    for (what, name) in hostile_names() {
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "create_database",
                json!({"databases": [{"_name": "fine_db"}, {"_name": name}]}),
                "databases[1]._name",
            ),
            (
                "delete_database",
                json!({"database": {"_name": name}}),
                "database._name",
            ),
            (
                "create_user",
                json!({"users": [{"_name": name, "_password": "Some-Pass-1"}]}),
                "users[0]._name",
            ),
            (
                "create_user",
                json!({"users": [{"_name": "fine_user", "_password": "Some-Pass-1",
                                  "_databases": [{"_name": name}]}]}),
                "users[0]._databases[0]._name",
            ),
            (
                "get_user",
                json!({"username": name, "hostname": "%"}),
                "username",
            ),
            (
                "grant_access",
                json!({"username": "app_user", "hostname": "%", "databases": [name]}),
                "databases[0]",
            ),
            (
                "update_attributes",
                json!({"username": "app_user", "hostname": "%", "user_attrs": {"name": name}}),
                "user_attrs.name",
            ),
        ];
        for (method, args, field) in cases {
            let r = c.call_err(method, args.clone()).await;
            assert_eq!(
                (r.status, r.error_type()),
                (400, Some("InvalidArgument")),
                "{method} with a {what} name: {}",
                r.body
            );
            let msg = r.error_message().unwrap();
            assert!(
                msg.contains(field),
                "{method} with a {what} name: '{field}' not named in {msg}"
            );
        }
    }

    // A hostile host pattern.
    let r = c
        .call_err(
            "get_user",
            json!({"username": "app_user", "hostname": "x'; --"}),
        )
        .await;
    r.assert_error(400, "InvalidArgument");
    assert!(
        r.error_message().unwrap().contains("hostname"),
        "{}",
        r.body
    );

    // A bad password (control character) is refused too, and never echoed back.
    let r = c
        .call_err(
            "create_user",
            json!({"users": [{"_name": "pw_user", "_password": "secret\u{0}tail"}]}),
        )
        .await;
    r.assert_error(400, "InvalidArgument");
    assert!(
        !r.body.to_string().contains("secret"),
        "password echoed: {}",
        r.body
    );

    // Nothing changed: no database or login role appeared or vanished.
    assert_eq!(snapshot(&env).await, before);
    assert_eq!(c.service_status().await, "healthy");
    // Stop while the HTTP/2 client can still answer the agent's GOAWAY.
    assert_eq!(
        agent.terminate().await.code(),
        Some(0),
        "log:\n{}",
        agent.stderr()
    );
    drop(h2);
}

#[tokio::test]
async fn client_certificates_are_enforced() {
    let env = TestEnv::new();
    let _agent = env.start_agent().await;
    let good = env.client();
    assert_eq!(good.call("rpc_ping", json!({})).await, json!(true));

    // A client certificate from another CA, and no client certificate at all: refused during
    // the TLS handshake, so no HTTP reply of any kind comes back.
    let rogue = RpcClient::mtls(&env.https_url(), &env.certs, Identity::Rogue);
    let r = rogue.try_rpc("rpc_ping", &json!({})).await;
    assert!(
        r.is_err(),
        "rogue client certificate accepted: {:?}",
        r.map(|r| r.body)
    );
    let r = rogue.try_get("/healthz").await;
    assert!(
        r.is_err(),
        "rogue client certificate accepted on /healthz: {:?}",
        r.map(|r| r.body)
    );

    let anonymous = RpcClient::mtls(&env.https_url(), &env.certs, Identity::None);
    let r = anonymous.try_rpc("rpc_ping", &json!({})).await;
    assert!(
        r.is_err(),
        "no client certificate accepted: {:?}",
        r.map(|r| r.body)
    );

    // Plain HTTP to the TLS port gets no RPC reply either.
    let plain = RpcClient::plain(&format!("http://127.0.0.1:{}", env.http_port));
    if let Ok(r) = plain.try_rpc("rpc_ping", &json!({})).await {
        assert!(
            r.body.get("result").is_none(),
            "plaintext request served: {} {}",
            r.status,
            r.body
        );
    }

    // The agent is unharmed.
    assert_eq!(good.call("rpc_ping", json!({})).await, json!(true));
}

/// Runs `guest-agent run` with `config` and expects exit code 64; returns stderr.
fn run_expecting_usage_error(env: &TestEnv, config: &Value) -> String {
    let path = write_config(env, config);
    let out = run_to_exit(&["run", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(64),
        "expected exit 64 (EX_USAGE); stderr:\n{stderr}"
    );
    assert!(!stderr.trim().is_empty(), "exit 64 without a message");
    stderr
}

#[test]
fn plaintext_on_a_non_loopback_address_is_refused() {
    let env = TestEnv::new();
    let mut cfg = env.config();
    cfg["transport"]["http"] =
        json!({"enabled": true, "listen": format!("0.0.0.0:{}", env.http_port)});
    let stderr = run_expecting_usage_error(&env, &cfg);
    let lower = stderr.to_lowercase();
    assert!(
        lower.contains("mutual tls") || lower.contains("mtls") || lower.contains("tls"),
        "message does not mention mutual TLS: {stderr}"
    );
    assert!(guest_agent_e2e::services::postgres::postmaster_pid(&env.data_dir).is_none());
}

#[test]
fn unknown_configuration_key_is_refused() {
    let env = TestEnv::new();
    let mut cfg = env.config();
    cfg["datastore"]["no_such_key"] = json!(1);
    let stderr = run_expecting_usage_error(&env, &cfg);
    assert!(
        stderr.contains("no_such_key"),
        "the unknown key is not named: {stderr}"
    );
}

#[test]
fn unknown_datastore_manager_is_refused() {
    let env = TestEnv::new();
    let mut cfg = env.config();
    cfg["datastore"]["manager"] = json!("cassandra");
    let stderr = run_expecting_usage_error(&env, &cfg);
    assert!(
        stderr.contains("cassandra"),
        "the bad manager is not named: {stderr}"
    );
    assert!(
        stderr.contains("postgresql"),
        "known managers are not listed: {stderr}"
    );
}

#[test]
fn check_config_redacts_and_validates() {
    let env = TestEnv::new();
    let path = write_config(&env, &env.config());
    let out = run_to_exit(&["check-config", "--config", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&env.pg_port.to_string()),
        "effective config lacks the port: {stdout}"
    );

    let mut bad = env.config();
    bad["agent"]["bogus"] = json!(true);
    let path = write_config(&env, &bad);
    let out = run_to_exit(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

//! Trove's guest agent operations over HTTPS with mutual TLS, against a real PostgreSQL 15,
//! each result checked with a direct database login that does not go through the agent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use guest_agent_e2e::agent::run_to_exit;
use guest_agent_e2e::services::postgres::{connect, database_names, describe, login};
use guest_agent_e2e::{
    APP_DB, APP_PASSWORD, APP_USER, ROOT_PASSWORD, ROOT_USER, TestEnv, prepare_args,
};
use serde_json::{Value, json};

/// `[items, next_marker]` → names of the items.
fn page_names(page: &Value) -> (Vec<String>, Value) {
    let arr = page
        .as_array()
        .unwrap_or_else(|| panic!("not a [items, marker] pair: {page}"));
    assert_eq!(arr.len(), 2, "not a [items, marker] pair: {page}");
    let names = arr[0]
        .as_array()
        .unwrap_or_else(|| panic!("items are not a list: {page}"))
        .iter()
        .map(|i| {
            i["_name"]
                .as_str()
                .unwrap_or_else(|| panic!("item without _name: {i}"))
                .to_owned()
        })
        .collect();
    (names, arr[1].clone())
}

/// Whether `user` can log in to `db` and create a table there.
async fn can_connect_and_create(
    env: &TestEnv,
    user: &str,
    pw: &str,
    db: &str,
    table: &str,
) -> (bool, bool) {
    match connect(env.pg_port, user, pw, db).await {
        Err(_) => (false, false),
        Ok(c) => {
            let created = c
                .batch_execute(&format!("CREATE TABLE {table} (id int)"))
                .await
                .is_ok();
            (true, created)
        }
    }
}

#[tokio::test]
async fn prepare_status_and_admin_operations() {
    let env = TestEnv::new();
    let _agent = env.start_agent().await;
    let c = env.client();

    // Before prepare: new, not ready.
    assert_eq!(c.service_status().await, "new");
    assert_eq!(c.get("/readyz").await.status, 503);

    // prepare answers at once with a tracked operation; poll it.
    let started = c.call("prepare", prepare_args()).await;
    let op = &started["operation"];
    assert!(op["id"].is_string(), "{started}");
    assert!(
        op["state"] == "running" || op["state"] == "succeeded",
        "unexpected initial state: {started}"
    );
    let done = c.wait_operation(op["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["method"], "prepare", "{done}");
    c.wait_status("healthy").await;
    assert_eq!(c.get("/readyz").await.status, 200);
    let by_route = c
        .get(&format!("/v1/operations/{}", op["id"].as_str().unwrap()))
        .await;
    assert_eq!(by_route.status, 200, "{}", by_route.body);
    // The route answers with the operation itself (which has a "result" key of its own).
    let by_route_op = if by_route.body.get("state").is_some() {
        &by_route.body
    } else {
        &by_route.body["result"]
    };
    assert_eq!(by_route_op["state"], "succeeded", "{}", by_route.body);

    // A second prepare is refused (409) and changes nothing.
    c.call_err("prepare", prepare_args())
        .await
        .assert_error(409, "InvalidState");

    // prepare's database, user and root password are real.
    let root = env.root_login("postgres").await;
    let su: bool = root
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(su, "root from prepare(root_password) is not a superuser");
    assert!(database_names(&root).await.contains(&APP_DB.to_owned()));
    let app = login(env.pg_port, APP_USER, APP_PASSWORD, APP_DB).await;
    app.batch_execute("CREATE TABLE t_prepare (id int); INSERT INTO t_prepare VALUES (1)")
        .await
        .unwrap_or_else(|e| panic!("prepared user cannot create a table: {}", describe(&e)));
    assert_eq!(c.call("is_root_enabled", json!({})).await, json!(true));

    // Databases: create, list, delete.
    let r = c
        .call(
            "create_database",
            json!({"databases": [
                {"_name": "db_a", "_character_set": null, "_collate": null},
                {"_name": "db_b", "_character_set": "UTF8", "_collate": null},
            ]}),
        )
        .await;
    assert_eq!(r, Value::Null);
    let dbs = database_names(&root).await;
    assert!(
        dbs.contains(&"db_a".to_owned()) && dbs.contains(&"db_b".to_owned()),
        "{dbs:?}"
    );
    let (listed, marker) = page_names(&c.call("list_databases", json!({})).await);
    assert_eq!(marker, Value::Null);
    for want in [APP_DB, "db_a", "db_b"] {
        assert!(
            listed.contains(&want.to_owned()),
            "{want} missing from {listed:?}"
        );
    }
    assert!(
        !listed.contains(&"template0".to_owned()),
        "templates listed: {listed:?}"
    );
    c.call("delete_database", json!({"database": {"_name": "db_b"}}))
        .await;
    assert!(!database_names(&root).await.contains(&"db_b".to_owned()));
    let (listed, _) = page_names(&c.call("list_databases", json!({})).await);
    assert!(!listed.contains(&"db_b".to_owned()), "{listed:?}");
    // Creating an existing database is idempotent (the driver contract): nothing changes.
    c.call("create_database", json!({"databases": [{"_name": "db_a"}]}))
        .await;
    assert!(database_names(&root).await.contains(&"db_a".to_owned()));

    // Users: create (with access), get, list.
    c.call(
        "create_user",
        json!({"users": [{"_name": "u1", "_password": "u1-Pass-0001", "_host": "%",
            "_databases": [{"_name": "db_a", "_character_set": null, "_collate": null}],
            "_is_root": false}]}),
    )
    .await;
    let (conn, created) = can_connect_and_create(&env, "u1", "u1-Pass-0001", "db_a", "t_u1").await;
    assert!(
        conn && created,
        "u1 with access to db_a: connect={conn} create={created}"
    );
    let u = c
        .call("get_user", json!({"username": "u1", "hostname": "%"}))
        .await;
    assert_eq!(u["_name"], "u1", "{u}");
    let access: Vec<&str> = u["_databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["_name"].as_str().unwrap())
        .collect();
    assert!(access.contains(&"db_a"), "{u}");
    assert!(
        u.get("_password").is_none_or(Value::is_null),
        "password leaked: {u}"
    );
    let (users, _) = page_names(&c.call("list_users", json!({})).await);
    assert!(
        users.contains(&"u1".to_owned()) && users.contains(&APP_USER.to_owned()),
        "{users:?}"
    );
    let absent = c
        .rpc("get_user", &json!({"username": "nobody", "hostname": "%"}))
        .await;
    assert!(
        (absent.status == 200 && absent.body["result"].is_null()) || absent.status == 404,
        "get_user of a missing user: {} {}",
        absent.status,
        absent.body
    );

    // Grants: a user without access gains it with grant_access and loses it with revoke.
    c.call("create_database", json!({"databases": [{"_name": "db_c"}]}))
        .await;
    c.call(
        "create_user",
        json!({"users": [{"_name": "u2", "_password": "u2-Pass-0002"}]}),
    )
    .await;
    c.call(
        "grant_access",
        json!({"username": "u2", "hostname": "%", "databases": ["db_c"]}),
    )
    .await;
    let (conn, created) =
        can_connect_and_create(&env, "u2", "u2-Pass-0002", "db_c", "t_granted").await;
    assert!(
        conn && created,
        "after grant_access: connect={conn} create={created}"
    );
    let access = c
        .call("list_access", json!({"username": "u2", "hostname": "%"}))
        .await;
    assert!(
        access
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["_name"] == "db_c"),
        "list_access after grant: {access}"
    );
    c.call(
        "revoke_access",
        json!({"username": "u2", "hostname": "%", "database": "db_c"}),
    )
    .await;
    let (conn, created) =
        can_connect_and_create(&env, "u2", "u2-Pass-0002", "db_c", "t_revoked").await;
    assert!(
        !(conn && created),
        "after revoke_access u2 can still connect and create a table"
    );
    let access = c
        .call("list_access", json!({"username": "u2", "hostname": "%"}))
        .await;
    assert!(
        !access
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["_name"] == "db_c"),
        "list_access after revoke: {access}"
    );

    // change_passwords: the old password stops working, the new one works.
    c.call(
        "change_passwords",
        json!({"users": [{"name": "u1", "host": "%", "password": "u1-New-Pass-9"}]}),
    )
    .await;
    assert!(
        connect(env.pg_port, "u1", "u1-Pass-0001", "db_a")
            .await
            .is_err()
    );
    login(env.pg_port, "u1", "u1-New-Pass-9", "db_a").await;

    // update_attributes: rename keeps the password and the access.
    c.call(
        "update_attributes",
        json!({"username": "u1", "hostname": "%", "user_attrs": {"name": "u1_renamed"}}),
    )
    .await;
    let old = c
        .rpc("get_user", &json!({"username": "u1", "hostname": "%"}))
        .await;
    assert!(
        (old.status == 200 && old.body["result"].is_null()) || old.status == 404,
        "old name still there: {} {}",
        old.status,
        old.body
    );
    let renamed = c
        .call(
            "get_user",
            json!({"username": "u1_renamed", "hostname": "%"}),
        )
        .await;
    assert_eq!(renamed["_name"], "u1_renamed");
    assert!(
        connect(env.pg_port, "u1", "u1-New-Pass-9", "db_a")
            .await
            .is_err()
    );
    login(env.pg_port, "u1_renamed", "u1-New-Pass-9", "db_a").await;

    // delete_user: the login is gone.
    c.call(
        "create_user",
        json!({"users": [{"_name": "u3", "_password": "u3-Pass-0003"}]}),
    )
    .await;
    login(env.pg_port, "u3", "u3-Pass-0003", "postgres").await;
    c.call(
        "delete_user",
        json!({"user": {"_name": "u3", "_host": "%"}}),
    )
    .await;
    assert!(
        connect(env.pg_port, "u3", "u3-Pass-0003", "postgres")
            .await
            .is_err()
    );
    let (users, _) = page_names(&c.call("list_users", json!({})).await);
    assert!(!users.contains(&"u3".to_owned()), "{users:?}");

    // The prepared user's data is still there after all of this.
    let n: i64 = app
        .query_one("SELECT count(*) FROM t_prepare", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn pagination_filesystem_stats_and_root() {
    let env = TestEnv::new();
    let (_agent, c) = env.prepared_agent().await;

    // Pagination with limit and marker walks every database exactly once.
    let names: Vec<Value> = (0..5)
        .map(|i| json!({"_name": format!("page_{i:02}")}))
        .collect();
    c.call("create_database", json!({"databases": names})).await;
    let (all, marker) = page_names(&c.call("list_databases", json!({})).await);
    assert_eq!(marker, Value::Null);
    assert!(all.len() >= 6, "{all:?}");
    let mut walked = Vec::new();
    let mut marker = Value::Null;
    for _ in 0..all.len() + 1 {
        let mut args = json!({"limit": 2});
        if !marker.is_null() {
            args["marker"] = marker.clone();
        }
        let (items, next) = page_names(&c.call("list_databases", args).await);
        assert!(items.len() <= 2, "page larger than the limit: {items:?}");
        walked.extend(items);
        if next.is_null() {
            break;
        }
        marker = next;
    }
    assert_eq!(
        walked, all,
        "paging with limit 2 did not return the full list in order"
    );
    let distinct: BTreeSet<&String> = walked.iter().collect();
    assert_eq!(distinct.len(), walked.len(), "duplicates: {walked:?}");
    let (users, _) = page_names(&c.call("list_users", json!({})).await);
    let (first, next) = page_names(&c.call("list_users", json!({"limit": 1})).await);
    assert_eq!(first.len(), 1);
    if users.len() > 1 {
        assert!(!next.is_null(), "limit 1 of {users:?} gave no marker");
    }

    // get_filesystem_stats has Trove's keys.
    let fs = c
        .call(
            "get_filesystem_stats",
            json!({"fs_path": "/var/lib/postgresql"}),
        )
        .await;
    for k in [
        "block_size",
        "total_blocks",
        "free_blocks",
        "avail_blocks",
        "total",
        "free",
        "used",
    ] {
        assert!(
            fs[k].is_number(),
            "get_filesystem_stats lacks numeric '{k}': {fs}"
        );
    }
    assert!(fs["total"].as_f64().unwrap() > 0.0, "{fs}");

    // get_root_password is not supported, with Trove's text.
    let r = c.call_err("get_root_password", json!({})).await;
    r.assert_error(501, "NotSupported");
    assert_eq!(
        r.error_message().unwrap(),
        "The 'get_root_password' operation is not supported for the 'postgresql' datastore.",
        "{}",
        r.body
    );

    // Root: disable, then enable with a generated password (superuser), then disable again.
    c.call("disable_root", json!({})).await;
    assert!(
        connect(env.pg_port, ROOT_USER, ROOT_PASSWORD, "postgres")
            .await
            .is_err()
    );
    assert_eq!(c.call("is_root_enabled", json!({})).await, json!(false));
    let root = c.call("enable_root", json!({})).await;
    assert_eq!(root["_name"], ROOT_USER, "{root}");
    let pw = root["_password"]
        .as_str()
        .unwrap_or_else(|| panic!("no password: {root}"));
    assert!(pw.len() >= 8, "weak generated password: {root}");
    let conn = login(env.pg_port, ROOT_USER, pw, "postgres").await;
    let su: bool = conn
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(su, "enable_root did not make a superuser");
    assert_eq!(c.call("is_root_enabled", json!({})).await, json!(true));
    drop(conn);
    let root2 = c
        .call(
            "enable_root_with_password",
            json!({"root_password": "Chosen-Root-Pw-1"}),
        )
        .await;
    assert_eq!(root2["_password"], "Chosen-Root-Pw-1", "{root2}");
    login(env.pg_port, ROOT_USER, "Chosen-Root-Pw-1", "postgres").await;
    c.call("disable_root", json!({})).await;
    assert!(
        connect(env.pg_port, ROOT_USER, "Chosen-Root-Pw-1", "postgres")
            .await
            .is_err()
    );
    assert_eq!(c.call("is_root_enabled", json!({})).await, json!(false));
}

#[tokio::test]
async fn stop_restart_and_readiness() {
    let env = TestEnv::new();
    let (_agent, c) = env.prepared_agent().await;
    assert_eq!(c.get("/readyz").await.status, 200);
    assert_eq!(c.get("/healthz").await.status, 200);
    let metrics = c.get("/metrics").await;
    assert_eq!(metrics.status, 200);

    c.call("stop_db", json!({"do_not_start_on_reboot": false}))
        .await;
    c.wait_status("shutdown").await;
    assert_eq!(c.get("/readyz").await.status, 503);
    assert_eq!(
        c.get("/healthz").await.status,
        200,
        "the agent itself stays live"
    );
    assert!(
        connect(env.pg_port, APP_USER, APP_PASSWORD, APP_DB)
            .await
            .is_err()
    );

    c.call("restart", json!({})).await;
    c.wait_status("healthy").await;
    assert_eq!(c.get("/readyz").await.status, 200);
    login(env.pg_port, APP_USER, APP_PASSWORD, APP_DB).await;

    // restart of a running server also comes back healthy.
    c.call("restart", json!({})).await;
    c.wait_status("healthy").await;
    login(env.pg_port, APP_USER, APP_PASSWORD, APP_DB).await;
}

/// Parses a `call` reply printed on stdout; accepts the bare value or `{"result": value}`.
fn printed_result(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    let v: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("`call` did not print JSON ({e}): {text}"));
    match v {
        Value::Object(ref m) if m.contains_key("result") && m.len() == 1 => m["result"].clone(),
        other => other,
    }
}

#[tokio::test]
async fn call_cli_against_the_agent() {
    let env = TestEnv::new();
    let (_agent, c) = env.prepared_agent().await;
    c.call(
        "create_database",
        json!({"databases": [{"_name": "cli_db"}]}),
    )
    .await;
    let url = env.https_url();
    let ca = env.certs.ca_cert.to_str().unwrap();
    let cert = env.certs.client_cert.to_str().unwrap();
    let key = env.certs.client_key.to_str().unwrap();
    let tls = [
        "--url",
        url.as_str(),
        "--ca",
        ca,
        "--cert",
        cert,
        "--key",
        key,
    ];

    let out = run_to_exit(&[&["call", "rpc_ping"], &tls[..]].concat());
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(printed_result(&out.stdout), json!(true));

    let out = run_to_exit(&[&["call", "list_databases", "--args", "{}"], &tls[..]].concat());
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (names, _) = page_names(&printed_result(&out.stdout));
    assert!(names.contains(&"cli_db".to_owned()), "{names:?}");

    let out = run_to_exit(
        &[
            &[
                "call",
                "get_user",
                "--args",
                r#"{"username":"app_user","hostname":"%"}"#,
            ],
            &tls[..],
        ]
        .concat(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(printed_result(&out.stdout)["_name"], APP_USER);

    // An error reply: exit 1, and the error type is shown.
    let out = run_to_exit(&[&["call", "no_such_method"], &tls[..]].concat());
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shown.contains("NoSuchMethod"), "{shown}");

    // A transport failure: exit 2 (nothing listens on that port).
    let closed = format!("https://127.0.0.1:{}", guest_agent_e2e::free_port());
    let out = run_to_exit(&[
        "call",
        "rpc_ping",
        "--url",
        &closed,
        "--ca",
        ca,
        "--cert",
        cert,
        "--key",
        key,
        "--timeout",
        "10",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The CLI refuses to talk TLS without a client identity the agent accepts.
    let rogue = [
        "call",
        "rpc_ping",
        "--url",
        url.as_str(),
        "--ca",
        ca,
        "--cert",
        env.certs.rogue_cert.to_str().unwrap(),
        "--key",
        env.certs.rogue_key.to_str().unwrap(),
        "--timeout",
        "10",
    ];
    let out = run_to_exit(&rogue);
    assert_eq!(
        out.status.code(),
        Some(2),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

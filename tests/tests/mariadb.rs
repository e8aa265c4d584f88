//! Trove's guest agent operations for MariaDB (manager `mariadb`, OS user `mysql`) over
//! HTTPS with mutual TLS, against a real MariaDB 10.11 per test. Every result is checked with
//! direct sessions that do not go through the agent: as the users the agent created, or as
//! the driver's administrative account for the server's own view.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use guest_agent_e2e::RpcClient;
use guest_agent_e2e::mariadb::{
    MariaDirect, MariaEnv, describe, mariadb_prepare_args, server_code,
};
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

/// MariaDB's "access denied for user (using password)" error.
const ER_ACCESS_DENIED: u16 = 1045;
/// MariaDB's "access denied for user to database" error.
const ER_DBACCESS_DENIED: u16 = 1044;

/// `[items, next_marker]` → the items and the marker.
fn page(reply: &Value) -> (Vec<Value>, Value) {
    let arr = reply
        .as_array()
        .unwrap_or_else(|| panic!("not a [items, marker] pair: {reply}"));
    assert_eq!(arr.len(), 2, "not a [items, marker] pair: {reply}");
    let items = arr[0]
        .as_array()
        .unwrap_or_else(|| panic!("items are not a list: {reply}"))
        .clone();
    (items, arr[1].clone())
}

/// Walks `method` page by page with `limit`, returning every item in order; checks that no
/// page is larger than the limit and that the walk ends.
async fn walk_pages(c: &RpcClient, method: &str, limit: u32) -> Vec<Value> {
    let mut all = Vec::new();
    let mut marker = Value::Null;
    for _ in 0..1000 {
        let mut args = json!({"limit": limit});
        if !marker.is_null() {
            args["marker"] = marker.clone();
        }
        let (items, next) = page(&c.call(method, args).await);
        assert!(
            items.len() <= limit as usize,
            "{method}: page larger than {limit}: {items:?}"
        );
        all.extend(items);
        if next.is_null() {
            return all;
        }
        marker = next;
    }
    panic!("{method}: paging with limit {limit} never ended");
}

fn name_of(item: &Value) -> String {
    item["_name"]
        .as_str()
        .unwrap_or_else(|| panic!("item without _name: {item}"))
        .to_owned()
}

fn names(items: &[Value]) -> Vec<String> {
    items.iter().map(name_of).collect()
}

/// `(name, host)` of listed users.
fn user_keys(items: &[Value]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|u| {
            (
                name_of(u),
                u["_host"]
                    .as_str()
                    .unwrap_or_else(|| panic!("user without _host: {u}"))
                    .to_owned(),
            )
        })
        .collect()
}

/// Databases the agent should list: every database but the system ones.
async fn user_databases(d: &MariaDirect) -> Vec<String> {
    d.database_names()
        .await
        .into_iter()
        .filter(|n| {
            !["mysql", "information_schema", "performance_schema", "sys"].contains(&n.as_str())
        })
        .collect()
}

/// Asserts that logging in as `user` with `password` is refused with "access denied".
#[track_caller]
fn assert_login_refused(
    r: Result<mysql_async::Conn, mysql_async::Error>,
    user: &str,
    code: u16,
) -> impl std::future::Future<Output = ()> {
    let caller = std::panic::Location::caller();
    async move {
        match r {
            Ok(c) => {
                let _ = c.disconnect().await;
                panic!("{user} could still log in (checked at {caller})");
            }
            Err(e) => assert_eq!(
                server_code(&e),
                Some(code),
                "{user}: expected error {code}, got {} (checked at {caller})",
                describe(&e)
            ),
        }
    }
}

/// `SELECT CURRENT_USER()` of a session.
async fn current_user(c: &mut mysql_async::Conn) -> String {
    c.query_first::<String, _>("SELECT CURRENT_USER()")
        .await
        .unwrap()
        .unwrap()
}

/// Prepare arguments with a database and a user, for tests about other things.
fn simple_prepare() -> Value {
    mariadb_prepare_args(
        json!([{"_name": "app", "_character_set": null, "_collate": null}]),
        json!([{"_name": "app", "_password": "App-Pass-1234", "_host": "%",
                "_databases": [{"_name": "app"}]}]),
    )
}

#[tokio::test]
async fn prepare_databases_users_grants_and_root() {
    let m = MariaEnv::new();
    let _agent = m.start_agent().await;
    let c = m.client();
    let d = m.direct();

    // prepare is a tracked operation; poll it, then the datastore is healthy.
    assert_eq!(c.service_status().await, "new");
    let args = mariadb_prepare_args(
        json!([
            {"_name": "shop", "_character_set": "utf8mb4", "_collate": "utf8mb4_unicode_ci"},
            {"_name": "legacy", "_character_set": "latin1", "_collate": "latin1_swedish_ci"},
            {"_name": "plain", "_character_set": null, "_collate": null},
        ]),
        json!([
            {"_name": "app", "_password": "App-any-Pass-1", "_host": "%",
             "_databases": [{"_name": "shop"}], "_is_root": false},
            {"_name": "app", "_password": "App-local-Pass-2", "_host": "127.0.0.1",
             "_databases": [{"_name": "legacy"}], "_is_root": false},
        ]),
    );
    let started = c.call("prepare", args.clone()).await;
    let id = started["operation"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no operation id: {started}"))
        .to_owned();
    let op = c.wait_operation(&id).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["method"], "prepare", "{op}");
    c.wait_status("healthy").await;
    assert_eq!(c.get("/readyz").await.status, 200);
    let status = c.get("/v1/status").await.body;
    assert_eq!(status["driver"]["name"], "mysql", "{status}");
    c.call_err("prepare", args)
        .await
        .assert_error(409, "InvalidState");

    // The server runs as the OS user `mysql`.
    let pid = m.server_pid().expect("mariadbd runs");
    let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|r| r.split_whitespace().next().map(str::to_owned))
        .unwrap();
    let mysql = nix::unistd::User::from_name("mysql").unwrap().unwrap();
    assert_eq!(uid, mysql.uid.to_string(), "mariadbd does not run as mysql");

    // Databases with their character sets; the server is secured.
    assert_eq!(
        d.database_charset("shop").await,
        Some(("utf8mb4".to_owned(), "utf8mb4_unicode_ci".to_owned()))
    );
    assert_eq!(
        d.database_charset("legacy").await,
        Some(("latin1".to_owned(), "latin1_swedish_ci".to_owned()))
    );
    assert!(d.database_charset("plain").await.is_some());
    assert!(d.database_charset("test").await.is_none(), "test database");
    let accounts = d.accounts().await;
    assert!(
        accounts.iter().all(|(u, _)| !u.is_empty()),
        "anonymous accounts: {accounts:?}"
    );
    assert!(
        accounts
            .iter()
            .all(|(u, h)| u != "root" || h == "localhost"),
        "remote root after prepare: {accounts:?}"
    );
    assert!(d.account_exists("app", "%").await && d.account_exists("app", "127.0.0.1").await);

    // Host patterns are real: from 127.0.0.1 the specific account answers, over the socket
    // ('localhost') the '%' one does, each with its own password. (Database grants are
    // matched by the client's name and host, so both accounts reach both databases from
    // 127.0.0.1: that is the server's rule, not the agent's.)
    let mut local = d.login("app", "App-local-Pass-2", Some("legacy")).await;
    assert_eq!(current_user(&mut local).await, "app@127.0.0.1");
    let _ = local.disconnect().await;
    d.write_as("app", "App-local-Pass-2", "legacy")
        .await
        .unwrap();
    assert_login_refused(
        d.connect("app", "App-any-Pass-1", None).await,
        "app@127.0.0.1 with app@%'s password",
        ER_ACCESS_DENIED,
    )
    .await;
    let mut any = d
        .connect_socket("app", "App-any-Pass-1", Some("shop"))
        .await
        .unwrap_or_else(|e| panic!("app@% over the socket: {}", describe(&e)));
    assert_eq!(current_user(&mut any).await, "app@%");
    any.query_drop("CREATE TABLE t_any (id INT PRIMARY KEY); INSERT INTO t_any VALUES (1)")
        .await
        .unwrap_or_else(|e| panic!("app@% cannot write in shop: {}", describe(&e)));
    let _ = any.disconnect().await;

    // Databases: create (with a character set), list page by page, delete.
    c.call(
        "create_database",
        json!({"databases": [
            {"_name": "db_a", "_character_set": null, "_collate": null},
            {"_name": "db_b", "_character_set": "utf8mb4", "_collate": "utf8mb4_bin"},
            {"_name": "db_c"},
        ]}),
    )
    .await;
    assert_eq!(
        d.database_charset("db_b").await,
        Some(("utf8mb4".to_owned(), "utf8mb4_bin".to_owned()))
    );
    let (one_page, marker) = page(&c.call("list_databases", json!({})).await);
    assert_eq!(marker, Value::Null);
    let walked = walk_pages(&c, "list_databases", 2).await;
    assert_eq!(
        walked, one_page,
        "paging with limit 2 differs from one page"
    );
    let listed = names(&walked);
    assert_eq!(listed, user_databases(&d).await, "listing vs the server");
    let db_b = walked.iter().find(|i| i["_name"] == "db_b").unwrap();
    assert_eq!(db_b["_character_set"], "utf8mb4", "{db_b}");
    assert_eq!(db_b["_collate"], "utf8mb4_bin", "{db_b}");
    c.call("delete_database", json!({"database": {"_name": "db_b"}}))
        .await;
    assert!(d.database_charset("db_b").await.is_none());
    assert!(!names(&walk_pages(&c, "list_databases", 10).await).contains(&"db_b".to_owned()));
    // Creating an existing database changes nothing.
    c.call("create_database", json!({"databases": [{"_name": "shop"}]}))
        .await;
    assert_eq!(
        d.database_charset("shop").await,
        Some(("utf8mb4".to_owned(), "utf8mb4_unicode_ci".to_owned()))
    );

    // Users: create with access, get, list page by page, delete.
    c.call(
        "create_user",
        json!({"users": [{"_name": "u1", "_password": "u1-Pass-0001", "_host": "%",
            "_databases": [{"_name": "db_a"}], "_is_root": false}]}),
    )
    .await;
    d.write_as("u1", "u1-Pass-0001", "db_a").await.unwrap();
    let u = c
        .call("get_user", json!({"username": "u1", "hostname": "%"}))
        .await;
    assert_eq!(
        (&u["_name"], &u["_host"]),
        (&json!("u1"), &json!("%")),
        "{u}"
    );
    assert_eq!(names(u["_databases"].as_array().unwrap()), ["db_a"], "{u}");
    assert!(
        u.get("_password").is_none_or(Value::is_null),
        "password leaked: {u}"
    );
    let other_host = c
        .call(
            "get_user",
            json!({"username": "u1", "hostname": "127.0.0.1"}),
        )
        .await;
    assert_eq!(other_host, Value::Null, "u1@127.0.0.1 does not exist");
    let (one_page, _) = page(&c.call("list_users", json!({})).await);
    let walked = walk_pages(&c, "list_users", 1).await;
    assert_eq!(
        walked, one_page,
        "paging with limit 1 differs from one page"
    );
    let listed: BTreeSet<(String, String)> = user_keys(&walked).into_iter().collect();
    let want: BTreeSet<(String, String)> = [("app", "%"), ("app", "127.0.0.1"), ("u1", "%")]
        .into_iter()
        .map(|(u, h)| (u.to_owned(), h.to_owned()))
        .collect();
    assert_eq!(listed, want, "internal accounts must not be listed");
    let app_local = walked
        .iter()
        .find(|u| u["_name"] == "app" && u["_host"] == "127.0.0.1")
        .unwrap();
    assert_eq!(
        names(app_local["_databases"].as_array().unwrap()),
        ["legacy"]
    );
    c.call(
        "delete_user",
        json!({"user": {"_name": "u1", "_host": "%"}}),
    )
    .await;
    assert!(!d.account_exists("u1", "%").await);
    assert_login_refused(
        d.connect("u1", "u1-Pass-0001", None).await,
        "deleted u1",
        ER_ACCESS_DENIED,
    )
    .await;

    // Grants per database, checked as the user: granted can create a table, revoked cannot.
    c.call(
        "create_user",
        json!({"users": [{"_name": "u2", "_password": "u2-Pass-0002", "_host": "%"}]}),
    )
    .await;
    assert_login_refused(
        d.connect("u2", "u2-Pass-0002", Some("db_c")).await,
        "u2 to db_c before grant_access",
        ER_DBACCESS_DENIED,
    )
    .await;
    c.call(
        "grant_access",
        json!({"username": "u2", "hostname": "%", "databases": ["db_c", "db_a"]}),
    )
    .await;
    d.write_as("u2", "u2-Pass-0002", "db_c").await.unwrap();
    d.write_as("u2", "u2-Pass-0002", "db_a").await.unwrap();
    let access = c
        .call("list_access", json!({"username": "u2", "hostname": "%"}))
        .await;
    let mut got = names(access.as_array().unwrap());
    got.sort();
    assert_eq!(got, ["db_a", "db_c"], "{access}");
    // A session opened before the revoke loses its access too.
    let mut open = d.login("u2", "u2-Pass-0002", Some("db_c")).await;
    c.call(
        "revoke_access",
        json!({"username": "u2", "hostname": "%", "database": "db_c"}),
    )
    .await;
    let still = open
        .query_drop("CREATE TABLE t_after_revoke (id INT)")
        .await;
    assert!(
        still.is_err(),
        "a session opened before revoke_access can still create a table"
    );
    drop(open);
    let denied = d.write_as("u2", "u2-Pass-0002", "db_c").await.unwrap_err();
    assert!(denied.contains("denied"), "{denied}");
    assert!(
        d.admin_value(
            "SELECT COUNT(*) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = 'db_c' AND TABLE_NAME = 't_after_revoke'"
        )
        .await
            == Some("0".to_owned()),
        "the table was created after the revoke"
    );
    d.write_as("u2", "u2-Pass-0002", "db_a").await.unwrap();
    let access = c
        .call("list_access", json!({"username": "u2", "hostname": "%"}))
        .await;
    assert_eq!(names(access.as_array().unwrap()), ["db_a"], "{access}");

    // change_passwords: the old password fails, the new one works.
    c.call(
        "change_passwords",
        json!({"users": [{"name": "app", "host": "127.0.0.1", "password": "App-local-New-3"}]}),
    )
    .await;
    assert_login_refused(
        d.connect("app", "App-local-Pass-2", None).await,
        "app@127.0.0.1 with the old password",
        ER_ACCESS_DENIED,
    )
    .await;
    d.write_as("app", "App-local-New-3", "legacy")
        .await
        .unwrap();
    // The other host's account kept its password.
    d.connect_socket("app", "App-any-Pass-1", None)
        .await
        .unwrap_or_else(|e| panic!("app@% lost its password: {}", describe(&e)));

    // update_attributes: new name, new host, new password; the grants move along.
    c.call(
        "update_attributes",
        json!({"username": "u2", "hostname": "%",
               "user_attrs": {"name": "u3", "host": "127.0.0.1", "password": "u3-Pass-0003"}}),
    )
    .await;
    assert!(!d.account_exists("u2", "%").await);
    assert!(d.account_exists("u3", "127.0.0.1").await);
    assert_login_refused(
        d.connect("u2", "u2-Pass-0002", None).await,
        "u2 after the rename",
        ER_ACCESS_DENIED,
    )
    .await;
    assert_login_refused(
        d.connect("u3", "u2-Pass-0002", None).await,
        "u3 with the old password",
        ER_ACCESS_DENIED,
    )
    .await;
    let mut u3 = d.login("u3", "u3-Pass-0003", Some("db_a")).await;
    assert_eq!(current_user(&mut u3).await, "u3@127.0.0.1");
    let _ = u3.disconnect().await;
    d.write_as("u3", "u3-Pass-0003", "db_a").await.unwrap();
    let u = c
        .call(
            "get_user",
            json!({"username": "u3", "hostname": "127.0.0.1"}),
        )
        .await;
    assert_eq!(names(u["_databases"].as_array().unwrap()), ["db_a"], "{u}");
    let gone = c
        .call("get_user", json!({"username": "u2", "hostname": "%"}))
        .await;
    assert_eq!(gone, Value::Null);

    // Root: not enabled by prepare without a root password; enable, log in, disable.
    assert_eq!(c.call("is_root_enabled", json!({})).await, json!(false));
    let root = c.call("enable_root", json!({})).await;
    assert_eq!(root["_name"], "root", "{root}");
    let pw = root["_password"]
        .as_str()
        .unwrap_or_else(|| panic!("no password: {root}"))
        .to_owned();
    assert!(pw.len() >= 16, "weak generated root password: {root}");
    assert_eq!(c.call("is_root_enabled", json!({})).await, json!(true));
    let mut r = d.login("root", &pw, None).await;
    assert_eq!(current_user(&mut r).await, "root@%");
    r.query_drop("CREATE DATABASE made_by_root")
        .await
        .unwrap_or_else(|e| panic!("root@% is not a superuser: {}", describe(&e)));
    let _ = r.disconnect().await;
    let again = c
        .call(
            "enable_root_with_password",
            json!({"root_password": "Root-Chosen-Pass-77"}),
        )
        .await;
    assert_eq!(again["_password"], "Root-Chosen-Pass-77", "{again}");
    assert_login_refused(
        d.connect("root", &pw, None).await,
        "root with the replaced password",
        ER_ACCESS_DENIED,
    )
    .await;
    d.login("root", "Root-Chosen-Pass-77", None)
        .await
        .disconnect()
        .await
        .unwrap();
    c.call("disable_root", json!({})).await;
    assert_eq!(c.call("is_root_enabled", json!({})).await, json!(false));
    assert_login_refused(
        d.connect("root", "Root-Chosen-Pass-77", None).await,
        "root after disable_root",
        ER_ACCESS_DENIED,
    )
    .await;
    assert!(!d.account_exists("root", "%").await);
    // Root stays out of Trove's user operations.
    let (users, _) = page(&c.call("list_users", json!({})).await);
    assert!(
        user_keys(&users).iter().all(|(u, _)| u != "root"),
        "{users:?}"
    );
}

/// Whether `result` (the reply of `update_overrides`) reports `key` as waiting for a
/// restart: a `restart_required` list naming it, anywhere in the reply.
fn reports_restart_required(result: &Value, key: &str) -> bool {
    match result {
        Value::Object(m) => m.iter().any(|(k, v)| {
            (k == "restart_required"
                && v.as_array()
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(key))))
                || reports_restart_required(v, key)
        }),
        Value::Array(a) => a.iter().any(|v| reports_restart_required(v, key)),
        _ => false,
    }
}

#[tokio::test]
async fn configuration_overrides_through_the_agent() {
    let m = MariaEnv::new();
    let (_agent, c) = m.prepared_agent(simple_prepare()).await;
    let d = m.direct();
    let pid = m.server_pid().expect("mariadbd runs");
    let sized = d.global("max_connections").await;
    let log_buffer = d.global("innodb_log_buffer_size").await;
    assert_ne!(sized, "321");
    assert_ne!(log_buffer, "33554432");

    // A dynamic parameter takes effect at once, without a restart, and is persisted.
    let r = c
        .call(
            "update_overrides",
            json!({"overrides": {"max_connections": 321}, "remove": false}),
        )
        .await;
    assert_eq!(d.global("max_connections").await, "321", "reply: {r}");
    assert_eq!(m.server_pid(), Some(pid), "a dynamic override restarted");
    assert!(!reports_restart_required(&r, "max_connections"), "{r}");
    let file = std::fs::read_to_string(m.overrides_file()).unwrap();
    assert!(file.contains("max_connections = 321"), "{file}");

    // A restart-required one is reported, and takes effect after `restart`. The override set
    // is replaced as a whole, so it names both.
    let r = c
        .call(
            "update_overrides",
            json!({"overrides": {"max_connections": 321, "innodb_log_buffer_size": "32M"}}),
        )
        .await;
    assert!(
        reports_restart_required(&r, "innodb_log_buffer_size"),
        "innodb_log_buffer_size not reported as restart-required: {r}"
    );
    assert_eq!(d.global("innodb_log_buffer_size").await, log_buffer);
    assert_eq!(m.server_pid(), Some(pid));
    c.call("restart", json!({})).await;
    c.wait_status("healthy").await;
    assert_ne!(m.server_pid(), Some(pid), "restart kept the old server");
    assert_eq!(d.global("innodb_log_buffer_size").await, "33554432");
    assert_eq!(d.global("max_connections").await, "321");

    // Invalid overrides are refused with 400 naming the key, and nothing changes: neither the
    // file nor the live values, even for the valid keys sent with them.
    let file_before = std::fs::read(m.overrides_file()).unwrap();
    let pid = m.server_pid();
    for (overrides, key) in [
        (
            json!({"max_connections": 500, "no_such_knob": 1}),
            "no_such_knob",
        ),
        (json!({"max_connections": "lots"}), "max_connections"),
        (json!({"max_connections": 0}), "max_connections"),
        (json!({"max_connections": 1_000_000}), "max_connections"),
        (
            json!({"max_connections": 500, "wait_timeout": -5}),
            "wait_timeout",
        ),
        (
            json!({"max_connections": 500, "innodb_buffer_pool_size": "lots"}),
            "innodb_buffer_pool_size",
        ),
        // Settings the driver manages itself.
        (json!({"max_connections": 500, "server_id": 7}), "server_id"),
        (json!({"read_only": false}), "read_only"),
        (json!({"init_file": "/tmp/evil.sql"}), "init_file"),
        (json!({"datadir": "/"}), "datadir"),
    ] {
        let r = c
            .call_err("update_overrides", json!({"overrides": overrides.clone()}))
            .await;
        assert_eq!(r.status, 400, "{overrides}: {}", r.body);
        let msg = r.error_message().unwrap_or_default();
        assert!(
            msg.contains(key),
            "{overrides}: the error does not name {key}: {}",
            r.body
        );
        assert_eq!(
            std::fs::read(m.overrides_file()).unwrap(),
            file_before,
            "{overrides} changed the overrides file"
        );
        assert_eq!(d.global("max_connections").await, "321", "{overrides}");
    }
    assert_eq!(
        m.server_pid(),
        pid,
        "a refused override restarted the server"
    );
    c.wait_status("healthy").await;

    // Removing the overrides (Trove's detach): the file no longer sets them; the running
    // values stay until a restart, which is reported; after it the sized value is back.
    let r = c
        .call("update_overrides", json!({"overrides": {}, "remove": true}))
        .await;
    assert!(reports_restart_required(&r, "max_connections"), "{r}");
    let file = std::fs::read_to_string(m.overrides_file()).unwrap_or_default();
    assert!(!file.contains("max_connections"), "{file}");
    assert_eq!(d.global("max_connections").await, "321");
    c.call("restart", json!({})).await;
    c.wait_status("healthy").await;
    assert_eq!(d.global("max_connections").await, sized);
    assert_eq!(d.global("innodb_log_buffer_size").await, log_buffer);
}

#[tokio::test]
async fn hostile_identifiers_are_refused_and_change_nothing() {
    let m = MariaEnv::new();
    let (_agent, c) = m.prepared_agent(simple_prepare()).await;
    let d = m.direct();
    let before = (d.database_names().await, d.accounts().await);

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "create_database",
            json!({"databases": [{"_name": "fine_db"}, {"_name": "x`; DROP DATABASE app; -- "}]}),
            "databases[1]._name",
        ),
        (
            "create_database",
            json!({"databases": [{"_name": "x'y"}]}),
            "databases[0]._name",
        ),
        (
            "create_database",
            json!({"databases": [{"_name": "cs_db", "_character_set": "utf8mb4; DROP DATABASE app"}]}),
            "databases[0]",
        ),
        (
            "create_database",
            json!({"databases": [{"_name": "a".repeat(65)}]}),
            "databases[0]._name",
        ),
        (
            "create_user",
            json!({"users": [{"_name": "ok_user", "_password": "Ok-Pass-1"},
                             {"_name": "ev`il", "_password": "Evil-Pass-1"}]}),
            "users[1]._name",
        ),
        (
            "create_user",
            json!({"users": [{"_name": "h_user", "_password": "H-Pass-1", "_host": "%' OR '1'='1"}]}),
            "users[0]._host",
        ),
        (
            "create_user",
            json!({"users": [{"_name": "p_user", "_password": "nul\u{0}byte"}]}),
            "users[0]._password",
        ),
        (
            "create_user",
            json!({"users": [{"_name": "d_user", "_password": "D-Pass-1",
                              "_databases": [{"_name": "app`.* TO `x"}]}]}),
            "users[0]._databases[0]._name",
        ),
        (
            "get_user",
            json!({"username": "root`@`%", "hostname": "%"}),
            "username",
        ),
        (
            "list_access",
            json!({"username": "app", "hostname": "%'; --"}),
            "hostname",
        ),
        (
            "grant_access",
            json!({"username": "app", "hostname": "%", "databases": ["app", "*"]}),
            "databases[1]",
        ),
        (
            "revoke_access",
            json!({"username": "app", "hostname": "%", "database": "app`; DROP DATABASE app; --"}),
            "database",
        ),
        (
            "delete_database",
            json!({"database": {"_name": "../mysql"}}),
            "database._name",
        ),
        (
            "delete_user",
            json!({"user": {"_name": "app\u{0}", "_host": "%"}}),
            "user._name",
        ),
        (
            "change_passwords",
            json!({"users": [{"name": "app'@'%", "host": "%", "password": "New-Pass-1"}]}),
            "users[0].name",
        ),
        (
            "update_attributes",
            json!({"username": "app", "hostname": "%", "user_attrs": {"name": "x\"y"}}),
            "user_attrs.name",
        ),
        (
            "update_attributes",
            json!({"username": "app", "hostname": "%", "user_attrs": {"host": "a b"}}),
            "user_attrs.host",
        ),
        ("list_users", json!({"limit": "all"}), "limit"),
    ];
    for (method, args, field) in &cases {
        let r = c.call_err(method, args.clone()).await;
        assert_eq!(r.status, 400, "{method}({args}): {}", r.body);
        let msg = r.error_message().unwrap_or_default();
        assert!(
            msg.contains(&format!("'{field}'")),
            "{method}({args}): the error does not name '{field}': {}",
            r.body
        );
    }

    // Reserved accounts and databases are out of reach, whatever the status code says.
    let reserved: Vec<(&str, Value)> = vec![
        ("delete_database", json!({"database": {"_name": "mysql"}})),
        (
            "delete_user",
            json!({"user": {"_name": "os_admin", "_host": "localhost"}}),
        ),
        (
            "delete_user",
            json!({"user": {"_name": "root", "_host": "localhost"}}),
        ),
        (
            "create_user",
            json!({"users": [{"_name": "os_admin", "_password": "Take-Over-1", "_host": "%"}]}),
        ),
        (
            "change_passwords",
            json!({"users": [{"name": "os_admin", "host": "localhost", "password": "Take-Over-1"}]}),
        ),
        (
            "update_attributes",
            json!({"username": "app", "hostname": "%", "user_attrs": {"name": "os_admin"}}),
        ),
        (
            "grant_access",
            json!({"username": "app", "hostname": "%", "databases": ["mysql"]}),
        ),
    ];
    for (method, args) in &reserved {
        let r = c.call_err(method, args.clone()).await;
        assert!(
            (400..500).contains(&r.status),
            "{method}({args}): {} {}",
            r.status,
            r.body
        );
    }

    // The server is untouched: same databases, same accounts, the admin session still works,
    // and the application user still writes.
    assert_eq!((d.database_names().await, d.accounts().await), before);
    d.write_as("app", "App-Pass-1234", "app").await.unwrap();
    c.wait_status("healthy").await;
}

#[tokio::test]
async fn stop_start_restart_and_agent_restart_keep_the_data() {
    let m = MariaEnv::new();
    let (agent, c) = m.prepared_agent(simple_prepare()).await;
    let d = m.direct();
    let mut app = d.login("app", "App-Pass-1234", Some("app")).await;
    app.query_drop("CREATE TABLE kept (id INT PRIMARY KEY); INSERT INTO kept VALUES (1), (2)")
        .await
        .unwrap();
    let _ = app.disconnect().await;
    let count = || async {
        d.admin_value("SELECT COUNT(*) FROM app.kept")
            .await
            .unwrap_or_default()
    };

    // restart: a new server process with the same data.
    let pid = m.server_pid().expect("mariadbd runs");
    c.call("restart", json!({})).await;
    c.wait_status("healthy").await;
    let pid2 = m.server_pid().expect("mariadbd runs after restart");
    assert_ne!(pid, pid2);
    assert_eq!(count().await, "2");

    // stop_db: the server is gone and reported as shut down.
    c.call("stop_db", json!({"do_not_start_on_reboot": false}))
        .await;
    c.wait_status("shutdown").await;
    assert_eq!(m.server_pid(), None, "mariadbd still runs after stop_db");
    assert!(d.connect("app", "App-Pass-1234", None).await.is_err());
    assert_eq!(c.get("/readyz").await.status, 503);

    // restart from stopped brings it back.
    c.call("restart", json!({})).await;
    c.wait_status("healthy").await;
    assert_eq!(count().await, "2");
    c.call("stop_db", json!({})).await;
    c.wait_status("shutdown").await;
    c.call("start_db", json!({})).await;
    c.wait_status("healthy").await;
    d.write_as("app", "App-Pass-1234", "app").await.unwrap();

    // The agent's own restart leaves the server running and still prepared.
    let running = m.server_pid().expect("mariadbd runs");
    let mut agent = agent;
    let st = agent.terminate().await;
    assert_eq!(st.code(), Some(0), "agent exit: {st}");
    assert_eq!(
        m.server_pid(),
        Some(running),
        "the agent's exit stopped mariadbd"
    );
    let _agent2 = m.start_agent().await;
    c.wait_status("healthy").await;
    c.call_err("prepare", simple_prepare())
        .await
        .assert_error(409, "InvalidState");
    c.call("restart", json!({})).await;
    c.wait_status("healthy").await;
    assert_ne!(m.server_pid(), Some(running), "restart after adoption");
    assert_eq!(count().await, "2");
}

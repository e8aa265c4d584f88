//! Backups end to end: the agent backs up a real PostgreSQL 15 or MariaDB 10.11 into the
//! Swift test service (its S3 API or its native API) or a local directory, reports to a
//! control plane stand-in, and restores into fresh instances. Every result is checked from
//! outside the agent: rows by direct SQL logins, stored objects through Swift's own API or
//! the local store's files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use guest_agent_e2e::backup::{
    CaptureServer, SwiftAdmin, assert_op_failed, assert_rejected_field, backup_ok, backup_ref,
    create_backup, files_under, gen_key, local_section, metric, op_id, s3_section, s3_section_at,
    swift_section, tracked, unique_container, with_backup,
};
use guest_agent_e2e::mariadb::{MariaEnv, mariadb_prepare_args};
use guest_agent_e2e::services::postgres::{describe, postmaster_pid};
use guest_agent_e2e::{
    APP_DB, APP_PASSWORD, APP_USER, Agent, RpcClient, TestEnv, free_port, prepare_args,
};
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

/// Rows written per phase: enough for several tool chunks, small enough to stay quick.
const ROWS: i64 = 2000;

/// The MariaDB database and the user that reads it directly.
const SHOP_DB: &str = "shop";
const CHECKER: &str = "checker";
const CHECKER_PASSWORD: &str = "Checker-Pass-1234";

// ---------------------------------------------------------------------------------------------
// PostgreSQL helpers

/// Adds rows `from..=to` to `items` (created when missing) in the connected database.
async fn pg_fill(db: &tokio_postgres::Client, from: i64, to: i64) {
    db.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS items (id bigint PRIMARY KEY, payload text NOT NULL);
         INSERT INTO items SELECT g, md5(g::text) || repeat('x', 50) FROM generate_series({from}, {to}) g;"
    ))
    .await
    .unwrap_or_else(|e| panic!("filling items: {}", describe(&e)));
}

/// `(row count, digest of all rows in id order)` of `items`.
async fn pg_fingerprint(db: &tokio_postgres::Client) -> (i64, String) {
    let r = db
        .query_one(
            "SELECT count(*), coalesce(md5(string_agg(id::text || ':' || payload, ',' ORDER BY id)), '') FROM items",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("reading items: {}", describe(&e)));
    (r.get(0), r.get(1))
}

/// A prepared PostgreSQL agent with `backup` (and a control plane) in its configuration.
async fn pg_agent(env: &TestEnv, backup: Value, control_plane: Option<&str>) -> (Agent, RpcClient) {
    let cfg = with_backup(env.config(), backup, control_plane);
    let agent = env.start_agent_with(&cfg).await;
    let c = env.client();
    c.prepare(prepare_args()).await;
    c.wait_status("healthy").await;
    (agent, c)
}

/// `prepare_args()` that restores `backup` (`{location, checksum}`).
fn pg_prepare_from(backup: &Value) -> Value {
    let mut args = prepare_args();
    args["backup_info"] = backup.clone();
    args
}

/// The 64-bit system identifier at the start of `global/pg_control` (tells clusters apart
/// without a running server); `None` when the data directory holds no cluster.
fn pg_system_id(data_dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(data_dir.join("global/pg_control")).ok()?;
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Checks the fields every successful backup result carries.
#[track_caller]
fn assert_backup_result(r: &Value, id: &str, scheme_container: &str, strategy: &str) {
    assert_eq!(r["backup_id"], id, "{r}");
    assert_eq!(r["strategy"], strategy, "{r}");
    let loc = r["location"].as_str().unwrap_or_default();
    assert!(
        loc.starts_with(scheme_container) && loc.contains(id),
        "location {loc:?} should be in {scheme_container} and name {id}: {r}"
    );
    let sum = r["checksum"].as_str().unwrap_or_default();
    assert!(
        sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()),
        "checksum is not a sha256: {r}"
    );
    assert!(r["raw_bytes"].as_u64().unwrap_or(0) > 0, "{r}");
    assert!(r["stored_bytes"].as_u64().unwrap_or(0) > 0, "{r}");
    assert!(r["size"].as_f64().is_some(), "{r}");
}

/// The object key inside the container that a location names.
fn key_of(location: &str, scheme_container: &str) -> String {
    location
        .strip_prefix(scheme_container)
        .unwrap_or_else(|| panic!("{location} is not in {scheme_container}"))
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// MariaDB helpers

fn shop_prepare() -> Value {
    mariadb_prepare_args(
        json!([{"_name": SHOP_DB, "_character_set": null, "_collate": null}]),
        json!([{"_name": CHECKER, "_password": CHECKER_PASSWORD, "_host": "%",
                "_databases": [{"_name": SHOP_DB}]}]),
    )
}

/// A prepared MariaDB agent (database `shop`, user `checker`) with `backup` configured.
async fn maria_agent(m: &MariaEnv, backup: Value) -> (Agent, RpcClient) {
    let cfg = with_backup(m.config(), backup, None);
    let agent = m.env.start_agent_with(&cfg).await;
    let c = m.client();
    c.prepare(shop_prepare()).await;
    c.wait_status("healthy").await;
    (agent, c)
}

/// Starts an agent on a fresh MariaDB environment with `backup` configured (not prepared).
async fn maria_bare_agent(m: &MariaEnv, backup: Value) -> (Agent, RpcClient) {
    let cfg = with_backup(m.config(), backup, None);
    let agent = m.env.start_agent_with(&cfg).await;
    (agent, m.client())
}

/// Adds rows `from..=to` to `shop.items` (created when missing), as the admin account.
async fn maria_fill(m: &MariaEnv, from: i64, to: i64) {
    m.direct()
        .admin_exec(&format!(
            "CREATE TABLE IF NOT EXISTS {SHOP_DB}.items (id BIGINT PRIMARY KEY, payload TEXT NOT NULL) ENGINE=InnoDB;
             SET SESSION max_recursive_iterations = 1000000;
             INSERT INTO {SHOP_DB}.items (id, payload)
               WITH RECURSIVE s(n) AS (SELECT {from} UNION ALL SELECT n + 1 FROM s WHERE n < {to})
               SELECT n, CONCAT(MD5(n), REPEAT('x', 50)) FROM s;"
        ))
        .await;
}

const MARIA_FINGERPRINT: &str = "SELECT COUNT(*), COALESCE(MD5(GROUP_CONCAT(CONCAT(id, ':', payload) \
     ORDER BY id SEPARATOR ',')), '') FROM shop.items";

/// `(row count, digest)` of `shop.items`, logged in as `checker` over TCP.
async fn maria_fingerprint(m: &MariaEnv) -> (i64, String) {
    let mut conn = m
        .direct()
        .login(CHECKER, CHECKER_PASSWORD, Some(SHOP_DB))
        .await;
    conn.query_drop("SET SESSION group_concat_max_len = 16777216")
        .await
        .unwrap();
    let r: (i64, String) = conn.query_first(MARIA_FINGERPRINT).await.unwrap().unwrap();
    let _ = conn.disconnect().await;
    r
}

/// `(row count, digest)` of `shop.items`, as this server's own admin account.
async fn maria_admin_fingerprint(m: &MariaEnv) -> (i64, String) {
    let d = m.direct();
    let rows = d.admin_rows(MARIA_FINGERPRINT).await;
    let row = rows.first().unwrap_or_else(|| panic!("no fingerprint row"));
    (
        row[0].as_deref().unwrap_or("0").parse().unwrap(),
        row[1].clone().unwrap_or_default(),
    )
}

fn database_names_of(list: &Value) -> Vec<String> {
    list[0]
        .as_array()
        .unwrap_or_else(|| panic!("list_databases is not [items, marker]: {list}"))
        .iter()
        .filter_map(|d| d["_name"].as_str().map(str::to_owned))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. PostgreSQL physical, encrypted, through Swift's S3 API

#[tokio::test]
async fn pg_physical_backup_through_s3_restores_into_a_fresh_instance() {
    let container = unique_container();
    let swift = SwiftAdmin::connect().await;
    let cp = CaptureServer::start();
    let env_a = TestEnv::new();
    let key = gen_key(&env_a.conf_dir, "backup.key");
    let section = s3_section(&container, Some(&key));
    let (_agent_a, a) = pg_agent(&env_a, section.clone(), Some(&cp.url())).await;
    let instance_a = format!("e2e-{}", env_a.http_port);

    let root_a = env_a.root_login(APP_DB).await;
    pg_fill(&root_a, 1, ROWS).await;
    let want = pg_fingerprint(&root_a).await;
    assert_eq!(want.0, ROWS);

    // The hooks Trove calls around a backup answer.
    let meta = a.call("pre_create_backup", json!({})).await;
    assert!(meta.is_object(), "pre_create_backup: {meta}");
    assert_eq!(a.call("post_create_backup", json!({})).await, json!({}));

    let r = backup_ok(&a, json!({"id": "pg-phys-1", "parent": null})).await;
    let in_container = format!("s3://{container}/");
    assert_backup_result(&r, "pg-phys-1", &in_container, "pg_basebackup");
    assert_eq!(r["backup_type"], "full", "{r}");
    assert_eq!(r["encrypted"], true, "{r}");

    // The control plane heard BUILDING first, then COMPLETED with the operation's facts.
    let reports = cp.wait_final("pg-phys-1").await;
    assert_eq!(reports[0]["state"], "BUILDING", "{reports:?}");
    let last = reports.last().unwrap();
    assert_eq!(last["state"], "COMPLETED", "{reports:?}");
    assert_eq!(last["instance_id"], instance_a, "{last}");
    assert_eq!(last["location"], r["location"], "{last}");
    assert_eq!(last["checksum"], r["checksum"], "{last}");
    assert_eq!(last["success"], true, "{last}");
    assert_eq!(last["backup_type"], "full", "{last}");
    assert_eq!(last["size"], r["size"], "{last}");
    // Trove's unit: GB of stored bytes.
    let stored_gb = r["stored_bytes"].as_f64().unwrap() / f64::from(1u32 << 30);
    assert!(
        last["size"]
            .as_f64()
            .is_some_and(|s| s > 0.0 && (s - stored_gb).abs() < 0.01),
        "size {} is not {stored_gb} GB: {last}",
        last["size"]
    );
    assert!(last["sent"].as_f64().is_some_and(|s| s > 0.0), "{last}");
    assert!(
        reports
            .iter()
            .all(|u| u["state"] == "BUILDING" || u == last),
        "nothing but BUILDING before the final report: {reports:?}"
    );

    // The manifest really is in the bucket (seen through Swift's own API).
    let loc = r["location"].as_str().unwrap();
    let stored = swift.objects(&container).await;
    assert!(
        stored.contains(&key_of(loc, &in_container)),
        "{loc} not among {stored:?}"
    );

    // verify_backup reads it back: authenticated and checksummed.
    let v = tracked(&a, "verify_backup", json!({"backup_info": backup_ref(&r)})).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    let verified = v["result"]["verified"].as_array().unwrap();
    assert_eq!(verified.len(), 1, "{v}");
    assert_eq!(verified[0]["backup_id"], "pg-phys-1", "{v}");
    assert_eq!(verified[0]["sha256"], r["checksum"], "{v}");
    assert_eq!(verified[0]["stored_bytes"], r["stored_bytes"], "{v}");

    // Metrics count the backup and the verification.
    let metrics = a.get("/metrics").await;
    let text = metrics.body.as_str().unwrap_or_default().to_owned();
    for phase in ["backup", "verify"] {
        let n = metric(
            &text,
            &format!("guest_agent_backup_operations_total{{phase=\"{phase}\",outcome=\"ok\"}}"),
        );
        assert!(n.is_some_and(|n| n >= 1.0), "{phase} not counted:\n{text}");
    }
    let raw = metric(
        &text,
        "guest_agent_backup_bytes_total{phase=\"backup\",kind=\"raw\"}",
    );
    assert!(
        raw.is_some_and(|n| n > 0.0),
        "backup bytes not counted:\n{text}"
    );

    // A fresh instance with the same key and store is built from the backup.
    let env_b = TestEnv::new();
    let cfg_b = with_backup(env_b.config(), section, None);
    let _agent_b = env_b.start_agent_with(&cfg_b).await;
    let b = env_b.client();
    b.prepare(pg_prepare_from(&backup_ref(&r))).await;
    b.wait_status("healthy").await;
    // The restored catalog is A's: A's root and app user log in to B's server.
    let root_b = env_b.root_login(APP_DB).await;
    assert_eq!(pg_fingerprint(&root_b).await, want);
    let app_b =
        guest_agent_e2e::services::postgres::login(env_b.pg_port, APP_USER, APP_PASSWORD, APP_DB)
            .await;
    app_b
        .batch_execute("CREATE TABLE after_restore (id int); INSERT INTO after_restore VALUES (1)")
        .await
        .unwrap_or_else(|e| panic!("the restored server does not take writes: {}", describe(&e)));
    let dbs = b.call("list_databases", json!({})).await;
    assert!(
        database_names_of(&dbs).contains(&APP_DB.to_owned()),
        "{dbs}"
    );
    // B reads it too (same key).
    let v = tracked(&b, "verify_backup", json!({"backup_info": backup_ref(&r)})).await;
    assert_eq!(v["state"], "succeeded", "{v}");

    swift.purge(&container).await;
}

// ---------------------------------------------------------------------------------------------
// 2. PostgreSQL logical (pg_dump) through Swift's native API

#[tokio::test]
async fn pg_dump_of_one_database_through_native_swift_and_restore_backup() {
    let container = unique_container();
    let swift = SwiftAdmin::connect().await;
    let env = TestEnv::new();
    let (_agent, c) = pg_agent(&env, swift_section(&container, None), None).await;
    let root = env.root_login(APP_DB).await;
    pg_fill(&root, 1, ROWS).await;
    let want = pg_fingerprint(&root).await;

    let r = backup_ok(
        &c,
        json!({"id": "pg-dump-1", "strategy": "pg_dump", "databases": [APP_DB]}),
    )
    .await;
    let in_container = format!("swift://{container}/");
    assert_backup_result(&r, "pg-dump-1", &in_container, "pg_dump");
    assert_eq!(r["encrypted"], false, "{r}");
    let stored = swift.objects(&container).await;
    assert!(
        stored.contains(&key_of(r["location"].as_str().unwrap(), &in_container)),
        "manifest not among {stored:?}"
    );

    // Into the same server under a new name.
    let op = tracked(
        &c,
        "restore_backup",
        json!({"backup_info": backup_ref(&r), "database": "app_copy"}),
    )
    .await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let copy = env.root_login("app_copy").await;
    assert_eq!(pg_fingerprint(&copy).await, want, "rows of app_copy");
    drop(copy);

    // After the original is dropped, back under its own name.
    c.call(
        "delete_database",
        json!({"database": {"_name": APP_DB, "_character_set": null, "_collate": null}}),
    )
    .await;
    drop(root);
    let op = tracked(&c, "restore_backup", json!({"backup_info": backup_ref(&r)})).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let root = env.root_login(APP_DB).await;
    assert_eq!(
        pg_fingerprint(&root).await,
        want,
        "rows of the restored app"
    );

    // A database that does not exist: refused or failed with NotFound, nothing stored.
    let before = swift.everything(&container).await;
    let reply = c
        .rpc(
            "create_backup",
            &json!({"backup_info": {"id": "pg-dump-missing", "strategy": "pg_dump",
                                    "databases": ["no_such_db"]}}),
        )
        .await;
    if reply.status == 200 {
        let op = c.wait_operation(&op_id(&reply.body["result"])).await;
        assert_op_failed(&op, &["NotFound"]);
    } else {
        reply.assert_error(404, "NotFound");
    }
    let after = swift.everything(&container).await;
    assert_eq!(before, after, "a failed backup left objects behind");
    assert!(
        after.iter().all(|o| !o.contains("pg-dump-missing")),
        "{after:?}"
    );
    // Where it would have been, there is no backup.
    let nowhere = r["location"]
        .as_str()
        .unwrap()
        .replace("pg-dump-1", "pg-dump-missing");
    let v = tracked(
        &c,
        "verify_backup",
        json!({"backup_info": {"location": nowhere}}),
    )
    .await;
    assert_op_failed(&v, &["NotFound"]);
    c.wait_status("healthy").await;

    swift.purge(&container).await;
}

// ---------------------------------------------------------------------------------------------
// 3. MariaDB full + incremental (mariabackup) through Swift's S3 API

#[tokio::test]
async fn mariadb_full_and_incremental_through_s3_restore_into_a_fresh_instance() {
    let container = unique_container();
    let swift = SwiftAdmin::connect().await;
    let a_env = MariaEnv::new();
    let key = gen_key(&a_env.env.conf_dir, "backup.key");
    let section = s3_section(&container, Some(&key));
    let (_agent_a, a) = maria_agent(&a_env, section.clone()).await;
    let in_container = format!("s3://{container}/");

    maria_fill(&a_env, 1, ROWS).await;
    let full = backup_ok(&a, json!({"id": "mdb-full", "strategy": "mariabackup"})).await;
    assert_backup_result(&full, "mdb-full", &in_container, "mariabackup");
    assert_eq!(full["backup_type"], "full", "{full}");

    maria_fill(&a_env, ROWS + 1, 2 * ROWS).await;
    let want = maria_fingerprint(&a_env).await;
    assert_eq!(want.0, 2 * ROWS);
    let incr = backup_ok(
        &a,
        json!({"id": "mdb-incr", "strategy": "mariabackup", "parent": backup_ref(&full)}),
    )
    .await;
    assert_backup_result(&incr, "mdb-incr", &in_container, "mariabackup");
    assert_eq!(incr["backup_type"], "incremental", "{incr}");

    // A parent that is not in the store: refused or failed with ParentMissing.
    let missing_parent = full["location"]
        .as_str()
        .unwrap()
        .replace("mdb-full", "mdb-nowhere");
    let reply = a
        .rpc(
            "create_backup",
            &json!({"backup_info": {"id": "mdb-orphan", "strategy": "mariabackup",
                                    "parent": {"location": missing_parent, "checksum": null}}}),
        )
        .await;
    if reply.status == 200 {
        let op = a.wait_operation(&op_id(&reply.body["result"])).await;
        assert_op_failed(&op, &["ParentMissing"]);
    } else {
        reply.assert_error(404, "ParentMissing");
    }
    let stored = swift.everything(&container).await;
    assert!(
        stored.iter().all(|o| !o.contains("mdb-orphan")),
        "{stored:?}"
    );

    // A fresh instance restores the chain (full, then incremental).
    let b_env = MariaEnv::new();
    let (_agent_b, b) = maria_bare_agent(&b_env, section.clone()).await;
    let mut args = mariadb_prepare_args(json!([]), json!([]));
    args["backup_info"] = backup_ref(&incr);
    b.prepare(args).await;
    b.wait_status("healthy").await;
    assert_eq!(maria_fingerprint(&b_env).await, want, "rows after restore");
    let dbs = b.call("list_databases", json!({})).await;
    assert!(
        database_names_of(&dbs).contains(&SHOP_DB.to_owned()),
        "{dbs}"
    );
    b.call(
        "create_database",
        json!({"databases": [{"_name": "after_restore", "_character_set": null, "_collate": null}]}),
    )
    .await;

    // The agent will not delete a parent under its incremental child.
    let r = a
        .rpc("delete_backup", &json!({"backup_info": backup_ref(&full)}))
        .await;
    r.assert_error(409, "InvalidState");
    assert!(
        r.error_message().unwrap_or_default().contains("mdb-incr"),
        "the refusal names the child: {}",
        r.body
    );
    assert!(
        swift
            .everything(&container)
            .await
            .iter()
            .any(|o| o.contains("mdb-full")),
        "a refused delete_backup removed objects"
    );

    // A parent lost outside the agent: the incremental can be neither verified nor restored.
    let full_manifest = full["location"]
        .as_str()
        .and_then(|l| l.strip_prefix(&format!("s3://{container}/")))
        .unwrap_or_else(|| panic!("location of the full backup: {full}"))
        .to_owned();
    swift.delete_object(&container, &full_manifest).await;
    let v = tracked(
        &a,
        "verify_backup",
        json!({"backup_info": backup_ref(&incr)}),
    )
    .await;
    assert_op_failed(&v, &["ParentMissing", "NotFound"]);
    let c_env = MariaEnv::new();
    let (_agent_c, c) = maria_bare_agent(&c_env, section).await;
    let mut args = mariadb_prepare_args(json!([]), json!([]));
    args["backup_info"] = backup_ref(&incr);
    let op = tracked(&c, "prepare", args).await;
    assert_op_failed(&op, &["ParentMissing", "NotFound"]);
    assert_eq!(c.service_status().await, "failed to spawn");

    // The child itself can always be deleted: manifest and data.
    let r = a
        .rpc("delete_backup", &json!({"backup_info": backup_ref(&incr)}))
        .await;
    assert_eq!(r.status, 200, "delete_backup: {}", r.body);
    let left = swift.everything(&container).await;
    assert!(
        left.iter().all(|o| !o.contains("mdb-incr")),
        "delete_backup left objects of the incremental: {left:?}"
    );
    // And the full one whose manifest was lost: its data object goes too.
    let r = a
        .rpc("delete_backup", &json!({"backup_info": backup_ref(&full)}))
        .await;
    assert_eq!(r.status, 200, "delete_backup: {}", r.body);
    let left = swift.everything(&container).await;
    assert!(
        left.iter().all(|o| !o.contains("mdb-full")),
        "delete_backup left objects of the full backup: {left:?}"
    );

    swift.purge(&container).await;
}

// ---------------------------------------------------------------------------------------------
// 4. Faults

#[tokio::test]
async fn tampered_backup_fails_verification_and_restore() {
    let env = TestEnv::new();
    let key = gen_key(&env.conf_dir, "backup.key");
    let store_dir = env.dir.join("backups");
    let container = unique_container();
    let (_agent, c) = pg_agent(
        &env,
        local_section(&store_dir, &container, Some(&key)),
        None,
    )
    .await;
    let root = env.root_login(APP_DB).await;
    pg_fill(&root, 1, ROWS).await;
    let r = backup_ok(&c, json!({"id": "pg-tamper"})).await;
    assert_backup_result(
        &r,
        "pg-tamper",
        &format!("local://{container}/"),
        "pg_basebackup",
    );

    // Intact, it verifies.
    let v = tracked(&c, "verify_backup", json!({"backup_info": backup_ref(&r)})).await;
    assert_eq!(v["state"], "succeeded", "{v}");

    // Flip one byte in the middle of the data object.
    let files = files_under(&store_dir.join(&container));
    let data: Vec<_> = files
        .iter()
        .filter(|p| !p.to_string_lossy().ends_with(".manifest.json"))
        .collect();
    assert_eq!(data.len(), 1, "expected one data object: {files:?}");
    let mut bytes = std::fs::read(data[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(data[0], &bytes).unwrap();

    let v = tracked(&c, "verify_backup", json!({"backup_info": backup_ref(&r)})).await;
    assert_op_failed(&v, &["Tampered", "ChecksumMismatch"]);
    // The same without the control plane's checksum: the cipher itself notices.
    let v = tracked(
        &c,
        "verify_backup",
        json!({"backup_info": {"location": r["location"]}}),
    )
    .await;
    assert_op_failed(&v, &["Tampered", "ChecksumMismatch"]);

    // A checksum that is not the backup's is refused before any data is read.
    let v = tracked(
        &c,
        "verify_backup",
        json!({"backup_info": {"location": r["location"], "checksum": "0".repeat(64)}}),
    )
    .await;
    assert_op_failed(&v, &["ChecksumMismatch"]);

    let text = c.get("/metrics").await.body;
    let n = metric(
        text.as_str().unwrap_or_default(),
        "guest_agent_backup_operations_total{phase=\"verify\",outcome=\"error\"}",
    );
    assert!(
        n.is_some_and(|n| n >= 1.0),
        "failed verify not counted:\n{text}"
    );
    c.wait_status("healthy").await;

    // A fresh instance that verifies before restoring refuses it and keeps its own cluster.
    let env_b = TestEnv::new();
    let mut section_b = local_section(&store_dir, &container, Some(&key));
    section_b["verify_before_restore"] = json!(true);
    let _agent_b = env_b
        .start_agent_with(&with_backup(env_b.config(), section_b, None))
        .await;
    let b = env_b.client();
    let op = tracked(&b, "prepare", pg_prepare_from(&backup_ref(&r))).await;
    assert_op_failed(&op, &["Tampered", "ChecksumMismatch"]);
    assert_eq!(b.service_status().await, "failed to spawn");
    assert_ne!(
        pg_system_id(&env_b.data_dir),
        pg_system_id(&env.data_dir),
        "the tampered backup was restored into B"
    );

    // Without the check first, the restore itself notices and prepare fails.
    let env_c = TestEnv::new();
    let section_c = local_section(&store_dir, &container, Some(&key));
    let _agent_c = env_c
        .start_agent_with(&with_backup(env_c.config(), section_c, None))
        .await;
    let c3 = env_c.client();
    let op = tracked(&c3, "prepare", pg_prepare_from(&backup_ref(&r))).await;
    assert_op_failed(&op, &["Tampered", "ChecksumMismatch"]);
    assert_eq!(c3.service_status().await, "failed to spawn");
}

#[tokio::test]
async fn wrong_key_refuses_the_restore_and_leaves_the_target_alone() {
    let store_dir = tempfile::tempdir().unwrap();
    let container = unique_container();
    let env_a = TestEnv::new();
    let key_a = gen_key(&env_a.conf_dir, "a.key");
    let (_agent_a, a) = pg_agent(
        &env_a,
        local_section(store_dir.path(), &container, Some(&key_a)),
        None,
    )
    .await;
    pg_fill(&env_a.root_login(APP_DB).await, 1, ROWS).await;
    let r = backup_ok(&a, json!({"id": "pg-keyed"})).await;
    assert_eq!(r["encrypted"], true, "{r}");
    let system_a = pg_system_id(&env_a.data_dir);

    // B shares the store but has a key of its own.
    let env_b = TestEnv::new();
    let key_b = gen_key(&env_b.conf_dir, "b.key");
    let cfg_b = with_backup(
        env_b.config(),
        local_section(store_dir.path(), &container, Some(&key_b)),
        None,
    );
    let _agent_b = env_b.start_agent_with(&cfg_b).await;
    let b = env_b.client();
    let v = tracked(&b, "verify_backup", json!({"backup_info": backup_ref(&r)})).await;
    assert_op_failed(&v, &["WrongKey"]);
    let op = tracked(&b, "prepare", pg_prepare_from(&backup_ref(&r))).await;
    assert_op_failed(&op, &["WrongKey"]);
    assert_eq!(b.service_status().await, "failed to spawn");
    let status = b.get("/v1/status").await.body;
    assert_eq!(status["prepare"]["phase"], "failed", "{status}");

    // B's data directory is not A's cluster: nothing of the backup was written into it.
    let system_b = pg_system_id(&env_b.data_dir);
    assert!(system_a.is_some());
    assert_ne!(system_b, system_a, "B's data directory holds A's cluster");
    if postmaster_pid(&env_b.data_dir).is_some()
        && let Ok(db) = guest_agent_e2e::services::postgres::connect(
            env_b.pg_port,
            guest_agent_e2e::ROOT_USER,
            guest_agent_e2e::ROOT_PASSWORD,
            APP_DB,
        )
        .await
    {
        let t: Option<String> = db
            .query_one("SELECT to_regclass('items')::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(t, None, "A's table appeared on B");
    }

    // A (the right key) still verifies the backup.
    let v = tracked(&a, "verify_backup", json!({"backup_info": backup_ref(&r)})).await;
    assert_eq!(v["state"], "succeeded", "{v}");
}

#[tokio::test]
async fn store_down_fails_the_backup_and_reports_failed() {
    let cp = CaptureServer::start();
    let env = TestEnv::new();
    // Nothing listens there.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let container = unique_container();
    let (_agent, c) = pg_agent(
        &env,
        s3_section_at(&dead, &container, None),
        Some(&cp.url()),
    )
    .await;

    let op = create_backup(&c, json!({"id": "pg-nowhere"})).await;
    assert_op_failed(&op, &["StoreError"]);
    let reports = cp.wait_final("pg-nowhere").await;
    let last = reports.last().unwrap();
    assert_eq!(last["state"], "FAILED", "{reports:?}");
    assert_eq!(last["success"], false, "{last}");
    assert!(
        last["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{last}"
    );
    assert!(last.get("location").is_none(), "{last}");
    assert!(last.get("checksum").is_none(), "{last}");

    // The agent is fine, the server has no backup left running, the slot is free again.
    c.wait_status("healthy").await;
    let root = env.root_login("postgres").await;
    let busy: i64 = root
        .query_one(
            "SELECT (SELECT count(*) FROM pg_stat_progress_basebackup) \
                  + (SELECT count(*) FROM pg_replication_slots)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(busy, 0, "a base backup or slot was left behind");
    let op = create_backup(&c, json!({"id": "pg-nowhere-2"})).await;
    assert_op_failed(&op, &["StoreError"]);
    let reports = cp.wait_final("pg-nowhere-2").await;
    assert_eq!(reports.last().unwrap()["state"], "FAILED", "{reports:?}");
}

#[tokio::test]
async fn bad_backup_arguments_are_rejected_naming_the_field() {
    let env = TestEnv::new();
    let store_dir = env.dir.join("backups");
    let container = unique_container();
    let mut section = local_section(&store_dir, &container, None);
    // Slow uploads, so one backup is still running when the next one is asked for.
    section["upload_limit_bytes_per_sec"] = json!(256 * 1024);
    let (_agent, c) = pg_agent(&env, section, None).await;
    pg_fill(&env.root_login(APP_DB).await, 1, ROWS).await;

    let bad = |info: Value| json!({"backup_info": info});
    let cases: Vec<(Value, &str)> = vec![
        (bad(json!({"id": "bad id!"})), "backup_info.id"),
        (bad(json!({"id": ".hidden"})), "backup_info.id"),
        (bad(json!({"id": "x".repeat(129)})), "backup_info.id"),
        (bad(json!({})), "backup_info.id"),
        (json!({}), "backup_info"),
        (
            bad(json!({"id": "b", "strategy": "rsync"})),
            "backup_info.strategy",
        ),
        (
            bad(json!({"id": "b", "strategy": "mariabackup"})),
            "backup_info.strategy",
        ),
        (
            bad(json!({"id": "b", "strategy": "pg_basebackup", "databases": [APP_DB]})),
            "backup_info.databases",
        ),
        (
            bad(json!({"id": "b", "strategy": "pg_dump", "databases": [APP_DB, "postgres"]})),
            "backup_info.databases",
        ),
        (
            bad(json!({"id": "b", "strategy": "pg_dump"})),
            "backup_info.databases",
        ),
        (
            bad(json!({"id": "b", "databases": "app"})),
            "backup_info.databases",
        ),
        (
            bad(json!({"id": "b", "parent": {"checksum": null}})),
            "backup_info.parent.location",
        ),
        (
            bad(
                json!({"id": "b", "parent": {"location": format!("local://other-container/{}/x.manifest.json", env.http_port)}}),
            ),
            "backup_info.parent.location",
        ),
        (
            bad(
                json!({"id": "b", "parent": {"location": format!("s3://{container}/x.manifest.json")}}),
            ),
            "backup_info.parent.location",
        ),
        (
            bad(
                json!({"id": "b", "parent": {"location": format!("local://{container}/x.manifest.json"), "checksum": "not-hex"}}),
            ),
            "backup_info.parent.checksum",
        ),
    ];
    for (args, field) in &cases {
        let reply = c.call_err("create_backup", args.clone()).await;
        assert_rejected_field(&reply, field);
    }
    // Incrementals are a physical MariaDB feature: pg_basebackup refuses a parent.
    let reply = c
        .call_err(
            "create_backup",
            bad(json!({"id": "b", "strategy": "pg_basebackup",
                        "parent": {"location": format!("local://{container}/x.manifest.json")}})),
        )
        .await;
    assert_rejected_field(&reply, "backup_info.parent");
    // Locations of another container are refused by every backup method.
    let foreign = json!({"backup_info": {"location": "local://other-container/x.manifest.json"}});
    for method in ["verify_backup", "restore_backup", "delete_backup"] {
        let reply = c.call_err(method, foreign.clone()).await;
        assert_rejected_field(&reply, "backup_info.location");
    }
    let reply = c
        .call_err("verify_backup", json!({"backup_info": {}}))
        .await;
    assert_rejected_field(&reply, "backup_info.location");
    // None of that stored anything.
    assert!(
        files_under(&store_dir.join(&container)).is_empty(),
        "{:?}",
        files_under(&store_dir)
    );

    // One backup at a time: a second one while the first runs is refused with 409.
    let started = c.call("create_backup", bad(json!({"id": "pg-slow"}))).await;
    let second = c
        .call_err("create_backup", bad(json!({"id": "pg-second"})))
        .await;
    second.assert_error(409, "InvalidState");
    // Nor may the server be restarted or stopped under it.
    for method in ["restart", "stop_db"] {
        c.call_err(method, json!({}))
            .await
            .assert_error(409, "InvalidState");
    }
    let op = c.wait_operation(&op_id(&started)).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    // A restore of a physical backup into a running server is refused.
    let op = tracked(
        &c,
        "restore_backup",
        json!({"backup_info": backup_ref(&op["result"])}),
    )
    .await;
    assert_op_failed(&op, &["InvalidArgument"]);
    c.wait_status("healthy").await;
}

// ---------------------------------------------------------------------------------------------
// 5. MariaDB logical (mariadb_dump) into a fresh instance

#[tokio::test]
async fn mariadb_dump_of_one_database_restores_into_a_fresh_instance() {
    let container = unique_container();
    let swift = SwiftAdmin::connect().await;
    let a_env = MariaEnv::new();
    let key = gen_key(&a_env.env.conf_dir, "backup.key");
    let section = s3_section(&container, Some(&key));
    let (_agent_a, a) = maria_agent(&a_env, section.clone()).await;
    maria_fill(&a_env, 1, ROWS).await;
    let want = maria_fingerprint(&a_env).await;

    let r = backup_ok(
        &a,
        json!({"id": "mdb-dump", "strategy": "mariadb_dump", "databases": [SHOP_DB]}),
    )
    .await;
    assert_backup_result(
        &r,
        "mdb-dump",
        &format!("s3://{container}/"),
        "mariadb_dump",
    );
    assert_eq!(r["backup_type"], "full", "{r}");

    // A fresh, empty instance loads it with restore_backup.
    let b_env = MariaEnv::new();
    let (_agent_b, b) = maria_bare_agent(&b_env, section).await;
    b.prepare(mariadb_prepare_args(json!([]), json!([]))).await;
    b.wait_status("healthy").await;
    let op = tracked(&b, "restore_backup", json!({"backup_info": backup_ref(&r)})).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(
        maria_admin_fingerprint(&b_env).await,
        want,
        "rows after restore"
    );
    let dbs = b.call("list_databases", json!({})).await;
    assert!(
        database_names_of(&dbs).contains(&SHOP_DB.to_owned()),
        "{dbs}"
    );

    swift.purge(&container).await;
}

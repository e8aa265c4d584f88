//! GTID replication and failover of three MariaDB servers, each with its own agent, set up
//! and driven only through the agents' RPCs over HTTPS with mutual TLS (Trove's flow: a
//! snapshot on the primary, `attach_replica` on each replica). Data is written and checked
//! with direct sessions. The primary's server and agent are killed; the most advanced
//! replica without errant transactions is promoted and the other is re-pointed to it; every
//! row the replicas received survives. A replica holding an errant transaction is refused as
//! a promotion candidate with a clear error, also after a detach for the failover; its
//! `get_node_position` names the errant set and its `get_last_txn` counts only what it
//! received from its source. Trove's planned promote (old primary read-only,
//! candidate waits, detach + `enable_as_master`, others re-pointed, old primary attached and
//! demoted) switches the primary with every node replicating from the new one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use guest_agent_e2e::mariadb::{
    Gtid, MariaDirect, Member, describe, gtid_reached, mariadb_prepare_args, server_code,
};
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

/// MariaDB's "the server is running with --read-only".
const ER_OPTION_PREVENTS_STATEMENT: u16 = 1290;
const APP_PASSWORD: &str = "App-Repl-Pass-1";

/// The primary is prepared with the application database and user.
fn primary_prepare() -> Value {
    mariadb_prepare_args(
        json!([{"_name": "app", "_character_set": null, "_collate": null}]),
        json!([{"_name": "app", "_password": APP_PASSWORD, "_host": "%",
                "_databases": [{"_name": "app"}]}]),
    )
}

/// Replicas are prepared empty: everything they hold comes from the primary.
fn replica_prepare() -> Value {
    mariadb_prepare_args(json!([]), json!([]))
}

/// The rows of `app.t` on a server, in id order, as `id:v`.
async fn rows(d: &MariaDirect) -> Vec<String> {
    d.admin_rows("SELECT CONCAT(id, ':', v) FROM app.t ORDER BY id")
        .await
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect()
}

/// Inserts rows as the application user.
async fn insert(d: &MariaDirect, user: &str, password: &str, values: &[(u32, &str)]) {
    let mut c = d.login(user, password, Some("app")).await;
    for (id, v) in values {
        c.exec_drop("INSERT INTO t (id, v) VALUES (?, ?)", (id, v))
            .await
            .unwrap_or_else(|e| panic!("insert {id} as {user}: {}", describe(&e)));
    }
    let _ = c.disconnect().await;
}

/// Asserts the application user cannot write on a replica (read-only).
async fn assert_read_only(m: &Member) {
    let mut c = m.direct().login("app", APP_PASSWORD, Some("app")).await;
    let e = c
        .query_drop("INSERT INTO t (id, v) VALUES (1000, 'refused')")
        .await
        .expect_err("the application user wrote on a read-only replica");
    assert_eq!(
        server_code(&e),
        Some(ER_OPTION_PREVENTS_STATEMENT),
        "{}: {}",
        m.name,
        describe(&e)
    );
    let _ = c.disconnect().await;
}

/// Waits until `replica` has applied everything `source` has, through the agents.
async fn catch_up(replica: &Member, source: &Member) {
    let txn = source.latest_txn_id().await;
    replica.wait_for_txn(&txn).await;
    let here = replica.position().await;
    assert!(
        gtid_reached(&here, &guest_agent_e2e::mariadb::parse_gtid_pos(&txn)),
        "{} at {here:?} after wait_for_txn({txn})",
        replica.name
    );
}

/// The `replication_user.name` of a snapshot or replica context.
fn replication_user(info: &Value) -> String {
    info.pointer("/replica_conf/replication_user/name")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no replica_conf.replication_user.name in {info}"))
        .to_owned()
}

/// GTIDs a replica wrote itself: with its own `server_id`, which it never had as a primary.
fn own_gtids(m: &Member, pos: &[Gtid]) -> Vec<Gtid> {
    pos.iter()
        .copied()
        .filter(|g| g.server == m.server_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn primary_two_replicas_failover_and_errant_candidate() {
    let mut primary = Member::new("primary", 101);
    let mut r1 = Member::new("r1", 102);
    let mut r2 = Member::new("r2", 103);
    tokio::join!(
        primary.start_prepared(None, primary_prepare()),
        r1.start_prepared(None, replica_prepare()),
        r2.start_prepared(None, replica_prepare()),
    );
    assert_eq!(
        r1.latest_txn_id().await,
        "",
        "a fresh replica has no position"
    );

    // Trove's flow: a snapshot on the primary for each replica, attach on the replica.
    for r in [&r1, &r2] {
        let snap = primary.replication_snapshot(&r.name).await;
        assert_eq!(
            snap.pointer("/master/port").and_then(Value::as_u64),
            Some(u64::from(primary.env.port)),
            "{snap}"
        );
        assert_eq!(
            snap.pointer("/master/host").and_then(Value::as_str),
            Some("127.0.0.1"),
            "{snap}"
        );
        assert_eq!(
            snap.pointer("/dataset/datastore_manager")
                .and_then(Value::as_str),
            Some("mariadb"),
            "{snap}"
        );
        let user = replication_user(&snap);
        assert!(
            primary.direct().account_exists(&user, "%").await,
            "the snapshot's replication user {user} does not exist on the primary"
        );
        r.attach_replica(&snap).await;
    }
    for r in [&r1, &r2] {
        let st = r.direct().admin_rows("SHOW SLAVE STATUS").await;
        assert_eq!(st.len(), 1, "{}: not a replica", r.name);
    }

    // Writes on the primary reach both replicas; the replicas are read-only.
    let pd = primary.direct();
    let mut app = pd.login("app", APP_PASSWORD, Some("app")).await;
    app.query_drop("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(40))")
        .await
        .unwrap();
    let _ = app.disconnect().await;
    insert(
        &pd,
        "app",
        APP_PASSWORD,
        &[(1, "one"), (2, "two"), (3, "three")],
    )
    .await;
    catch_up(&r1, &primary).await;
    catch_up(&r2, &primary).await;
    assert_eq!(replication_health(&primary).await["role"], "primary");
    let primary_pos = primary.position().await;
    for r in [&r1, &r2] {
        assert_eq!(rows(&r.direct()).await, ["1:one", "2:two", "3:three"]);
        let h = replication_health(r).await;
        assert_eq!(
            (&h["role"], &h["receiver_state"], &h["last_error"]),
            (&json!("replica"), &json!("io=Yes sql=Yes"), &Value::Null),
            "{}: {h}",
            r.name
        );
        // Trove's eject reads [source server, sequence].
        let last = r.client.call("get_last_txn", json!({})).await;
        assert_eq!(
            last,
            json!([primary.server_id.to_string(), primary_pos[0].seq]),
            "{}",
            r.name
        );
        assert_read_only(r).await;
    }

    // r1 falls behind (its receiver stops); r2 receives two more rows.
    r1.direct().admin_exec("STOP SLAVE IO_THREAD").await;
    assert_eq!(
        replication_health(&r1).await["receiver_state"],
        "io=No sql=Yes"
    );
    insert(&pd, "app", APP_PASSWORD, &[(4, "four"), (5, "five")]).await;
    catch_up(&r2, &primary).await;
    assert_eq!(rows(&r1.direct()).await.len(), 3);
    assert_eq!(rows(&r2.direct()).await.len(), 5);

    // The primary's machine dies: server and agent killed.
    primary.crash().await;

    // Every replica's position, through its agent; the most advanced one without errant
    // transactions is chosen.
    let replicas = [&r1, &r2];
    let mut positions = Vec::new();
    for r in replicas {
        let pos = r.position().await;
        assert!(own_gtids(r, &pos).is_empty(), "{}: {pos:?}", r.name);
        positions.push(pos);
    }
    let chosen = (0..replicas.len())
        .find(|&i| positions.iter().all(|p| gtid_reached(&positions[i], p)))
        .expect("one replica is ahead of the other");
    assert_eq!(replicas[chosen].name, "r2", "positions: {positions:?}");
    let (new_primary, other) = (&r2, &r1);

    // Promote it; it is writable for the application at once.
    promote(new_primary).await;
    insert(&new_primary.direct(), "app", APP_PASSWORD, &[(6, "six")]).await;

    // Re-point the other replica to the new primary (Trove: detach, then attach with the new
    // primary's replica context); it receives the rows it lacked and the new one.
    let detached = other.detach_replica(true).await;
    assert!(
        detached["replication_user"]
            .as_str()
            .is_some_and(|u| u.starts_with("os_repl_")),
        "{detached}"
    );
    let ctx = new_primary.replica_context().await;
    other.attach_replica(&ctx).await;
    catch_up(other, new_primary).await;
    let all = ["1:one", "2:two", "3:three", "4:four", "5:five", "6:six"];
    assert_eq!(rows(&other.direct()).await, all);
    assert_eq!(rows(&new_primary.direct()).await, all);
    assert_read_only(other).await;
    assert_eq!(replication_health(new_primary).await["role"], "primary");
    let h = replication_health(other).await;
    assert_eq!(
        (&h["role"], &h["receiver_state"]),
        (&json!("replica"), &json!("io=Yes sql=Yes")),
        "{h}"
    );

    // Waiting for a position the new primary never reached ends with a clear timeout.
    let ahead = new_primary.position().await[0];
    let beyond = format!("{}-{}-{}", ahead.domain, ahead.server, ahead.seq + 1000);
    other
        .client
        .call_err("wait_for_txn", json!({"txn": beyond, "timeout": 1}))
        .await
        .assert_error(504, "Timeout");

    // An errant transaction: root (enabled through the new primary, so it exists on the
    // replica too) is not stopped by read_only and writes on the replica.
    let root = new_primary.client.call("enable_root", json!({})).await;
    let root_pw = root["_password"].as_str().unwrap().to_owned();
    catch_up(other, new_primary).await;
    insert(&other.direct(), "root", &root_pw, &[(99, "errant")]).await;
    let errant_pos = other.position().await;
    let errant = own_gtids(other, &errant_pos);
    assert!(!errant.is_empty(), "no errant GTID in {errant_pos:?}");
    // It is the most advanced node now, and still it must be refused.
    assert!(gtid_reached(&errant_pos, &new_primary.position().await));
    let refused = other
        .client
        .call_err("promote_to_replica_source", json!({}))
        .await;
    let msg = refused.error_message().unwrap_or_default();
    let errant_text = format!(
        "{}-{}-{}",
        errant[0].domain, errant[0].server, errant[0].seq
    );
    assert!(
        msg.contains("errant") && msg.contains(&errant_text),
        "the refusal does not name the errant transaction {errant_text}: {} {}",
        refused.status,
        refused.body
    );
    assert_eq!(refused.status, 409, "{}", refused.body);
    // Trove's own promotion path (enable_as_master) is refused the same way.
    let refused = other
        .client
        .call_err("enable_as_master", json!({"replica_source_config": ""}))
        .await;
    assert!(
        refused.status == 409
            && refused
                .error_message()
                .is_some_and(|m| m.contains(&errant_text)),
        "enable_as_master on an errant replica: {} {}",
        refused.status,
        refused.body
    );
    // The refused promotion left it a read-only replica of the new primary.
    assert_read_only(other).await;
    assert_eq!(
        other.direct().admin_rows("SHOW SLAVE STATUS").await.len(),
        1,
        "the refused candidate stopped replicating"
    );

    // A control plane reads every node's errant transactions with get_node_position.
    let node = other.client.call("get_node_position", json!({})).await;
    assert_eq!(
        (&node["is_replica"], &node["errant"]),
        (&json!(true), &json!({"kind": "gtid", "value": errant_text})),
        "{node}"
    );
    let clean = new_primary
        .client
        .call("get_node_position", json!({}))
        .await;
    assert_eq!(
        (&clean["is_replica"], &clean["errant"]["value"]),
        (&json!(false), &json!("")),
        "{clean}"
    );
    // Trove's eject ranks replicas by get_last_txn: the errant replica reports what it
    // received from its source, not its own later write, so it does not rank first.
    let source_pos = new_primary.position().await;
    let last = other.client.call("get_last_txn", json!({})).await;
    assert_eq!(
        last,
        json!([new_primary.server_id.to_string(), source_pos[0].seq]),
        "get_last_txn of the errant replica (its own write is {errant_text})"
    );
    assert!(
        last[1].as_u64() < Some(errant[0].seq),
        "{last} ranks above the errant write {errant_text}"
    );

    // Trove's own promotion path: detach for the failover, then enable_as_master. The
    // detach must not hide the errant transaction.
    other.detach_replica(true).await;
    let node = other.client.call("get_node_position", json!({})).await;
    assert_eq!(
        (&node["is_replica"], &node["errant"]),
        (
            &json!(false),
            &json!({"kind": "gtid", "value": errant_text})
        ),
        "{node}"
    );
    for method in ["enable_as_master", "promote_to_replica_source"] {
        let refused = other
            .client
            .call_err(method, json!({"replica_source_config": ""}))
            .await;
        assert_eq!(refused.status, 409, "{method}: {}", refused.body);
        let msg = refused.error_message().unwrap_or_default();
        assert!(
            msg.contains("errant") && msg.contains(&errant_text),
            "{method} after detach does not name {errant_text}: {}",
            refused.body
        );
    }
    // Still fenced: the application cannot write on the refused candidate.
    assert_read_only(other).await;
}

/// `get_diagnostics().replication` of a member.
async fn replication_health(m: &Member) -> Value {
    let d = m.client.call("get_diagnostics", json!({})).await;
    d.get("replication")
        .cloned()
        .unwrap_or_else(|| panic!("{}: no replication health in {d}", m.name))
}

/// Promotes `m` through its agent.
async fn promote(m: &Member) {
    m.client.call("promote_to_replica_source", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trove_promote_flow_switches_the_primary() {
    let mut primary = Member::new("primary", 201);
    let mut r1 = Member::new("r1", 202);
    let mut r2 = Member::new("r2", 203);
    tokio::join!(
        primary.start_prepared(None, primary_prepare()),
        r1.start_prepared(None, replica_prepare()),
        r2.start_prepared(None, replica_prepare()),
    );
    for r in [&r1, &r2] {
        let snap = primary.replication_snapshot(&r.name).await;
        r.attach_replica(&snap).await;
    }
    let pd = primary.direct();
    let mut app = pd.login("app", APP_PASSWORD, Some("app")).await;
    app.query_drop("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(40))")
        .await
        .unwrap();
    let _ = app.disconnect().await;
    insert(&pd, "app", APP_PASSWORD, &[(1, "one"), (2, "two")]).await;

    // Trove's promote (a planned switchover to r1), step by step through the agents:
    // 1. the old primary stops taking writes;
    primary.make_read_only(true).await;
    assert_read_only(&primary).await;
    // 2-3. the candidate waits for the old primary's last transaction;
    let txn = primary.latest_txn_id().await;
    r1.wait_for_txn(&txn).await;
    // 4. the candidate leaves its source and becomes a writable primary;
    r1.detach_replica(true).await;
    r1.client
        .call("enable_as_master", json!({"replica_source_config": ""}))
        .await;
    r1.make_read_only(false).await;
    insert(&r1.direct(), "app", APP_PASSWORD, &[(3, "three")]).await;
    // 5. every other replica is re-pointed to it;
    r2.detach_replica(true).await;
    r2.attach_replica(&r1.replica_context().await).await;
    // 6. the old primary becomes its replica.
    primary.attach_replica(&r1.replica_context().await).await;
    primary
        .client
        .call("demote_replication_master", json!({}))
        .await;

    insert(&r1.direct(), "app", APP_PASSWORD, &[(4, "four")]).await;
    for m in [&r2, &primary] {
        catch_up(m, &r1).await;
        assert_eq!(
            rows(&m.direct()).await,
            ["1:one", "2:two", "3:three", "4:four"],
            "{}",
            m.name
        );
        assert_read_only(m).await;
        assert_eq!(replication_health(m).await["role"], "replica", "{}", m.name);
    }
    assert_eq!(replication_health(&r1).await["role"], "primary");

    // The demoted primary stays a read-only replica across a restart and keeps replicating.
    primary.client.call("restart", json!({})).await;
    primary.client.wait_status("healthy").await;
    assert_read_only(&primary).await;
    insert(&r1.direct(), "app", APP_PASSWORD, &[(5, "five")]).await;
    catch_up(&primary, &r1).await;
    assert_eq!(rows(&primary.direct()).await.len(), 5);
}

//! GTID replication and failover on three fresh MariaDB servers: replicas catch up, the
//! primary is killed, the most advanced replica without errant transactions is promoted and
//! the other is re-pointed to it; data committed before the kill survives, and a replica with
//! an errant transaction is refused as a candidate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use guest_agent_api::admin::{UserRef, UserSpec};
use guest_agent_api::ident::{DbName, HostPattern, Password, UserName};
use guest_agent_api::position::{GtidSet, Position};
use guest_agent_api::replication::{NodePosition, Replication, choose_promotion_candidate};
use guest_agent_api::{Driver, Error, OpContext};
use support::Instance;

/// Generous: it bounds waiting, it is not what the test measures.
const CATCH_UP: Duration = Duration::from_secs(60);

fn ctx(what: &str) -> OpContext {
    OpContext::new(format!("test-{what}"))
}

fn repl(i: &Instance) -> &dyn Replication {
    i.driver.replication().expect("replication is supported")
}

async fn position(i: &Instance) -> Position {
    i.driver.health().position(&ctx("position")).await.unwrap()
}

async fn node(i: &Instance) -> NodePosition {
    repl(i).node_position(&ctx("node_position")).await.unwrap()
}

async fn rows(i: &Instance) -> Vec<String> {
    let text = i
        .probe()
        .admin_value("SELECT GROUP_CONCAT(v ORDER BY id) FROM app.t")
        .await
        .unwrap();
    text.unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Attaches `replica` to `primary` with a fresh replication account from the primary.
async fn attach(replica: &Instance, primary: &Instance) {
    let source = repl(primary)
        .replica_context(&ctx("replica_context"))
        .await
        .unwrap();
    assert!(source.user.as_str().starts_with("os_repl_"));
    assert_eq!(source.port, primary.port);
    repl(replica)
        .attach(&ctx("attach"), &source)
        .await
        .unwrap_or_else(|e| panic!("attach failed: {e}"));
}

async fn catch_up(replica: &Instance, primary: &Instance) {
    let target = position(primary).await;
    repl(replica)
        .wait_for(&ctx("wait_for"), &target, CATCH_UP)
        .await
        .unwrap_or_else(|e| panic!("replica did not reach {target}: {e}"));
    assert_eq!(position(replica).await.reached(&target), Ok(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_promotes_the_most_advanced_clean_replica() {
    let (primary, r1, r2) = tokio::join!(Instance::start(), Instance::start(), Instance::start());
    let pp = primary.probe();
    pp.admin_exec(
        "CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(20)); \
         INSERT INTO app.t VALUES (1, 'one'), (2, 'two')",
    )
    .await
    .unwrap();

    // A snapshot names the source and the position it was taken at.
    let snap = repl(&primary)
        .snapshot_for_replica(&ctx("snapshot"), "r1")
        .await
        .unwrap();
    assert_eq!(snap.position.as_ref(), Some(&position(&primary).await));
    assert_eq!(
        snap.extra
            .get("replication_strategy")
            .and_then(|v| v.as_str()),
        Some("MariaDBGTIDReplication")
    );
    repl(&r1)
        .attach(&ctx("attach"), &snap.source)
        .await
        .unwrap();
    attach(&r2, &primary).await;

    // An application account, made on the primary through the driver, replicates.
    let app_user = UserName::new("app").unwrap();
    let app_pw = Password::new("App-pw'1\\x").unwrap();
    let app = UserSpec {
        name: app_user.clone(),
        host: HostPattern::any(),
        password: app_pw.clone(),
        databases: vec![DbName::new("app").unwrap()],
    };
    primary
        .driver
        .admin()
        .create_users(&ctx("create_users"), &[app])
        .await
        .unwrap();
    pp.admin_exec("INSERT INTO app.t VALUES (3, 'three')")
        .await
        .unwrap();
    catch_up(&r1, &primary).await;
    catch_up(&r2, &primary).await;
    for r in [&r1, &r2] {
        assert_eq!(rows(r).await, ["one", "two", "three"]);
        let n = node(r).await;
        assert!(n.is_replica && !n.has_errant(), "{n:?}");
        let d = r.driver.health().details(&ctx("details")).await.unwrap();
        let rh = d.replication.unwrap();
        assert_eq!(rh.role, "replica");
        assert_eq!(rh.receiver_state.as_deref(), Some("io=Yes sql=Yes"));
        assert_eq!(rh.last_error, None);
    }

    // Replicas are read-only for application accounts.
    let rp1 = r1.probe();
    let e = rp1
        .write_as("app", app_pw.expose(), "app")
        .await
        .unwrap_err();
    assert!(e.contains("read-only") || e.contains("read_only"), "{e}");
    assert!(pp.write_as("app", app_pw.expose(), "app").await.is_ok());

    // Waiting for a position the primary never reaches times out with a clear error.
    let beyond = match position(&primary).await {
        Position::Gtid(g) => {
            let (d, s, seq) = g.mariadb_entries().next().unwrap();
            Position::Gtid(GtidSet::parse(&format!("{d}-{s}-{}", seq + 1000)).unwrap())
        }
        other => panic!("{other:?}"),
    };
    let r = repl(&r1)
        .wait_for(&ctx("wait_for"), &beyond, Duration::from_secs(1))
        .await;
    assert!(
        matches!(
            r,
            Err(Error::Timeout {
                operation: "wait_for_txn",
                ..
            })
        ),
        "{r:?}"
    );

    // The primary dies. Everything it committed and the replicas received must survive.
    primary.kill().unwrap();
    let positions = vec![("r1", node(&r1).await), ("r2", node(&r2).await)];
    let chosen = *choose_promotion_candidate(&positions).unwrap();
    let (new_primary, other) = if chosen == "r1" {
        (&r1, &r2)
    } else {
        (&r2, &r1)
    };
    repl(new_primary).promote(&ctx("promote")).await.unwrap();
    let n = node(new_primary).await;
    assert!(!n.is_replica && !n.has_errant(), "{n:?}");
    assert_eq!(rows(new_primary).await, ["one", "two", "three"]);
    // Promoted: writable for the application account again.
    new_primary
        .probe()
        .write_as("app", app_pw.expose(), "app")
        .await
        .unwrap();

    // Re-point the other replica; it continues from where it was, by GTID.
    let outcome = repl(other).detach(&ctx("detach"), true).await.unwrap();
    assert!(
        outcome
            .replication_user
            .is_some_and(|u| u.as_str().starts_with("os_repl_"))
    );
    attach(other, new_primary).await;
    new_primary
        .probe()
        .admin_exec("INSERT INTO app.t VALUES (4, 'four')")
        .await
        .unwrap();
    catch_up(other, new_primary).await;
    assert_eq!(rows(other).await, ["one", "two", "three", "four"]);
    assert!(!node(other).await.has_errant());

    // An errant transaction: the administrative account is not stopped by read_only.
    other
        .probe()
        .admin_exec("INSERT INTO app.t VALUES (99, 'errant')")
        .await
        .unwrap();
    let errant = node(other).await;
    assert!(errant.has_errant(), "{errant:?}");
    let errant_text = errant.errant.as_ref().unwrap().to_string();
    // It is the most advanced node now, and still it is refused.
    let np = node(new_primary).await;
    assert_eq!(errant.applied.reached(&np.applied), Ok(true));
    let candidates = vec![("other", errant.clone()), ("new-primary", np)];
    assert_eq!(
        *choose_promotion_candidate(&candidates).unwrap(),
        "new-primary"
    );
    let e = choose_promotion_candidate(&candidates[..1]).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("other has errant transactions {errant_text}")),
        "{e}"
    );
    let e = repl(other).promote(&ctx("promote")).await.unwrap_err();
    match &e {
        Error::InvalidState { operation, reason } => {
            assert_eq!(*operation, "promote");
            assert!(reason.contains(&errant_text), "{reason}");
        }
        other => panic!("promote of an errant replica: {other:?}"),
    }
    // The refused promotion left it a read-only replica.
    assert!(node(other).await.is_replica);
    let e = other
        .probe()
        .write_as("app", app_pw.expose(), "app")
        .await
        .unwrap_err();
    assert!(e.contains("read-only") || e.contains("read_only"), "{e}");

    // Detaching for good drops the replication account locally and makes it writable.
    let outcome = repl(other).detach(&ctx("detach"), false).await.unwrap();
    let gone = outcome
        .replication_user
        .expect("the replica had an account");
    assert!(
        !guest_agent_testkit::Probe::user_exists(&other.probe(), gone.as_str(), "%").await,
        "{gone} still exists after detach"
    );
    assert!(!node(other).await.is_replica);
    other
        .probe()
        .write_as("app", app_pw.expose(), "app")
        .await
        .unwrap();
    let detached = repl(other).detach(&ctx("detach"), false).await.unwrap();
    assert_eq!(detached.replication_user, None, "detach is idempotent");
    let user = UserRef {
        name: app_user,
        host: HostPattern::any(),
    };
    assert!(
        other
            .driver
            .admin()
            .get_user(&ctx("get_user"), &user)
            .await
            .unwrap()
            .is_some(),
        "the application account came through replication"
    );
}

/// Trove's own promotion path: `detach(for_failover)`, then `promote` (`enable_as_master`).
/// The detach must not hide a replica's errant transactions: the promotion is refused naming
/// them and the server stays read-only; a clean replica detached the same way is promoted,
/// and what it writes as the new primary is not errant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_errant_replica_detached_for_a_failover_is_refused_promotion() {
    let (primary, clean, errant) =
        tokio::join!(Instance::start(), Instance::start(), Instance::start());
    let app_pw = Password::new("App-pw-2").unwrap();
    let app = UserSpec {
        name: UserName::new("app").unwrap(),
        host: HostPattern::any(),
        password: app_pw.clone(),
        databases: vec![DbName::new("app").unwrap()],
    };
    primary
        .probe()
        .admin_exec(
            "CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(20)); \
             INSERT INTO app.t VALUES (1, 'one')",
        )
        .await
        .unwrap();
    primary
        .driver
        .admin()
        .create_users(&ctx("create_users"), &[app])
        .await
        .unwrap();
    attach(&clean, &primary).await;
    attach(&errant, &primary).await;
    catch_up(&clean, &primary).await;
    catch_up(&errant, &primary).await;
    let primary_pos = position(&primary).await;

    // The administrative account is not stopped by read_only.
    errant
        .probe()
        .admin_exec("INSERT INTO app.t VALUES (99, 'errant')")
        .await
        .unwrap();
    let before = node(&errant).await;
    assert!(before.is_replica && before.has_errant(), "{before:?}");
    let errant_text = before.errant.as_ref().unwrap().to_string();
    // What it received from its source is the primary's position, not its own write.
    let received = repl(&errant)
        .received_position(&ctx("received"))
        .await
        .unwrap();
    assert_eq!(received, primary_pos);

    // The primary is gone; Trove detaches the candidate for the failover.
    primary.kill().unwrap();
    repl(&errant).detach(&ctx("detach"), true).await.unwrap();
    let after = node(&errant).await;
    assert!(!after.is_replica, "{after:?}");
    assert_eq!(
        after.errant.as_ref().map(ToString::to_string).as_deref(),
        Some(errant_text.as_str()),
        "the detach hid the errant transactions: {after:?}"
    );
    let e = repl(&errant).promote(&ctx("promote")).await.unwrap_err();
    match &e {
        Error::InvalidState { operation, reason } => {
            assert_eq!(*operation, "promote");
            assert!(
                reason.contains("errant") && reason.contains(&errant_text),
                "{reason}"
            );
        }
        other => panic!("promote of a detached errant replica: {other:?}"),
    }
    // Still fenced: the application cannot write on it.
    let e = errant
        .probe()
        .write_as("app", app_pw.expose(), "app")
        .await
        .unwrap_err();
    assert!(e.contains("read-only") || e.contains("read_only"), "{e}");
    assert!(node(&errant).await.has_errant());

    // The clean replica goes the same way and is promoted.
    repl(&clean).detach(&ctx("detach"), true).await.unwrap();
    let n = node(&clean).await;
    assert!(!n.is_replica && !n.has_errant(), "{n:?}");
    let e = clean
        .probe()
        .write_as("app", app_pw.expose(), "app")
        .await
        .unwrap_err();
    assert!(e.contains("read-only") || e.contains("read_only"), "{e}");
    repl(&clean).promote(&ctx("promote")).await.unwrap();
    clean
        .probe()
        .write_as("app", app_pw.expose(), "app")
        .await
        .unwrap();
    let n = node(&clean).await;
    assert!(
        !n.is_replica && !n.has_errant(),
        "a primary's writes are not errant: {n:?}"
    );
    // Promoting again is harmless.
    repl(&clean).promote(&ctx("promote")).await.unwrap();
}

//! Streaming replication on real PostgreSQL 15 servers on 127.0.0.1, each prepared through its
//! own driver: seeding two replicas from a primary, replay and positions, health on a
//! replica, failover to the most advanced replica, re-pointing the other one, rewinding the
//! old primary into a replica, and the slot of a departed replica.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use guest_agent_api::position::Position;
use guest_agent_api::replication::{NodePosition, choose_promotion_candidate};
use guest_agent_api::{DatastoreStatus, Health, Lifecycle, OpContext, Replication};
use guest_agent_postgres::{PgDriver, ROLE_CONF_FILE};
use guest_agent_testkit::Probe;
use support::{PgProbe, ServerGuard, prepared, small_spec};

/// Generous bound for a replica to catch up on loopback.
const CATCH_UP: Duration = Duration::from_secs(60);

fn ctx(op: &str) -> OpContext {
    OpContext::new(format!("test-{op}"))
}

struct Node {
    name: &'static str,
    driver: Arc<PgDriver>,
    guard: ServerGuard,
}

impl Node {
    async fn new(name: &'static str) -> Self {
        let (driver, guard) = prepared(&small_spec()).await;
        Self {
            name,
            driver,
            guard,
        }
    }

    async fn position(&self) -> NodePosition {
        self.driver
            .node_position(&ctx("node_position"))
            .await
            .unwrap()
    }
}

/// Row ids in `failover_rows`, read through `probe`.
async fn rows(probe: &PgProbe) -> Vec<i64> {
    let c = probe.admin("postgres").await.unwrap();
    c.query("SELECT id FROM failover_rows ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn insert(probe: &PgProbe, ids: std::ops::Range<i64>) {
    let c = probe.admin("postgres").await.unwrap();
    for id in ids {
        c.execute("INSERT INTO failover_rows VALUES ($1)", &[&id])
            .await
            .unwrap();
    }
}

async fn attach_to(replica: &Node, source: &Node, replica_id: &str) {
    let snap = source
        .driver
        .snapshot_for_replica(&ctx("snapshot"), replica_id)
        .await
        .unwrap();
    assert_eq!(snap.source.extra["slot_name"], format!("ga_{replica_id}"));
    assert!(matches!(snap.position, Some(Position::Lsn(_))));
    replica
        .driver
        .attach(&ctx("attach"), &snap.source)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "attach {}: {e}\n{}",
                replica.name,
                replica.guard.layout().server_log()
            )
        });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_replay_then_fail_over_and_rewind_the_old_primary() {
    let primary = Node::new("primary").await;
    let r1 = Node::new("r1").await;
    let r2 = Node::new("r2").await;
    let p_probe = PgProbe::new(&primary.guard);
    let c = p_probe.admin("postgres").await.unwrap();
    c.batch_execute("CREATE TABLE failover_rows (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    drop(c);
    insert(&p_probe, 0..10).await;

    attach_to(&r1, &primary, "r1").await;
    attach_to(&r2, &primary, "r2").await;
    let r1_probe = PgProbe::with_catalog_of(&r1.guard, &primary.guard);
    let r2_probe = PgProbe::with_catalog_of(&r2.guard, &primary.guard);

    // Writes on the primary are replayed by both, up to the position the primary reports.
    insert(&p_probe, 10..20).await;
    let target = primary.driver.position(&ctx("position")).await.unwrap();
    for r in [&r1, &r2] {
        r.driver
            .wait_for(&ctx("wait"), &target, CATCH_UP)
            .await
            .unwrap();
        assert!(r.position().await.applied.reached(&target).unwrap());
        assert!(r.position().await.is_replica);
    }
    assert_eq!(rows(&r1_probe).await, (0..20).collect::<Vec<_>>());
    assert_eq!(rows(&r2_probe).await, (0..20).collect::<Vec<_>>());
    // With the primary idle, all three report the same position.
    let mut same = false;
    for _ in 0..600 {
        let p = primary.position().await.applied;
        let (a, b) = (r1.position().await.applied, r2.position().await.applied);
        if a == p && b == p {
            same = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(same, "replicas never reported the primary's position");

    // A replica refuses writes, reports itself healthy, and its replication state.
    assert!(r1_probe.write_something().await.is_err());
    assert_eq!(
        r1.driver.status(&ctx("status")).await,
        DatastoreStatus::Healthy
    );
    let d = r1.driver.details(&ctx("details")).await.unwrap();
    let rep = d.replication.unwrap();
    assert_eq!(rep.role, "replica");
    assert_eq!(rep.receiver_state.as_deref(), Some("streaming"));
    assert!(rep.received.is_some() && rep.applied.is_some(), "{rep:?}");
    assert!(
        rep.lag_bytes.is_some() && rep.lag_seconds.is_some(),
        "{rep:?}"
    );
    // Waiting for a position nobody has reached times out with a clear error.
    let Position::Lsn(l) = target else {
        panic!("LSN expected")
    };
    let far = Position::Lsn(guest_agent_api::position::Lsn(l.0 + (1 << 40)));
    let e = r2
        .driver
        .wait_for(&ctx("wait"), &far, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "Timeout", "{e}");

    // Failover: the primary dies hard.
    p_probe.kill_server().await.unwrap();
    let nodes = vec![("r1", r1.position().await), ("r2", r2.position().await)];
    let chosen = *choose_promotion_candidate(&nodes).unwrap();
    let (new_primary, other, new_probe, other_probe) = if chosen == "r1" {
        (&r1, &r2, &r1_probe, &r2_probe)
    } else {
        (&r2, &r1, &r2_probe, &r1_probe)
    };
    new_primary.driver.promote(&ctx("promote")).await.unwrap();
    assert!(!new_primary.position().await.is_replica);
    new_probe.write_something().await.unwrap();
    // Promotion is idempotent.
    new_primary.driver.promote(&ctx("promote")).await.unwrap();
    assert!(
        !new_primary
            .guard
            .layout()
            .data_dir
            .join(ROLE_CONF_FILE)
            .exists()
    );

    // The other replica stops following the dead primary (staying read-only), then follows
    // the new one.
    other.driver.detach(&ctx("detach"), true).await.unwrap();
    assert!(other.position().await.is_replica);
    assert!(other_probe.write_something().await.is_err());
    let context = new_primary
        .driver
        .replica_context(&ctx("context"))
        .await
        .unwrap();
    other
        .driver
        .attach(&ctx("attach"), &context)
        .await
        .unwrap_or_else(|e| panic!("re-point: {e}\n{}", other.guard.layout().server_log()));

    // The old primary is fenced, rewound and attached; it never takes writes again.
    primary.driver.demote(&ctx("demote")).await.unwrap();
    assert!(
        primary
            .guard
            .layout()
            .data_dir
            .join("standby.signal")
            .exists()
    );
    primary
        .driver
        .attach(&ctx("attach"), &context)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "rewind old primary: {e}\n{}",
                primary.guard.layout().server_log()
            )
        });
    let old_probe = PgProbe::with_catalog_of(&primary.guard, &primary.guard);
    assert!(old_probe.write_something().await.is_err());
    assert!(primary.position().await.is_replica);
    // Demoting a replica changes nothing.
    primary.driver.demote(&ctx("demote")).await.unwrap();
    assert_eq!(
        primary.driver.status(&ctx("status")).await,
        DatastoreStatus::Healthy
    );

    // New writes reach everyone; every row committed before the failure is everywhere.
    insert(new_probe, 20..30).await;
    let target = new_primary.driver.position(&ctx("position")).await.unwrap();
    for n in [other, &primary] {
        n.driver
            .wait_for(&ctx("wait"), &target, CATCH_UP)
            .await
            .unwrap();
    }
    let want: Vec<i64> = (0..30).collect();
    for p in [new_probe, other_probe, &old_probe] {
        assert_eq!(rows(p).await, want);
    }
    assert!(old_probe.write_something().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_primary_and_departed_replica_slot() {
    let primary = Node::new("primary").await;
    let probe = PgProbe::new(&primary.guard);
    let snap = primary
        .driver
        .snapshot_for_replica(&ctx("snapshot"), "gone-replica")
        .await
        .unwrap();
    assert_eq!(snap.source.user.as_str(), "replicator");
    let c = probe.admin("postgres").await.unwrap();
    let slots: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ga_gone_replica'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 1);
    // The replication role is hidden from Trove's user operations.
    let users = guest_agent_api::Admin::list_users(
        primary.driver.as_ref(),
        &ctx("users"),
        &Default::default(),
    )
    .await
    .unwrap();
    assert!(users.items.iter().all(|u| u.name.as_str() != "replicator"));
    primary
        .driver
        .forget_replica(&ctx("forget"), "gone-replica")
        .await
        .unwrap();
    primary
        .driver
        .forget_replica(&ctx("forget"), "gone-replica")
        .await
        .unwrap();
    let slots: i64 = c
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);

    primary
        .driver
        .set_read_only(&ctx("ro"), true)
        .await
        .unwrap();
    assert!(probe.write_something().await.is_err());
    // The driver itself still administers a read-only primary.
    primary
        .driver
        .snapshot_for_replica(&ctx("snapshot"), "while-read-only")
        .await
        .unwrap();
    primary
        .driver
        .forget_replica(&ctx("forget"), "while-read-only")
        .await
        .unwrap();
    primary
        .driver
        .set_read_only(&ctx("ro"), false)
        .await
        .unwrap();
    probe.write_something().await.unwrap();
    // Promoting a primary is a no-op; detaching one too.
    primary.driver.promote(&ctx("promote")).await.unwrap();
    assert!(
        primary
            .driver
            .detach(&ctx("detach"), true)
            .await
            .unwrap()
            .replication_user
            .is_none()
    );
    let out = primary.driver.detach(&ctx("detach"), false).await.unwrap();
    assert!(out.replication_user.is_none());
    probe.write_something().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_primary_that_diverged_is_brought_back_in_line() {
    let primary = Node::new("primary").await;
    let r1 = Node::new("r1").await;
    let p_probe = PgProbe::new(&primary.guard);
    p_probe
        .admin("postgres")
        .await
        .unwrap()
        .batch_execute("CREATE TABLE failover_rows (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    insert(&p_probe, 0..5).await;
    attach_to(&r1, &primary, "r1").await;
    let target = primary.driver.position(&ctx("position")).await.unwrap();
    r1.driver
        .wait_for(&ctx("wait"), &target, CATCH_UP)
        .await
        .unwrap();

    // Promoted while the old primary still runs and takes a write the new one never sees.
    r1.driver.promote(&ctx("promote")).await.unwrap();
    let r1_probe = PgProbe::new(&r1.guard);
    insert(&r1_probe, 5..8).await;
    insert(&p_probe, 100..101).await;
    // A clean shutdown checkpoints, so the old primary's WAL from before the split may be
    // gone: attach rewinds when it can and copies afresh when it cannot.
    primary.driver.demote(&ctx("demote")).await.unwrap();
    let context = r1.driver.replica_context(&ctx("context")).await.unwrap();
    primary
        .driver
        .attach(&ctx("attach"), &context)
        .await
        .unwrap_or_else(|e| panic!("attach: {e}\n{}", primary.guard.layout().server_log()));
    let target = r1.driver.position(&ctx("position")).await.unwrap();
    primary
        .driver
        .wait_for(&ctx("wait"), &target, CATCH_UP)
        .await
        .unwrap();
    let old = PgProbe::new(&primary.guard);
    assert_eq!(rows(&old).await, (0..8).collect::<Vec<_>>());
    assert!(old.write_something().await.is_err());
    assert!(primary.position().await.is_replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_runs_with_at_least_the_primarys_connection_limits() {
    let spec = guest_agent_api::lifecycle::PrepareSpec {
        overrides: Some(
            serde_json::json!({"max_connections": 120})
                .as_object()
                .unwrap()
                .clone(),
        ),
        ..small_spec()
    };
    let (driver, guard) = prepared(&spec).await;
    let primary = Node {
        name: "primary",
        driver,
        guard,
    };
    let r1 = Node::new("r1").await;
    attach_to(&r1, &primary, "r1").await;
    let probe = PgProbe::new(&r1.guard);
    let c = probe.admin("postgres").await.unwrap();
    let max: String = c
        .query_one("SHOW max_connections", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(max, "120");
    let target = primary.driver.position(&ctx("position")).await.unwrap();
    r1.driver
        .wait_for(&ctx("wait"), &target, CATCH_UP)
        .await
        .unwrap();
    // Detached outside a failover, a replica becomes a standalone primary.
    r1.driver.detach(&ctx("detach"), false).await.unwrap();
    assert!(!r1.position().await.is_replica);
    probe.write_something().await.unwrap();
}

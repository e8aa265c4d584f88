//! Conformance functions for the replication group, on two servers: the harness's (the
//! primary) and one more built by [`Harness::peers`] (the replica).
//!
//! A driver that does not declare replication must have no replication group; one that does
//! must let a fresh server attach to a snapshot of the primary, replay the primary's writes
//! up to the position the primary reports, and be promoted to a writable primary.

use std::time::Duration;

use crate::Harness;
use crate::check::{caps, fresh_db, ok, within};

/// How long the replica may take to replay a few writes on loopback.
const REPLAY_BOUND: Duration = Duration::from_secs(60);

/// Attach a fresh server as a replica, wait until it replayed a write, promote it.
pub async fn attach_wait_promote(h: &Harness) {
    let Some(primary) = h.driver.replication() else {
        assert!(
            !caps(h).replication,
            "replication is declared but replication() is None"
        );
        return;
    };
    let make = h.peers.clone().unwrap_or_else(|| {
        panic!(
            "driver '{}' declares replication: its test support must let the kit build a \
             second server (Harness::with_peers)",
            h.driver_name()
        )
    });
    let peer = make().await;
    let replica = peer
        .driver
        .replication()
        .expect("the peer is built by the same driver");

    let ctx = h.ctx("snapshot_for_replica");
    let snap = ok(
        "snapshot_for_replica",
        within(
            "snapshot_for_replica",
            primary.snapshot_for_replica(&ctx, "kit_replica"),
        )
        .await,
    );
    let ctx = peer.ctx("attach");
    ok(
        "attach",
        within("attach", replica.attach(&ctx, &snap.source)).await,
    );

    // A write on the primary reaches the replica by the primary's own position.
    let db = if caps(h).databases {
        Some(fresh_db(h).await)
    } else {
        None
    };
    if let Err(e) = h.probe.write_something().await {
        panic!("the probe cannot write on the primary: {e}");
    }
    let ctx = h.ctx("position");
    let target = ok(
        "position",
        within("position", h.driver.health().position(&ctx)).await,
    );
    let ctx = peer.ctx("wait_for");
    ok(
        "wait_for",
        within("wait_for", replica.wait_for(&ctx, &target, REPLAY_BOUND)).await,
    );
    let ctx = peer.ctx("node_position");
    let node = ok(
        "node_position",
        within("node_position", replica.node_position(&ctx)).await,
    );
    assert!(node.is_replica, "an attached server reports is_replica");
    assert_eq!(
        node.applied.reached(&target),
        Ok(true),
        "wait_for returned but the replica's {} has not reached {target}",
        node.applied
    );
    if let Some(db) = &db {
        assert!(
            peer.probe.database_exists(db.as_str()).await,
            "database {db} created on the primary is not on the replica"
        );
    }

    // Promotion makes it a writable primary that keeps what it replayed.
    let ctx = peer.ctx("promote");
    ok("promote", within("promote", replica.promote(&ctx)).await);
    let ctx = peer.ctx("node_position");
    let node = ok(
        "node_position",
        within("node_position", replica.node_position(&ctx)).await,
    );
    assert!(!node.is_replica, "a promoted server is not a replica");
    if let Err(e) = peer.probe.write_something().await {
        panic!("the promoted replica does not take writes: {e}");
    }
    if let Some(db) = &db {
        assert!(peer.probe.database_exists(db.as_str()).await);
    }
    // Promoting a primary changes nothing.
    let ctx = peer.ctx("promote");
    ok(
        "promote again",
        within("promote", replica.promote(&ctx)).await,
    );
}

//! Replication group: snapshot for a new replica, attach, detach, promote, demote, read-only,
//! waiting for a position, and what each node knows of its own position so that a failover
//! can pick the replica to promote ([`choose_promotion_candidate`]).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::ident::{Password, UserName};
use crate::position::Position;
use crate::{Error, OpContext, Result};

/// Where a replica connects and as whom.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicationSource {
    /// Host or address of the source.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Replication user.
    pub user: UserName,
    /// Its password.
    pub password: Password,
    /// Datastore-specific extras (slot name, channel ...).
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Where the replica starts when its data was seeded from a snapshot taken at this
    /// position; `None` continues from what the replica has applied already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_position: Option<Position>,
}

/// What a primary hands out for a new replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaSnapshot {
    /// How to connect to the primary.
    pub source: ReplicationSource,
    /// Position the snapshot is consistent at, if known.
    pub position: Option<Position>,
    /// Datastore-specific extras (backup location ...).
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Replication control.
#[async_trait]
pub trait Replication: Send + Sync {
    /// Prepares this server (a primary) to feed a new replica: replication user, slot, and the
    /// position the replica starts from.
    async fn snapshot_for_replica(
        &self,
        ctx: &OpContext,
        replica_id: &str,
    ) -> Result<ReplicaSnapshot>;

    /// Makes this server a replica of `source` and starts streaming.
    async fn attach(&self, ctx: &OpContext, source: &ReplicationSource) -> Result<()>;

    /// Stops replicating; the server keeps its data and becomes standalone.
    ///
    /// # Contract
    /// Idempotent: a server that does not replicate is left alone (no replication user then).
    /// With `for_failover`, a datastore whose replicas cannot take writes may leave the server
    /// read-only until [`Replication::promote`] or [`Replication::attach`], so that a failover
    /// never has two writable primaries.
    async fn detach(&self, ctx: &OpContext, for_failover: bool) -> Result<DetachOutcome>;

    /// Promotes this replica to a writable primary.
    ///
    /// # Contract
    /// A replica holding errant transactions (see [`NodePosition::errant`]) is refused with
    /// [`Error::InvalidState`] naming them. Idempotent on a primary.
    async fn promote(&self, ctx: &OpContext) -> Result<()>;

    /// Turns this primary into a replica-to-be (read-only, ready for `attach`).
    async fn demote(&self, ctx: &OpContext) -> Result<()>;

    /// Sets or clears read-only mode.
    async fn set_read_only(&self, ctx: &OpContext, read_only: bool) -> Result<()>;

    /// How a replica should connect to this server.
    async fn replica_context(&self, ctx: &OpContext) -> Result<ReplicationSource>;

    /// Waits until this server has applied `target`; [`crate::Error::Timeout`] after `timeout`.
    async fn wait_for(&self, ctx: &OpContext, target: &Position, timeout: Duration) -> Result<()>;

    /// This server's own view of its position, read for choosing a promotion candidate.
    async fn node_position(&self, ctx: &OpContext) -> Result<NodePosition>;

    /// What this server applied from its source's stream, without its own (errant) writes:
    /// Trove's `get_last_txn` ranks replicas by it when ejecting a primary, so a replica with
    /// errant transactions does not look more advanced than the others for them.
    ///
    /// # Contract
    /// The default is [`NodePosition::applied`], right for datastores whose replicas cannot
    /// write.
    async fn received_position(&self, ctx: &OpContext) -> Result<Position> {
        Ok(self.node_position(ctx).await?.applied)
    }

    /// On a source: releases what it keeps for the replica `replica_id` (named at
    /// [`Replication::snapshot_for_replica`]) once that replica is gone, such as a
    /// PostgreSQL replication slot that would otherwise retain WAL forever.
    ///
    /// # Contract
    /// Idempotent; the default has nothing to release.
    async fn forget_replica(&self, ctx: &OpContext, replica_id: &str) -> Result<()> {
        let _ = (ctx, replica_id);
        Ok(())
    }
}

/// What `detach` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachOutcome {
    /// The account the replica connected to its source with, when the datastore has one
    /// (Trove's `detach_replica` returns it so the control plane can drop it on the source).
    pub replication_user: Option<UserName>,
}

/// One node's view of its own position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePosition {
    /// Everything the server has applied.
    pub applied: Position,
    /// Whether the server is configured to replicate from a source right now.
    pub is_replica: bool,
    /// Transactions written on this server while it was a replica, which its source never
    /// had. `None` or an empty set means none; datastores whose replicas cannot write report
    /// `None`.
    pub errant: Option<Position>,
}

impl NodePosition {
    /// Whether the server holds errant transactions.
    pub fn has_errant(&self) -> bool {
        match &self.errant {
            None => false,
            Some(Position::Gtid(g)) => !g.is_empty(),
            Some(Position::Lsn(_)) => true,
        }
    }
}

/// Chooses the node to promote when the primary is gone: the first of `nodes` (in order) that
/// has no errant transactions and has applied everything every other such node has.
///
/// A node with errant transactions is never chosen, even when it is the most advanced:
/// promoting it would hand its errant writes to every other replica (and break those that
/// cannot take them). What it received from the old primary beyond the chosen node is lost.
///
/// # Errors
/// [`Error::InvalidState`] when `nodes` is empty, when every node holds errant transactions
/// (each is named with its errant set), or when the clean nodes' positions diverged so that
/// none is ahead of all the others; positions of different kinds are an error too.
pub fn choose_promotion_candidate<K: fmt::Display>(nodes: &[(K, NodePosition)]) -> Result<&K> {
    let refuse = |reason: String| Error::InvalidState {
        operation: "choose a promotion candidate",
        reason,
    };
    if nodes.is_empty() {
        return Err(refuse("no replica to choose from".to_owned()));
    }
    let clean: Vec<&(K, NodePosition)> = nodes.iter().filter(|(_, p)| !p.has_errant()).collect();
    if clean.is_empty() {
        let listed: Vec<String> = nodes
            .iter()
            .map(|(k, p)| {
                let errant = p
                    .errant
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                format!("{k} has errant transactions {errant}")
            })
            .collect();
        return Err(refuse(listed.join("; ")));
    }
    for (key, pos) in &clean {
        let mut ahead_of_all = true;
        for (_, other) in &clean {
            let reached = pos
                .applied
                .reached(&other.applied)
                .map_err(|e| refuse(e.to_string()))?;
            if !reached {
                ahead_of_all = false;
                break;
            }
        }
        if ahead_of_all {
            return Ok(key);
        }
    }
    let listed: Vec<String> = clean
        .iter()
        .map(|(k, p)| format!("{k} at {}", p.applied))
        .collect();
    Err(refuse(format!(
        "the replicas diverged, none has applied all the others have: {}",
        listed.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::GtidSet;

    fn node(applied: &str, errant: &str) -> NodePosition {
        NodePosition {
            applied: Position::Gtid(GtidSet::parse(applied).unwrap()),
            is_replica: true,
            errant: Some(Position::Gtid(GtidSet::parse(errant).unwrap())),
        }
    }

    #[test]
    fn the_most_advanced_clean_node_wins() {
        let nodes = [
            ("r1", node("0-1-10", "")),
            ("r2", node("0-1-12", "")),
            ("r3", node("0-1-11", "")),
        ];
        assert_eq!(*choose_promotion_candidate(&nodes).unwrap(), "r2");
        // Equal positions: the first in order.
        let nodes = [("a", node("0-1-5", "")), ("b", node("0-1-5", ""))];
        assert_eq!(*choose_promotion_candidate(&nodes).unwrap(), "a");
    }

    #[test]
    fn errant_nodes_are_refused() {
        let nodes = [("r1", node("0-1-10", "")), ("r2", node("0-2-11", "0-2-11"))];
        assert!(nodes[1].1.has_errant() && !nodes[0].1.has_errant());
        assert_eq!(*choose_promotion_candidate(&nodes).unwrap(), "r1");
        let e = choose_promotion_candidate(&nodes[1..])
            .unwrap_err()
            .to_string();
        assert!(e.contains("r2 has errant transactions 0-2-11"), "{e}");
    }

    #[test]
    fn diverged_and_empty_are_errors() {
        let nodes = [("r1", node("0-1-10,1-1-1", "")), ("r2", node("0-1-11", ""))];
        let e = choose_promotion_candidate(&nodes).unwrap_err().to_string();
        assert!(
            e.contains("diverged") && e.contains("r1 at 0-1-10,1-1-1"),
            "{e}"
        );
        let none: [(&str, NodePosition); 0] = [];
        assert!(choose_promotion_candidate(&none).is_err());
        let mixed = [
            ("r1", node("0-1-1", "")),
            (
                "pg",
                NodePosition {
                    applied: Position::Lsn(crate::position::Lsn(5)),
                    is_replica: true,
                    errant: None,
                },
            ),
        ];
        assert!(choose_promotion_candidate(&mixed).is_err());
    }
}

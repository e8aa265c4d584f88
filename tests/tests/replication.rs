//! PostgreSQL streaming replication driven through three agents over HTTPS with mutual TLS,
//! one agent per server, all on 127.0.0.1: a primary and two replicas seeded through
//! `get_replication_snapshot` / `attach_replica`, writes replayed to the position the primary
//! reports, then a failover: the primary is killed, the replica with the highest replayed
//! position (from the agents' reports) is promoted, the other replica and the rewound old
//! primary follow it. Every row is checked with direct logins, not through the agents.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use guest_agent_e2e::services::postgres::{connect, login, postmaster_pid};
use guest_agent_e2e::{Agent, ROOT_PASSWORD, ROOT_USER, RpcClient, TestEnv};
use nix::sys::signal::{Signal, kill};
use serde_json::{Value, json};

/// Bound on polls for a state the servers reach by themselves.
const BOUND: Duration = Duration::from_secs(120);

struct Node {
    name: &'static str,
    env: TestEnv,
    _agent: Agent,
    client: RpcClient,
}

impl Node {
    async fn new(name: &'static str) -> Self {
        let env = TestEnv::new();
        let (agent, client) = env.prepared_agent().await;
        Self {
            name,
            env,
            _agent: agent,
            client,
        }
    }

    async fn root(&self) -> tokio_postgres::Client {
        login(self.env.pg_port, ROOT_USER, ROOT_PASSWORD, "postgres").await
    }

    async fn rows(&self) -> Vec<i64> {
        self.root()
            .await
            .query("SELECT id FROM failover_rows ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    async fn insert(&self, ids: std::ops::Range<i64>) {
        let c = self.root().await;
        for id in ids {
            c.execute("INSERT INTO failover_rows VALUES ($1)", &[&id])
                .await
                .unwrap_or_else(|e| panic!("insert on {}: {e}", self.name));
        }
    }

    /// Whether a committed write succeeds on this server right now.
    async fn takes_writes(&self) -> bool {
        match connect(self.env.pg_port, ROOT_USER, ROOT_PASSWORD, "postgres").await {
            Ok(c) => c
                .batch_execute("INSERT INTO failover_rows VALUES (-1); DELETE FROM failover_rows WHERE id = -1")
                .await
                .is_ok(),
            Err(_) => false,
        }
    }

    async fn latest_txn(&self) -> String {
        let v = self.client.call("get_latest_txn_id", json!({})).await;
        v.as_str()
            .unwrap_or_else(|| panic!("{}: get_latest_txn_id is not a string: {v}", self.name))
            .to_owned()
    }

    /// `get_last_txn`'s number: the replayed LSN as an integer.
    async fn last_txn(&self) -> u64 {
        let v = self.client.call("get_last_txn", json!({})).await;
        assert!(v[0].is_null(), "{v}");
        v[1].as_u64()
            .unwrap_or_else(|| panic!("{}: get_last_txn: {v}", self.name))
    }

    async fn wait_for_txn(&self, txn: &str) {
        self.client
            .call("wait_for_txn", json!({"txn": txn, "timeout": 120}))
            .await;
    }
}

/// Attaches `replica` to `primary` through a snapshot named after the replica.
async fn attach(replica: &Node, primary: &Node) {
    let snap = primary
        .client
        .call(
            "get_replication_snapshot",
            json!({"snapshot_info": {"id": format!("snap-{}", replica.name), "replica_id": replica.name},
                   "replica_source_config": ""}),
        )
        .await;
    assert_eq!(snap["master"]["port"], primary.env.pg_port, "{snap}");
    assert_eq!(
        snap["replica_conf"]["replication_user"]["name"],
        "replicator"
    );
    assert_eq!(
        snap["replica_conf"]["slot_name"],
        format!("ga_{}", replica.name)
    );
    assert_eq!(snap["dataset"]["datastore_manager"], "postgresql");
    replica
        .client
        .call(
            "attach_replica",
            json!({"replica_info": snap, "slave_config": "", "restart": true}),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn primary_two_replicas_and_failover() {
    let primary = Node::new("primary").await;
    let r1 = Node::new("r1").await;
    let r2 = Node::new("r2").await;
    assert_eq!(
        primary
            .client
            .call("backup_required_for_replication", json!({}))
            .await,
        Value::Bool(false)
    );
    primary
        .root()
        .await
        .batch_execute("CREATE TABLE failover_rows (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    primary.insert(0..10).await;

    attach(&r1, &primary).await;
    attach(&r2, &primary).await;

    // A write on the primary: both replicas replay it and report the primary's position.
    primary.insert(10..20).await;
    let txn = primary.latest_txn().await;
    r1.wait_for_txn(&txn).await;
    r2.wait_for_txn(&txn).await;
    let want: Vec<i64> = (0..20).collect();
    assert_eq!(r1.rows().await, want);
    assert_eq!(r2.rows().await, want);
    let deadline = Instant::now() + BOUND;
    loop {
        let (p, a, b) = (
            primary.latest_txn().await,
            r1.latest_txn().await,
            r2.latest_txn().await,
        );
        if p == a && a == b {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "positions never agreed: primary {p}, r1 {a}, r2 {b}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in [&r1, &r2] {
        let d = r.client.call("get_diagnostics", json!({})).await;
        let rep = &d["replication"];
        assert_eq!(rep["role"], "replica", "{d}");
        assert_eq!(rep["receiver_state"], "streaming", "{d}");
        assert!(
            rep["lag_bytes"].is_u64() && rep["lag_seconds"].is_number(),
            "{d}"
        );
        assert_eq!(rep["applied"]["kind"], "lsn", "{d}");
        assert_eq!(rep["received"]["kind"], "lsn", "{d}");
        assert!(!r.takes_writes().await, "replica {} takes writes", r.name);
        assert_eq!(r.client.service_status().await, "healthy");
    }
    // A wait nobody can satisfy times out with a clear error.
    let e = r1
        .client
        .call_err("wait_for_txn", json!({"txn": "FF/0", "timeout": 1}))
        .await;
    assert_eq!(e.error_type(), Some("Timeout"), "{}", e.body);

    // Failover: the primary dies hard.
    let pid = postmaster_pid(&primary.env.data_dir).expect("the primary runs");
    kill(pid, Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + BOUND;
    while postmaster_pid(&primary.env.data_dir).is_some() {
        assert!(Instant::now() < deadline, "the primary survived SIGKILL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The replica with the highest replayed position, from the agents' reports.
    let (a, b) = (r1.last_txn().await, r2.last_txn().await);
    let (new_primary, other) = if a >= b { (&r1, &r2) } else { (&r2, &r1) };
    new_primary
        .client
        .call("promote_to_replica_source", json!({}))
        .await;
    assert!(new_primary.takes_writes().await);
    new_primary.insert(20..25).await;

    // The other replica follows the new primary.
    let context = new_primary
        .client
        .call("get_replica_context", json!({}))
        .await;
    assert_eq!(context["master"]["port"], new_primary.env.pg_port);
    other
        .client
        .call("attach_replica", json!({"replica_info": context.clone()}))
        .await;

    // The old primary is fenced, rewound and attached; it never takes writes again.
    primary
        .client
        .call("demote_replication_master", json!({}))
        .await;
    assert!(!primary.takes_writes().await);
    // Even started again before it is attached, it comes up read-only.
    primary.client.call("start_db", json!({})).await;
    primary.client.wait_status("healthy").await;
    assert!(
        !primary.takes_writes().await,
        "a demoted primary took writes"
    );
    primary
        .client
        .call("attach_replica", json!({"replica_info": context}))
        .await;
    assert!(
        !primary.takes_writes().await,
        "the old primary takes writes"
    );

    new_primary.insert(25..30).await;
    let txn = new_primary.latest_txn().await;
    other.wait_for_txn(&txn).await;
    primary.wait_for_txn(&txn).await;
    let want: Vec<i64> = (0..30).collect();
    for n in [new_primary, other, &primary] {
        assert_eq!(n.rows().await, want, "rows on {}", n.name);
    }
    assert!(
        !primary.takes_writes().await,
        "the old primary takes writes"
    );
    assert!(!other.takes_writes().await);
    let d = primary.client.call("get_diagnostics", json!({})).await;
    assert_eq!(d["replication"]["role"], "replica", "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prepare_with_a_snapshot_makes_a_replica() {
    let primary = Node::new("primary").await;
    primary
        .root()
        .await
        .batch_execute("CREATE TABLE failover_rows (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    primary.insert(0..3).await;
    let snap = primary
        .client
        .call(
            "get_replication_snapshot",
            json!({"snapshot_info": {"id": "snap-1", "replica_id": "fresh"}}),
        )
        .await;

    // Trove's replica creation: prepare carries the snapshot.
    let env = TestEnv::new();
    let _agent = env.start_agent().await;
    let client = env.client();
    let mut args = guest_agent_e2e::prepare_args();
    args["snapshot"] = snap;
    client.prepare(args).await;
    client.wait_status("healthy").await;
    let replica = Node {
        name: "fresh",
        env,
        _agent,
        client,
    };
    primary.insert(3..6).await;
    replica.wait_for_txn(&primary.latest_txn().await).await;
    assert_eq!(replica.rows().await, (0..6).collect::<Vec<_>>());
    assert!(!replica.takes_writes().await);
    let d = replica.client.call("get_diagnostics", json!({})).await;
    assert_eq!(d["replication"]["role"], "replica", "{d}");
    // The source keeps the replica's slot while it streams.
    let r = primary
        .client
        .call_err(
            "cleanup_source_on_replica_detach",
            json!({"replica_info": {"replica_id": "fresh"}}),
        )
        .await;
    r.assert_error(409, "InvalidState");
}

/// Trove's planned promotion (taskmanager's promote flow, `trove.md` §8), step by step.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trove_promote_flow() {
    let master = Node::new("master").await;
    let candidate = Node::new("candidate").await;
    let other = Node::new("other").await;
    master
        .root()
        .await
        .batch_execute("CREATE TABLE failover_rows (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    master.insert(0..5).await;
    attach(&candidate, &master).await;
    attach(&other, &master).await;

    // 1-3: the old master stops taking writes; the candidate catches up with it.
    master
        .client
        .call("make_read_only", json!({"read_only": true}))
        .await;
    assert!(!master.takes_writes().await);
    let txn = master.latest_txn().await;
    candidate.wait_for_txn(&txn).await;
    // 4: the candidate leaves its master and becomes the writable master.
    let out = candidate
        .client
        .call("detach_replica", json!({"for_failover": true}))
        .await;
    assert_eq!(out, json!({"replication_user": null}));
    assert!(
        !candidate.takes_writes().await,
        "detached for a failover but writable"
    );
    candidate
        .client
        .call("enable_as_master", json!({"replica_source_config": ""}))
        .await;
    candidate
        .client
        .call("make_read_only", json!({"read_only": false}))
        .await;
    assert!(candidate.takes_writes().await);
    // 5: the other replica follows the new master.
    let context = candidate
        .client
        .call("get_replica_context", json!({}))
        .await;
    other
        .client
        .call("detach_replica", json!({"for_failover": true}))
        .await;
    assert!(!other.takes_writes().await);
    other
        .client
        .call(
            "attach_replica",
            json!({"replica_info": context.clone(), "slave_config": "", "restart": true}),
        )
        .await;
    // 6: the old master follows it too, then is demoted.
    master
        .client
        .call(
            "attach_replica",
            json!({"replica_info": context, "slave_config": "", "restart": false}),
        )
        .await;
    master
        .client
        .call("demote_replication_master", json!({}))
        .await;
    assert!(!master.takes_writes().await);

    candidate.insert(5..10).await;
    let txn = candidate.latest_txn().await;
    other.wait_for_txn(&txn).await;
    master.wait_for_txn(&txn).await;
    for n in [&candidate, &other, &master] {
        assert_eq!(
            n.rows().await,
            (0..10).collect::<Vec<_>>(),
            "rows on {}",
            n.name
        );
        assert_eq!(n.client.service_status().await, "healthy", "{}", n.name);
    }
    assert!(!other.takes_writes().await && !master.takes_writes().await);
}

//! Trove's replication wire shapes (`shared/research/trove.md` §8) and their mapping onto the
//! driver API's [`ReplicationSource`] and [`ReplicaSnapshot`].
//!
//! A snapshot (`get_replication_snapshot`) and a replica context (`get_replica_context`) are
//! dicts with `master: {host, port}` and `replica_conf: {replication_user: {name, password},
//! log_position, …}`; `attach_replica` takes either back as `replica_info`. Datastore-specific
//! extras of the source (a PostgreSQL slot name) travel as further `replica_conf` keys.

use guest_agent_api::ident::{Password, UserName};
use guest_agent_api::position::{GtidSet, Lsn, Position};
use guest_agent_api::replication::{ReplicaSnapshot, ReplicationSource};
use serde_json::{Map, Value, json};

use super::RpcError;

/// `replica_conf` keys that are not source extras.
const CONF_KEYS: &[&str] = &["replication_user", "log_position"];

fn invalid(method: &str, field: &str, reason: impl Into<String>) -> RpcError {
    RpcError::invalid_args(method, field, reason)
}

/// Parses Trove's `replica_info` (a snapshot or a replica context) found under `field`.
pub(crate) fn parse_source(
    method: &str,
    field: &str,
    info: &Value,
) -> Result<ReplicationSource, RpcError> {
    let obj = info
        .as_object()
        .ok_or_else(|| invalid(method, field, "must be an object"))?;
    let master = obj
        .get("master")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(method, &format!("{field}.master"), "is required"))?;
    let host = master
        .get("host")
        .and_then(Value::as_str)
        .filter(|h| !h.trim().is_empty())
        .ok_or_else(|| invalid(method, &format!("{field}.master.host"), "is required"))?;
    let port = master
        .get("port")
        .and_then(|p| {
            p.as_u64()
                .or_else(|| p.as_str().and_then(|s| s.trim().parse().ok()))
        })
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            invalid(
                method,
                &format!("{field}.master.port"),
                "must be a port number",
            )
        })?;
    let conf = obj
        .get("replica_conf")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(method, &format!("{field}.replica_conf"), "is required"))?;
    let user_field = format!("{field}.replica_conf.replication_user");
    let user = conf
        .get("replication_user")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(method, &user_field, "is required"))?;
    let name = user
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(method, &format!("{user_field}.name"), "is required"))?;
    let name = UserName::new(name).map_err(|e| match e {
        guest_agent_api::Error::InvalidArgument { reason, .. } => {
            invalid(method, &format!("{user_field}.name"), reason)
        }
        other => RpcError::Driver(other),
    })?;
    let password = user
        .get("password")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(method, &format!("{user_field}.password"), "is required"))?;
    // The password is never quoted back in the error.
    let password = Password::new(password).map_err(|_| {
        invalid(
            method,
            &format!("{user_field}.password"),
            "must be 1 to 1024 bytes without control characters",
        )
    })?;
    let start_position = match conf
        .get("log_position")
        .and_then(|l| l.get("start_position"))
    {
        None | Some(Value::Null) => None,
        Some(v) => Some(serde_json::from_value::<Position>(v.clone()).map_err(|e| {
            invalid(
                method,
                &format!("{field}.replica_conf.log_position.start_position"),
                e.to_string(),
            )
        })?),
    };
    let extra: Map<String, Value> = conf
        .iter()
        .filter(|(k, _)| !CONF_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(ReplicationSource {
        host: host.trim().to_owned(),
        port,
        user: name,
        password,
        extra,
        start_position,
    })
}

/// `{"master", "replica_conf"}` for `source`, with `log_position`.
fn source_json(source: &ReplicationSource, log_position: Value) -> Map<String, Value> {
    let mut conf = Map::new();
    for (k, v) in &source.extra {
        conf.insert(k.clone(), v.clone());
    }
    conf.insert(
        "replication_user".to_owned(),
        json!({"name": source.user.as_str(), "password": source.password.expose()}),
    );
    conf.insert("log_position".to_owned(), log_position);
    let mut out = Map::new();
    out.insert(
        "master".to_owned(),
        json!({"host": source.host, "port": source.port}),
    );
    out.insert("replica_conf".to_owned(), Value::Object(conf));
    out
}

/// Trove's `get_replica_context` reply.
pub(crate) fn context_json(source: &ReplicationSource) -> Value {
    let mut out = source_json(source, json!({}));
    out.insert("log_position".to_owned(), json!({}));
    Value::Object(out)
}

/// Trove's `get_replication_snapshot` reply: `dataset`, `replication_strategy`, `master`,
/// `replica_conf` (its `log_position.position` is the primary's position when the snapshot
/// was taken), and the driver's extras.
pub(crate) fn snapshot_json(
    snap: &ReplicaSnapshot,
    manager: &str,
    snapshot_id: Option<&Value>,
    sizes: (f64, f64),
) -> Value {
    let log_position = match &snap.position {
        Some(p) => json!({"position": p}),
        None => json!({}),
    };
    let mut out = source_json(&snap.source, log_position);
    for (k, v) in &snap.extra {
        out.entry(k.clone()).or_insert_with(|| v.clone());
    }
    out.insert(
        "dataset".to_owned(),
        json!({
            "datastore_manager": manager,
            "dataset_size": sizes.0,
            "volume_size": sizes.1,
            "snapshot_id": snapshot_id.cloned().unwrap_or(Value::Null),
        }),
    );
    Value::Object(out)
}

/// Parses a transaction position as Trove passes it to `wait_for_txn`: an LSN (`X/Y`) or a
/// GTID set.
pub(crate) fn parse_txn(method: &str, text: &str) -> Result<Position, RpcError> {
    let text = text.trim();
    let parsed = if text.contains('/') {
        text.parse::<Lsn>().map(Position::Lsn)
    } else {
        GtidSet::parse(text).map(Position::Gtid)
    };
    parsed.map_err(|e| invalid(method, "txn", e.to_string()))
}

/// Trove's `get_last_txn`: `[source, number]`. For an LSN the source is `null` and the
/// number the LSN as an integer (ordered like the LSN, so Trove's eject picks the most
/// advanced replica); for a MariaDB position with one domain, `[server_id, sequence]`.
pub(crate) fn last_txn_json(position: &Position) -> Option<Value> {
    match position {
        Position::Lsn(l) => Some(json!([null, l.0])),
        Position::Gtid(g) => {
            let mut entries = g.mariadb_entries();
            match (entries.next(), entries.next()) {
                (Some((_, server, seq)), None) => Some(json!([server.to_string(), seq])),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_value() -> Value {
        json!({
            "dataset": {"datastore_manager": "postgresql", "snapshot_id": null},
            "replication_strategy": "PostgresqlReplication",
            "master": {"host": "10.0.0.5", "port": 5432},
            "replica_conf": {
                "log_position": {"position": {"kind": "lsn", "value": "0/3000060"}},
                "replication_user": {"name": "replicator", "password": "s3cret:pw"},
                "slot_name": "ga_r1"
            }
        })
    }

    #[test]
    fn snapshots_and_contexts_parse_into_sources() {
        let s = parse_source("attach_replica", "replica_info", &snapshot_value()).unwrap();
        assert_eq!((s.host.as_str(), s.port), ("10.0.0.5", 5432));
        assert_eq!(s.user.as_str(), "replicator");
        assert_eq!(s.password.expose(), "s3cret:pw");
        assert_eq!(s.extra["slot_name"], "ga_r1");
        assert!(!s.extra.contains_key("replication_user"));
        assert!(s.start_position.is_none());
        // A context round-trips.
        let ctx = context_json(&s);
        assert_eq!(ctx["log_position"], json!({}));
        let back = parse_source("attach_replica", "replica_info", &ctx).unwrap();
        assert_eq!(back.extra["slot_name"], "ga_r1");
        assert_eq!(back.password.expose(), "s3cret:pw");
        // Ports as strings, and start positions, are accepted.
        let mut v = snapshot_value();
        v["master"]["port"] = json!("6543");
        v["replica_conf"]["log_position"]["start_position"] =
            json!({"kind": "gtid", "value": "0-1-5"});
        let s = parse_source("attach_replica", "replica_info", &v).unwrap();
        assert_eq!(s.port, 6543);
        assert!(matches!(s.start_position, Some(Position::Gtid(_))));
    }

    #[test]
    fn bad_sources_name_the_field_and_never_the_password() {
        for (path, value, field) in [
            ("/master", Value::Null, "replica_info.master"),
            ("/master/port", json!(0), "replica_info.master.port"),
            ("/master/host", json!(""), "replica_info.master.host"),
            (
                "/replica_conf/replication_user/name",
                json!("a'b"),
                "replica_info.replica_conf.replication_user.name",
            ),
            (
                "/replica_conf/replication_user/password",
                json!("bad\npassword"),
                "replica_info.replica_conf.replication_user.password",
            ),
        ] {
            let mut v = snapshot_value();
            *v.pointer_mut(path).unwrap() = value;
            let e = parse_source("attach_replica", "replica_info", &v).unwrap_err();
            match &e {
                RpcError::InvalidArgs { field: f, .. } => assert_eq!(f, field, "{e}"),
                other => panic!("{other:?}"),
            }
            assert!(!e.to_string().contains("bad\npassword"));
        }
    }

    #[test]
    fn snapshot_reply_has_trove_keys() {
        let source = parse_source("x", "y", &snapshot_value()).unwrap();
        let mut extra = Map::new();
        extra.insert(
            "replication_strategy".into(),
            "PostgresqlReplication".into(),
        );
        let snap = ReplicaSnapshot {
            source,
            position: Some(Position::Lsn(Lsn(0x300_0060))),
            extra,
        };
        let v = snapshot_json(&snap, "postgresql", Some(&json!("b-1")), (0.5, 10.0));
        assert_eq!(v["replication_strategy"], "PostgresqlReplication");
        assert_eq!(v["master"], json!({"host": "10.0.0.5", "port": 5432}));
        assert_eq!(v["dataset"]["snapshot_id"], "b-1");
        assert_eq!(v["dataset"]["datastore_manager"], "postgresql");
        assert_eq!(
            v["replica_conf"]["log_position"]["position"]["value"],
            "0/3000060"
        );
        assert_eq!(v["replica_conf"]["slot_name"], "ga_r1");
    }

    #[test]
    fn txn_positions_and_last_txn() {
        assert_eq!(
            parse_txn("wait_for_txn", "0/16B3748").unwrap(),
            Position::Lsn(Lsn(0x16B_3748))
        );
        assert!(matches!(
            parse_txn("wait_for_txn", "0-1-5").unwrap(),
            Position::Gtid(_)
        ));
        assert!(parse_txn("wait_for_txn", "0/zz").is_err());
        assert_eq!(
            last_txn_json(&Position::Lsn(Lsn(42))),
            Some(json!([null, 42]))
        );
        assert_eq!(
            last_txn_json(&Position::Gtid(GtidSet::parse("0-2-9").unwrap())),
            Some(json!(["2", 9]))
        );
        assert_eq!(
            last_txn_json(&Position::Gtid(GtidSet::parse("0-2-9,1-3-4").unwrap())),
            None
        );
    }
}

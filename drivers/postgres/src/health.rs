//! Health: liveness from the runtime, readiness from `SELECT 1`, details from the server's
//! statistics, the WAL position, and the WAL size for `get_filesystem_stats`.

use std::path::Path;

use async_trait::async_trait;
use guest_agent_api::fsutil::disk_usage;
use guest_agent_api::health::{Health, HealthDetails, ReplicationHealth};
use guest_agent_api::position::Position;
use guest_agent_api::runtime::ServerState;
use guest_agent_api::{Error, OpContext, Result};

use crate::PgDriver;
use crate::error::stmt;
use crate::position::{POSITION_SQL, parse_position};
use crate::replication::lsn_of;

/// Everything `details` reads, in one round trip. On a replica: the receive and replay
/// LSNs, the primary's end of WAL as the walreceiver last heard it, its state, and the time
/// lag (zero when everything received is replayed, since no new commit is waiting then).
const DETAILS_SQL: &str = "SELECT current_setting('server_version'), \
     EXTRACT(EPOCH FROM (now() - pg_postmaster_start_time()))::bigint, \
     (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), \
     current_setting('max_connections')::bigint, \
     pg_is_in_recovery(), \
     pg_last_wal_receive_lsn()::text, \
     pg_last_wal_replay_lsn()::text, \
     (SELECT latest_end_lsn::text FROM pg_stat_wal_receiver), \
     (SELECT status FROM pg_stat_wal_receiver), \
     CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() \
       THEN 0 ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END::float8";

/// Bytes in the files under `dir` (one level of subdirectories, as `pg_wal` has), 0 when it
/// does not exist yet.
fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = 0u64;
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            total = total.saturating_add(meta.len());
        } else if meta.is_dir() {
            for sub in std::fs::read_dir(entry.path())? {
                let meta = sub?.metadata()?;
                if meta.is_file() {
                    total = total.saturating_add(meta.len());
                }
            }
        }
    }
    Ok(total)
}

#[async_trait]
impl Health for PgDriver {
    async fn liveness(&self, _ctx: &OpContext) -> Result<()> {
        match self.runtime.state().await {
            ServerState::Running { .. } => Ok(()),
            // Not tracked (left running by an earlier agent) but answering: alive.
            ServerState::NotStarted if self.ping().await.is_ok() => Ok(()),
            state => Err(Error::Unavailable {
                message: format!("the PostgreSQL server is not running ({state:?})"),
                source: None,
            }),
        }
    }

    async fn readiness(&self, ctx: &OpContext) -> Result<()> {
        ctx.cancelled()?;
        self.ping().await
    }

    async fn details(&self, ctx: &OpContext) -> Result<HealthDetails> {
        ctx.cancelled()?;
        let client = self.session.client().await?;
        let row = client
            .query_one(DETAILS_SQL, &[])
            .await
            .map_err(stmt(None))?;
        let version: String = row.try_get(0).map_err(stmt(None))?;
        let uptime: i64 = row.try_get(1).map_err(stmt(None))?;
        let connections: i64 = row.try_get(2).map_err(stmt(None))?;
        let max_connections: i64 = row.try_get(3).map_err(stmt(None))?;
        let in_recovery: bool = row.try_get(4).map_err(stmt(None))?;
        let received: Option<String> = row.try_get(5).map_err(stmt(None))?;
        let replayed: Option<String> = row.try_get(6).map_err(stmt(None))?;
        let source_end: Option<String> = row.try_get(7).map_err(stmt(None))?;
        let receiver: Option<String> = row.try_get(8).map_err(stmt(None))?;
        let lag_seconds: Option<f64> = row.try_get(9).map_err(stmt(None))?;
        let replication = if in_recovery {
            let received = lsn_of(received.as_deref());
            let replayed = lsn_of(replayed.as_deref());
            // Behind what the source last reported, or at least behind what arrived here.
            let ahead = received.max(lsn_of(source_end.as_deref()));
            ReplicationHealth {
                role: "replica".to_owned(),
                lag_bytes: ahead.zip(replayed).map(|(a, r)| a.bytes_since(r)),
                lag_seconds: lag_seconds.map(|s| s.max(0.0)),
                receiver_state: Some(receiver.unwrap_or_else(|| "stopped".to_owned())),
                last_error: None,
                received: received.map(Position::Lsn),
                applied: replayed.map(Position::Lsn),
            }
        } else {
            ReplicationHealth {
                role: "primary".to_owned(),
                ..ReplicationHealth::default()
            }
        };
        let data_dir = self.data_dir.clone();
        let disk = tokio::task::spawn_blocking(move || disk_usage(&data_dir))
            .await
            .ok()
            .flatten();
        Ok(HealthDetails {
            version: Some(version),
            uptime_seconds: u64::try_from(uptime).ok(),
            connections: u64::try_from(connections).ok(),
            max_connections: u64::try_from(max_connections).ok(),
            replication: Some(replication),
            disk,
        })
    }

    async fn position(&self, ctx: &OpContext) -> Result<Position> {
        ctx.cancelled()?;
        let client = self.session.client().await?;
        let row = client
            .query_one(POSITION_SQL, &[])
            .await
            .map_err(stmt(None))?;
        let text: Option<String> = row.try_get(0).map_err(stmt(None))?;
        parse_position(text.as_deref())
    }

    async fn filesystem_extra(
        &self,
        ctx: &OpContext,
    ) -> Result<serde_json::Map<String, serde_json::Value>> {
        ctx.cancelled()?;
        let wal_dir = self.data_dir.join("pg_wal");
        let wal_size = tokio::task::spawn_blocking(move || {
            dir_size(&wal_dir).map_err(|e| Error::io(format!("sizing {}", wal_dir.display()), e))
        })
        .await
        .map_err(|e| Error::Internal(format!("sizing the WAL directory: {e}")))??;
        let mut m = serde_json::Map::new();
        m.insert("wal_size".to_owned(), wal_size.into());
        // No WAL archiving (replicas stream through slots).
        m.insert("wal_archive_size".to_owned(), 0u64.into());
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_dir_size_counts_files_one_level_down() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(dir_size(&dir.path().join("missing")).unwrap(), 0);
        std::fs::write(dir.path().join("000000010000000000000001"), vec![0u8; 1000]).unwrap();
        std::fs::create_dir(dir.path().join("archive_status")).unwrap();
        std::fs::write(dir.path().join("archive_status").join("x.ready"), b"12").unwrap();
        assert_eq!(dir_size(dir.path()).unwrap(), 1002);
        assert!(disk_usage(dir.path()).unwrap().total_bytes > 0);
    }
}

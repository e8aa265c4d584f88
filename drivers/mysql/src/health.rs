//! Health: liveness from the runtime, readiness from `SELECT 1`, details from the server's
//! status counters and replica status, and the GTID position.

use async_trait::async_trait;
use guest_agent_api::fsutil::disk_usage;
use guest_agent_api::health::{Health, HealthDetails, ReplicationHealth};
use guest_agent_api::position::Position;
use guest_agent_api::runtime::ServerState;
use guest_agent_api::{Error, OpContext, Result};
use mysql_async::prelude::Queryable;

use crate::MySqlDriver;
use crate::error::stmt;
use crate::position::applied;
use crate::replication::replica_status;

#[async_trait]
impl Health for MySqlDriver {
    async fn liveness(&self, _ctx: &OpContext) -> Result<()> {
        match self.runtime.state().await {
            ServerState::Running { .. } => Ok(()),
            // Not tracked (left running by an earlier agent) but answering: alive.
            ServerState::NotStarted if self.ping().await.is_ok() => Ok(()),
            state => Err(Error::Unavailable {
                message: format!("the server is not running ({state:?})"),
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
        let mut s = self.connector.connect().await?;
        let row: Option<(String, u64, u64)> = s
            .conn
            .query_first("SELECT VERSION(), @@GLOBAL.max_connections, @@GLOBAL.read_only")
            .await
            .map_err(stmt(None))?;
        let (version, max_connections, read_only) =
            row.ok_or_else(|| Error::Internal("no answer to the details query".to_owned()))?;
        let status: Vec<(String, String)> = s
            .conn
            .query("SHOW GLOBAL STATUS WHERE Variable_name IN ('Uptime', 'Threads_connected')")
            .await
            .map_err(stmt(None))?;
        let counter = |name: &str| {
            status
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.parse::<u64>().ok())
        };
        let replica = replica_status(&mut s).await?;
        s.close().await;
        let replication = Some(match replica {
            Some(r) => ReplicationHealth {
                role: "replica".to_owned(),
                lag_bytes: None,
                lag_seconds: r.seconds_behind.map(|s| s as f64),
                receiver_state: Some(format!("io={} sql={}", r.io_running, r.sql_running)),
                last_error: r.last_error(),
                ..ReplicationHealth::default()
            },
            None => ReplicationHealth {
                role: if read_only != 0 {
                    "standalone"
                } else {
                    "primary"
                }
                .to_owned(),
                ..ReplicationHealth::default()
            },
        });
        let data_dir = self.data_dir.clone();
        let disk = tokio::task::spawn_blocking(move || disk_usage(&data_dir))
            .await
            .ok()
            .flatten();
        Ok(HealthDetails {
            version: Some(version),
            uptime_seconds: counter("Uptime"),
            connections: counter("Threads_connected"),
            max_connections: Some(max_connections),
            replication,
            disk,
        })
    }

    async fn position(&self, ctx: &OpContext) -> Result<Position> {
        ctx.cancelled()?;
        let mut s = self.connector.connect().await?;
        let set = applied(&mut s).await?;
        s.close().await;
        Ok(Position::Gtid(set))
    }

    async fn filesystem_extra(
        &self,
        ctx: &OpContext,
    ) -> Result<serde_json::Map<String, serde_json::Value>> {
        ctx.cancelled()?;
        // Trove's MySQL manager reports nothing extra.
        Ok(serde_json::Map::new())
    }
}

//! GTID replication (Trove's `mysql_gtid` strategy): replication accounts, snapshot position,
//! attach with auto-positioning (`MASTER_USE_GTID=slave_pos` on MariaDB,
//! `SOURCE_AUTO_POSITION=1` on MySQL), detach, promote, demote, read-only, waiting for a GTID
//! set, and each node's own position with its errant transactions.
//!
//! A replica is read-only (`read_only`, plus `super_read_only` on MySQL) through the managed
//! role file, so it stays read-only across restarts; its replication threads start again by
//! themselves. MariaDB's `read_only` does not stop accounts with `READ_ONLY ADMIN` (the
//! administrative account and root), which is how errant transactions get written; promotion
//! refuses a replica that holds any.

use std::time::Duration;

use async_trait::async_trait;
use guest_agent_api::fsutil::write_file;
use guest_agent_api::ident::{Password, UserName};
use guest_agent_api::position::{GtidSet, Position};
use guest_agent_api::replication::{
    DetachOutcome, NodePosition, ReplicaSnapshot, Replication, ReplicationSource,
};
use guest_agent_api::{Error, OpContext, Result};
use mysql_async::prelude::Queryable;
use mysql_async::{Row, Value};
use tokio::time::Instant;

use crate::error::{Subject, stmt};
use crate::position::{applied, parse_gtid, slave_pos};
use crate::sql::{Session, account, quote_string};
use crate::{CONF_D, MySqlDriver, REPLICATION_USER_PREFIX, ROLE_FILE};

/// Length of generated replication passwords.
const REPLICATION_PASSWORD_LEN: usize = 32;
/// Random characters after [`REPLICATION_USER_PREFIX`].
const REPLICATION_USER_SUFFIX_LEN: usize = 8;
/// How long `attach` waits for both replication threads to run.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two looks at the replica status.
const STATUS_POLL: Duration = Duration::from_millis(200);
/// Slack on top of a server-side wait before the client gives up on the session.
const WAIT_SLACK: Duration = Duration::from_secs(10);
/// File in the state directory marking a server detached for a failover and not promoted
/// since: what it wrote itself is still errant then.
const FAILOVER_MARKER: &str = "mysql-detached-for-failover";

/// What `SHOW SLAVE STATUS` / `SHOW REPLICA STATUS` says, in flavour-neutral names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ReplicaStatus {
    /// `Yes`, `No` or `Connecting`.
    pub(crate) io_running: String,
    /// `Yes` or `No`.
    pub(crate) sql_running: String,
    /// Seconds behind the source, when the SQL thread runs.
    pub(crate) seconds_behind: Option<u64>,
    /// Last receiver error, empty when none.
    pub(crate) last_io_error: String,
    /// Last applier error, empty when none.
    pub(crate) last_sql_error: String,
    /// The account the replica connects with.
    pub(crate) source_user: String,
    /// The source's host.
    pub(crate) source_host: String,
    /// The source's `server_id` (MariaDB) or `server_uuid` (MySQL), empty when unknown.
    pub(crate) source_server: String,
}

impl ReplicaStatus {
    /// The last error, receiver's first.
    pub(crate) fn last_error(&self) -> Option<String> {
        [&self.last_io_error, &self.last_sql_error]
            .into_iter()
            .find(|e| !e.is_empty())
            .cloned()
    }

    fn running(&self) -> bool {
        self.io_running == "Yes" && self.sql_running == "Yes"
    }
}

/// The first of `names` the row has, as text (`None` for NULL or a missing column).
pub(crate) fn column(row: &Row, names: &[&str]) -> Option<String> {
    for name in names {
        let Some(idx) = row.columns_ref().iter().position(|c| c.name_str() == *name) else {
            continue;
        };
        return match row.as_ref(idx)? {
            Value::NULL => None,
            Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::Int(i) => Some(i.to_string()),
            Value::UInt(u) => Some(u.to_string()),
            other => Some(format!("{other:?}")),
        };
    }
    None
}

/// Reads the replica status; `None` when the server replicates from nothing.
pub(crate) async fn replica_status(s: &mut Session) -> Result<Option<ReplicaStatus>> {
    let rows = s.rows(s.server.replica_status_sql()).await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let text = |names: &[&str]| column(row, names).unwrap_or_default();
    Ok(Some(ReplicaStatus {
        io_running: text(&["Slave_IO_Running", "Replica_IO_Running"]),
        sql_running: text(&["Slave_SQL_Running", "Replica_SQL_Running"]),
        seconds_behind: column(row, &["Seconds_Behind_Master", "Seconds_Behind_Source"])
            .and_then(|v| v.parse().ok()),
        last_io_error: text(&["Last_IO_Error"]),
        last_sql_error: text(&["Last_SQL_Error"]),
        source_user: text(&["Master_User", "Source_User"]),
        source_host: text(&["Master_Host", "Source_Host"]),
        source_server: if s.server.is_mariadb() {
            text(&["Master_Server_Id", "Source_Server_Id"])
        } else {
            text(&["Master_UUID", "Source_UUID"])
        },
    }))
}

/// Refuses a source host that could not be a host name or address.
fn check_source(source: &ReplicationSource) -> Result<()> {
    let h = &source.host;
    if h.is_empty()
        || h.len() > 255
        || !h
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
    {
        return Err(Error::invalid(
            "source.host",
            "must be a host name or an IP address",
        ));
    }
    if source.port == 0 {
        return Err(Error::invalid("source.port", "must not be 0"));
    }
    Ok(())
}

fn gtid_of<'a>(field: &str, p: &'a Position) -> Result<&'a GtidSet> {
    match p {
        Position::Gtid(g) => Ok(g),
        Position::Lsn(_) => Err(Error::invalid(
            field,
            "a MySQL/MariaDB server positions by GTID set, not by LSN",
        )),
    }
}

impl MySqlDriver {
    /// Creates a fresh replication account `os_repl_<random>@'%'` with `REPLICATION SLAVE`.
    async fn create_replication_user(&self, s: &mut Session) -> Result<(UserName, Password)> {
        let suffix: String = Password::generate(16)?
            .expose()
            .to_ascii_lowercase()
            .chars()
            .take(REPLICATION_USER_SUFFIX_LEN)
            .collect();
        let name = UserName::new(format!("{REPLICATION_USER_PREFIX}{suffix}"))?;
        let password = Password::generate(REPLICATION_PASSWORD_LEN)?;
        let acct = account(name.as_str(), "%")?;
        let who = format!("{name}@%");
        s.exec(
            &format!(
                "CREATE USER {acct} IDENTIFIED BY {}",
                quote_string(password.expose())?
            ),
            Some(Subject::new_user(&who).with_secret()),
        )
        .await?;
        s.exec(
            &format!("GRANT REPLICATION SLAVE ON *.* TO {acct}"),
            Some(Subject::user(&who)),
        )
        .await?;
        tracing::info!(user = %name, "Replication account created.");
        Ok((name, password))
    }

    fn source_for(&self, user: UserName, password: Password) -> ReplicationSource {
        ReplicationSource {
            host: self.replication_host(),
            port: self.port,
            user,
            password,
            extra: serde_json::Map::new(),
            start_position: None,
        }
    }

    /// Sets read-only mode now (`super_read_only` too on MySQL, so that no account writes).
    async fn apply_read_only(&self, s: &mut Session, read_only: bool) -> Result<()> {
        let sql = match (s.server.is_mariadb(), read_only) {
            (true, true) => "SET GLOBAL read_only = ON",
            (true, false) | (false, false) => "SET GLOBAL read_only = OFF",
            (false, true) => "SET GLOBAL super_read_only = ON",
        };
        s.exec(sql, None).await
    }

    /// Writes (or removes) the role file that keeps a replica read-only across restarts.
    fn persist_read_only(&self, s: &Session, read_only: bool) -> Result<()> {
        let path = self.config_dir.join(CONF_D).join(ROLE_FILE);
        if read_only {
            let mut text = String::from(
                "# Managed by guest-agent: this server is a replica (or about to be one).\n\
                 [mysqld]\nread_only = ON\n",
            );
            if !s.server.is_mariadb() {
                text.push_str("super_read_only = ON\n");
            }
            write_file(&path, text.as_bytes(), 0o644, None)
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(Error::io(format!("removing {}", path.display()), e))
                }
                _ => Ok(()),
            }
        }
    }

    /// Stops replicating and forgets the source (both harmless when nothing replicates).
    pub(crate) async fn stop_and_reset(&self, s: &mut Session) -> Result<()> {
        let (stop, reset) = (s.server.stop_replica_sql(), s.server.reset_replica_sql());
        s.exec(stop, None).await?;
        s.exec(reset, None).await
    }

    fn failover_marker(&self) -> std::path::PathBuf {
        self.state_dir.join(FAILOVER_MARKER)
    }

    /// Marks (or unmarks) the server as detached for a failover and not promoted since.
    fn mark_failover_detached(&self, detached: bool) -> Result<()> {
        let path = self.failover_marker();
        if detached {
            write_file(&path, b"detached for a failover\n", 0o600, None)
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(Error::io(format!("removing {}", path.display()), e))
                }
                _ => Ok(()),
            }
        }
    }

    /// Whether the server replicates, or was detached for a failover and not promoted since:
    /// what it wrote itself then is errant.
    fn replicates_or_fenced(&self, is_replica: bool) -> bool {
        is_replica || self.failover_marker().exists()
    }

    /// The node's position and errant transactions.
    ///
    /// Counted while the server replicates, and after a detach for a failover until it is
    /// promoted or attached again (a primary's own writes are not errant). MariaDB: what the
    /// binary log holds beyond `gtid_slave_pos`, which survives the detach. MySQL: the
    /// transactions carrying this server's `server_uuid`.
    async fn read_node_position(&self, s: &mut Session) -> Result<NodePosition> {
        let executed = applied(s).await?;
        let is_replica = replica_status(s).await?.is_some();
        let errant = if !self.replicates_or_fenced(is_replica) {
            GtidSet::default()
        } else if s.server.is_mariadb() {
            executed.errant_against(&slave_pos(s).await?)
        } else {
            let uuid = s.global("SELECT @@GLOBAL.server_uuid").await?;
            executed.originated_by(uuid.as_deref().unwrap_or_default())
        };
        Ok(NodePosition {
            applied: Position::Gtid(executed),
            is_replica,
            errant: Some(Position::Gtid(errant)),
        })
    }

    /// Polls until both replication threads run; fails on an applier error or the deadline.
    async fn wait_running(&self, ctx: &OpContext, s: &mut Session) -> Result<()> {
        let timeout = ctx
            .remaining()
            .map_or(ATTACH_TIMEOUT, |left| left.min(ATTACH_TIMEOUT));
        let deadline = Instant::now() + timeout;
        loop {
            let status = replica_status(s)
                .await?
                .ok_or_else(|| Error::InvalidState {
                    operation: "attach",
                    reason: "the replica configuration vanished while starting".to_owned(),
                })?;
            if status.running() {
                return Ok(());
            }
            if status.sql_running == "No" && !status.last_sql_error.is_empty() {
                return Err(Error::InvalidState {
                    operation: "attach",
                    reason: format!("the replica cannot apply: {}", status.last_sql_error),
                });
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    io = %status.io_running,
                    sql = %status.sql_running,
                    error = %status.last_error().unwrap_or_default(),
                    "Replication did not start in time."
                );
                return Err(Error::Timeout {
                    operation: "attach",
                    after: timeout,
                });
            }
            tokio::select! {
                () = tokio::time::sleep(STATUS_POLL) => {}
                () = ctx.cancel.cancelled() => return Err(Error::Cancelled),
            }
        }
    }
}

#[async_trait]
impl Replication for MySqlDriver {
    async fn snapshot_for_replica(
        &self,
        ctx: &OpContext,
        replica_id: &str,
    ) -> Result<ReplicaSnapshot> {
        ctx.cancelled()?;
        let mut s = self.connector.connect().await?;
        let (user, password) = self.create_replication_user(&mut s).await?;
        let position = applied(&mut s).await?;
        let strategy = if s.server.is_mariadb() {
            "MariaDBGTIDReplication"
        } else {
            "MysqlGTIDReplication"
        };
        s.close().await;
        let mut extra = serde_json::Map::new();
        extra.insert("replication_strategy".to_owned(), strategy.into());
        extra.insert("replica_id".to_owned(), replica_id.into());
        Ok(ReplicaSnapshot {
            source: self.source_for(user, password),
            position: Some(Position::Gtid(position)),
            extra,
        })
    }

    async fn attach(&self, ctx: &OpContext, source: &ReplicationSource) -> Result<()> {
        ctx.cancelled()?;
        check_source(source)?;
        let start = source
            .start_position
            .as_ref()
            .map(|p| gtid_of("source.start_position", p))
            .transpose()?;
        let mut s = self.connector.connect().await?;
        // Read-only first, so nothing is written locally between here and the first event.
        self.apply_read_only(&mut s, true).await?;
        self.persist_read_only(&s, true)?;
        self.stop_and_reset(&mut s).await?;
        self.mark_failover_detached(false)?;
        if s.server.is_mariadb() {
            // slave_pos is where the replica asks the source to start. Without a snapshot
            // position it is everything this server has applied (its binary log includes what
            // it replicated), so a re-pointed replica or a demoted primary continues where it
            // is and a fresh one replays the source's whole history.
            match start {
                Some(g) => {
                    s.exec(
                        &format!(
                            "SET GLOBAL gtid_slave_pos = {}",
                            quote_string(&g.to_string())?
                        ),
                        None,
                    )
                    .await?;
                }
                None => {
                    s.exec("SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_binlog_pos", None)
                        .await?;
                }
            }
        } else if let Some(g) = start {
            // Seeded from a snapshot: its set is what this server already holds.
            s.exec("RESET MASTER", None).await?;
            s.exec(
                &format!("SET GLOBAL gtid_purged = {}", quote_string(&g.to_string())?),
                None,
            )
            .await?;
        }
        let change = s.server.change_source_sql(
            &source.host,
            source.port,
            source.user.as_str(),
            &source.password,
            self.opts.replication_connect_retry_secs,
        )?;
        s.exec(&change, Some(Subject::secret())).await?;
        let start_sql = s.server.start_replica_sql();
        s.exec(start_sql, None).await?;
        self.wait_running(ctx, &mut s).await?;
        s.close().await;
        tracing::info!(host = %source.host, port = source.port, "Replicating from the source.");
        Ok(())
    }

    async fn detach(&self, ctx: &OpContext, for_failover: bool) -> Result<DetachOutcome> {
        ctx.cancelled()?;
        let mut s = self.connector.connect().await?;
        let Some(status) = replica_status(&mut s).await? else {
            s.close().await;
            return Ok(DetachOutcome::default());
        };
        self.stop_and_reset(&mut s).await?;
        let user = UserName::new(status.source_user.as_str()).ok();
        if !for_failover
            && let Some(u) = user
                .as_ref()
                .filter(|u| u.as_str().starts_with(REPLICATION_USER_PREFIX))
        {
            // The account came from the source through replication; removing it here is a
            // local matter and must not be replicated anywhere.
            s.exec("SET SESSION sql_log_bin = 0", None).await?;
            s.exec(
                &format!("DROP USER IF EXISTS {}", account(u.as_str(), "%")?),
                None,
            )
            .await?;
            s.exec("SET SESSION sql_log_bin = 1", None).await?;
        }
        if for_failover {
            // Fenced until promoted or attached: a candidate with errant transactions must be
            // refused by the promotion, not written to by the application in between.
            self.apply_read_only(&mut s, true).await?;
            self.persist_read_only(&s, true)?;
            self.mark_failover_detached(true)?;
        } else {
            // Standalone for good: what it writes from now on is its own, not errant.
            self.apply_read_only(&mut s, false).await?;
            self.persist_read_only(&s, false)?;
            self.mark_failover_detached(false)?;
        }
        s.close().await;
        tracing::info!(source = %status.source_host, for_failover, "Detached from the source.");
        Ok(DetachOutcome {
            replication_user: user,
        })
    }

    async fn promote(&self, ctx: &OpContext) -> Result<()> {
        ctx.cancelled()?;
        let mut s = self.connector.connect().await?;
        let node = self.read_node_position(&mut s).await?;
        if node.has_errant() {
            let errant = node.errant.map(|e| e.to_string()).unwrap_or_default();
            s.close().await;
            return Err(Error::InvalidState {
                operation: "promote",
                reason: format!(
                    "this replica holds errant transactions {errant} that its source never had; \
                     promoting it would hand them to every other replica"
                ),
            });
        }
        if node.is_replica {
            self.stop_and_reset(&mut s).await?;
        }
        self.mark_failover_detached(false)?;
        self.apply_read_only(&mut s, false).await?;
        self.persist_read_only(&s, false)?;
        s.close().await;
        tracing::info!(position = %node.applied, "Promoted to primary.");
        Ok(())
    }

    async fn demote(&self, ctx: &OpContext) -> Result<()> {
        ctx.cancelled()?;
        let mut s = self.connector.connect().await?;
        self.apply_read_only(&mut s, true).await?;
        self.persist_read_only(&s, true)?;
        s.close().await;
        tracing::info!("Demoted: read-only, ready to attach to a new source.");
        Ok(())
    }

    async fn set_read_only(&self, ctx: &OpContext, read_only: bool) -> Result<()> {
        ctx.cancelled()?;
        let mut s = self.connector.connect().await?;
        self.apply_read_only(&mut s, read_only).await?;
        s.close().await;
        Ok(())
    }

    async fn replica_context(&self, ctx: &OpContext) -> Result<ReplicationSource> {
        ctx.cancelled()?;
        let mut s = self.connector.connect().await?;
        let (user, password) = self.create_replication_user(&mut s).await?;
        s.close().await;
        Ok(self.source_for(user, password))
    }

    async fn wait_for(&self, ctx: &OpContext, target: &Position, timeout: Duration) -> Result<()> {
        ctx.cancelled()?;
        let target = gtid_of("target", target)?;
        let mut s = self.connector.connect().await?;
        if target.is_subset_of(&applied(&mut s).await?) {
            s.close().await;
            return Ok(());
        }
        let sql = s.server.wait_sql();
        let mariadb = s.server.is_mariadb();
        let text = target.to_string();
        let secs = timeout.as_secs_f64();
        let wait = s
            .conn
            .exec_first::<Option<i64>, _, _>(sql, (text.as_str(), secs));
        let answer = tokio::select! {
            r = tokio::time::timeout(timeout + WAIT_SLACK, wait) => r,
            () = ctx.cancel.cancelled() => return Err(Error::Cancelled),
        };
        let reached = match answer {
            Ok(r) => r.map_err(stmt(None))?.flatten() == Some(0),
            Err(_) => false,
        };
        if !reached {
            return Err(Error::Timeout {
                operation: "wait_for_txn",
                after: timeout,
            });
        }
        // MASTER_GTID_WAIT returns once the SQL thread committed; read back to be sure the
        // server's own set now covers the target (MySQL's answer is exact anyway).
        if mariadb && !target.is_subset_of(&applied(&mut s).await?) {
            let slave = parse_gtid(
                "gtid_slave_pos",
                s.global("SELECT @@GLOBAL.gtid_slave_pos").await?.as_deref(),
            )?;
            if !target.is_subset_of(&slave) {
                return Err(Error::Timeout {
                    operation: "wait_for_txn",
                    after: timeout,
                });
            }
        }
        s.close().await;
        Ok(())
    }

    async fn node_position(&self, ctx: &OpContext) -> Result<NodePosition> {
        ctx.cancelled()?;
        let mut s = self.connector.connect().await?;
        let node = self.read_node_position(&mut s).await?;
        s.close().await;
        Ok(node)
    }

    async fn received_position(&self, ctx: &OpContext) -> Result<Position> {
        ctx.cancelled()?;
        let mut s = self.connector.connect().await?;
        let status = replica_status(&mut s).await?;
        let node = self.read_node_position(&mut s).await?;
        let received = if s.server.is_mariadb() {
            // Trove: the source's Master_Server_Id entry of gtid_slave_pos.
            let slave = slave_pos(&mut s).await?;
            let from_source = status
                .as_ref()
                .filter(|st| !st.source_server.is_empty())
                .map(|st| slave.originated_by(&st.source_server))
                .filter(|g| !g.is_empty());
            match from_source {
                Some(g) => g,
                None if self.replicates_or_fenced(node.is_replica) && !slave.is_empty() => slave,
                None => gtid_of("applied", &node.applied)?.clone(),
            }
        } else {
            let executed = gtid_of("applied", &node.applied)?;
            match &node.errant {
                Some(Position::Gtid(errant)) => executed.errant_against(errant),
                _ => executed.clone(),
            }
        };
        s.close().await;
        Ok(Position::Gtid(received))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(host: &str, port: u16) -> ReplicationSource {
        ReplicationSource {
            host: host.to_owned(),
            port,
            user: UserName::new("os_repl_x").unwrap(),
            password: Password::new("pw").unwrap(),
            extra: serde_json::Map::new(),
            start_position: None,
        }
    }

    #[test]
    fn source_hosts_are_checked() {
        for ok in ["127.0.0.1", "db-1.example.com", "::1", "fe80::1"] {
            assert!(check_source(&source(ok, 3306)).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "h'; DROP", "x\n"] {
            assert!(check_source(&source(bad, 3306)).is_err(), "{bad:?}");
        }
        assert!(check_source(&source("h", 0)).is_err());
    }

    #[test]
    fn lsn_targets_are_refused() {
        let e = gtid_of("target", &Position::Lsn(guest_agent_api::position::Lsn(1))).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }));
        let g = Position::Gtid(GtidSet::parse("0-1-1").unwrap());
        assert!(gtid_of("target", &g).is_ok());
    }

    #[test]
    fn replica_status_errors() {
        let st = ReplicaStatus {
            io_running: "Connecting".into(),
            sql_running: "Yes".into(),
            last_io_error: "error connecting to master".into(),
            ..ReplicaStatus::default()
        };
        assert!(!st.running());
        assert_eq!(
            st.last_error().as_deref(),
            Some("error connecting to master")
        );
        assert_eq!(ReplicaStatus::default().last_error(), None);
    }
}

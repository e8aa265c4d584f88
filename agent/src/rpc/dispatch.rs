//! The dispatcher: runs parsed requests against the driver with the concurrency rules
//! (mutating operations one at a time, reads concurrently, long operations tracked), records
//! metrics, and refuses new work once shutdown begins.
//!
//! Every operation runs in its own tracked task, so a caller that goes away (a dropped HTTP
//! connection) never aborts a half-done change; shutdown waits for these tasks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use guest_agent_api::admin::{DatabaseSpec, UserInfo};
use guest_agent_api::{DatastoreStatus, Driver, Error as DriverError, OpContext, StopMode};
use serde_json::{Value, json};
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ops::{OpState, OperationTracker};
use super::{Access, BackupRef, Request, RpcError};
use crate::backup::BackupService;
use crate::state::{AgentState, Phase};
use crate::telemetry::Metrics;
use crate::transport::{ControlPlane, LogControlPlane};

#[path = "backups.rs"]
mod backups;

/// Who asked, and through what.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Request id (the control plane's, or a fresh one).
    pub request_id: String,
    /// `http` or `amqp`.
    pub transport: &'static str,
    /// The authenticated peer (certificate subject) or address, for logs.
    pub peer: Option<String>,
}

impl RequestContext {
    /// A context with a fresh request id.
    pub fn new(transport: &'static str) -> Self {
        Self {
            request_id: format!("req-{}", uuid::Uuid::new_v4()),
            transport,
            peer: None,
        }
    }
}

/// Runs operations against the driver.
#[derive(Debug)]
pub struct Dispatcher {
    driver: Arc<dyn Driver>,
    state: Arc<AgentState>,
    metrics: Arc<Metrics>,
    ops: OperationTracker,
    datastore: RwLock<()>,
    tasks: TaskTracker,
    accepting: AtomicBool,
    /// Cancels driver work when the shutdown grace runs out.
    cancel: CancellationToken,
    data_dir: PathBuf,
    /// The Trove manager the driver was built for (`mariadb`, `mysql` ...).
    manager: String,
    /// Backups, when configured.
    backups: Option<Arc<BackupService>>,
    /// Where backup reports go.
    control_plane: Arc<dyn ControlPlane>,
    /// This instance's id, for reports.
    instance_id: String,
    /// Datastore version recorded in backups when the control plane names none.
    datastore_version: String,
}

impl Dispatcher {
    /// A dispatcher for `driver`.
    pub fn new(driver: Arc<dyn Driver>, state: Arc<AgentState>, metrics: Arc<Metrics>) -> Self {
        let data_dir = driver.info().data_dir.clone();
        let manager = driver.info().name.to_owned();
        Self {
            driver,
            state,
            metrics,
            ops: OperationTracker::default(),
            datastore: RwLock::new(()),
            tasks: TaskTracker::new(),
            accepting: AtomicBool::new(true),
            cancel: CancellationToken::new(),
            data_dir,
            manager,
            backups: None,
            control_plane: Arc::new(LogControlPlane),
            instance_id: "local".to_owned(),
            datastore_version: String::new(),
        }
    }

    /// Serves backups with `service`, reporting them to `control_plane` as `instance_id`.
    #[must_use]
    pub fn with_backups(
        mut self,
        service: Arc<BackupService>,
        control_plane: Arc<dyn ControlPlane>,
        instance_id: impl Into<String>,
        datastore_version: impl Into<String>,
    ) -> Self {
        self.backups = Some(service);
        self.control_plane = control_plane;
        self.instance_id = instance_id.into();
        self.datastore_version = datastore_version.into();
        self
    }

    /// Names the Trove manager the driver was built for (reported as a snapshot's
    /// `dataset.datastore_manager`); the driver's name until set.
    #[must_use]
    pub fn with_manager(mut self, manager: impl Into<String>) -> Self {
        self.manager = manager.into();
        self
    }

    /// The driver.
    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.driver
    }

    /// The agent state.
    pub fn state(&self) -> &Arc<AgentState> {
        &self.state
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs `method` with `args`. Unknown methods and bad arguments fail before anything runs.
    pub async fn dispatch(
        self: &Arc<Self>,
        method: &str,
        args: Value,
        ctx: RequestContext,
    ) -> Result<Value, RpcError> {
        let started = Instant::now();
        let label = if Request::METHODS.contains(&method) {
            method
        } else {
            "unknown"
        };
        let mut quiet = false;
        let result = if self.accepting.load(Ordering::SeqCst) {
            match Request::parse(method, args) {
                Ok(req) => {
                    quiet = req.access() == Access::Free;
                    let this = Arc::clone(self);
                    let method_owned = method.to_owned();
                    let ctx2 = ctx.clone();
                    match self
                        .tasks
                        .spawn(async move { this.run(&method_owned, req, &ctx2).await })
                        .await
                    {
                        Ok(r) => r,
                        Err(e) => Err(RpcError::Internal(format!("operation task failed: {e}"))),
                    }
                }
                Err(e) => Err(e),
            }
        } else {
            Err(RpcError::ShuttingDown)
        };
        let elapsed = started.elapsed();
        self.metrics
            .observe(label, result.is_ok(), elapsed.as_secs_f64());
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let peer = ctx.peer.as_deref().unwrap_or("-");
        match &result {
            // Probes (ping, status, stats) are frequent and change nothing: keep them quiet.
            Ok(_) if quiet => tracing::debug!(
                method = label, request_id = %ctx.request_id, transport = ctx.transport,
                peer, us, "Operation finished."
            ),
            Ok(_) => tracing::info!(
                method = label, request_id = %ctx.request_id, transport = ctx.transport,
                peer, us, "Operation finished."
            ),
            Err(e) => tracing::warn!(
                method = label, request_id = %ctx.request_id, transport = ctx.transport,
                peer, us, error_type = e.kind(), error = %e, "Operation failed."
            ),
        }
        result
    }

    fn op_context(&self, ctx: &RequestContext) -> OpContext {
        OpContext::child_of(ctx.request_id.clone(), &self.cancel)
    }

    fn require_prepared(&self, operation: &'static str) -> Result<(), RpcError> {
        match self.state.phase() {
            Phase::Prepared => Ok(()),
            Phase::Building => Err(DriverError::InvalidState {
                operation,
                reason: "prepare is still running".to_owned(),
            }
            .into()),
            Phase::New => Err(DriverError::InvalidState {
                operation,
                reason: "the datastore has not been prepared".to_owned(),
            }
            .into()),
            Phase::Failed(msg) => Err(DriverError::InvalidState {
                operation,
                reason: format!("prepare failed: {msg}"),
            }
            .into()),
        }
    }

    async fn run(
        self: &Arc<Self>,
        method: &str,
        req: Request,
        ctx: &RequestContext,
    ) -> Result<Value, RpcError> {
        // Backup operations run tracked (or need no datastore lock); they route themselves.
        let req = match req {
            Request::CreateBackup(order) => return self.start_backup(*order, ctx).await,
            Request::VerifyBackup(b) => return self.start_verify(b, ctx),
            Request::DeleteBackup(b) => return self.delete_backup(b).await,
            Request::RestoreBackup { backup, database } => {
                return self.start_logical_restore(backup, database, ctx);
            }
            Request::PrepareFromBackup {
                spec,
                backup,
                source,
            } => {
                self.backup_service()?;
                self.hooks("prepare from backup")?;
                if source.is_some() {
                    self.replication("prepare as replica")?;
                }
                return self.start_prepare(*spec, source.map(|s| *s), Some(backup), ctx);
            }
            other => other,
        };
        match req.access() {
            Access::Free => self.run_free(req).await,
            Access::Read => {
                self.require_prepared("read")?;
                let _guard = self.datastore.read().await;
                self.run_locked(method, req, ctx).await
            }
            Access::Write => {
                match req {
                    Request::Prepare(spec) => return self.start_prepare(*spec, None, None, ctx),
                    Request::PrepareReplica(spec, source) => {
                        // Refused before anything runs when the driver cannot replicate.
                        self.replication("prepare as replica")?;
                        return self.start_prepare(*spec, Some(*source), None, ctx);
                    }
                    _ => {}
                }
                self.require_prepared("change")?;
                self.refuse_during_backup(method, &req)?;
                let _guard = self.datastore.write().await;
                self.run_locked(method, req, ctx).await
            }
        }
    }

    /// Refuses operations that stop, restart or re-seed the server while a backup streams
    /// from it (the backup would fail half-way); other changes go ahead.
    fn refuse_during_backup(&self, method: &str, req: &Request) -> Result<(), RpcError> {
        let disruptive = matches!(
            req,
            Request::Restart
                | Request::StopDb
                | Request::StartWithConfChanges(_)
                | Request::AttachReplica(_)
                | Request::DetachReplica { .. }
                | Request::EnableAsMaster
                | Request::PromoteToReplicaSource
                | Request::DemoteMaster
        );
        match self.backups.as_ref().and_then(|b| b.running()) {
            Some(id) if disruptive => Err(DriverError::InvalidState {
                operation: "change",
                reason: format!("{method} must wait: backup '{id}' is running"),
            }
            .into()),
            _ => Ok(()),
        }
    }

    async fn run_free(&self, req: Request) -> Result<Value, RpcError> {
        Ok(match req {
            Request::Ping => Value::Bool(true),
            Request::FilesystemStats => {
                let ctx = OpContext::new("fs-stats");
                let extra = if self.state.phase() == Phase::Prepared {
                    // The stats stay useful even when the datastore is down.
                    self.driver
                        .health()
                        .filesystem_extra(&ctx)
                        .await
                        .unwrap_or_default()
                } else {
                    serde_json::Map::new()
                };
                filesystem_stats(&self.data_dir, extra)?
            }
            Request::HwInfo => hwinfo()?,
            Request::Status => self.status_json().await,
            Request::GetOperation(id) => match self.ops.get(&id) {
                Some(op) => {
                    serde_json::to_value(op).map_err(|e| RpcError::Internal(e.to_string()))?
                }
                None => {
                    return Err(DriverError::NotFound {
                        what: "operation",
                        name: id,
                    }
                    .into());
                }
            },
            Request::GetRootPassword => {
                return Err(DriverError::NotSupported {
                    operation: "get_root_password",
                    driver: self.driver.info().name,
                }
                .into());
            }
            // Replicas seed themselves from the source (no backup to restore first).
            Request::BackupRequiredForReplication => {
                self.replication("backup_required_for_replication")?;
                Value::Bool(false)
            }
            other => return Err(RpcError::Internal(format!("{other:?} is not lock-free"))),
        })
    }

    fn start_prepare(
        self: &Arc<Self>,
        spec: guest_agent_api::lifecycle::PrepareSpec,
        source: Option<guest_agent_api::replication::ReplicationSource>,
        backup: Option<BackupRef>,
        ctx: &RequestContext,
    ) -> Result<Value, RpcError> {
        match self.state.phase() {
            Phase::Building => {
                return Err(DriverError::InvalidState {
                    operation: "prepare",
                    reason: "prepare is already running".into(),
                }
                .into());
            }
            Phase::Prepared => {
                return Err(DriverError::InvalidState {
                    operation: "prepare",
                    reason: "the datastore is already prepared".into(),
                }
                .into());
            }
            Phase::New | Phase::Failed(_) => {}
        }
        self.state
            .begin_prepare()
            .map_err(|e| RpcError::Internal(format!("writing the prepare marker: {e}")))?;
        let op = self.ops.begin("prepare", &ctx.request_id);
        let this = Arc::clone(self);
        let op_ctx = self.op_context(ctx);
        let id = op.id.clone();
        self.tasks.spawn(async move {
            let _guard = this.datastore.write().await;
            tracing::info!(operation = %id, "Prepare started.");
            let mut outcome = this
                .driver
                .lifecycle()
                .prepare(&op_ctx, &spec)
                .await
                .map_err(RpcError::from);
            // A server made from a backup is prepared empty, then filled from the backup.
            if let (Ok(()), Some(b)) = (&outcome, &backup) {
                outcome = this.restore_in_prepare(&op_ctx, b, &id).await;
            }
            // A replica is prepared like any server, then seeded from its source.
            if let (Ok(()), Some(source)) = (&outcome, &source) {
                outcome = match this.driver.replication() {
                    Some(r) => r.attach(&op_ctx, source).await.map_err(RpcError::from),
                    None => Err(DriverError::NotSupported {
                        operation: "prepare as replica",
                        driver: this.driver.info().name,
                    }
                    .into()),
                };
            }
            let (state, marker) = match &outcome {
                Ok(()) => {
                    tracing::info!(operation = %id, "Prepare finished.");
                    (
                        OpState::Succeeded {
                            result: Value::Null,
                        },
                        Ok(()),
                    )
                }
                Err(e) => {
                    tracing::error!(operation = %id, error = %e, "Prepare failed.");
                    (
                        OpState::Failed {
                            error_type: e.kind().to_owned(),
                            message: e.to_string(),
                        },
                        Err(e.to_string()),
                    )
                }
            };
            if let Err(e) = this.state.end_prepare(marker) {
                tracing::error!(error = %e, "Could not persist the prepare outcome.");
            }
            this.ops.finish(&id, state);
        });
        Ok(json!({"operation": op}))
    }

    async fn run_locked(
        &self,
        method: &str,
        req: Request,
        ctx: &RequestContext,
    ) -> Result<Value, RpcError> {
        let c = self.op_context(ctx);
        let d = &self.driver;
        let admin = d.admin();
        let out = match req {
            Request::CreateDatabases(dbs) => {
                admin.create_databases(&c, &dbs).await?;
                Value::Null
            }
            Request::ListDatabases(page) => {
                let p = admin.list_databases(&c, &page).await?;
                json!([
                    p.items.iter().map(schema_json).collect::<Vec<_>>(),
                    p.next_marker
                ])
            }
            Request::DeleteDatabase(name) => {
                admin.drop_database(&c, &name).await?;
                Value::Null
            }
            Request::CreateUsers(users) => {
                admin.create_users(&c, &users).await?;
                Value::Null
            }
            Request::GetUser(u) => match admin.get_user(&c, &u).await? {
                Some(info) => user_json(&info),
                None => Value::Null,
            },
            Request::ListUsers(page) => {
                let p = admin.list_users(&c, &page).await?;
                json!([
                    p.items.iter().map(user_json).collect::<Vec<_>>(),
                    p.next_marker
                ])
            }
            Request::DeleteUser(u) => {
                admin.drop_user(&c, &u).await?;
                Value::Null
            }
            Request::GrantAccess(u, dbs) => {
                admin.grant_access(&c, &u, &dbs).await?;
                Value::Null
            }
            Request::RevokeAccess(u, db) => {
                admin.revoke_access(&c, &u, &db).await?;
                Value::Null
            }
            Request::ListAccess(u) => Value::Array(
                admin
                    .list_access(&c, &u)
                    .await?
                    .iter()
                    .map(schema_json)
                    .collect(),
            ),
            Request::ChangePasswords(changes) => {
                admin.change_passwords(&c, &changes).await?;
                Value::Null
            }
            Request::UpdateAttributes(u, update) => {
                admin.update_attributes(&c, &u, &update).await?;
                Value::Null
            }
            Request::EnableRoot(pw) => {
                let creds = admin.enable_root(&c, pw).await?;
                json!({"_name": creds.name.as_str(), "_password": creds.password.expose(),
                       "_host": "%", "_databases": [], "_is_root": true})
            }
            Request::DisableRoot => {
                admin.disable_root(&c).await?;
                Value::Null
            }
            Request::IsRootEnabled => Value::Bool(admin.is_root_enabled(&c).await?),
            Request::Restart => {
                let _restarting = self.state.enter(DatastoreStatus::Restarting);
                d.lifecycle().restart(&c).await?;
                Value::Null
            }
            Request::StopDb => {
                d.lifecycle().stop(&c, StopMode::Fast).await?;
                self.state.poke();
                Value::Null
            }
            Request::StartDb => {
                d.lifecycle().start(&c).await?;
                self.state.poke();
                Value::Null
            }
            Request::Diagnostics => serde_json::to_value(d.health().details(&c).await?)
                .map_err(|e| RpcError::Internal(e.to_string()))?,
            Request::LatestTxnId => Value::String(d.health().position(&c).await?.to_string()),
            Request::GetPosition => serde_json::to_value(d.health().position(&c).await?)
                .map_err(|e| RpcError::Internal(e.to_string()))?,
            Request::PreCreateBackup => return self.backup_hook(true, &c).await,
            Request::PostCreateBackup => return self.backup_hook(false, &c).await,
            Request::ReachedPosition(target) => {
                let here = d.health().position(&c).await?;
                let reached = here
                    .reached(&target)
                    .map_err(|e| RpcError::invalid_args(method, "position", e.to_string()))?;
                json!({"reached": reached, "position": here})
            }
            other @ (Request::ApplyOverrides { .. }
            | Request::ResetConfiguration(_)
            | Request::StartWithConfChanges(_)
            | Request::ReplicationSnapshot { .. }
            | Request::AttachReplica(_)
            | Request::DetachReplica { .. }
            | Request::ReplicaContext
            | Request::MakeReadOnly(_)
            | Request::EnableAsMaster
            | Request::PromoteToReplicaSource
            | Request::DemoteMaster
            | Request::LastTxn
            | Request::NodePosition
            | Request::WaitForTxn { .. }
            | Request::CleanupReplica(_)) => {
                return self.run_replication_or_config(method, other, &c).await;
            }
            other => {
                return Err(RpcError::Internal(format!(
                    "{other:?} dispatched to the wrong lock"
                )));
            }
        };
        Ok(out)
    }

    /// The driver's replication group, or `NotSupported` naming `operation`.
    fn replication(
        &self,
        operation: &'static str,
    ) -> Result<&dyn guest_agent_api::Replication, RpcError> {
        self.driver.replication().ok_or_else(|| {
            DriverError::NotSupported {
                operation,
                driver: self.driver.info().name,
            }
            .into()
        })
    }

    /// Runs the replication and configuration requests.
    async fn run_replication_or_config(
        &self,
        method: &str,
        req: Request,
        c: &OpContext,
    ) -> Result<Value, RpcError> {
        let d = &self.driver;
        let null = |r: Result<(), DriverError>| r.map(|()| Value::Null).map_err(RpcError::from);
        match req {
            Request::ApplyOverrides { overrides, remove } => {
                let cfg = d.config();
                // Everything is validated before anything is written.
                let validated = cfg.validate(&overrides)?;
                let outcome = if overrides.is_empty() {
                    if !remove {
                        // Trove: updating with no overrides changes nothing.
                        return Ok(Value::Null);
                    }
                    cfg.remove_overrides(c).await?
                } else {
                    cfg.apply(c, &validated).await?
                };
                self.state.poke();
                serde_json::to_value(outcome).map_err(|e| RpcError::Internal(e.to_string()))
            }
            Request::ResetConfiguration(contents) => {
                null(d.config().reset_base(c, &contents).await)
            }
            Request::StartWithConfChanges(contents) => {
                d.config().reset_base(c, &contents).await?;
                d.lifecycle().start(c).await?;
                self.state.poke();
                Ok(Value::Null)
            }
            Request::ReplicationSnapshot {
                replica_id,
                snapshot_id,
            } => {
                let r = self.replication("get_replication_snapshot")?;
                let snap = r.snapshot_for_replica(c, &replica_id).await?;
                let sizes = dataset_sizes(&self.data_dir);
                Ok(super::replication::snapshot_json(
                    &snap,
                    &self.manager,
                    snapshot_id.as_ref(),
                    sizes,
                ))
            }
            Request::AttachReplica(source) => {
                let r = self.replication("attach_replica")?;
                // Attaching restarts (or re-seeds) the server: report that, not "shutdown".
                let _attaching = self.state.enter(DatastoreStatus::Restarting);
                let out = r.attach(c, &source).await;
                self.state.poke();
                null(out)
            }
            Request::DetachReplica { for_failover } => {
                let r = self.replication("detach_replica")?;
                let out = r.detach(c, for_failover).await?;
                self.state.poke();
                serde_json::to_value(out).map_err(|e| RpcError::Internal(e.to_string()))
            }
            Request::ReplicaContext => {
                let r = self.replication("get_replica_context")?;
                Ok(super::replication::context_json(
                    &r.replica_context(c).await?,
                ))
            }
            Request::MakeReadOnly(ro) => null(
                self.replication("make_read_only")?
                    .set_read_only(c, ro)
                    .await,
            ),
            Request::EnableAsMaster => {
                let r = self.replication("enable_as_master")?;
                let _promoting = self.state.enter(DatastoreStatus::PromotingReplica);
                null(r.promote(c).await)
            }
            Request::PromoteToReplicaSource => {
                let r = self.replication("promote_to_replica_source")?;
                let _promoting = self.state.enter(DatastoreStatus::PromotingReplica);
                let out = r.promote(c).await;
                self.state.poke();
                null(out)
            }
            Request::DemoteMaster => {
                let r = self.replication("demote_replication_master")?;
                let out = r.demote(c).await;
                self.state.poke();
                null(out)
            }
            Request::LastTxn => {
                // What came from the source's stream: an errant replica must not win the
                // choice of the most advanced replica by its own writes.
                let received = self
                    .replication("get_last_txn")?
                    .received_position(c)
                    .await?;
                super::replication::last_txn_json(&received).ok_or_else(|| {
                    DriverError::NotSupported {
                        operation: "get_last_txn",
                        driver: d.info().name,
                    }
                    .into()
                })
            }
            Request::NodePosition => {
                let node = self
                    .replication("get_node_position")?
                    .node_position(c)
                    .await?;
                serde_json::to_value(node).map_err(|e| RpcError::Internal(e.to_string()))
            }
            Request::WaitForTxn { txn, timeout } => null(
                self.replication("wait_for_txn")?
                    .wait_for(c, &txn, timeout)
                    .await,
            ),
            Request::CleanupReplica(id) => null(
                self.replication("cleanup_source_on_replica_detach")?
                    .forget_replica(c, &id)
                    .await,
            ),
            other => Err(RpcError::Internal(format!(
                "{other:?} is not a replication or configuration request ({method})"
            ))),
        }
    }

    /// The status to report now: the agent's phase first, then the datastore's own status.
    pub async fn current_status(&self) -> DatastoreStatus {
        match self.state.phase() {
            Phase::New => DatastoreStatus::New,
            Phase::Building => DatastoreStatus::Building,
            Phase::Failed(_) => DatastoreStatus::FailedToSpawn,
            Phase::Prepared if let Some(t) = self.state.transient() => t,
            Phase::Prepared => {
                self.driver
                    .lifecycle()
                    .status(&OpContext::new("status"))
                    .await
            }
        }
    }

    /// `GET /v1/status` and `get_status`: phase, status, driver and operations.
    pub async fn status_json(&self) -> Value {
        let status = self.current_status().await;
        let info = self.driver.info();
        let phase = match self.state.phase() {
            Phase::New => json!({"phase": "new"}),
            Phase::Building => json!({"phase": "building"}),
            Phase::Prepared => json!({"phase": "prepared"}),
            Phase::Failed(m) => json!({"phase": "failed", "error": m}),
        };
        json!({
            "service_status": status,
            "prepare": phase,
            "driver": {"name": info.name, "capabilities": info.capabilities},
            "running_operations": self.ops.running(),
        })
    }

    /// Stops taking new operations; in-flight ones continue.
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        self.tasks.close();
    }

    /// Waits up to `grace` for in-flight operations, then cancels them and waits a little
    /// more for them to notice. Returns whether everything finished.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.stop_accepting();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_ok() {
            return true;
        }
        tracing::warn!(
            running = self.tasks.len(),
            "Cancelling operations still running after the grace period."
        );
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.tasks.wait())
            .await
            .is_ok()
    }
}

/// Trove's schema dict.
fn schema_json(d: &DatabaseSpec) -> Value {
    json!({"_name": d.name.as_str(), "_character_set": d.character_set, "_collate": d.collate})
}

/// Trove's serialized user (no password).
fn user_json(u: &UserInfo) -> Value {
    json!({"_name": u.name.as_str(), "_host": u.host.as_str(), "_password": null,
           "_databases": u.databases.iter().map(schema_json).collect::<Vec<_>>(), "_is_root": false})
}

/// Rounds bytes to GiB with 2 decimals, at least 0.01 (Trove's `get_filesystem_stats`).
#[allow(clippy::cast_precision_loss)]
fn gib(bytes: u64) -> f64 {
    let v = (bytes as f64 / f64::from(1u32 << 30) * 100.0).round() / 100.0;
    v.max(0.01)
}

/// Trove's `get_filesystem_stats` for the file system holding `path` (or its nearest
/// existing ancestor, before prepare created it).
fn filesystem_stats(path: &Path, extra: serde_json::Map<String, Value>) -> Result<Value, RpcError> {
    let mut p = path;
    while !p.exists() {
        p = p.parent().unwrap_or(Path::new("/"));
    }
    let st = nix::sys::statvfs::statvfs(p).map_err(|e| {
        DriverError::io(format!("statvfs {}", p.display()), std::io::Error::from(e))
    })?;
    let bs = st.fragment_size();
    let total_blocks = st.blocks();
    let free_blocks = st.blocks_free();
    let avail_blocks = st.blocks_available();
    Ok(json!({
        "block_size": bs,
        "total_blocks": total_blocks,
        "free_blocks": free_blocks,
        "avail_blocks": avail_blocks,
        "total": gib(total_blocks * bs),
        "free": free_blocks * bs,
        "used": gib(total_blocks.saturating_sub(free_blocks) * bs),
        "mgr_extra_info": extra,
    }))
}

/// Used and total GiB of the file system holding `path` (Trove's `dataset_size` and
/// `volume_size`), zero when it cannot be read.
fn dataset_sizes(path: &Path) -> (f64, f64) {
    match filesystem_stats(path, serde_json::Map::new()) {
        Ok(v) => (
            v["used"].as_f64().unwrap_or_default(),
            v["total"].as_f64().unwrap_or_default(),
        ),
        Err(_) => (0.0, 0.0),
    }
}

/// CPU count and memory (kB), the shape Trove's `get_hwinfo` once returned.
fn hwinfo() -> Result<Value, RpcError> {
    let cpus = std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| DriverError::io("reading /proc/meminfo", e))?;
    let mem_kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok(json!({"num_cpus": cpus, "mem_total": mem_kb}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gib_rounding_matches_trove() {
        // Figures from a captured Trove reply: 66053021 blocks of 4096 bytes = 251.97.
        assert!((gib(66_053_021 * 4096) - 251.97).abs() < 1e-9);
        assert!((gib((66_053_021 - 61_633_196) * 4096) - 16.86).abs() < 1e-9);
        assert!((gib(1) - 0.01).abs() < 1e-9);
    }

    #[test]
    fn fs_stats_shape() {
        let v =
            filesystem_stats(Path::new("/definitely/not/here"), serde_json::Map::new()).unwrap();
        for k in [
            "block_size",
            "total_blocks",
            "free_blocks",
            "avail_blocks",
            "total",
            "free",
            "used",
            "mgr_extra_info",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert!(v["total"].as_f64().unwrap() >= 0.01);
    }

    #[test]
    fn hwinfo_reads_proc() {
        let v = hwinfo().unwrap();
        assert!(v["num_cpus"].as_u64().unwrap() >= 1);
        assert!(v["mem_total"].as_u64().unwrap() > 0);
    }
}

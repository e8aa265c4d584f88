//! The dispatcher's backup operations: `create_backup`, the restore inside `prepare`,
//! `restore_backup`, `verify_backup`, `delete_backup`, `pre_create_backup` and
//! `post_create_backup`.
//!
//! Long ones run as tracked operations. Progress goes three ways: the control plane
//! (`update_backup`, `BUILDING` with the stored size so far, then `COMPLETED` or `FAILED`), the
//! operation table (`progress` of `get_operation`) and the metrics.

use std::sync::Arc;
use std::time::Duration;

use guest_agent_api::backup::BackupHooks;
use guest_agent_api::{Error as DriverError, OpContext};
use guest_agent_backup::manifest::BackupKind;
use guest_agent_backup::pipeline::Phase as PipePhase;
use guest_agent_backup::{
    BackupError, BackupSpec, CryptoError, Manifest, ObjectKey, Progress, ProgressFn, RestoreRequest,
};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::super::ops::OpState;
use super::super::{BackupOrder, BackupRef, RpcError};
use super::{Dispatcher, RequestContext};
use crate::backup::{BackupService, gb, is_logical};
use crate::transport::{BackupState, BackupUpdate};

/// Attempts at delivering the final `update_backup` of a backup.
const FINAL_REPORT_ATTEMPTS: u32 = 4;

fn phase_name(p: PipePhase) -> &'static str {
    match p {
        PipePhase::Backup => "backup",
        PipePhase::Restore => "restore",
        PipePhase::Verify => "verify",
    }
}

fn progress_json(p: &Progress) -> Value {
    json!({
        "phase": phase_name(p.phase),
        "raw_bytes": p.raw_bytes,
        "stored_bytes": p.stored_bytes,
        "bytes_per_sec": p.bytes_per_sec,
        "elapsed_secs": p.elapsed.as_secs_f64(),
    })
}

fn op_failed(e: &RpcError) -> OpState {
    OpState::Failed {
        error_type: e.kind().to_owned(),
        message: e.to_string(),
    }
}

/// Average raw bytes per second of `bytes` moved in `elapsed`.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]
fn rate(bytes: u64, elapsed: Duration) -> u64 {
    (bytes as f64 / elapsed.as_secs_f64().max(1e-6)) as u64
}

/// The chain ending at `key`, full backup first; a missing backup is `NotFound`.
async fn load_chain(svc: &BackupService, key: &ObjectKey) -> Result<Vec<Manifest>, RpcError> {
    match svc.engine().chain(key).await {
        Ok(c) => Ok(c),
        Err(e) if e.is_not_found() => Err(DriverError::NotFound {
            what: "backup",
            name: key.to_string(),
        }
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// Fails unless every backup of `chain` can be read with `key`: checked before a restore
/// touches anything.
fn check_keys(
    chain: &[Manifest],
    key: Option<&guest_agent_backup::InstanceKey>,
) -> Result<(), BackupError> {
    for m in chain {
        match (&m.encryption, key) {
            (None, _) => {}
            (Some(_), None) => {
                return Err(BackupError::invalid(
                    "backup.key_file",
                    format!(
                        "backup '{}' is encrypted and this agent has no backup key",
                        m.backup_id
                    ),
                ));
            }
            (Some(e), Some(k)) if e.key_id != hex::encode(k.key_id()) => {
                return Err(CryptoError::WrongKey.into());
            }
            _ => {}
        }
    }
    Ok(())
}

/// Fails when the control plane's checksum is not the manifest's (the backup was replaced).
fn check_checksum(backup: &BackupRef, key: &ObjectKey, m: &Manifest) -> Result<(), BackupError> {
    match &backup.checksum {
        Some(c) if !c.eq_ignore_ascii_case(&m.data.sha256) => Err(BackupError::Checksum {
            key: key.to_string(),
            expected: c.clone(),
            actual: m.data.sha256.clone(),
        }),
        _ => Ok(()),
    }
}

impl Dispatcher {
    pub(super) fn backup_service(&self) -> Result<&Arc<BackupService>, RpcError> {
        self.backups.as_ref().ok_or_else(|| {
            DriverError::NotSupported {
                operation: "backups (no [backup] store configured)",
                driver: self.driver.info().name,
            }
            .into()
        })
    }

    pub(super) fn hooks(&self, operation: &'static str) -> Result<&dyn BackupHooks, RpcError> {
        self.driver.backup().ok_or_else(|| {
            DriverError::NotSupported {
                operation,
                driver: self.driver.info().name,
            }
            .into()
        })
    }

    /// The manifest key a location names, as an argument error of `method` at `field`.
    fn backup_key(&self, method: &str, field: &str, b: &BackupRef) -> Result<ObjectKey, RpcError> {
        self.backup_service()?
            .parse_location(&b.location)
            .map_err(|reason| RpcError::invalid_args(method, field, reason))
    }

    /// A progress callback feeding the metrics, the operation table and (for backups) `tx`.
    fn progress_fn(
        self: &Arc<Self>,
        op_id: &str,
        tx: Option<watch::Sender<Option<Progress>>>,
    ) -> ProgressFn {
        let this = Arc::clone(self);
        let id = op_id.to_owned();
        Arc::new(move |p: &Progress| {
            this.metrics
                .backup_progress(phase_name(p.phase), p.raw_bytes, p.stored_bytes);
            this.ops.set_progress(&id, progress_json(p));
            if let Some(tx) = &tx {
                tx.send_replace(Some(p.clone()));
            }
        })
    }

    async fn send_update(&self, update: &BackupUpdate, attempts: u32) {
        let mut wait = Duration::from_millis(500);
        for attempt in 1..=attempts {
            let mut u = update.clone();
            u.sent = crate::heartbeat::now();
            match self.control_plane.update_backup(&u).await {
                Ok(()) => return,
                Err(e) if attempt == attempts => {
                    tracing::warn!(backup_id = %u.backup_id, error = %e, "Could not report the backup.");
                }
                Err(e) => {
                    tracing::debug!(backup_id = %u.backup_id, error = %e, "Backup report failed; retrying.");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }

    fn update(&self, backup_id: &str, state: BackupState, backup_type: &str) -> BackupUpdate {
        BackupUpdate {
            instance_id: self.instance_id.clone(),
            backup_id: backup_id.to_owned(),
            sent: 0.0,
            state,
            size: None,
            backup_type: Some(backup_type.to_owned()),
            checksum: None,
            location: None,
            success: None,
            message: None,
        }
    }

    /// `create_backup`: checks everything that can be checked, then runs the backup as a
    /// tracked operation and answers `{"operation": ...}` at once.
    pub(super) async fn start_backup(
        self: &Arc<Self>,
        order: BackupOrder,
        ctx: &RequestContext,
    ) -> Result<Value, RpcError> {
        const M: &str = "create_backup";
        self.require_prepared(M)?;
        let svc = Arc::clone(self.backup_service()?);
        let hooks = self.hooks(M)?;
        let supported = hooks.strategies();
        let strategy_id: &'static str = match &order.strategy {
            Some(s) => supported
                .iter()
                .find(|x| **x == s.as_str())
                .copied()
                .ok_or_else(|| {
                    RpcError::invalid_args(
                        M,
                        "backup_info.strategy",
                        format!("'{s}' is not one of {}", supported.join(", ")),
                    )
                })?,
            None if !order.databases.is_empty() => supported
                .iter()
                .find(|x| is_logical(x))
                .copied()
                .ok_or_else(|| {
                    RpcError::invalid_args(M, "backup_info.databases", "no logical strategy")
                })?,
            None => supported.first().copied().ok_or_else(|| {
                RpcError::from(DriverError::NotSupported {
                    operation: M,
                    driver: self.driver.info().name,
                })
            })?,
        };
        if !order.databases.is_empty() && !is_logical(strategy_id) {
            return Err(RpcError::invalid_args(
                M,
                "backup_info.databases",
                format!("'{strategy_id}' backs up the whole server; choose a logical strategy"),
            ));
        }
        if strategy_id == "pg_dump" && order.databases.len() != 1 {
            return Err(RpcError::invalid_args(
                M,
                "backup_info.databases",
                "pg_dump backs up exactly one database",
            ));
        }
        let parent = match &order.parent {
            Some(p) => Some(self.backup_key(M, "backup_info.parent.location", p)?),
            None => None,
        };
        let c = self.op_context(ctx);
        let access = hooks.tool_access(&c).await?;
        let strategy = BackupService::strategy(strategy_id, &access, false)?;
        if parent.is_some() && !strategy.supports_incremental() {
            return Err(RpcError::invalid_args(
                M,
                "backup_info.parent",
                format!("'{strategy_id}' backups are always full"),
            ));
        }
        let guard = svc
            .claim(&order.id)
            .map_err(|other| DriverError::InvalidState {
                operation: M,
                reason: format!("backup '{other}' is running"),
            })?;
        let op = self.ops.begin(M, &ctx.request_id);
        let this = Arc::clone(self);
        let id = op.id.clone();
        self.tasks.spawn(async move {
            // No datastore lock: a backup runs for long and only reads, so other operations
            // go on; those that would stop the server are refused while the slot is held.
            let _slot = guard;
            let backup_type = if parent.is_some() {
                "incremental"
            } else {
                "full"
            };
            tracing::info!(operation = %id, backup_id = %order.id, strategy = strategy_id, "Backup started.");
            let building = this.update(&order.id, BackupState::Building, backup_type);
            this.send_update(&building, 1).await;
            let outcome = this
                .run_backup(&svc, &order, strategy.as_ref(), parent, &id, &c)
                .await;
            let (state, mut last) = match &outcome {
                Ok((result, report)) => {
                    let mut u = this.update(&order.id, BackupState::Completed, backup_type);
                    u.size = Some(gb(report.manifest.data.stored_size));
                    u.checksum = Some(report.manifest.data.sha256.clone());
                    u.location = Some(svc.location(&report.manifest_key));
                    u.success = Some(true);
                    (
                        OpState::Succeeded {
                            result: result.clone(),
                        },
                        u,
                    )
                }
                Err(e) => {
                    tracing::error!(operation = %id, backup_id = %order.id, error = %e, "Backup failed.");
                    let mut u = this.update(&order.id, BackupState::Failed, backup_type);
                    u.success = Some(false);
                    u.message = Some(e.to_string());
                    (op_failed(e), u)
                }
            };
            last.sent = 0.0;
            this.send_update(&last, FINAL_REPORT_ATTEMPTS).await;
            this.ops.finish(&id, state);
        });
        Ok(json!({"operation": op}))
    }

    async fn run_backup(
        self: &Arc<Self>,
        svc: &BackupService,
        order: &BackupOrder,
        strategy: &dyn guest_agent_backup::BackupStrategy,
        parent: Option<ObjectKey>,
        op_id: &str,
        c: &OpContext,
    ) -> Result<(Value, guest_agent_backup::BackupReport), RpcError> {
        let hooks = self.hooks("create_backup")?;
        let started = std::time::Instant::now();
        svc.ensure_store().await?;
        if let (Some(pk), Some(p)) = (&parent, &order.parent) {
            let m = match svc.engine().manifest(pk).await {
                Ok(m) => m,
                Err(e) if e.is_not_found() => {
                    return Err(BackupError::ParentMissing {
                        child: order.id.clone(),
                        parent: pk.to_string(),
                    }
                    .into());
                }
                Err(e) => return Err(e.into()),
            };
            check_checksum(p, pk, &m)?;
        }
        let metadata = hooks.before_backup(c).await?;
        let spec = BackupSpec {
            backup_id: order.id.clone(),
            prefix: svc.prefix().to_owned(),
            datastore_version: order
                .datastore_version
                .clone()
                .unwrap_or_else(|| self.datastore_version.clone()),
            databases: order
                .databases
                .iter()
                .map(|d| d.as_str().to_owned())
                .collect(),
            parent_manifest: parent,
            key: svc.key().cloned(),
            metadata,
        };
        // Progress reports go out from their own task, so a slow control plane never holds
        // up the pipeline.
        let (tx, mut rx) = watch::channel::<Option<Progress>>(None);
        let stop = CancellationToken::new();
        let reporter = {
            let this = Arc::clone(self);
            let stop = stop.clone();
            let backup_type = if spec.parent_manifest.is_some() {
                "incremental"
            } else {
                "full"
            };
            let base = self.update(&order.id, BackupState::Building, backup_type);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        changed = rx.changed() => {
                            if changed.is_err() {
                                break;
                            }
                            let p = rx.borrow_and_update().clone();
                            if let Some(p) = p.filter(|p| !p.done) {
                                let mut u = base.clone();
                                u.size = Some(gb(p.stored_bytes));
                                this.send_update(&u, 1).await;
                            }
                        }
                    }
                }
            })
        };
        let result = svc
            .engine()
            .backup(
                strategy,
                &spec,
                Some(self.progress_fn(op_id, Some(tx))),
                &c.cancel,
            )
            .await;
        stop.cancel();
        let _ = reporter.await;
        if let Err(e) = hooks.after_backup(c).await {
            tracing::warn!(error = %e, "The driver's after-backup step failed.");
        }
        match result {
            Ok(report) => {
                let d = &report.manifest.data;
                self.metrics.backup_finished(
                    "backup",
                    true,
                    d.raw_size,
                    d.stored_size,
                    rate(d.raw_size, report.elapsed),
                );
                let location = svc.location(&report.manifest_key);
                tracing::info!(backup_id = %order.id, %location, raw = d.raw_size, stored = d.stored_size, "Backup completed.");
                let result = json!({
                    "backup_id": order.id,
                    "location": location,
                    "checksum": d.sha256,
                    "size": gb(d.stored_size),
                    "raw_bytes": d.raw_size,
                    "stored_bytes": d.stored_size,
                    "strategy": report.manifest.strategy,
                    "backup_type": if matches!(report.manifest.kind, BackupKind::Full) { "full" } else { "incremental" },
                    "position": report.manifest.position,
                    "encrypted": report.manifest.encryption.is_some(),
                    "elapsed_secs": started.elapsed().as_secs_f64(),
                });
                Ok((result, report))
            }
            Err(e) => {
                self.metrics.backup_finished("backup", false, 0, 0, 0);
                Err(e.into())
            }
        }
    }

    /// Restores `backup` into the datastore `prepare` just built: a physical backup replaces
    /// its data directory, a logical one is loaded into the running server. Chain, strategy
    /// and key are checked before anything is touched.
    pub(super) async fn restore_in_prepare(
        self: &Arc<Self>,
        c: &OpContext,
        backup: &BackupRef,
        op_id: &str,
    ) -> Result<(), RpcError> {
        const M: &str = "prepare";
        let svc = Arc::clone(self.backup_service()?);
        let hooks = self.hooks("prepare from backup")?;
        let key = self.backup_key(M, "backup_info.location", backup)?;
        let (strategy_id, chain) = self.check_restorable(&svc, hooks, &key, backup).await?;
        let access = hooks.tool_access(c).await?;
        let strategy = BackupService::strategy(&strategy_id, &access, false)?;
        let progress = Some(self.progress_fn(op_id, None));
        tracing::info!(backup = %key, strategy = %strategy_id, backups = chain.len(), "Restoring a backup.");
        let outcome = if is_logical(&strategy_id) {
            svc.engine()
                .restore(
                    strategy.as_ref(),
                    &key,
                    RestoreRequest::default(),
                    svc.key(),
                    progress,
                    &c.cancel,
                )
                .await
        } else {
            hooks.prepare_restore(c).await?;
            let req = RestoreRequest {
                target_dir: Some(access.data_dir.clone()),
                work_dir: Some(
                    access
                        .tmp_dir
                        .join(format!("restore-{}", chain_last_id(&chain))),
                ),
                database: None,
                chain: Vec::new(),
            };
            svc.engine()
                .restore(strategy.as_ref(), &key, req, svc.key(), progress, &c.cancel)
                .await
        };
        let report = match outcome {
            Ok(r) => r,
            Err(e) => {
                self.metrics.backup_finished("restore", false, 0, 0, 0);
                return Err(e.into());
            }
        };
        if !is_logical(&strategy_id) {
            hooks.finish_restore(c).await?;
        }
        self.metrics.backup_finished(
            "restore",
            true,
            report.raw_bytes,
            report.stored_bytes,
            rate(report.raw_bytes, report.elapsed),
        );
        tracing::info!(chain = ?report.chain, raw = report.raw_bytes, "Backup restored.");
        Ok(())
    }

    /// Loads the chain ending at `key` and checks that this driver restores its strategy, the
    /// control plane's checksum matches and the key opens every backup of it.
    async fn check_restorable(
        &self,
        svc: &BackupService,
        hooks: &dyn BackupHooks,
        key: &ObjectKey,
        backup: &BackupRef,
    ) -> Result<(String, Vec<Manifest>), RpcError> {
        let chain = load_chain(svc, key).await?;
        let Some(last) = chain.last() else {
            return Err(RpcError::Internal("empty backup chain".to_owned()));
        };
        check_checksum(backup, key, last)?;
        if !hooks.strategies().contains(&last.strategy.as_str()) {
            return Err(RpcError::invalid_args(
                "prepare",
                "backup_info.location",
                format!(
                    "backup '{}' was made by '{}' ({}), which the '{}' driver does not restore",
                    last.backup_id,
                    last.strategy,
                    last.datastore,
                    self.driver.info().name
                ),
            ));
        }
        check_keys(&chain, svc.key())?;
        Ok((last.strategy.clone(), chain))
    }

    /// Runs `work` as the tracked operation `method` (under the datastore's write lock when
    /// `exclusive`) and answers `{"operation": ...}` at once.
    fn spawn_tracked<F>(
        self: &Arc<Self>,
        method: &'static str,
        ctx: &RequestContext,
        exclusive: bool,
        work: impl FnOnce(Arc<Self>, String, OpContext) -> F,
    ) -> Value
    where
        F: std::future::Future<Output = Result<Value, RpcError>> + Send + 'static,
    {
        let op = self.ops.begin(method, &ctx.request_id);
        let id = op.id.clone();
        let fut = work(Arc::clone(self), id.clone(), self.op_context(ctx));
        let this = Arc::clone(self);
        self.tasks.spawn(async move {
            let _lock = if exclusive {
                Some(this.datastore.write().await)
            } else {
                None
            };
            let state = match fut.await {
                Ok(result) => OpState::Succeeded { result },
                Err(e) => {
                    tracing::warn!(operation = %id, method, error = %e, "Tracked operation failed.");
                    op_failed(&e)
                }
            };
            this.ops.finish(&id, state);
        });
        json!({"operation": op})
    }

    /// `restore_backup`: loads a logical backup into this running server (tracked).
    pub(super) fn start_logical_restore(
        self: &Arc<Self>,
        backup: BackupRef,
        database: Option<guest_agent_api::ident::DbName>,
        ctx: &RequestContext,
    ) -> Result<Value, RpcError> {
        const M: &str = "restore_backup";
        self.require_prepared(M)?;
        let svc = Arc::clone(self.backup_service()?);
        self.hooks(M)?;
        let key = self.backup_key(M, "backup_info.location", &backup)?;
        Ok(self.spawn_tracked(M, ctx, true, |this, id, c| async move {
            let hooks = this.hooks(M)?;
            let (strategy_id, _chain) = this.check_restorable(&svc, hooks, &key, &backup).await?;
            if !is_logical(&strategy_id) {
                return Err(RpcError::invalid_args(
                    M,
                    "backup_info.location",
                    format!(
                        "'{strategy_id}' is a physical backup: it is restored by prepare into a \
                         new instance"
                    ),
                ));
            }
            let access = hooks.tool_access(&c).await?;
            // The same server: its roles own what they owned.
            let strategy = BackupService::strategy(&strategy_id, &access, true)?;
            let req = RestoreRequest {
                database: database.as_ref().map(|d| d.as_str().to_owned()),
                ..RestoreRequest::default()
            };
            let progress = Some(this.progress_fn(&id, None));
            let r = svc
                .engine()
                .restore(strategy.as_ref(), &key, req, svc.key(), progress, &c.cancel)
                .await
                .inspect_err(|_| this.metrics.backup_finished("restore", false, 0, 0, 0))?;
            this.metrics.backup_finished(
                "restore",
                true,
                r.raw_bytes,
                r.stored_bytes,
                rate(r.raw_bytes, r.elapsed),
            );
            Ok(json!({"restored": r.chain, "raw_bytes": r.raw_bytes,
                      "stored_bytes": r.stored_bytes,
                      "elapsed_secs": r.elapsed.as_secs_f64()}))
        }))
    }

    /// `verify_backup`: authenticates and checksums a backup and its parents (tracked).
    pub(super) fn start_verify(
        self: &Arc<Self>,
        backup: BackupRef,
        ctx: &RequestContext,
    ) -> Result<Value, RpcError> {
        const M: &str = "verify_backup";
        let svc = Arc::clone(self.backup_service()?);
        let key = self.backup_key(M, "backup_info.location", &backup)?;
        Ok(self.spawn_tracked(M, ctx, false, |this, id, c| async move {
            let chain = load_chain(&svc, &key).await?;
            if let Some(last) = chain.last() {
                check_checksum(&backup, &key, last)?;
            }
            check_keys(&chain, svc.key())?;
            let mut verified = Vec::new();
            for m in &chain {
                let mk = Manifest::key_for(&m.data_key()?)?;
                let progress = Some(this.progress_fn(&id, None));
                let r = svc
                    .engine()
                    .verify(&mk, svc.key(), progress, &c.cancel)
                    .await
                    .inspect_err(|_| this.metrics.backup_finished("verify", false, 0, 0, 0))?;
                this.metrics
                    .backup_finished("verify", true, r.raw_bytes, r.stored_bytes, 0);
                verified.push(json!({"backup_id": r.backup_id,
                    "stored_bytes": r.stored_bytes, "raw_bytes": r.raw_bytes,
                    "sha256": r.sha256}));
            }
            Ok(json!({"verified": verified}))
        }))
    }

    /// `delete_backup`: the manifest first (it stops being a backup), then the data.
    pub(super) async fn delete_backup(&self, backup: BackupRef) -> Result<Value, RpcError> {
        const M: &str = "delete_backup";
        let svc = self.backup_service()?;
        let key = self.backup_key(M, "backup_info.location", &backup)?;
        if let Some(child) = child_of(svc, &key).await? {
            return Err(DriverError::InvalidState {
                operation: M,
                reason: format!(
                    "backup '{child}' is an incremental backup on top of it; delete that first"
                ),
            }
            .into());
        }
        // A manifest already gone (lost outside the agent) still names its data object: the
        // data key is the manifest key without its suffix.
        let orphan = match svc.engine().manifest(&key).await {
            Err(e) if e.is_not_found() => key
                .as_str()
                .strip_suffix(guest_agent_backup::manifest::MANIFEST_SUFFIX)
                .and_then(|k| ObjectKey::new(k).ok()),
            _ => None,
        };
        svc.engine().delete(&key).await?;
        if let Some(data) = orphan {
            svc.engine().store().delete(&data).await?;
        }
        Ok(Value::Null)
    }

    /// `pre_create_backup` → the driver's backup metadata; `post_create_backup` → `{}`.
    pub(super) async fn backup_hook(&self, pre: bool, c: &OpContext) -> Result<Value, RpcError> {
        let hooks = self.hooks(if pre {
            "pre_create_backup"
        } else {
            "post_create_backup"
        })?;
        if pre {
            Ok(Value::Object(hooks.before_backup(c).await?))
        } else {
            hooks.after_backup(c).await?;
            Ok(json!({}))
        }
    }
}

/// The id of a backup stored beside `key` (same prefix) whose parent is `key`, if any: a
/// parent deleted first would leave its incremental children unrestorable.
async fn child_of(svc: &BackupService, key: &ObjectKey) -> Result<Option<String>, RpcError> {
    use futures::StreamExt;
    let dir = key
        .as_str()
        .rsplit_once('/')
        .map_or(String::new(), |(d, _)| format!("{d}/"));
    let mut listing = svc.engine().store().list(&dir);
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        let k = &meta.key;
        if k == key
            || !k
                .as_str()
                .ends_with(guest_agent_backup::manifest::MANIFEST_SUFFIX)
        {
            continue;
        }
        // An unreadable neighbour is not this backup's child as far as can be told.
        let Ok(m) = svc.engine().manifest(k).await else {
            continue;
        };
        if let BackupKind::Incremental {
            parent_manifest, ..
        } = &m.kind
            && parent_manifest == key.as_str()
        {
            return Ok(Some(m.backup_id));
        }
    }
    Ok(None)
}

fn chain_last_id(chain: &[Manifest]) -> String {
    chain
        .last()
        .map(|m| m.backup_id.clone())
        .unwrap_or_default()
}

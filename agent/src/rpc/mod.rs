//! The transport-agnostic operation set: Trove's guest agent methods (and a few extensions)
//! parsed into one typed [`Request`] per method before anything runs.
//!
//! Argument names and shapes are Trove's (`shared/research/trove.md` §1): serialized users
//! and databases carry underscore-prefixed keys (`_name`, `_host` ...), unknown keyword
//! arguments are accepted and ignored (a 1.0 `stop_db` still sends `do_not_start_on_reboot`),
//! and a bad argument is reported with its name.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use guest_agent_api::admin::{
    DatabaseSpec, PageRequest, PasswordChange, UserRef, UserSpec, UserUpdate,
};
use guest_agent_api::config::Overrides;
use guest_agent_api::ident::{DbName, HostPattern, Password, UserName};
use guest_agent_api::lifecycle::PrepareSpec;
use guest_agent_api::replication::ReplicationSource;
use guest_agent_api::{Error as DriverError, Position};

/// How long `wait_for_txn` waits unless told (Trove's PostgreSQL guest waits 60 s).
pub const WAIT_FOR_TXN_DEFAULT_SECS: u64 = 60;
/// Longest `wait_for_txn` wait a caller may ask for.
pub const WAIT_FOR_TXN_MAX_SECS: u64 = 86_400;

pub mod dispatch;
pub mod error;
pub mod ops;
mod replication;

pub use dispatch::{Dispatcher, RequestContext};
pub use error::RpcError;

/// Whether an operation changes the datastore (runs alone) or only reads (runs concurrently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Needs no datastore lock at all.
    Free,
    /// Shares the datastore with other readers.
    Read,
    /// Runs alone.
    Write,
}

/// One parsed operation.
#[derive(Debug)]
#[non_exhaustive]
pub enum Request {
    /// `rpc_ping` → `true`.
    Ping,
    /// `prepare`: initialise and start the datastore (a tracked long operation).
    Prepare(Box<PrepareSpec>),
    /// `prepare` with a `snapshot`: prepare, then replicate from the snapshot's source (one
    /// tracked operation).
    PrepareReplica(Box<PrepareSpec>, Box<ReplicationSource>),
    /// `create_database`.
    CreateDatabases(Vec<DatabaseSpec>),
    /// `list_databases` → `[databases, next_marker]`.
    ListDatabases(PageRequest),
    /// `delete_database`.
    DeleteDatabase(DbName),
    /// `create_user`.
    CreateUsers(Vec<UserSpec>),
    /// `get_user` → user or null.
    GetUser(UserRef),
    /// `list_users` → `[users, next_marker]`.
    ListUsers(PageRequest),
    /// `delete_user`.
    DeleteUser(UserRef),
    /// `grant_access`.
    GrantAccess(UserRef, Vec<DbName>),
    /// `revoke_access`.
    RevokeAccess(UserRef, DbName),
    /// `list_access` → databases.
    ListAccess(UserRef),
    /// `change_passwords`.
    ChangePasswords(Vec<PasswordChange>),
    /// `update_attributes`.
    UpdateAttributes(UserRef, UserUpdate),
    /// `enable_root` / `enable_root_with_password` → the root user.
    EnableRoot(Option<Password>),
    /// `disable_root`.
    DisableRoot,
    /// `is_root_enabled` → bool.
    IsRootEnabled,
    /// `get_root_password`: Trove's base manager does not support it.
    GetRootPassword,
    /// `restart`.
    Restart,
    /// `stop_db`.
    StopDb,
    /// `start_db` (extension): start a stopped datastore.
    StartDb,
    /// `get_filesystem_stats`.
    FilesystemStats,
    /// `get_diagnostics` → health details.
    Diagnostics,
    /// `get_hwinfo` → CPU count and memory.
    HwInfo,
    /// `get_latest_txn_id` → position as a string.
    LatestTxnId,
    /// `get_position` (extension) → typed position.
    GetPosition,
    /// `wait_for_position` (extension): wait until the position is reached locally.
    ReachedPosition(Position),
    /// `get_status` (extension) → status and details.
    Status,
    /// `get_operation` (extension) → a tracked operation.
    GetOperation(String),
    /// `update_overrides` / `apply_overrides`: validate all, then make them the managed
    /// override set (`remove` drops the previous set first).
    ApplyOverrides {
        /// Parameter name to value.
        overrides: Overrides,
        /// Remove the managed overrides (an empty `overrides` then only removes).
        remove: bool,
    },
    /// `reset_configuration`: replace the base configuration file.
    ResetConfiguration(String),
    /// `start_db_with_conf_changes`: replace the base configuration, then start.
    StartWithConfChanges(String),
    /// `get_replication_snapshot` → Trove's snapshot dict: prepare this primary to feed a new
    /// replica.
    ReplicationSnapshot {
        /// Names what the primary keeps for the replica (a PostgreSQL slot).
        replica_id: String,
        /// `snapshot_info.id`, echoed as `dataset.snapshot_id`.
        snapshot_id: Option<Value>,
    },
    /// `attach_replica` / `attach_replication_slave`: replicate from the source described by
    /// a snapshot or replica context.
    AttachReplica(Box<ReplicationSource>),
    /// `detach_replica` → `{"replication_user": name|null}`: stop replicating (for a
    /// failover the server may stay read-only until promoted or attached).
    DetachReplica {
        /// Part of a failover (the replication account is kept).
        for_failover: bool,
    },
    /// `get_replica_context` → how a replica connects to this primary.
    ReplicaContext,
    /// `make_read_only`.
    MakeReadOnly(bool),
    /// `enable_as_master`: make this server a writable primary able to feed replicas.
    EnableAsMaster,
    /// `demote_replication_master`: fence this primary until it is attached as a replica.
    DemoteMaster,
    /// `promote_to_replica_source`: promote this replica to a writable primary.
    PromoteToReplicaSource,
    /// `get_last_txn` → `[source, number]`.
    LastTxn,
    /// `get_node_position` (extension) → `{"applied", "is_replica", "errant"}`: this node's
    /// position and its errant transactions, for choosing a promotion candidate.
    NodePosition,
    /// `wait_for_txn`: wait until this server has applied `txn`.
    WaitForTxn {
        /// The position to reach.
        txn: Position,
        /// How long to wait.
        timeout: std::time::Duration,
    },
    /// `cleanup_source_on_replica_detach`: release what this source keeps for a replica.
    CleanupReplica(String),
    /// `backup_required_for_replication` → `false`: replicas seed themselves.
    BackupRequiredForReplication,
    /// `prepare` with `backup_info`: prepare, restore the backup, then (with a `snapshot`)
    /// replicate; one tracked operation.
    PrepareFromBackup {
        /// What to prepare.
        spec: Box<PrepareSpec>,
        /// The backup to restore.
        backup: BackupRef,
        /// The source to replicate from afterwards.
        source: Option<Box<ReplicationSource>>,
    },
    /// `create_backup` (a tracked operation): stream a backup to the object store, reporting
    /// through the control plane's `update_backup`.
    CreateBackup(Box<BackupOrder>),
    /// `verify_backup` (extension, tracked): authenticate and checksum a stored backup (and
    /// its parents) without restoring.
    VerifyBackup(BackupRef),
    /// `delete_backup` (extension): remove a stored backup (manifest first, then data).
    DeleteBackup(BackupRef),
    /// `restore_backup` (extension, tracked): restore a logical backup into this running
    /// server.
    RestoreBackup {
        /// The backup.
        backup: BackupRef,
        /// Database to restore into (default: the backed-up one).
        database: Option<DbName>,
    },
    /// `pre_create_backup` → the driver's backup metadata (binlog position ...).
    PreCreateBackup,
    /// `post_create_backup` → `{}`.
    PostCreateBackup,
}

/// A stored backup named by the control plane: Trove's `{location, checksum}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRef {
    /// Where it is (see `crate::backup` for the accepted forms).
    pub location: String,
    /// The checksum reported when it was made; checked against the manifest when given.
    pub checksum: Option<String>,
}

/// What `create_backup` is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupOrder {
    /// Trove's backup id (1 to 128 of `[A-Za-z0-9._-]`).
    pub id: String,
    /// Strategy (`pg_basebackup`, `pg_dump`, `mariabackup`, `mariadb_dump`); default: the
    /// driver's physical one, or its logical one when `databases` are named.
    pub strategy: Option<String>,
    /// Databases for a logical backup; empty = all.
    pub databases: Vec<DbName>,
    /// The parent of an incremental backup.
    pub parent: Option<BackupRef>,
    /// Datastore version for the manifest.
    pub datastore_version: Option<String>,
}

/// Longest accepted backup id.
const MAX_BACKUP_ID: usize = 128;

impl Request {
    /// Every method name this agent answers, for docs and the OpenAPI test.
    pub const METHODS: &'static [&'static str] = &[
        "rpc_ping",
        "prepare",
        "create_database",
        "list_databases",
        "delete_database",
        "create_user",
        "get_user",
        "list_users",
        "delete_user",
        "grant_access",
        "revoke_access",
        "list_access",
        "change_passwords",
        "update_attributes",
        "enable_root",
        "enable_root_with_password",
        "disable_root",
        "is_root_enabled",
        "get_root_password",
        "restart",
        "stop_db",
        "start_db",
        "get_filesystem_stats",
        "get_diagnostics",
        "get_hwinfo",
        "get_latest_txn_id",
        "get_position",
        "position_reached",
        "get_status",
        "get_operation",
        "update_overrides",
        "apply_overrides",
        "reset_configuration",
        "start_db_with_conf_changes",
        "get_replication_snapshot",
        "attach_replica",
        "attach_replication_slave",
        "detach_replica",
        "get_replica_context",
        "make_read_only",
        "enable_as_master",
        "demote_replication_master",
        "promote_to_replica_source",
        "get_last_txn",
        "get_node_position",
        "wait_for_txn",
        "cleanup_source_on_replica_detach",
        "backup_required_for_replication",
        "create_backup",
        "verify_backup",
        "delete_backup",
        "restore_backup",
        "pre_create_backup",
        "post_create_backup",
    ];

    /// Parses `method` with its keyword arguments (a JSON object; `null` counts as `{}`).
    pub fn parse(method: &str, args: Value) -> Result<Self, RpcError> {
        let mut args = match args {
            Value::Object(m) => m,
            Value::Null => serde_json::Map::new(),
            other => {
                return Err(RpcError::Malformed(format!(
                    "arguments must be a JSON object, not {}",
                    type_name(&other)
                )));
            }
        };
        let mut a = Args {
            method,
            map: &mut args,
        };
        let req = match method {
            "rpc_ping" => Self::Ping,
            "prepare" => match a.prepare()? {
                (spec, None, None) => Self::Prepare(Box::new(spec)),
                (spec, Some(source), None) => {
                    Self::PrepareReplica(Box::new(spec), Box::new(source))
                }
                (spec, source, Some(backup)) => Self::PrepareFromBackup {
                    spec: Box::new(spec),
                    backup,
                    source: source.map(Box::new),
                },
            },
            "create_database" => {
                let dbs: Vec<WireDatabase> = a.req("databases")?;
                Self::CreateDatabases(a.databases("databases", dbs)?)
            }
            "list_databases" => Self::ListDatabases(a.page()?),
            "delete_database" => {
                let db: WireDatabase = a.req("database")?;
                Self::DeleteDatabase(a.db_name("database._name", db.name)?)
            }
            "create_user" => {
                let users: Vec<WireUser> = a.req("users")?;
                let mut out = Vec::with_capacity(users.len());
                for (i, u) in users.into_iter().enumerate() {
                    out.push(a.user_spec(&format!("users[{i}]"), u)?);
                }
                Self::CreateUsers(out)
            }
            "get_user" => Self::GetUser(a.user_ref("username", "hostname")?),
            "list_users" => Self::ListUsers(a.page()?),
            "delete_user" => {
                let u: WireUser = a.req("user")?;
                let name = a.user_name("user._name", u.name)?;
                let host = a.host("user._host", u.host)?;
                Self::DeleteUser(UserRef { name, host })
            }
            "grant_access" => {
                let user = a.user_ref("username", "hostname")?;
                let names: Vec<String> = a.req("databases")?;
                let mut dbs = Vec::with_capacity(names.len());
                for (i, n) in names.into_iter().enumerate() {
                    dbs.push(a.db_name(&format!("databases[{i}]"), n)?);
                }
                Self::GrantAccess(user, dbs)
            }
            "revoke_access" => {
                let user = a.user_ref("username", "hostname")?;
                let db: String = a.req("database")?;
                Self::RevokeAccess(user, a.db_name("database", db)?)
            }
            "list_access" => Self::ListAccess(a.user_ref("username", "hostname")?),
            "change_passwords" => {
                let users: Vec<WireCredentials> = a.req("users")?;
                let mut out = Vec::with_capacity(users.len());
                for (i, u) in users.into_iter().enumerate() {
                    let f = format!("users[{i}]");
                    let name = a.user_name(&format!("{f}.name"), u.name)?;
                    let host = a.host(&format!("{f}.host"), u.host)?;
                    let password = a.password(&format!("{f}.password"), u.password)?;
                    out.push(PasswordChange {
                        user: UserRef { name, host },
                        password,
                    });
                }
                Self::ChangePasswords(out)
            }
            "update_attributes" => {
                let user = a.user_ref("username", "hostname")?;
                let attrs: WireUserAttrs = a.req("user_attrs")?;
                let update = UserUpdate {
                    name: attrs
                        .name
                        .map(|n| a.user_name("user_attrs.name", n))
                        .transpose()?,
                    host: attrs
                        .host
                        .map(|h| a.host("user_attrs.host", Some(h)))
                        .transpose()?,
                    password: attrs
                        .password
                        .map(|p| a.password("user_attrs.password", p))
                        .transpose()?,
                };
                Self::UpdateAttributes(user, update)
            }
            "enable_root" => Self::EnableRoot(None),
            "enable_root_with_password" => {
                let pw: Option<String> = a.opt("root_password")?;
                Self::EnableRoot(pw.map(|p| a.password("root_password", p)).transpose()?)
            }
            "disable_root" => Self::DisableRoot,
            "is_root_enabled" => Self::IsRootEnabled,
            "get_root_password" => Self::GetRootPassword,
            "restart" => Self::Restart,
            "stop_db" => Self::StopDb,
            "start_db" => Self::StartDb,
            "get_filesystem_stats" => Self::FilesystemStats,
            "get_diagnostics" => Self::Diagnostics,
            "get_hwinfo" => Self::HwInfo,
            "get_latest_txn_id" => Self::LatestTxnId,
            "get_position" => Self::GetPosition,
            "position_reached" => {
                let p: Position = a.req("position")?;
                Self::ReachedPosition(p)
            }
            "get_status" => Self::Status,
            "get_operation" => Self::GetOperation(a.req("id")?),
            "update_overrides" => {
                let overrides: Option<Overrides> = a.opt("overrides")?;
                let remove: Option<bool> = a.opt("remove")?;
                Self::ApplyOverrides {
                    overrides: overrides.unwrap_or_default(),
                    remove: remove.unwrap_or(false),
                }
            }
            "apply_overrides" => Self::ApplyOverrides {
                overrides: a.req("overrides")?,
                remove: false,
            },
            "reset_configuration" => {
                let c: WireConfiguration = a.req("configuration")?;
                Self::ResetConfiguration(c.config_contents)
            }
            "start_db_with_conf_changes" => Self::StartWithConfChanges(a.req("config_contents")?),
            "get_replication_snapshot" => {
                let info: Option<serde_json::Map<String, Value>> = a.opt("snapshot_info")?;
                let info = info.unwrap_or_default();
                let explicit: Option<String> = a.opt("replica_id")?;
                let text = |k: &str| match info.get(k) {
                    Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                };
                // The replica's id, else the snapshot's, else a fresh one.
                let replica_id = explicit
                    .or_else(|| text("replica_id"))
                    .or_else(|| text("id"))
                    .or_else(|| text("name"))
                    .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
                Self::ReplicationSnapshot {
                    replica_id,
                    snapshot_id: info.get("id").cloned(),
                }
            }
            "attach_replica" | "attach_replication_slave" => {
                let key = if method == "attach_replica" {
                    "replica_info"
                } else {
                    "snapshot"
                };
                let info: Value = a.req(key)?;
                Self::AttachReplica(Box::new(replication::parse_source(method, key, &info)?))
            }
            "detach_replica" => Self::DetachReplica {
                for_failover: a.opt("for_failover")?.unwrap_or(false),
            },
            "get_replica_context" => Self::ReplicaContext,
            "make_read_only" => Self::MakeReadOnly(a.req("read_only")?),
            "enable_as_master" => Self::EnableAsMaster,
            "demote_replication_master" => Self::DemoteMaster,
            "promote_to_replica_source" => Self::PromoteToReplicaSource,
            "get_last_txn" => Self::LastTxn,
            "get_node_position" => Self::NodePosition,
            "wait_for_txn" => {
                let txn: String = a.req("txn")?;
                let secs: Option<u64> = a.opt("timeout")?;
                let secs = secs.unwrap_or(WAIT_FOR_TXN_DEFAULT_SECS);
                if !(1..=WAIT_FOR_TXN_MAX_SECS).contains(&secs) {
                    return Err(a.err("timeout", "must be 1 to 86400 seconds"));
                }
                Self::WaitForTxn {
                    txn: replication::parse_txn(method, &txn)?,
                    timeout: std::time::Duration::from_secs(secs),
                }
            }
            "cleanup_source_on_replica_detach" => {
                let explicit: Option<String> = a.opt("replica_id")?;
                let info: Option<Value> = a.opt("replica_info")?;
                let from_info = info.as_ref().and_then(|i| {
                    ["replica_id", "id", "name"]
                        .iter()
                        .find_map(|k| i.get(*k).and_then(Value::as_str).map(str::to_owned))
                });
                match explicit.or(from_info) {
                    Some(id) => Self::CleanupReplica(id),
                    None => return Err(a.err("replica_info", "must name the replica (id)")),
                }
            }
            "backup_required_for_replication" => Self::BackupRequiredForReplication,
            "create_backup" => {
                let info: Value = a.req("backup_info")?;
                Self::CreateBackup(Box::new(a.backup_order(&info)?))
            }
            "verify_backup" => {
                let info: Value = a.req("backup_info")?;
                Self::VerifyBackup(a.backup_ref("backup_info", &info)?)
            }
            "delete_backup" => {
                let info: Value = a.req("backup_info")?;
                Self::DeleteBackup(a.backup_ref("backup_info", &info)?)
            }
            "restore_backup" => {
                let info: Value = a.req("backup_info")?;
                let backup = a.backup_ref("backup_info", &info)?;
                let db: Option<String> = a.opt("database")?;
                Self::RestoreBackup {
                    backup,
                    database: db.map(|d| a.db_name("database", d)).transpose()?,
                }
            }
            "pre_create_backup" => Self::PreCreateBackup,
            "post_create_backup" => Self::PostCreateBackup,
            _ => {
                return Err(RpcError::UnknownMethod {
                    name: method.to_owned(),
                });
            }
        };
        Ok(req)
    }

    /// The lock this request takes.
    pub fn access(&self) -> Access {
        match self {
            Self::Ping
            | Self::FilesystemStats
            | Self::HwInfo
            | Self::Status
            | Self::GetOperation(_)
            | Self::GetRootPassword
            | Self::BackupRequiredForReplication
            | Self::VerifyBackup(_)
            | Self::DeleteBackup(_) => Access::Free,
            Self::ListDatabases(_)
            | Self::GetUser(_)
            | Self::ListUsers(_)
            | Self::ListAccess(_)
            | Self::IsRootEnabled
            | Self::Diagnostics
            | Self::LatestTxnId
            | Self::GetPosition
            | Self::ReachedPosition(_)
            | Self::LastTxn
            | Self::NodePosition
            | Self::WaitForTxn { .. }
            | Self::CreateBackup(_)
            | Self::PreCreateBackup
            | Self::PostCreateBackup => Access::Read,
            _ => Access::Write,
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A Trove schema dict: `{"_name", "_character_set", "_collate"}` (plain keys accepted too).
#[derive(Debug, Deserialize)]
struct WireDatabase {
    #[serde(rename = "_name", alias = "name")]
    name: String,
    #[serde(default, rename = "_character_set", alias = "character_set")]
    character_set: Option<String>,
    #[serde(default, rename = "_collate", alias = "collate")]
    collate: Option<String>,
}

/// A Trove serialized user: `{"_name", "_password", "_host", "_databases", "_is_root"}`.
#[derive(Debug, Deserialize)]
struct WireUser {
    #[serde(rename = "_name", alias = "name")]
    name: String,
    #[serde(default, rename = "_password", alias = "password")]
    password: Option<String>,
    #[serde(default, rename = "_host", alias = "host")]
    host: Option<String>,
    #[serde(default, rename = "_databases", alias = "databases")]
    databases: Vec<WireDatabase>,
}

/// `reset_configuration`'s `{"config_contents": ...}`.
#[derive(Debug, Deserialize)]
struct WireConfiguration {
    config_contents: String,
}

#[derive(Debug, Deserialize)]
struct WireCredentials {
    name: String,
    #[serde(default)]
    host: Option<String>,
    password: String,
}

#[derive(Debug, Deserialize)]
struct WireUserAttrs {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Typed access to a method's keyword arguments, naming the field in every error.
struct Args<'a> {
    method: &'a str,
    map: &'a mut serde_json::Map<String, Value>,
}

impl Args<'_> {
    fn err(&self, field: &str, reason: impl Into<String>) -> RpcError {
        RpcError::invalid_args(self.method, field, reason)
    }

    fn driver_err(&self, e: DriverError) -> RpcError {
        match e {
            DriverError::InvalidArgument { field, reason } => self.err(&field, reason),
            other => RpcError::Driver(other),
        }
    }

    /// A required argument (present and not null).
    fn req<T: DeserializeOwned>(&mut self, key: &str) -> Result<T, RpcError> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Err(self.err(key, "is required")),
            Some(v) => serde_json::from_value(v).map_err(|e| self.err(key, e.to_string())),
        }
    }

    /// An optional argument (absent or null is `None`).
    fn opt<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, RpcError> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| self.err(key, e.to_string())),
        }
    }

    fn db_name(&self, field: &str, s: String) -> Result<DbName, RpcError> {
        DbName::new(s).map_err(|e| self.rename(field, e))
    }

    fn user_name(&self, field: &str, s: String) -> Result<UserName, RpcError> {
        UserName::new(s).map_err(|e| self.rename(field, e))
    }

    fn host(&self, field: &str, s: Option<String>) -> Result<HostPattern, RpcError> {
        match s {
            None => Ok(HostPattern::any()),
            Some(s) => HostPattern::new(s).map_err(|e| self.rename(field, e)),
        }
    }

    fn password(&self, field: &str, s: String) -> Result<Password, RpcError> {
        Password::new(s).map_err(|e| self.rename(field, e))
    }

    /// Re-labels a validation error with the wire path of the argument.
    fn rename(&self, field: &str, e: DriverError) -> RpcError {
        match e {
            DriverError::InvalidArgument { reason, .. } => self.err(field, reason),
            other => self.driver_err(other),
        }
    }

    fn databases(
        &self,
        field: &str,
        dbs: Vec<WireDatabase>,
    ) -> Result<Vec<DatabaseSpec>, RpcError> {
        let mut out = Vec::with_capacity(dbs.len());
        for (i, d) in dbs.into_iter().enumerate() {
            let name = self.db_name(&format!("{field}[{i}]._name"), d.name)?;
            out.push(
                DatabaseSpec::new(name, d.character_set, d.collate)
                    .map_err(|e| self.rename(&format!("{field}[{i}]"), e))?,
            );
        }
        Ok(out)
    }

    fn user_spec(&self, field: &str, u: WireUser) -> Result<UserSpec, RpcError> {
        let name = self.user_name(&format!("{field}._name"), u.name)?;
        let host = self.host(&format!("{field}._host"), u.host)?;
        let password = match u.password {
            Some(p) => self.password(&format!("{field}._password"), p)?,
            None => return Err(self.err(&format!("{field}._password"), "is required")),
        };
        let databases = u
            .databases
            .into_iter()
            .enumerate()
            .map(|(i, d)| self.db_name(&format!("{field}._databases[{i}]._name"), d.name))
            .collect::<Result<_, _>>()?;
        Ok(UserSpec {
            name,
            host,
            password,
            databases,
        })
    }

    fn user_ref(&mut self, name_key: &str, host_key: &str) -> Result<UserRef, RpcError> {
        let name: String = self.req(name_key)?;
        let host: Option<String> = self.opt(host_key)?;
        Ok(UserRef {
            name: self.user_name(name_key, name)?,
            host: self.host(host_key, host)?,
        })
    }

    fn page(&mut self) -> Result<PageRequest, RpcError> {
        let limit: Option<i64> = self.opt("limit")?;
        let limit = match limit {
            None => None,
            Some(l) if (1..=i64::from(u32::MAX)).contains(&l) => u32::try_from(l).ok(),
            Some(_) => return Err(self.err("limit", "must be a positive integer")),
        };
        let marker: Option<String> = self.opt("marker")?;
        let include_marker: Option<bool> = self.opt("include_marker")?;
        Ok(PageRequest {
            limit,
            marker,
            include_marker: include_marker.unwrap_or(false),
        })
    }

    /// `{location, checksum}` at `field` (Trove's `backup_info` or `parent`).
    fn backup_ref(&self, field: &str, v: &Value) -> Result<BackupRef, RpcError> {
        let Value::Object(m) = v else {
            return Err(self.err(field, "must be an object with a location"));
        };
        let location = match m.get("location") {
            Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 2048 => s.clone(),
            Some(Value::String(_)) => {
                return Err(self.err(&format!("{field}.location"), "must be 1 to 2048 characters"));
            }
            None | Some(Value::Null) => {
                return Err(self.err(&format!("{field}.location"), "is required"));
            }
            Some(_) => return Err(self.err(&format!("{field}.location"), "must be a string")),
        };
        let checksum = match m.get("checksum") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s))
                if s.len() <= 128 && s.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Some(s.to_ascii_lowercase())
            }
            Some(_) => {
                return Err(self.err(&format!("{field}.checksum"), "must be a hexadecimal digest"));
            }
        };
        Ok(BackupRef { location, checksum })
    }

    /// `create_backup`'s `backup_info`.
    fn backup_order(&self, info: &Value) -> Result<BackupOrder, RpcError> {
        let Value::Object(m) = info else {
            return Err(self.err("backup_info", "must be an object"));
        };
        let id = match m.get("id") {
            Some(Value::String(s))
                if !s.is_empty()
                    && s.len() <= MAX_BACKUP_ID
                    && !s.starts_with('.')
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) =>
            {
                s.clone()
            }
            None | Some(Value::Null) => return Err(self.err("backup_info.id", "is required")),
            Some(_) => {
                return Err(self.err(
                    "backup_info.id",
                    "must be 1 to 128 of A-Z a-z 0-9 . _ - (not starting with .)",
                ));
            }
        };
        let text = |k: &str| -> Result<Option<String>, RpcError> {
            match m.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.len() <= 255 => Ok(Some(s.clone())),
                Some(_) => Err(self.err(
                    &format!("backup_info.{k}"),
                    "must be a string of at most 255 characters",
                )),
            }
        };
        let strategy = text("strategy")?;
        let datastore_version = text("datastore_version")?;
        let databases = match m.get("databases") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let field = format!("backup_info.databases[{i}]");
                    // Plain names or Trove schema dicts.
                    let name = match item {
                        Value::String(s) => s.clone(),
                        Value::Object(o) => match o.get("_name").or_else(|| o.get("name")) {
                            Some(Value::String(s)) => s.clone(),
                            _ => return Err(self.err(&field, "must name a database")),
                        },
                        _ => return Err(self.err(&field, "must be a database name")),
                    };
                    out.push(self.db_name(&field, name)?);
                }
                out
            }
            Some(_) => return Err(self.err("backup_info.databases", "must be a list")),
        };
        let parent = match m.get("parent") {
            None | Some(Value::Null) => None,
            Some(p) => Some(self.backup_ref("backup_info.parent", p)?),
        };
        Ok(BackupOrder {
            id,
            strategy,
            databases,
            parent,
            datastore_version,
        })
    }

    /// Prepare's arguments, the source to replicate from when a `snapshot` came along, and
    /// the backup to restore when `backup_info` did.
    #[allow(clippy::type_complexity)]
    fn prepare(
        &mut self,
    ) -> Result<(PrepareSpec, Option<ReplicationSource>, Option<BackupRef>), RpcError> {
        let memory_mb: Option<u64> = self.opt("memory_mb")?;
        let dbs: Option<Vec<WireDatabase>> = self.opt("databases")?;
        let databases = self.databases("databases", dbs.unwrap_or_default())?;
        let users: Option<Vec<WireUser>> = self.opt("users")?;
        let mut user_specs = Vec::new();
        for (i, u) in users.unwrap_or_default().into_iter().enumerate() {
            user_specs.push(self.user_spec(&format!("users[{i}]"), u)?);
        }
        let root_password: Option<String> = self.opt("root_password")?;
        let root_password = root_password
            .map(|p| self.password("root_password", p))
            .transpose()?;
        let config_contents: Option<String> = self.opt("config_contents")?;
        let overrides: Option<serde_json::Map<String, Value>> = self.opt("overrides")?;
        let ds_version: Option<String> = self.opt("ds_version")?;
        let backup_info: Option<Value> = self.opt("backup_info")?;
        let backup = backup_info
            .map(|b| self.backup_ref("backup_info", &b))
            .transpose()?;
        let snapshot: Option<Value> = self.opt("snapshot")?;
        let source = snapshot
            .map(|s| replication::parse_source(self.method, "snapshot", &s))
            .transpose()?;
        let spec = PrepareSpec {
            memory_mb,
            databases,
            users: user_specs,
            root_password,
            config_contents,
            overrides: overrides.filter(|o| !o.is_empty()),
            ds_version,
        };
        Ok((spec, source, backup))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unknown_method_is_named() {
        let e = Request::parse("get_flux", json!({})).unwrap_err();
        assert!(matches!(&e, RpcError::UnknownMethod { name } if name == "get_flux"));
        assert_eq!(
            e.to_string(),
            "Endpoint does not support RPC method get_flux"
        );
    }

    #[test]
    fn args_must_be_an_object() {
        let e = Request::parse("rpc_ping", json!([1])).unwrap_err();
        assert!(matches!(e, RpcError::Malformed(_)), "{e}");
        assert!(matches!(
            Request::parse("rpc_ping", Value::Null),
            Ok(Request::Ping)
        ));
    }

    #[test]
    fn create_database_trove_shape() {
        let r = Request::parse(
            "create_database",
            json!({"databases": [{"_name": "app", "_character_set": "UTF8", "_collate": null}]}),
        )
        .unwrap();
        let Request::CreateDatabases(dbs) = r else {
            panic!("wrong variant")
        };
        assert_eq!(dbs[0].name.as_str(), "app");
        assert_eq!(dbs[0].character_set.as_deref(), Some("UTF8"));
    }

    #[test]
    fn bad_identifier_names_the_field() {
        let e = Request::parse(
            "create_database",
            json!({"databases": [{"_name": "ok"}, {"_name": "x'; DROP"}]}),
        )
        .unwrap_err();
        match e {
            RpcError::InvalidArgs { field, .. } => assert_eq!(field, "databases[1]._name"),
            other => panic!("{other:?}"),
        }
        let e =
            Request::parse("get_user", json!({"username": "a`b", "hostname": "%"})).unwrap_err();
        assert!(
            matches!(e, RpcError::InvalidArgs { ref field, .. } if field == "username"),
            "{e}"
        );
    }

    #[test]
    fn missing_and_mistyped_args() {
        let e = Request::parse("revoke_access", json!({"username": "u"})).unwrap_err();
        assert!(
            matches!(e, RpcError::InvalidArgs { ref field, .. } if field == "database"),
            "{e}"
        );
        let e = Request::parse("list_users", json!({"limit": "ten"})).unwrap_err();
        assert!(
            matches!(e, RpcError::InvalidArgs { ref field, .. } if field == "limit"),
            "{e}"
        );
        let e = Request::parse("list_users", json!({"limit": 0})).unwrap_err();
        assert!(
            matches!(e, RpcError::InvalidArgs { ref field, .. } if field == "limit"),
            "{e}"
        );
    }

    #[test]
    fn config_methods() {
        let r = Request::parse(
            "update_overrides",
            json!({"overrides": {"max_connections": 200}, "remove": false}),
        )
        .unwrap();
        assert!(
            matches!(r, Request::ApplyOverrides { ref overrides, remove: false } if overrides.len() == 1)
        );
        let r =
            Request::parse("update_overrides", json!({"overrides": {}, "remove": true})).unwrap();
        assert!(matches!(r, Request::ApplyOverrides { remove: true, .. }));
        let e = Request::parse("apply_overrides", json!({"overrides": [1]})).unwrap_err();
        assert!(
            matches!(e, RpcError::InvalidArgs { ref field, .. } if field == "overrides"),
            "{e}"
        );
        let r = Request::parse(
            "reset_configuration",
            json!({"configuration": {"config_contents": "x=1"}}),
        )
        .unwrap();
        assert!(matches!(r, Request::ResetConfiguration(ref c) if c == "x=1"));
    }

    #[test]
    fn replication_methods() {
        let info = json!({"master": {"host": "127.0.0.1", "port": 5433},
            "replica_conf": {"replication_user": {"name": "replicator", "password": "pw-1"},
                             "log_position": {}, "slot_name": "ga_r1"}});
        let r = Request::parse(
            "attach_replica",
            json!({"replica_info": info, "restart": true}),
        )
        .unwrap();
        let Request::AttachReplica(src) = r else {
            panic!("wrong variant")
        };
        assert_eq!((src.host.as_str(), src.port), ("127.0.0.1", 5433));
        assert_eq!(src.extra["slot_name"], "ga_r1");
        assert!(matches!(
            Request::parse("attach_replication_slave", json!({"snapshot": info})),
            Ok(Request::AttachReplica(_))
        ));
        let e =
            Request::parse("attach_replica", json!({"replica_info": {"master": {}}})).unwrap_err();
        assert!(
            matches!(e, RpcError::InvalidArgs { ref field, .. } if field == "replica_info.master.host"),
            "{e}"
        );
        let r = Request::parse(
            "get_replication_snapshot",
            json!({"snapshot_info": {"id": "b-1", "replica_number": 1}, "replica_source_config": ""}),
        )
        .unwrap();
        assert!(
            matches!(r, Request::ReplicationSnapshot { ref replica_id, .. } if replica_id == "b-1")
        );
        let r = Request::parse("get_replication_snapshot", json!({"replica_id": "r2"})).unwrap();
        assert!(
            matches!(r, Request::ReplicationSnapshot { ref replica_id, .. } if replica_id == "r2")
        );
        let r = Request::parse("wait_for_txn", json!({"txn": "0/3000060", "timeout": 5})).unwrap();
        assert!(matches!(
            r,
            Request::WaitForTxn { txn: Position::Lsn(_), timeout } if timeout.as_secs() == 5
        ));
        assert_eq!(r.access(), Access::Read);
        for bad in [json!({"txn": "0/zz"}), json!({"txn": "0/1", "timeout": 0})] {
            assert!(matches!(
                Request::parse("wait_for_txn", bad),
                Err(RpcError::InvalidArgs { .. })
            ));
        }
        assert!(matches!(
            Request::parse("detach_replica", json!({"for_failover": true})),
            Ok(Request::DetachReplica { for_failover: true })
        ));
        assert!(matches!(
            Request::parse("make_read_only", json!({"read_only": false})),
            Ok(Request::MakeReadOnly(false))
        ));
        assert!(matches!(
            Request::parse("cleanup_source_on_replica_detach", json!({"replica_info": {"id": "r1"}})),
            Ok(Request::CleanupReplica(ref id)) if id == "r1"
        ));
        assert_eq!(
            Request::parse("backup_required_for_replication", json!({}))
                .unwrap()
                .access(),
            Access::Free
        );
        assert_eq!(
            Request::parse("promote_to_replica_source", json!({}))
                .unwrap()
                .access(),
            Access::Write
        );
        // The password never shows in a request's debug form.
        let r = Request::parse("attach_replica", json!({"replica_info": info})).unwrap();
        assert!(!format!("{r:?}").contains("pw-1"));
    }

    #[test]
    fn unknown_kwargs_are_ignored() {
        assert!(matches!(
            Request::parse("stop_db", json!({"do_not_start_on_reboot": true})),
            Ok(Request::StopDb)
        ));
    }

    #[test]
    fn create_user_full_shape() {
        let r = Request::parse(
            "create_user",
            json!({"users": [{"_name": "u1", "_password": "pw", "_host": "%",
                "_databases": [{"_name": "d1", "_character_set": null, "_collate": null}], "_is_root": false}]}),
        )
        .unwrap();
        let Request::CreateUsers(users) = r else {
            panic!("wrong variant")
        };
        assert_eq!(users[0].name.as_str(), "u1");
        assert_eq!(users[0].databases[0].as_str(), "d1");
        let e = Request::parse("create_user", json!({"users": [{"_name": "u1"}]})).unwrap_err();
        assert!(
            matches!(e, RpcError::InvalidArgs { ref field, .. } if field == "users[0]._password")
        );
    }

    #[test]
    fn prepare_shape() {
        let r = Request::parse(
            "prepare",
            json!({"packages": null, "databases": [{"_name": "db1"}], "memory_mb": 2048,
                "users": [], "device_path": "/dev/vdb", "mount_point": "/var/lib/postgresql",
                "backup_info": null, "config_contents": null, "root_password": null,
                "overrides": {}, "cluster_config": null, "snapshot": null, "modules": null,
                "ds_version": "15"}),
        )
        .unwrap();
        let Request::Prepare(spec) = r else {
            panic!("wrong variant")
        };
        assert_eq!(spec.memory_mb, Some(2048));
        assert_eq!(spec.databases.len(), 1);
        assert!(spec.overrides.is_none());
    }

    #[test]
    fn prepare_with_a_snapshot_prepares_a_replica() {
        let snap = json!({"master": {"host": "127.0.0.1", "port": 5433},
            "replica_conf": {"replication_user": {"name": "replicator", "password": "pw-1"},
                             "slot_name": "ga_r1"}});
        let r = Request::parse("prepare", json!({"memory_mb": 512, "snapshot": snap})).unwrap();
        let Request::PrepareReplica(spec, source) = r else {
            panic!("wrong variant")
        };
        assert_eq!(spec.memory_mb, Some(512));
        assert_eq!(source.port, 5433);
        let e = Request::parse("prepare", json!({"snapshot": {"master": {}}})).unwrap_err();
        assert!(
            matches!(e, RpcError::InvalidArgs { ref field, .. } if field == "snapshot.master.host"),
            "{e}"
        );
    }

    #[test]
    fn backup_methods() {
        let r = Request::parse(
            "create_backup",
            json!({"backup_info": {"id": "b-1", "name": "nightly", "backup_type": "full",
                "parent": {"location": "s3://database_backups/i/p.manifest.json", "checksum": "ABCD"},
                "datastore": "mariadb", "datastore_version": "10.11", "swift_url": "http://x",
                "databases": ["app", {"_name": "crm"}]}}),
        )
        .unwrap();
        assert_eq!(r.access(), Access::Read);
        let Request::CreateBackup(o) = r else {
            panic!("wrong variant")
        };
        assert_eq!(o.id, "b-1");
        assert_eq!(o.databases.len(), 2);
        assert_eq!(o.parent.as_ref().unwrap().checksum.as_deref(), Some("abcd"));
        for (bad, field) in [
            (json!({"backup_info": {"id": "../x"}}), "backup_info.id"),
            (json!({"backup_info": {}}), "backup_info.id"),
            (
                json!({"backup_info": {"id": "b", "databases": ["x'; DROP"]}}),
                "backup_info.databases[0]",
            ),
            (
                json!({"backup_info": {"id": "b", "parent": {"checksum": "ab"}}}),
                "backup_info.parent.location",
            ),
            (
                json!({"backup_info": {"id": "b", "parent": {"location": "x", "checksum": "zz"}}}),
                "backup_info.parent.checksum",
            ),
        ] {
            match Request::parse("create_backup", bad) {
                Err(RpcError::InvalidArgs { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{other:?}"),
            }
        }
        let r = Request::parse(
            "prepare",
            json!({"memory_mb": 512, "backup_info": {"id": "b-1", "location": "s3://c/k", "checksum": null}}),
        )
        .unwrap();
        assert!(
            matches!(r, Request::PrepareFromBackup { ref backup, source: None, .. } if backup.location == "s3://c/k")
        );
        let e = Request::parse("prepare", json!({"backup_info": {"id": "b"}})).unwrap_err();
        assert!(
            matches!(e, RpcError::InvalidArgs { ref field, .. } if field == "backup_info.location"),
            "{e}"
        );
        assert_eq!(
            Request::parse("verify_backup", json!({"backup_info": {"location": "k"}}))
                .unwrap()
                .access(),
            Access::Free
        );
        let e = Request::parse(
            "restore_backup",
            json!({"backup_info": {"location": "k"}, "database": "bad`name"}),
        )
        .unwrap_err();
        assert!(
            matches!(e, RpcError::InvalidArgs { ref field, .. } if field == "database"),
            "{e}"
        );
    }

    #[test]
    fn every_listed_method_parses_or_names_a_field() {
        for m in Request::METHODS {
            match Request::parse(m, json!({})) {
                Ok(_) | Err(RpcError::InvalidArgs { .. }) => {}
                Err(e) => panic!("{m}: {e}"),
            }
        }
    }
}

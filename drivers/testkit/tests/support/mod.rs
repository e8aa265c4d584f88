//! An in-memory driver and probe that follow the driver API's contracts, so the kit's own
//! logic (gating, pagination walks, probe checks) is tested without a real server.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use guest_agent_api::admin::{
    DatabaseSpec, Page, PageRequest, PasswordChange, RootCredentials, UserInfo, UserRef, UserSpec,
    UserUpdate,
};
use guest_agent_api::config::{ApplyOutcome, ConfigValue, Overrides, ValidatedOverrides};
use guest_agent_api::health::HealthDetails;
use guest_agent_api::ident::{ConfigKey, DbName, HostPattern, Password, UserName};
use guest_agent_api::lifecycle::PrepareSpec;
use guest_agent_api::position::Lsn;
use guest_agent_api::{
    Admin, BackupHooks, Capabilities, ConfigApply, DatastoreStatus, Driver, DriverInfo, Error,
    Health, Lifecycle, OpContext, Position, Replication, Result, StopMode,
};
use guest_agent_testkit::{ConfigSample, Harness, Probe, SampleSetting, async_trait};

const NAME: &str = "mock";
const ROOT: &str = "root";

#[derive(Debug, Default)]
struct State {
    running: bool,
    crashed: bool,
    dbs: BTreeSet<String>,
    /// name -> (password, databases)
    users: BTreeMap<String, (String, BTreeSet<String>)>,
    root: Option<String>,
    pos: u64,
    /// The managed override set.
    overrides: BTreeMap<String, i64>,
    /// Values in effect.
    settings: BTreeMap<String, i64>,
    /// Values waiting for a restart.
    pending: BTreeMap<String, i64>,
}

/// The mock's configuration parameters: name and whether a change needs a restart.
const PARAMS: &[(&str, bool)] = &[("mock_dynamic", false), ("mock_restart", true)];

#[derive(Debug, Clone, Default)]
struct Shared(Arc<Mutex<State>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }
}

/// A deliberate defect, to prove the kit notices it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// Undeclared operations succeed instead of saying NotSupported.
    UnsupportedOk,
    /// `drop_user` reports success and keeps the user.
    DropUserNoop,
    /// `revoke_access` reports success and keeps the grant.
    RevokeNoop,
    /// `change_passwords` reports success and keeps the old password.
    PasswordUnchanged,
    /// A killed server is reported as shut down.
    CrashLooksLikeShutdown,
    /// Pagination treats every marker as included.
    MarkerAlwaysIncluded,
    /// The position never moves.
    PositionStuck,
    /// `list_users` shows root.
    ListsRoot,
    /// A second `prepare` succeeds.
    PrepareTwice,
    /// A restart-required parameter is reported as applied at once.
    RestartUnreported,
}

#[derive(Debug)]
pub struct MockDriver {
    info: DriverInfo,
    state: Shared,
    bug: Option<Bug>,
}

fn unsupported(operation: &'static str) -> Error {
    Error::NotSupported {
        operation,
        driver: NAME,
    }
}

impl MockDriver {
    fn caps(&self) -> Capabilities {
        self.info.capabilities
    }

    fn declared(&self, flag: bool) -> bool {
        flag || self.bug == Some(Bug::UnsupportedOk)
    }

    fn need(&self, flag: bool, op: &'static str) -> Result<MutexGuard<'_, State>> {
        if !flag && self.bug != Some(Bug::UnsupportedOk) {
            return Err(unsupported(op));
        }
        let st = self.state.lock();
        if !st.running {
            return Err(Error::Unavailable {
                message: "server down".into(),
                source: None,
            });
        }
        Ok(st)
    }
}

fn info_of(name: &str, st: &State) -> Option<UserInfo> {
    let (_, dbs) = st.users.get(name)?;
    Some(UserInfo {
        name: UserName::new(name).unwrap(),
        host: HostPattern::any(),
        databases: dbs
            .iter()
            .map(|d| DatabaseSpec::named(DbName::new(d.as_str()).unwrap()))
            .collect(),
    })
}

#[async_trait]
impl Admin for MockDriver {
    async fn list_databases(
        &self,
        _: &OpContext,
        page: &PageRequest,
    ) -> Result<Page<DatabaseSpec>> {
        let st = self.need(self.caps().databases, "list_databases")?;
        let items = st
            .dbs
            .iter()
            .map(|d| DatabaseSpec::named(DbName::new(d.as_str()).unwrap()))
            .collect();
        let mut page = page.clone();
        page.include_marker |= self.bug == Some(Bug::MarkerAlwaysIncluded);
        Ok(Page::from_sorted(items, |d| d.name.to_string(), &page))
    }

    async fn create_databases(&self, _: &OpContext, dbs: &[DatabaseSpec]) -> Result<()> {
        let mut st = self.need(self.caps().databases, "create_databases")?;
        let charset = dbs
            .iter()
            .any(|d| d.character_set.is_some() || d.collate.is_some());
        if charset && !self.declared(self.caps().database_charset) {
            return Err(unsupported("create_databases"));
        }
        for d in dbs {
            st.dbs.insert(d.name.to_string());
        }
        Ok(())
    }

    async fn drop_database(&self, _: &OpContext, name: &DbName) -> Result<()> {
        let mut st = self.need(self.caps().databases, "drop_database")?;
        st.dbs.remove(name.as_str());
        for (_, dbs) in st.users.values_mut() {
            dbs.remove(name.as_str());
        }
        Ok(())
    }

    async fn create_users(&self, _: &OpContext, users: &[UserSpec]) -> Result<()> {
        let mut st = self.need(self.caps().users, "create_users")?;
        for u in users {
            if st.users.contains_key(u.name.as_str()) {
                return Err(Error::AlreadyExists {
                    what: "user",
                    name: u.name.to_string(),
                });
            }
            let dbs = u.databases.iter().map(ToString::to_string).collect();
            st.users
                .insert(u.name.to_string(), (u.password.expose().to_owned(), dbs));
        }
        Ok(())
    }

    async fn get_user(&self, _: &OpContext, user: &UserRef) -> Result<Option<UserInfo>> {
        let st = self.need(self.caps().users, "get_user")?;
        Ok(info_of(user.name.as_str(), &st))
    }

    async fn list_users(&self, _: &OpContext, page: &PageRequest) -> Result<Page<UserInfo>> {
        let st = self.need(self.caps().users, "list_users")?;
        let mut items: Vec<UserInfo> = st.users.keys().filter_map(|n| info_of(n, &st)).collect();
        if self.bug == Some(Bug::ListsRoot) && st.root.is_some() {
            items.push(UserInfo {
                name: UserName::new(ROOT)?,
                host: HostPattern::any(),
                databases: Vec::new(),
            });
            items.sort_by_key(|u| u.name.clone());
        }
        Ok(Page::from_sorted(
            items,
            |u| format!("{}@{}", u.name, u.host),
            page,
        ))
    }

    async fn drop_user(&self, _: &OpContext, user: &UserRef) -> Result<()> {
        let mut st = self.need(self.caps().users, "drop_user")?;
        if self.bug == Some(Bug::DropUserNoop) {
            return Ok(());
        }
        st.users.remove(user.name.as_str());
        Ok(())
    }

    async fn change_passwords(&self, _: &OpContext, changes: &[PasswordChange]) -> Result<()> {
        let mut st = self.need(self.caps().users, "change_passwords")?;
        for c in changes {
            let Some((pw, _)) = st.users.get_mut(c.user.name.as_str()) else {
                return Err(Error::NotFound {
                    what: "user",
                    name: c.user.name.to_string(),
                });
            };
            if self.bug != Some(Bug::PasswordUnchanged) {
                *pw = c.password.expose().to_owned();
            }
        }
        Ok(())
    }

    async fn update_attributes(
        &self,
        _: &OpContext,
        user: &UserRef,
        update: &UserUpdate,
    ) -> Result<()> {
        let caps = self.caps();
        let mut st = self.need(caps.users, "update_attributes")?;
        if update.name.is_some() && !caps.user_rename {
            return Err(unsupported("update_attributes"));
        }
        let Some(mut entry) = st.users.remove(user.name.as_str()) else {
            return Err(Error::NotFound {
                what: "user",
                name: user.name.to_string(),
            });
        };
        if let Some(pw) = &update.password {
            entry.0 = pw.expose().to_owned();
        }
        let name = update.name.as_ref().unwrap_or(&user.name).to_string();
        st.users.insert(name, entry);
        Ok(())
    }

    async fn grant_access(&self, _: &OpContext, user: &UserRef, dbs: &[DbName]) -> Result<()> {
        let mut st = self.need(self.caps().grants, "grant_access")?;
        if let Some(d) = dbs.iter().find(|d| !st.dbs.contains(d.as_str())) {
            return Err(Error::NotFound {
                what: "database",
                name: d.to_string(),
            });
        }
        let Some((_, access)) = st.users.get_mut(user.name.as_str()) else {
            return Err(Error::NotFound {
                what: "user",
                name: user.name.to_string(),
            });
        };
        access.extend(dbs.iter().map(ToString::to_string));
        Ok(())
    }

    async fn revoke_access(&self, _: &OpContext, user: &UserRef, db: &DbName) -> Result<()> {
        let mut st = self.need(self.caps().grants, "revoke_access")?;
        if self.bug == Some(Bug::RevokeNoop) {
            return Ok(());
        }
        if let Some((_, access)) = st.users.get_mut(user.name.as_str()) {
            access.remove(db.as_str());
        }
        Ok(())
    }

    async fn list_access(&self, _: &OpContext, user: &UserRef) -> Result<Vec<DatabaseSpec>> {
        let st = self.need(self.caps().grants, "list_access")?;
        Ok(info_of(user.name.as_str(), &st)
            .map(|i| i.databases)
            .unwrap_or_default())
    }

    async fn enable_root(
        &self,
        _: &OpContext,
        password: Option<Password>,
    ) -> Result<RootCredentials> {
        let mut st = self.need(self.caps().root, "enable_root")?;
        let password = match password {
            Some(p) => p,
            None => Password::generate(32)?,
        };
        st.root = Some(password.expose().to_owned());
        Ok(RootCredentials {
            name: UserName::new(ROOT)?,
            password,
        })
    }

    async fn disable_root(&self, _: &OpContext) -> Result<()> {
        let mut st = self.need(self.caps().root, "disable_root")?;
        st.root = None;
        Ok(())
    }

    async fn is_root_enabled(&self, _: &OpContext) -> Result<bool> {
        let st = self.need(self.caps().root, "is_root_enabled")?;
        Ok(st.root.is_some())
    }
}

#[async_trait]
impl Lifecycle for MockDriver {
    async fn prepare(&self, _: &OpContext, _: &PrepareSpec) -> Result<()> {
        if self.bug == Some(Bug::PrepareTwice) {
            return Ok(());
        }
        Err(Error::InvalidState {
            operation: "prepare",
            reason: "the data directory is initialised".into(),
        })
    }

    async fn start(&self, _: &OpContext) -> Result<()> {
        let mut st = self.state.lock();
        st.running = true;
        st.crashed = false;
        // A start reads the whole override set, restart-only values included.
        let pending = std::mem::take(&mut st.pending);
        st.settings.extend(pending);
        Ok(())
    }

    async fn stop(&self, _: &OpContext, _: StopMode) -> Result<()> {
        let mut st = self.state.lock();
        st.running = false;
        st.crashed = false;
        Ok(())
    }

    async fn restart(&self, ctx: &OpContext) -> Result<()> {
        self.stop(ctx, StopMode::Fast).await?;
        self.start(ctx).await
    }

    async fn status(&self, _: &OpContext) -> DatastoreStatus {
        let st = self.state.lock();
        if st.running {
            DatastoreStatus::Healthy
        } else if st.crashed && self.bug != Some(Bug::CrashLooksLikeShutdown) {
            DatastoreStatus::Crashed
        } else {
            DatastoreStatus::Shutdown
        }
    }
}

#[async_trait]
impl Health for MockDriver {
    async fn liveness(&self, _: &OpContext) -> Result<()> {
        self.need(true, "liveness").map(drop)
    }

    async fn readiness(&self, _: &OpContext) -> Result<()> {
        self.need(true, "readiness").map(drop)
    }

    async fn details(&self, _: &OpContext) -> Result<HealthDetails> {
        drop(self.need(true, "details")?);
        Ok(HealthDetails {
            version: Some("mock 1.0".into()),
            connections: Some(1),
            max_connections: Some(100),
            ..HealthDetails::default()
        })
    }

    async fn position(&self, _: &OpContext) -> Result<Position> {
        let st = self.need(true, "position")?;
        if self.bug == Some(Bug::PositionStuck) {
            return Ok(Position::Lsn(Lsn(1)));
        }
        Ok(Position::Lsn(Lsn(st.pos)))
    }

    async fn filesystem_extra(
        &self,
        _: &OpContext,
    ) -> Result<serde_json::Map<String, serde_json::Value>> {
        Ok(serde_json::Map::new())
    }
}

#[async_trait]
impl ConfigApply for MockDriver {
    fn validate(&self, overrides: &Overrides) -> Result<ValidatedOverrides> {
        if !self.declared(self.caps().config) {
            return Err(unsupported("validate"));
        }
        let mut out = ValidatedOverrides::default();
        for (k, v) in overrides {
            let key = ConfigKey::new(k.as_str())?;
            let Some((_, restart)) = PARAMS.iter().find(|(n, _)| *n == k) else {
                return Err(Error::InvalidConfig {
                    key: k.clone(),
                    reason: "unknown parameter".into(),
                });
            };
            let value = v.as_i64().ok_or_else(|| Error::InvalidConfig {
                key: k.clone(),
                reason: "integers only".into(),
            })?;
            if *restart {
                out.restart_required.push(key.clone());
            }
            out.values.insert(key, ConfigValue::Int(value));
        }
        Ok(out)
    }

    async fn apply(&self, _: &OpContext, v: &ValidatedOverrides) -> Result<ApplyOutcome> {
        if !self.declared(self.caps().config) {
            return Err(unsupported("apply"));
        }
        let mut st = self.state.lock();
        let mut out = ApplyOutcome::default();
        st.overrides.clear();
        for (k, value) in &v.values {
            let ConfigValue::Int(i) = value else {
                return Err(Error::Internal("integers only".into()));
            };
            let restart = PARAMS.iter().any(|(n, r)| *n == k.as_str() && *r);
            st.overrides.insert(k.to_string(), *i);
            if restart && self.bug != Some(Bug::RestartUnreported) {
                st.pending.insert(k.to_string(), *i);
                out.restart_required.push(k.to_string());
            } else {
                st.settings.insert(k.to_string(), *i);
                out.dynamic_applied.push(k.to_string());
            }
        }
        Ok(out)
    }

    async fn remove_overrides(&self, ctx: &OpContext) -> Result<ApplyOutcome> {
        if !self.declared(self.caps().config) {
            return Err(unsupported("remove_overrides"));
        }
        self.apply(ctx, &ValidatedOverrides::default()).await
    }

    async fn reset_base(&self, _: &OpContext, _: &str) -> Result<()> {
        Err(unsupported("reset_base"))
    }

    async fn current(&self, _: &OpContext) -> Result<BTreeMap<String, String>> {
        if !self.declared(self.caps().config) {
            return Err(unsupported("current"));
        }
        let st = self.state.lock();
        Ok(st
            .overrides
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect())
    }
}

impl Driver for MockDriver {
    fn info(&self) -> &DriverInfo {
        &self.info
    }
    fn lifecycle(&self) -> &dyn Lifecycle {
        self
    }
    fn admin(&self) -> &dyn Admin {
        self
    }
    fn config(&self) -> &dyn ConfigApply {
        self
    }
    fn health(&self) -> &dyn Health {
        self
    }
    fn replication(&self) -> Option<&dyn Replication> {
        None
    }
    fn backup(&self) -> Option<&dyn BackupHooks> {
        None
    }
}

/// Reads the same state as the driver; a stand-in for a raw client.
pub struct MockProbe {
    state: Shared,
}

#[async_trait]
impl Probe for MockProbe {
    async fn can_login(&self, user: &str, password: &str, database: Option<&str>) -> bool {
        let st = self.state.lock();
        if !st.running {
            return false;
        }
        if user == ROOT {
            return st.root.as_deref() == Some(password);
        }
        match st.users.get(user) {
            Some((pw, dbs)) => pw == password && database.is_none_or(|d| dbs.contains(d)),
            None => false,
        }
    }

    async fn can_write(&self, user: &str, password: &str, database: &str) -> bool {
        self.can_login(user, password, Some(database)).await
    }

    async fn database_exists(&self, name: &str) -> bool {
        let st = self.state.lock();
        st.running && st.dbs.contains(name)
    }

    async fn user_exists(&self, name: &str, _host: &str) -> bool {
        let st = self.state.lock();
        st.running && (st.users.contains_key(name) || (name == ROOT && st.root.is_some()))
    }

    async fn is_superuser(&self, name: &str, _host: &str) -> bool {
        let st = self.state.lock();
        st.running && name == ROOT && st.root.is_some()
    }

    async fn write_something(&self) -> Result<(), String> {
        let mut st = self.state.lock();
        if !st.running {
            return Err("server down".into());
        }
        st.pos += 1;
        Ok(())
    }

    async fn setting(&self, name: &str) -> Result<String, String> {
        let st = self.state.lock();
        if !st.running {
            return Err("server down".into());
        }
        Ok(st.settings.get(name).copied().unwrap_or(0).to_string())
    }

    async fn kill_server(&self) -> Result<(), String> {
        let mut st = self.state.lock();
        st.running = false;
        st.crashed = true;
        Ok(())
    }
}

fn harness(capabilities: Capabilities, bug: Option<Bug>) -> Harness {
    let state = Shared::default();
    state.lock().running = true;
    state.lock().pos = 0x1000;
    let driver = MockDriver {
        info: DriverInfo {
            name: NAME,
            managers: &["mock"],
            capabilities,
            data_dir: PathBuf::from("/nonexistent"),
        },
        state: state.clone(),
        bug,
    };
    Harness::new(
        Arc::new(driver),
        Box::new(MockProbe { state }),
        Box::new(()),
    )
    .with_config_sample(ConfigSample {
        dynamic: SampleSetting {
            key: "mock_dynamic",
            value: serde_json::json!(7),
            shown: "7",
        },
        restart: SampleSetting {
            key: "mock_restart",
            value: serde_json::json!(9),
            shown: "9",
        },
    })
}

/// Every admin capability declared, plus configuration.
pub async fn full() -> Harness {
    harness(full_caps(), None)
}

fn full_caps() -> Capabilities {
    let mut c = Capabilities::none();
    c.databases = true;
    c.users = true;
    c.user_rename = true;
    c.grants = true;
    c.root = true;
    c.config = true;
    c
}

/// Nothing optional declared: every gated call must say NotSupported.
pub async fn bare() -> Harness {
    harness(Capabilities::none(), None)
}

/// A driver with every capability and `bug`; with [`Bug::UnsupportedOk`], none declared.
pub fn buggy(bug: Bug) -> Harness {
    let caps = if bug == Bug::UnsupportedOk {
        Capabilities::none()
    } else {
        full_caps()
    };
    harness(caps, Some(bug))
}

//! Physical streaming replication: a replication role and one physical slot per replica on
//! the primary, replicas seeded with `pg_basebackup` (or brought back in line with
//! `pg_rewind` when they share the primary's history), promotion with
//! `pg_promote(wait => true)`, waiting for a replay position, and each node's own position.
//!
//! Passwords never reach argv, logs or errors: tools read the replication password from a
//! short-lived 0600 password file named by `PGPASSFILE`, and the replica's walreceiver from a
//! 0600 password file named by `passfile` in `primary_conninfo`.
//!
//! Two writable primaries never run at once: `demote` stops the server and leaves
//! `standby.signal`, so whatever starts it next brings it up read-only, in recovery; `attach`
//! rewinds it onto the new primary's history before starting it as a replica.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use guest_agent_api::fsutil::{Owner, RemoveOnDrop, io_err, log_tail, write_file};
use guest_agent_api::ident::{Password, UserName};
use guest_agent_api::position::{Lsn, Position};
use guest_agent_api::replication::{
    DetachOutcome, NodePosition, ReplicaSnapshot, Replication, ReplicationSource,
};
use guest_agent_api::runtime::CommandSpec;
use guest_agent_api::{Error, Lifecycle, OpContext, Result, StopMode};
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};

use crate::config::{conf_string, read_optional};
use crate::error::{PgError, Subject, stmt};
use crate::position::parse_position;
use crate::sql::{password_literal, quote_ident, read_admin_password};
use crate::{
    BASE_CONF_FILE, MANAGED_CONF_FILE, OVERRIDES_CONF_FILE, PgDriver, REPLICATION_PASSWORD_FILE,
    REPLICATION_USER, ROLE_CONF_FILE,
};

/// Prefix of the physical replication slots the driver creates.
const SLOT_PREFIX: &str = "ga_";
/// Longest slot name PostgreSQL accepts.
const MAX_SLOT_LEN: usize = 63;
/// Length of the generated replication password.
const REPLICATION_PASSWORD_LEN: usize = 32;
/// The walreceiver's password file, in the data directory (mode 0600).
pub(crate) const PASSFILE: &str = "guest-agent-replication.pgpass";
/// The tools' short-lived password file, in the run directory.
const TOOL_PASSFILE: &str = ".replication.pgpass";
/// This node's own slot name when it attaches without being told one, in the state directory.
const NODE_SLOT_FILE: &str = "postgres-replication.slot";
/// How long `attach` waits for the walreceiver to stream after the start.
const STREAM_WAIT: Duration = Duration::from_secs(120);
/// Bound on `pg_promote(wait => true)`, in seconds.
const PROMOTE_WAIT_SECS: i32 = 60;
/// Pause between two looks at a replica's progress.
const POLL: Duration = Duration::from_millis(20);
/// Bound on connecting to the source.
const SOURCE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on `pg_rewind`.
const REWIND_TIMEOUT: Duration = Duration::from_secs(3600);
/// Files that describe this server rather than its data: kept across seeding and rewinding,
/// which copy the source's.
pub(crate) const LOCAL_FILES: &[&str] = &[
    "postgresql.conf",
    "postgresql.auto.conf",
    "pg_hba.conf",
    "pg_ident.conf",
    MANAGED_CONF_FILE,
    BASE_CONF_FILE,
    OVERRIDES_CONF_FILE,
];
/// Local files by name, `None` for one that did not exist.
pub(crate) type KeptFiles = Vec<(&'static str, Option<Vec<u8>>)>;
/// Signal files that start the server in recovery.
pub(crate) const STANDBY_SIGNAL: &str = "standby.signal";
pub(crate) const RECOVERY_SIGNAL: &str = "recovery.signal";
/// The function grants `pg_rewind` needs on the source (instead of superuser), plus reading
/// the source's system identifier.
const REWIND_GRANTS: &str = "GRANT EXECUTE ON FUNCTION \
     pg_catalog.pg_ls_dir(text, boolean, boolean), \
     pg_catalog.pg_stat_file(text, boolean), \
     pg_catalog.pg_read_binary_file(text), \
     pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean), \
     pg_catalog.pg_control_system() TO ";

/// The slot name for replica `replica_id`: `ga_` and the id folded to `[a-z0-9_]`.
pub(crate) fn slot_name(replica_id: &str) -> Result<String> {
    if replica_id.trim().is_empty() {
        return Err(Error::invalid("replica_id", "must not be empty"));
    }
    let mut s = String::from(SLOT_PREFIX);
    s.extend(replica_id.chars().map(|c| {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '_'
        }
    }));
    s.truncate(MAX_SLOT_LEN);
    Ok(s)
}

/// Refuses a slot name PostgreSQL would not take.
fn check_slot(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_SLOT_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(Error::invalid(
            "source.extra.slot_name",
            "a slot name is 1 to 63 of [a-z0-9_]",
        ));
    }
    Ok(())
}

/// Refuses a source the connection string or the password file could not carry.
fn check_source(source: &ReplicationSource) -> Result<()> {
    let host = source.host.trim();
    if host.is_empty() || host.len() > 255 || host.chars().any(|c| c.is_control() || c == ' ') {
        return Err(Error::invalid(
            "source.host",
            "must be a host name or address",
        ));
    }
    if source.port == 0 {
        return Err(Error::invalid("source.port", "must not be 0"));
    }
    Ok(())
}

/// One field of a `.pgpass` line: `:` and `\` escaped.
fn pgpass_field(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The `.pgpass` line for `source` (any database, so replication connections match too).
fn pgpass_line(source: &ReplicationSource) -> String {
    format!(
        "{}:{}:*:{}:{}\n",
        pgpass_field(&source.host),
        source.port,
        pgpass_field(source.user.as_str()),
        pgpass_field(source.password.expose())
    )
}

/// One libpq connection-string value, single-quoted with `\` and `'` escaped.
fn conninfo_value(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        if matches!(c, '\'' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A libpq connection string to `source` reading its password from `passfile`; never holds
/// the password itself.
fn conninfo(source: &ReplicationSource, passfile: &Path, extra: &[(&str, &str)]) -> String {
    let mut parts = vec![
        format!("host={}", conninfo_value(&source.host)),
        format!("port={}", source.port),
        format!("user={}", conninfo_value(source.user.as_str())),
        format!(
            "passfile={}",
            conninfo_value(&passfile.display().to_string())
        ),
        "connect_timeout=10".to_owned(),
    ];
    for (k, v) in extra {
        parts.push(format!("{k}={}", conninfo_value(v)));
    }
    parts.join(" ")
}

/// `Database system identifier:` from `pg_controldata` output.
fn parse_system_identifier(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("Database system identifier:"))
        .and_then(|v| v.trim().parse().ok())
}

fn tool_failed(program: &Path, out: &guest_agent_api::runtime::CommandOutput) -> Error {
    Error::Tool {
        program: program.display().to_string(),
        exit: out.code.map_or_else(
            || "killed by a signal".to_owned(),
            |c| format!("exit code {c}"),
        ),
        stderr_tail: out.stderr_text(),
    }
}

/// Settings a hot standby needs at least as high as its primary's, or it pauses recovery.
const AT_LEAST_PRIMARY: &[&str] = &[
    "max_connections",
    "max_locks_per_transaction",
    "max_prepared_transactions",
    "max_wal_senders",
    "max_worker_processes",
];

/// Reads the [`AT_LEAST_PRIMARY`] settings over `client`.
async fn standby_minimums(client: &Client) -> Result<BTreeMap<String, i64>> {
    let names: Vec<String> = AT_LEAST_PRIMARY.iter().map(|s| (*s).to_owned()).collect();
    let rows = client
        .query(
            "SELECT name::text, setting::bigint FROM pg_settings WHERE name = ANY($1)",
            &[&names],
        )
        .await
        .map_err(stmt(None))?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(0).map_err(stmt(None))?,
                r.try_get(1).map_err(stmt(None))?,
            ))
        })
        .collect()
}

/// The settings of `source` that `local` has lower, as `name = value` lines.
fn raised_settings(source: &BTreeMap<String, i64>, local: &BTreeMap<String, i64>) -> String {
    let mut out = String::new();
    for (name, want) in source {
        if local.get(name).is_some_and(|have| have < want) {
            out.push_str(&format!("{name} = {want}\n"));
        }
    }
    out
}

/// The position this server has applied: replay LSN in recovery, insert LSN otherwise.
const NODE_SQL: &str = "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() \
     THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END::text";

impl PgDriver {
    /// Host replicas connect to: the advertised host, else the bind address.
    fn advertised_host(&self) -> Result<String> {
        if let Some(h) = &self.opts.advertise_host {
            return Ok(h.clone());
        }
        if self.bind_address.is_unspecified() {
            return Err(Error::InvalidState {
                operation: "replication",
                reason: "the server listens on every address; set datastore.options.\
                         advertise_host to the address replicas connect to"
                    .to_owned(),
            });
        }
        Ok(self.bind_address.to_string())
    }

    fn replication_password_path(&self) -> PathBuf {
        self.state_dir.join(REPLICATION_PASSWORD_FILE)
    }

    /// The stored replication password, if this node knows it.
    pub(crate) fn stored_replication_password(&self) -> Result<Option<Password>> {
        let path = self.replication_password_path();
        if !path.try_exists().map_err(io_err("inspecting", &path))? {
            return Ok(None);
        }
        read_admin_password(&path).map(Some)
    }

    fn store_replication_password(&self, password: &Password) -> Result<()> {
        let mut text = password.expose().as_bytes().to_vec();
        text.push(b'\n');
        write_file(&self.replication_password_path(), &text, 0o600, None)
    }

    /// Whether the server is in recovery (a replica).
    async fn in_recovery(&self) -> Result<bool> {
        let client = self.session.client().await?;
        client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(stmt(None))
    }

    async fn require_primary(&self, operation: &'static str) -> Result<()> {
        if self.in_recovery().await? {
            return Err(Error::InvalidState {
                operation,
                reason: "this server is a replica; promote it first".to_owned(),
            });
        }
        Ok(())
    }

    /// Makes sure the replication role exists with a password this node knows, may read what
    /// `pg_rewind` needs, and may connect (`pg_hba.conf`). Returns the password.
    async fn ensure_replication_role(&self, ctx: &OpContext) -> Result<Password> {
        let client = self.session.client().await?;
        let subject = Some(Subject::user(REPLICATION_USER));
        let exists = self.role_exists(&client, REPLICATION_USER).await?;
        let role = quote_ident(REPLICATION_USER)?;
        let password = match self.stored_replication_password()? {
            Some(p) if exists => p,
            stored => {
                let p = match stored {
                    Some(p) => p,
                    None => {
                        // Stored before the role changes, so it is never lost.
                        let p = Password::generate(REPLICATION_PASSWORD_LEN)?;
                        self.store_replication_password(&p)?;
                        p
                    }
                };
                let verb = if exists { "ALTER" } else { "CREATE" };
                client
                    .batch_execute(&format!(
                        "{verb} ROLE {role} WITH REPLICATION LOGIN NOSUPERUSER PASSWORD {}",
                        password_literal(&p)?
                    ))
                    .await
                    .map_err(stmt(subject))?;
                tracing::info!(role = REPLICATION_USER, "Replication role ready.");
                p
            }
        };
        client
            .batch_execute(&format!(
                "{REWIND_GRANTS}{role}; GRANT pg_checkpoint TO {role}"
            ))
            .await
            .map_err(stmt(subject))?;
        // Servers prepared before replication existed lack the replication lines.
        let hba = self.data_dir.join("pg_hba.conf");
        let current = read_optional(&hba)?.unwrap_or_default();
        if !current.contains("replication") {
            let owner = self.owner()?;
            self.write_access_files(owner.as_ref())?;
            self.reload_and_wait(ctx).await?;
        }
        Ok(password)
    }

    fn source_for(
        &self,
        password: Password,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<ReplicationSource> {
        Ok(ReplicationSource {
            host: self.advertised_host()?,
            port: self.port,
            user: UserName::new(REPLICATION_USER)?,
            password,
            extra,
            start_position: None,
        })
    }

    /// The slot this node uses when the source did not name one: generated once, kept in the
    /// state directory.
    fn node_slot_name(&self) -> Result<String> {
        let path = self.state_dir.join(NODE_SLOT_FILE);
        if let Some(text) = read_optional(&path)? {
            let name = text.trim().to_owned();
            check_slot(&name)?;
            return Ok(name);
        }
        let random = Password::generate(16)?.expose().to_ascii_lowercase();
        let name = format!("{SLOT_PREFIX}node_{random}");
        write_file(&path, name.as_bytes(), 0o600, None)?;
        Ok(name)
    }

    /// A session to the source as the replication role.
    async fn connect_source(&self, source: &ReplicationSource) -> Result<Client> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&source.host)
            .port(source.port)
            .user(source.user.as_str())
            .password(source.password.expose())
            .dbname("postgres")
            .application_name("guest-agent")
            .connect_timeout(SOURCE_CONNECT_TIMEOUT);
        let (client, connection) =
            cfg.connect(NoTls)
                .await
                .map_err(|source_err| PgError::Connect {
                    socket_dir: format!("{}:{}", source.host, source.port),
                    source: source_err,
                })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "Session to the replication source ended.");
            }
        });
        Ok(client)
    }

    /// Creates slot `slot` on the server `client` is connected to, unless it exists.
    async fn ensure_slot(client: &Client, slot: &str) -> Result<()> {
        client
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true) \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[&slot],
            )
            .await
            .map_err(stmt(None))?;
        Ok(())
    }

    /// The local cluster's system identifier, from `pg_controldata`.
    async fn local_system_identifier(&self) -> Result<u64> {
        let program = self.program("pg_controldata")?;
        let mut cmd = CommandSpec::new(
            &program,
            [OsString::from("-D"), self.data_dir.clone().into_os_string()],
        );
        cmd.env = vec![("LC_ALL".into(), "C".into())];
        cmd.run_as = self.os_user.clone();
        cmd.workdir = Some(PathBuf::from("/"));
        cmd.timeout = Some(Duration::from_secs(60));
        let out = self.runtime.run(&cmd).await?;
        if !out.success() {
            return Err(tool_failed(&program, &out));
        }
        parse_system_identifier(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
            Error::Internal("pg_controldata printed no system identifier".to_owned())
        })
    }

    /// The files describing this server, to put back after the source's were copied in.
    pub(crate) fn keep_local_files(&self) -> Result<KeptFiles> {
        LOCAL_FILES
            .iter()
            .map(|name| {
                let path = self.data_dir.join(name);
                match fs::read(&path) {
                    Ok(b) => Ok((*name, Some(b))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((*name, None)),
                    Err(e) => Err(io_err("reading", &path)(e)),
                }
            })
            .collect()
    }

    pub(crate) fn restore_local_files(
        &self,
        kept: &KeptFiles,
        owner: Option<&Owner>,
    ) -> Result<()> {
        for (name, bytes) in kept {
            let path = self.data_dir.join(name);
            match bytes {
                Some(b) => write_file(&path, b, 0o600, owner)?,
                None => remove_if_exists(&path)?,
            }
        }
        Ok(())
    }

    /// Empties the data directory (the directory itself may be a mount point and stays).
    ///
    /// The old contents are moved into a directory beside it when the file system allows and
    /// removed in the background, so the copy does not wait for the removal.
    pub(crate) fn clear_data_dir(&self) -> Result<()> {
        let trash = self.data_dir.parent().and_then(|parent| {
            let name = self.data_dir.file_name()?.to_string_lossy().into_owned();
            let suffix = Password::generate(16).ok()?.expose().to_ascii_lowercase();
            let dir = parent.join(format!(".{name}.replaced-{suffix}"));
            fs::create_dir(&dir).ok()?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).ok()?;
            Some(dir)
        });
        let entries = fs::read_dir(&self.data_dir).map_err(io_err("reading", &self.data_dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("reading", &self.data_dir))?;
            let path = entry.path();
            if let Some(t) = &trash
                && fs::rename(&path, t.join(entry.file_name())).is_ok()
            {
                continue;
            }
            let meta = fs::symlink_metadata(&path).map_err(io_err("inspecting", &path))?;
            if meta.is_dir() {
                fs::remove_dir_all(&path).map_err(io_err("removing", &path))?;
            } else {
                fs::remove_file(&path).map_err(io_err("removing", &path))?;
            }
        }
        if let Some(t) = trash {
            tokio::task::spawn_blocking(move || {
                if let Err(e) = fs::remove_dir_all(&t) {
                    tracing::warn!(path = %t.display(), error = %e, "Could not remove the replaced data.");
                }
            });
        }
        Ok(())
    }

    /// Runs a replication tool as the OS user with `PGPASSFILE` set.
    async fn run_tool(
        &self,
        name: &str,
        args: Vec<OsString>,
        passfile: &Path,
        timeout: Duration,
    ) -> Result<()> {
        let program = self.program(name)?;
        let mut cmd = CommandSpec::new(&program, args);
        cmd.env = vec![
            ("PGPASSFILE".into(), passfile.as_os_str().to_owned()),
            ("PGCONNECT_TIMEOUT".into(), "10".into()),
            ("PGAPPNAME".into(), "guest-agent".into()),
            ("LC_ALL".into(), "C".into()),
        ];
        cmd.run_as = self.os_user.clone();
        cmd.workdir = Some(PathBuf::from("/"));
        cmd.timeout = Some(timeout);
        tracing::info!(tool = name, "Running a replication tool.");
        let out = self.runtime.run(&cmd).await?;
        if !out.success() {
            return Err(tool_failed(&program, &out));
        }
        Ok(())
    }

    /// Replaces the data directory with a base backup of `source` streamed through `slot`.
    async fn seed(&self, source: &ReplicationSource, slot: &str, passfile: &Path) -> Result<()> {
        self.clear_data_dir()?;
        let args: Vec<OsString> = vec![
            "-h".into(),
            source.host.clone().into(),
            "-p".into(),
            source.port.to_string().into(),
            "-U".into(),
            source.user.as_str().into(),
            "-D".into(),
            self.data_dir.clone().into_os_string(),
            "-X".into(),
            "stream".into(),
            "-c".into(),
            "fast".into(),
            "-S".into(),
            slot.into(),
            "-w".into(),
        ];
        self.run_tool(
            "pg_basebackup",
            args,
            passfile,
            Duration::from_secs(self.opts.basebackup_timeout_secs),
        )
        .await?;
        tracing::info!("Base backup copied.");
        Ok(())
    }

    /// Rewinds the (stopped) data directory onto `source`'s history; a no-op when it has not
    /// diverged.
    async fn rewind(&self, source: &ReplicationSource, passfile: &Path) -> Result<()> {
        // A server that did not shut down cleanly is recovered in single-user mode first,
        // which refuses to run in standby mode.
        for signal in [STANDBY_SIGNAL, RECOVERY_SIGNAL] {
            remove_if_exists(&self.data_dir.join(signal))?;
        }
        let mut target = OsString::from("--target-pgdata=");
        target.push(&self.data_dir);
        let source_server = format!(
            "--source-server={}",
            conninfo(source, passfile, &[("dbname", "postgres")])
        );
        self.run_tool(
            "pg_rewind",
            vec![target, source_server.into()],
            passfile,
            REWIND_TIMEOUT,
        )
        .await
    }

    /// The replica's role files: its password file, `primary_conninfo` and
    /// `primary_slot_name`, and `standby.signal`.
    ///
    /// `raised` holds settings raised to the source's values (a standby needs some at least
    /// as high as its primary's); they are dropped again at promotion.
    fn write_replica_role(
        &self,
        source: &ReplicationSource,
        slot: &str,
        raised: &str,
        owner: Option<&Owner>,
    ) -> Result<()> {
        let passfile = self.data_dir.join(PASSFILE);
        write_file(&passfile, pgpass_line(source).as_bytes(), 0o600, owner)?;
        let info = conninfo(source, &passfile, &[("application_name", slot)]);
        let text = format!(
            "# Managed by guest-agent: this server replicates from {}:{}.\n\
             primary_conninfo = {}\n\
             primary_slot_name = {}\n{raised}",
            source.host,
            source.port,
            conf_string("primary_conninfo", &info)?,
            conf_string("primary_slot_name", slot)?
        );
        write_file(
            &self.data_dir.join(ROLE_CONF_FILE),
            text.as_bytes(),
            0o600,
            owner,
        )?;
        remove_if_exists(&self.data_dir.join(RECOVERY_SIGNAL))?;
        write_file(&self.data_dir.join(STANDBY_SIGNAL), b"", 0o600, owner)
    }

    /// Removes the replica's role files (after a promotion).
    fn clear_role_files(&self) -> Result<()> {
        for name in [ROLE_CONF_FILE, PASSFILE, STANDBY_SIGNAL] {
            remove_if_exists(&self.data_dir.join(name))?;
        }
        Ok(())
    }

    /// Waits until the walreceiver streams.
    async fn wait_streaming(&self, ctx: &OpContext) -> Result<()> {
        let deadline = Instant::now() + STREAM_WAIT;
        loop {
            ctx.cancelled()?;
            let status: Option<String> = match self.session.client().await {
                Ok(c) => c
                    .query_opt("SELECT status FROM pg_stat_wal_receiver", &[])
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| r.try_get(0).ok()),
                Err(_) => None,
            };
            if status.as_deref() == Some("streaming") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    status = status.as_deref().unwrap_or("no WAL receiver"),
                    log = %log_tail(&self.run_dir.join(crate::driver::LOG_FILE)),
                    "The replica did not start streaming."
                );
                return Err(Error::Timeout {
                    operation: "attach_replica (waiting for streaming)",
                    after: STREAM_WAIT,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Drops this server's own slots of the driver (a former primary's slots for its
    /// replicas would retain WAL here forever).
    async fn drop_local_slots(&self) {
        let dropped = async {
            let client = self.session.client().await?;
            client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name LIKE 'ga\\_%' AND NOT active",
                    &[],
                )
                .await
                .map_err(stmt(None))
        }
        .await;
        match dropped {
            Ok(0) => {}
            Ok(n) => tracing::info!(slots = n, "Dropped slots left from an earlier role."),
            Err(e) => tracing::warn!(error = %e, "Could not drop slots left from an earlier role."),
        }
    }

    async fn read_node(&self) -> Result<NodePosition> {
        let client = self.session.client().await?;
        let row = client.query_one(NODE_SQL, &[]).await.map_err(stmt(None))?;
        let is_replica: bool = row.try_get(0).map_err(stmt(None))?;
        let text: Option<String> = row.try_get(1).map_err(stmt(None))?;
        Ok(NodePosition {
            applied: parse_position(text.as_deref())?,
            is_replica,
            errant: None,
        })
    }
}

pub(crate) fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
        _ => Ok(()),
    }
}

#[async_trait]
impl Replication for PgDriver {
    async fn snapshot_for_replica(
        &self,
        ctx: &OpContext,
        replica_id: &str,
    ) -> Result<ReplicaSnapshot> {
        ctx.cancelled()?;
        let slot = slot_name(replica_id)?;
        self.require_primary("get_replication_snapshot").await?;
        let password = self.ensure_replication_role(ctx).await?;
        let client = self.session.client().await?;
        Self::ensure_slot(&client, &slot).await?;
        let position = self.read_node().await?.applied;
        let mut source_extra = serde_json::Map::new();
        source_extra.insert("slot_name".to_owned(), slot.clone().into());
        let mut extra = serde_json::Map::new();
        extra.insert(
            "replication_strategy".to_owned(),
            "PostgresqlReplication".into(),
        );
        extra.insert("replica_id".to_owned(), replica_id.into());
        tracing::info!(slot = %slot, position = %position, "Snapshot for a new replica.");
        Ok(ReplicaSnapshot {
            source: self.source_for(password, source_extra)?,
            position: Some(position),
            extra,
        })
    }

    async fn attach(&self, ctx: &OpContext, source: &ReplicationSource) -> Result<()> {
        ctx.cancelled()?;
        check_source(source)?;
        self.require_initialised("attach_replica")?;
        let slot = match source.extra.get("slot_name") {
            Some(v) => {
                let s = v.as_str().unwrap_or_default().to_owned();
                check_slot(&s)?;
                s
            }
            None => self.node_slot_name()?,
        };
        let owner = self.owner()?;

        // The source first: reachable with these credentials, its identity, the slot.
        let src = self.connect_source(source).await?;
        let source_id: i64 = src
            .query_one("SELECT system_identifier FROM pg_control_system()", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(stmt(None))?;
        Self::ensure_slot(&src, &slot).await?;
        // What this server runs with now, when it runs (a crashed old primary does not; it
        // ran with its own primary's settings anyway).
        let local_settings = match self.session.client().await {
            Ok(c) => standby_minimums(&c).await.unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
        let raised = raised_settings(&standby_minimums(&src).await?, &local_settings);
        let local_id = self.local_system_identifier().await?;
        let same_history = i64::from_ne_bytes(local_id.to_ne_bytes()) == source_id;
        if same_history {
            // A recently promoted source names its new timeline in its control file only
            // after a checkpoint, and pg_rewind reads the timeline from there.
            src.batch_execute("CHECKPOINT").await.map_err(stmt(None))?;
        }
        drop(src);

        // Data about to be replaced by a copy needs no shutdown checkpoint; data about to be
        // rewound is stopped cleanly, so pg_rewind need not recover it first.
        let mode = if same_history {
            StopMode::Fast
        } else {
            StopMode::Immediate
        };
        self.stop(ctx, mode).await?;
        let kept = self.keep_local_files()?;
        let tool_passfile = self.run_dir.join(TOOL_PASSFILE);
        write_file(
            &tool_passfile,
            pgpass_line(source).as_bytes(),
            0o600,
            owner.as_ref(),
        )?;
        let _cleanup = RemoveOnDrop(tool_passfile.clone());
        // Same history: rewind (a no-op unless it diverged); another cluster: seed afresh.
        if same_history {
            tracing::info!(host = %source.host, port = source.port, "Rewinding onto the source.");
            if let Err(e) = self.rewind(source, &tool_passfile).await {
                // pg_rewind needs this server's WAL back to the last checkpoint both servers
                // share; when that is gone, a fresh copy is the only way (what it would have
                // rewound away is lost either way).
                tracing::warn!(error = %e, "pg_rewind could not rewind; seeding afresh.");
                self.seed(source, &slot, &tool_passfile).await?;
            }
        } else {
            tracing::info!(host = %source.host, port = source.port, "Seeding from the source.");
            self.seed(source, &slot, &tool_passfile).await?;
        }
        self.restore_local_files(&kept, owner.as_ref())?;
        // The catalog (and so the admin role's password) may be the source's now: the
        // driver's own login must be by peer identity, whatever an older hba file said.
        self.write_access_files(owner.as_ref())?;
        self.ensure_includes()?;
        self.write_replica_role(source, &slot, &raised, owner.as_ref())?;
        self.store_replication_password(&source.password)?;

        tracing::info!("Data in place; starting as a replica.");
        self.start_server(ctx).await?;
        self.wait_streaming(ctx).await?;
        self.drop_local_slots().await;
        tracing::info!(host = %source.host, port = source.port, slot = %slot, "Replicating from the source.");
        Ok(())
    }

    async fn detach(&self, ctx: &OpContext, for_failover: bool) -> Result<DetachOutcome> {
        ctx.cancelled()?;
        if !self.in_recovery().await? {
            // Not a replica: nothing to detach from.
            return Ok(DetachOutcome::default());
        }
        if for_failover {
            // Part of a failover: the server stops following its source but stays a
            // read-only standby until it is promoted (enable_as_master) or attached to the
            // new primary, so no second writable primary appears on the way.
            for name in [ROLE_CONF_FILE, PASSFILE] {
                remove_if_exists(&self.data_dir.join(name))?;
            }
            self.reload_and_wait(ctx).await?;
            tracing::info!("Stopped following the source; read-only until promoted or attached.");
            return Ok(DetachOutcome::default());
        }
        self.promote(ctx).await?;
        tracing::info!("Detached from the source: standalone now.");
        // The replication role is shared by every replica of the set: never dropped here.
        Ok(DetachOutcome::default())
    }

    async fn promote(&self, ctx: &OpContext) -> Result<()> {
        ctx.cancelled()?;
        if !self.in_recovery().await? {
            return Ok(());
        }
        let client = self.session.client().await?;
        let promoted: bool = client
            .query_one("SELECT pg_promote(true, $1)", &[&PROMOTE_WAIT_SECS])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(stmt(None))?;
        if !promoted {
            return Err(Error::Timeout {
                operation: "promote",
                after: Duration::from_secs(PROMOTE_WAIT_SECS.unsigned_abs().into()),
            });
        }
        // Writable now; what follows is tidying.
        self.clear_role_files()?;
        self.reload_and_wait(ctx).await?;
        tracing::info!("Promoted to primary.");
        Ok(())
    }

    async fn demote(&self, ctx: &OpContext) -> Result<()> {
        ctx.cancelled()?;
        if self.ping().await.is_ok() && self.in_recovery().await? {
            // A replica already (attach came first): nothing to fence.
            return Ok(());
        }
        self.stop(ctx, StopMode::Fast).await?;
        let owner = self.owner()?;
        write_file(
            &self.data_dir.join(STANDBY_SIGNAL),
            b"",
            0o600,
            owner.as_ref(),
        )?;
        tracing::info!("Demoted: stopped, and starts only in recovery until attached.");
        Ok(())
    }

    async fn set_read_only(&self, ctx: &OpContext, read_only: bool) -> Result<()> {
        ctx.cancelled()?;
        if self.in_recovery().await? {
            if read_only {
                return Ok(());
            }
            return Err(Error::InvalidState {
                operation: "make_read_only",
                reason: "a replica stays read-only until it is promoted".to_owned(),
            });
        }
        let path = self.data_dir.join(ROLE_CONF_FILE);
        self.ensure_includes()?;
        if read_only {
            let owner = self.owner()?;
            write_file(
                &path,
                b"# Managed by guest-agent: read-only primary.\n\
                  default_transaction_read_only = on\n",
                0o600,
                owner.as_ref(),
            )?;
        } else {
            remove_if_exists(&path)?;
        }
        self.reload_and_wait(ctx).await?;
        tracing::info!(read_only, "Read-only mode set.");
        Ok(())
    }

    async fn replica_context(&self, ctx: &OpContext) -> Result<ReplicationSource> {
        ctx.cancelled()?;
        self.require_primary("get_replica_context").await?;
        let password = self.ensure_replication_role(ctx).await?;
        self.source_for(password, serde_json::Map::new())
    }

    async fn wait_for(&self, ctx: &OpContext, target: &Position, timeout: Duration) -> Result<()> {
        ctx.cancelled()?;
        let Position::Lsn(target_lsn) = target else {
            return Err(Error::invalid(
                "txn",
                "PostgreSQL positions are WAL locations (X/Y)",
            ));
        };
        let deadline = Instant::now() + timeout;
        loop {
            let node = self.read_node().await?;
            if let Position::Lsn(l) = node.applied
                && l >= *target_lsn
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    operation: "wait_for_txn",
                    after: timeout,
                });
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = ctx.cancel.cancelled() => return Err(Error::Cancelled),
            }
        }
    }

    async fn node_position(&self, ctx: &OpContext) -> Result<NodePosition> {
        ctx.cancelled()?;
        self.read_node().await
    }

    async fn forget_replica(&self, ctx: &OpContext, replica_id: &str) -> Result<()> {
        ctx.cancelled()?;
        let slot = slot_name(replica_id)?;
        let client = self.session.client().await?;
        let row = client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(stmt(None))?;
        match row {
            None => Ok(()),
            Some(r) if r.try_get::<_, bool>(0).map_err(stmt(None))? => Err(Error::InvalidState {
                operation: "cleanup_source_on_replica_detach",
                reason: format!("slot {slot} is in use by a connected replica"),
            }),
            Some(_) => {
                client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await
                    .map_err(stmt(None))?;
                tracing::info!(slot = %slot, "Dropped the slot of a departed replica.");
                Ok(())
            }
        }
    }
}

/// An LSN from the server's `X/Y` text, `None` for NULL or anything else.
pub(crate) fn lsn_of(text: Option<&str>) -> Option<Lsn> {
    text.and_then(|t| t.parse().ok())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn source(host: &str, port: u16, password: &str) -> ReplicationSource {
        ReplicationSource {
            host: host.into(),
            port,
            user: UserName::new("replicator").unwrap(),
            password: Password::new(password).unwrap(),
            extra: serde_json::Map::new(),
            start_position: None,
        }
    }

    #[test]
    fn slot_names_are_folded_and_bounded() {
        assert_eq!(slot_name("Replica-1").unwrap(), "ga_replica_1");
        assert_eq!(
            slot_name("4f1c2a9e-aaaa-bbbb-cccc-0123456789ab").unwrap(),
            "ga_4f1c2a9e_aaaa_bbbb_cccc_0123456789ab"
        );
        assert_eq!(slot_name(&"x".repeat(100)).unwrap().len(), MAX_SLOT_LEN);
        assert!(slot_name(" ").is_err());
        check_slot("ga_ok_1").unwrap();
        for bad in ["", "Upper", "a-b", "a'b"] {
            assert!(check_slot(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_stay_out_of_conninfo_and_are_escaped_in_pgpass() {
        let s = source("127.0.0.1", 5433, "p:w\\d'x");
        assert_eq!(
            pgpass_line(&s),
            "127.0.0.1:5433:*:replicator:p\\:w\\\\d'x\n"
        );
        let info = conninfo(
            &s,
            Path::new("/data/it's.pgpass"),
            &[("application_name", "ga_r1")],
        );
        assert!(!info.contains("p:w"), "{info}");
        assert_eq!(
            info,
            "host='127.0.0.1' port=5433 user='replicator' passfile='/data/it\\'s.pgpass' \
             connect_timeout=10 application_name='ga_r1'"
        );
    }

    #[test]
    fn sources_are_checked() {
        check_source(&source("db-1.example", 5432, "x")).unwrap();
        assert!(check_source(&source("", 5432, "x")).is_err());
        assert!(check_source(&source("a b", 5432, "x")).is_err());
        assert!(check_source(&source("a\nb", 5432, "x")).is_err());
        assert!(check_source(&source("h", 0, "x")).is_err());
        let mut s = source("h", 1, "x");
        s.extra.insert("slot_name".into(), json!("ga_x"));
        check_slot(s.extra["slot_name"].as_str().unwrap()).unwrap();
    }

    #[test]
    fn only_lower_settings_are_raised() {
        let source: BTreeMap<String, i64> = [
            ("max_connections".to_owned(), 120),
            ("max_wal_senders".to_owned(), 10),
        ]
        .into();
        let local: BTreeMap<String, i64> = [
            ("max_connections".to_owned(), 50),
            ("max_wal_senders".to_owned(), 20),
        ]
        .into();
        assert_eq!(raised_settings(&source, &local), "max_connections = 120\n");
        assert_eq!(raised_settings(&source, &BTreeMap::new()), "");
    }

    #[test]
    fn controldata_identifier() {
        let text = "pg_control version number:            1300\n\
                    Catalog version number:               202209061\n\
                    Database system identifier:           7305467245617352345\n";
        assert_eq!(
            parse_system_identifier(text),
            Some(7_305_467_245_617_352_345)
        );
        assert_eq!(parse_system_identifier("nothing"), None);
    }
}

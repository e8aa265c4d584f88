//! Lifecycle: prepare (initdb, configuration, first start, initial databases and users), start,
//! stop, restart and status of the server.
//!
//! Every process goes through the runtime: `initdb` with [`DatastoreRuntime::run`], the server
//! with `start`/`stop`/`state`. When the agent runs as root, both run as the configured OS
//! user, which therefore owns the data and run directories and must be able to traverse their
//! parents.
//!
//! [`DatastoreRuntime::run`]: guest_agent_api::runtime::DatastoreRuntime::run

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use guest_agent_api::admin::Admin;
use guest_agent_api::config::{ConfigApply, ValidatedOverrides};
use guest_agent_api::fsutil::{
    Owner, RemoveOnDrop, check_empty_data_dir, check_traversable, ensure_dir, io_err, no_follow,
    pid_alive, write_file,
};
use guest_agent_api::ident::Password;
use guest_agent_api::lifecycle::{DatastoreStatus, Lifecycle, PrepareSpec, StopMode};
use guest_agent_api::runtime::{CommandSpec, ServerState, StopSignal};
use guest_agent_api::{Error, OpContext, Result};
use nix::unistd::User;

use crate::config::{ManagedConf, include_line, render_hba, render_ident};
use crate::driver::LOG_FILE;
use crate::sql::Connector;
use crate::{ADMIN_USER, MANAGED_CONF_FILE, PgDriver, REPLICATION_USER};

/// Length of the generated administrative password.
const ADMIN_PASSWORD_LEN: usize = 40;
/// Bound on `initdb`.
const INITDB_TIMEOUT: Duration = Duration::from_secs(600);
/// Pause between readiness checks while the server starts.
const READY_POLL: Duration = Duration::from_millis(50);
/// Bound on the readiness query of `status`, so a hung server cannot stall a heartbeat.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Name of the temporary password file `initdb` reads, in the run directory.
const INITDB_PWFILE: &str = ".initdb-password";

impl PgDriver {
    /// The OS account to hand files to: the configured user when the agent runs as root.
    pub(crate) fn owner(&self) -> Result<Option<Owner>> {
        let Some(name) = self.os_user.as_deref() else {
            return Ok(None);
        };
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        Owner::lookup(name).map(Some)
    }

    /// Whether the data directory holds a cluster.
    pub(crate) fn is_initialised(&self) -> Result<bool> {
        let marker = self.data_dir.join("PG_VERSION");
        marker.try_exists().map_err(io_err("inspecting", &marker))
    }

    /// Refuses a data directory that holds a cluster or anything else.
    fn check_fresh_data_dir(&self) -> Result<()> {
        if self.is_initialised()? {
            return Err(Error::InvalidState {
                operation: "prepare",
                reason: format!(
                    "the data directory {} already holds a PostgreSQL cluster",
                    self.data_dir.display()
                ),
            });
        }
        check_empty_data_dir(&self.data_dir)
    }

    pub(crate) fn require_initialised(&self, operation: &'static str) -> Result<()> {
        if self.is_initialised()? {
            Ok(())
        } else {
            Err(Error::InvalidState {
                operation,
                reason: format!(
                    "the data directory {} holds no PostgreSQL cluster; prepare first",
                    self.data_dir.display()
                ),
            })
        }
    }

    /// Stores the administrative password in the private state directory.
    fn store_admin_password(&self, password: &Password) -> Result<()> {
        ensure_dir(&self.state_dir, 0o700, None)?;
        let mut text = password.expose().as_bytes().to_vec();
        text.push(b'\n');
        write_file(
            &Connector::admin_password_path(&self.state_dir),
            &text,
            0o600,
            None,
        )
    }

    /// Runs `initdb` with the administrative password in a short-lived file only the OS user
    /// can read.
    async fn run_initdb(&self, password: &Password, owner: Option<&Owner>) -> Result<()> {
        let initdb = self.program("initdb")?;
        let pwfile = self.run_dir.join(INITDB_PWFILE);
        let mut text = password.expose().as_bytes().to_vec();
        text.push(b'\n');
        write_file(&pwfile, &text, 0o600, owner)?;
        let _cleanup = RemoveOnDrop(pwfile.clone());
        let mut pwfile_arg = std::ffi::OsString::from("--pwfile=");
        pwfile_arg.push(&pwfile);
        let mut cmd = CommandSpec::new(
            &initdb,
            [
                "-D".into(),
                self.data_dir.clone().into_os_string(),
                "-U".into(),
                ADMIN_USER.into(),
                pwfile_arg,
                "--auth-local=scram-sha-256".into(),
                "--auth-host=scram-sha-256".into(),
                "-E".into(),
                "UTF8".into(),
                "--locale=C.UTF-8".into(),
            ],
        );
        cmd.run_as = self.os_user.clone();
        cmd.workdir = Some(PathBuf::from("/"));
        cmd.timeout = Some(INITDB_TIMEOUT);
        tracing::info!(data_dir = %self.data_dir.display(), "Initialising the PostgreSQL cluster.");
        // Not raced against cancellation: killing initdb half-way would leave a half-built
        // data directory that a later prepare refuses.
        let out = self.runtime.run(&cmd).await?;
        if !out.success() {
            return Err(Error::Tool {
                program: initdb.display().to_string(),
                exit: out.code.map_or_else(
                    || "killed by a signal".to_owned(),
                    |c| format!("exit code {c}"),
                ),
                stderr_tail: out.stderr_text(),
            });
        }
        Ok(())
    }

    /// Writes the managed include file (and the overrides, when there are any), hooks it into
    /// `postgresql.conf` and replaces `pg_hba.conf` and `pg_ident.conf`.
    fn write_config(
        &self,
        spec: &PrepareSpec,
        overrides: Option<&ValidatedOverrides>,
        owner: Option<&Owner>,
    ) -> Result<()> {
        let managed = ManagedConf {
            listen: self.bind_address,
            port: self.port,
            socket_dir: &self.run_dir,
            memory_mb: spec.memory_mb,
        }
        .render()?;
        write_file(
            &self.data_dir.join(MANAGED_CONF_FILE),
            managed.as_bytes(),
            0o600,
            owner,
        )?;
        if let Some(o) = overrides {
            self.write_overrides(&o.values)?;
        }
        self.write_access_files(owner)?;
        let main = self.data_dir.join("postgresql.conf");
        let mut f = OpenOptions::new()
            .append(true)
            .custom_flags(no_follow())
            .open(&main)
            .map_err(io_err("opening", &main))?;
        f.write_all(include_line().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io_err("appending to", &main))
    }

    /// Writes `pg_hba.conf` and `pg_ident.conf` (the agent's OS account may log in as the
    /// admin role over the socket).
    pub(crate) fn write_access_files(&self, owner: Option<&Owner>) -> Result<()> {
        let me = User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .ok_or_else(|| Error::InvalidState {
                operation: "write pg_ident.conf",
                reason: "the agent's OS account has no name".to_owned(),
            })?;
        write_file(
            &self.data_dir.join("pg_hba.conf"),
            render_hba(REPLICATION_USER).as_bytes(),
            0o600,
            owner,
        )?;
        write_file(
            &self.data_dir.join("pg_ident.conf"),
            render_ident(&me)?.as_bytes(),
            0o600,
            owner,
        )
    }

    /// Runs `SELECT 1` on the administrative session, dropping the session when it fails.
    pub(crate) async fn ping(&self) -> Result<()> {
        let attempt = async {
            let client = self.session.client().await?;
            client
                .simple_query("SELECT 1")
                .await
                .map_err(crate::error::stmt(None))?;
            Ok::<(), Error>(())
        };
        let result = match tokio::time::timeout(PING_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                operation: "readiness query",
                after: PING_TIMEOUT,
            }),
        };
        if result.is_err() {
            self.session.reset().await;
        }
        result
    }

    /// `RestartRequired` while a configuration change waits for a restart, else `Healthy`.
    async fn healthy_or_restart_required(&self) -> DatastoreStatus {
        match tokio::time::timeout(PING_TIMEOUT, self.pending_restart()).await {
            Ok(Ok(pending)) if !pending.is_empty() => DatastoreStatus::RestartRequired,
            _ => DatastoreStatus::Healthy,
        }
    }

    /// Waits until the server accepts sessions, it exits, the start timeout (or the caller's
    /// deadline) passes or the operation is cancelled.
    pub(crate) async fn wait_ready(&self, ctx: &OpContext) -> Result<()> {
        guest_agent_api::runtime::wait_ready(
            ctx,
            self.runtime.as_ref(),
            self.start_timeout(),
            READY_POLL,
            "PostgreSQL server",
            &self.run_dir.join(LOG_FILE),
            || self.ping(),
        )
        .await
    }

    /// Makes the runtime track a server that runs from an earlier agent (its pid file names a
    /// live process), so that it can be stopped.
    pub(crate) async fn adopt_running(&self) -> Result<()> {
        if matches!(self.runtime.state().await, ServerState::Running { .. }) {
            return Ok(());
        }
        let pid = fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        if let Some(pid) = pid.filter(|p| pid_alive(*p)) {
            tracing::info!(pid, "Adopting the running PostgreSQL server.");
            self.runtime.start(&self.server_spec()?).await?;
        }
        Ok(())
    }

    /// Starts the server through the runtime and waits until it answers.
    pub(crate) async fn start_server(&self, ctx: &OpContext) -> Result<()> {
        self.session.reset().await;
        self.runtime.start(&self.server_spec()?).await?;
        self.wait_ready(ctx).await
    }
}

#[async_trait]
impl Lifecycle for PgDriver {
    async fn prepare(&self, ctx: &OpContext, spec: &PrepareSpec) -> Result<()> {
        // Overrides are checked before anything is created.
        let overrides = match &spec.overrides {
            Some(o) if !o.is_empty() => Some(self.validate(o)?),
            _ => None,
        };
        ctx.cancelled()?;
        self.check_fresh_data_dir()?;
        // Both binaries are looked up before anything is created.
        self.program("initdb")?;
        self.program("postgres")?;
        let owner = self.owner()?;
        if spec.config_contents.is_some() {
            tracing::info!(
                "Ignoring the base configuration sent with prepare; the driver writes its own."
            );
        }

        ensure_dir(&self.data_dir, 0o700, owner.as_ref())?;
        ensure_dir(&self.run_dir, 0o755, owner.as_ref())?;
        if let Some(o) = &owner {
            check_traversable(&self.data_dir, o)?;
            check_traversable(&self.run_dir, o)?;
        }
        let password = Password::generate(ADMIN_PASSWORD_LEN)?;
        self.store_admin_password(&password)?;
        self.run_initdb(&password, owner.as_ref()).await?;
        self.write_config(spec, overrides.as_ref(), owner.as_ref())?;
        ctx.cancelled()?;

        tracing::info!(port = self.port, "Starting PostgreSQL for the first time.");
        self.start_server(ctx).await?;
        if !spec.databases.is_empty() {
            self.create_databases(ctx, &spec.databases).await?;
        }
        if !spec.users.is_empty() {
            self.create_users(ctx, &spec.users).await?;
        }
        if let Some(pw) = &spec.root_password {
            self.enable_root(ctx, Some(pw.clone())).await?;
        }
        tracing::info!("PostgreSQL is prepared.");
        Ok(())
    }

    async fn start(&self, ctx: &OpContext) -> Result<()> {
        ctx.cancelled()?;
        self.require_initialised("start")?;
        if matches!(self.runtime.state().await, ServerState::Running { .. }) {
            return self.wait_ready(ctx).await;
        }
        self.start_server(ctx).await
    }

    async fn stop(&self, ctx: &OpContext, mode: StopMode) -> Result<()> {
        ctx.cancelled()?;
        self.adopt_running().await?;
        // Our own session would hold up a smart shutdown until the grace time ran out.
        self.session.reset().await;
        let signal = match mode {
            StopMode::Smart => StopSignal::Term,
            StopMode::Fast => StopSignal::Int,
            StopMode::Immediate => StopSignal::Quit,
        };
        self.runtime.stop(signal, self.stop_timeout()).await
    }

    async fn restart(&self, ctx: &OpContext) -> Result<()> {
        self.stop(ctx, StopMode::Fast).await?;
        self.start(ctx).await
    }

    async fn status(&self, _ctx: &OpContext) -> DatastoreStatus {
        match self.runtime.state().await {
            ServerState::Running { .. } => {
                if self.ping().await.is_ok() {
                    self.healthy_or_restart_required().await
                } else {
                    DatastoreStatus::Running
                }
            }
            // A server left running by an earlier agent is not tracked until `start` adopts
            // it; if it answers, it is healthy all the same.
            ServerState::NotStarted => {
                if self.ping().await.is_ok() {
                    self.healthy_or_restart_required().await
                } else {
                    DatastoreStatus::Shutdown
                }
            }
            ServerState::Exited {
                requested: true, ..
            } => DatastoreStatus::Shutdown,
            ServerState::Exited {
                requested: false, ..
            } => DatastoreStatus::Crashed,
        }
    }
}

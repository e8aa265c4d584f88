//! Lifecycle: prepare (data directory, `my.cnf`, first start, the administrative account,
//! securing, initial databases and users), start, stop, restart and status of the server.
//!
//! Every process goes through the runtime: `mariadb-install-db` (or `mysqld
//! --initialize-insecure`) and `--version` with [`DatastoreRuntime::run`], the server with
//! `start`/`stop`/`state`. When the agent runs as root, both run as the configured OS user,
//! which therefore owns the data and run directories; with no OS user (or `root`) the server
//! runs as root, which MariaDB accepts only with `user = root` in `my.cnf`.
//!
//! The administrative account is created while the data directory is initialised (the
//! bootstrap SQL file of `--extra-file` / `--init-file`), so it never needs the root account
//! and is not in the binary log: a fresh server has an empty GTID position, which is what a
//! new replica must start from.
//!
//! [`DatastoreRuntime::run`]: guest_agent_api::runtime::DatastoreRuntime::run

use std::ffi::OsString;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use guest_agent_api::admin::Admin;
use guest_agent_api::config::ConfigApply;
use guest_agent_api::fsutil::{
    Owner, RemoveOnDrop, check_empty_data_dir, check_traversable, ensure_dir, io_err, pid_alive,
    write_file,
};
use guest_agent_api::ident::Password;
use guest_agent_api::lifecycle::{DatastoreStatus, Lifecycle, PrepareSpec, StopMode};
use guest_agent_api::runtime::{CommandSpec, ServerState, StopSignal};
use guest_agent_api::{Error, OpContext, Result};
use mysql_async::prelude::Queryable;

use crate::config::BaseConf;
use crate::driver::{LOG_FILE, PID_FILE};
use crate::error::stmt;
use crate::sql::{ServerVersion, account, quote_string};
use crate::{ADMIN_USER, CONF_D, MySqlDriver, ROOT_USER};

/// Length of the generated administrative password.
const ADMIN_PASSWORD_LEN: usize = 40;
/// Bound on initialising the data directory.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Bound on `--version`.
const VERSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between readiness checks while the server starts.
const READY_POLL: Duration = Duration::from_millis(200);
/// Bound on the readiness query of `status`, so a hung server cannot stall a heartbeat.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Name of the temporary bootstrap SQL file, in the run directory.
const BOOTSTRAP_SQL: &str = ".bootstrap.sql";
/// Programs that initialise a MariaDB data directory, preferred first.
const INSTALL_PROGRAMS: &[&str] = &["mariadb-install-db", "mysql_install_db"];

/// Parses `mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64 (Debian
/// 12)` or `mysqld  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)`.
pub(crate) fn parse_version_output(text: &str) -> Result<ServerVersion> {
    let after = text
        .split_once(" Ver ")
        .map(|(_, rest)| rest.trim_start())
        .ok_or_else(|| {
            Error::Internal(format!(
                "unrecognised server --version output '{}'",
                text.trim()
            ))
        })?;
    let version = after.split_whitespace().next().unwrap_or_default();
    ServerVersion::parse(version, after)
}

/// The SQL run while the data directory is initialised: the administrative account.
/// `password` is generated (letters and digits), so the literal holds no escapes.
fn bootstrap_sql(password: &Password, mysql_root_password: Option<&Password>) -> Result<String> {
    let admin = account(ADMIN_USER, "localhost")?;
    // Bootstrap runs without the grant tables loaded; FLUSH PRIVILEGES loads them so that
    // account statements work.
    let mut sql = format!(
        "FLUSH PRIVILEGES;\n\
         CREATE USER {admin} IDENTIFIED BY {};\n\
         GRANT ALL PRIVILEGES ON *.* TO {admin} WITH GRANT OPTION;\n",
        quote_string(password.expose())?
    );
    if let Some(root_pw) = mysql_root_password {
        // `--initialize-insecure` leaves root@localhost without a password.
        sql.push_str(&format!(
            "ALTER USER {} IDENTIFIED BY {};\n",
            account(ROOT_USER, "localhost")?,
            quote_string(root_pw.expose())?
        ));
    }
    Ok(sql)
}

/// `text` with every occurrence of the secret replaced.
fn redact(text: &str, secret: &Password) -> String {
    text.replace(secret.expose(), "<redacted>")
}

/// A random `server_id` in 1..=4294967295.
fn random_server_id() -> Result<u32> {
    let r =
        getrandom::u32().map_err(|e| Error::Internal(format!("OS random source failed: {e}")))?;
    Ok(r % 4_294_967_294 + 1)
}

impl MySqlDriver {
    /// The OS account to hand files to: the configured user when the agent runs as root.
    pub(crate) fn owner(&self) -> Result<Option<Owner>> {
        let Some(name) = self.os_user.as_deref() else {
            return Ok(None);
        };
        if !nix::unistd::geteuid().is_root() || name == "root" {
            return Ok(None);
        }
        Owner::lookup(name).map(Some)
    }

    /// Owner (uid, gid) for files the server must own, when the agent runs as root.
    pub(crate) fn file_owner(&self) -> Result<Option<(u32, u32)>> {
        Ok(self.owner()?.map(|o| (o.uid.as_raw(), o.gid.as_raw())))
    }

    /// Whether the server will run as root (then `my.cnf` must say `user = root`).
    fn runs_as_root(&self) -> bool {
        nix::unistd::geteuid().is_root() && self.os_user.as_deref().is_none_or(|u| u == "root")
    }

    /// Whether the data directory holds an initialised server.
    fn is_initialised(&self) -> Result<bool> {
        let marker = self.data_dir.join("mysql");
        marker.try_exists().map_err(io_err("inspecting", &marker))
    }

    /// Refuses a data directory that holds a server or anything else.
    fn check_fresh_data_dir(&self) -> Result<()> {
        if self.is_initialised()? {
            return Err(Error::InvalidState {
                operation: "prepare",
                reason: format!(
                    "the data directory {} already holds a MySQL/MariaDB server",
                    self.data_dir.display()
                ),
            });
        }
        check_empty_data_dir(&self.data_dir)
    }

    fn require_initialised(&self, operation: &'static str) -> Result<()> {
        if self.is_initialised()? {
            Ok(())
        } else {
            Err(Error::InvalidState {
                operation,
                reason: format!(
                    "the data directory {} holds no MySQL/MariaDB server; prepare first",
                    self.data_dir.display()
                ),
            })
        }
    }

    /// Runs a tool through the runtime, failing with its stderr tail on a non-zero exit.
    async fn run_tool(&self, cmd: &CommandSpec) -> Result<Vec<u8>> {
        let out = self.runtime.run(cmd).await?;
        if !out.success() {
            return Err(Error::Tool {
                program: cmd.program.display().to_string(),
                exit: out.code.map_or_else(
                    || "killed by a signal".to_owned(),
                    |c| format!("exit code {c}"),
                ),
                stderr_tail: out.stderr_text(),
            });
        }
        Ok(out.stdout)
    }

    /// Flavour and version of the installed server binary.
    async fn installed_version(&self) -> Result<ServerVersion> {
        let mut cmd = CommandSpec::new(self.server_program()?, ["--version"]);
        cmd.timeout = Some(VERSION_TIMEOUT);
        let out = self.run_tool(&cmd).await?;
        parse_version_output(&String::from_utf8_lossy(&out))
    }

    /// Stores the administrative password in the private state directory.
    fn store_admin_password(&self, password: &Password) -> Result<()> {
        ensure_dir(&self.state_dir, 0o700, None)?;
        let mut text = password.expose().as_bytes().to_vec();
        text.push(b'\n');
        write_file(&self.connector.password_file, &text, 0o600, None)
    }

    /// Initialises the data directory, creating the administrative account on the way.
    async fn initialise(
        &self,
        server: &ServerVersion,
        password: &Password,
        owner: Option<&Owner>,
    ) -> Result<()> {
        let bootstrap = self.run_dir.join(BOOTSTRAP_SQL);
        let root_pw = if server.is_mariadb() {
            None
        } else {
            Some(Password::generate(ADMIN_PASSWORD_LEN)?)
        };
        write_file(
            &bootstrap,
            bootstrap_sql(password, root_pw.as_ref())?.as_bytes(),
            0o600,
            owner,
        )?;
        let _cleanup = RemoveOnDrop(bootstrap.clone());
        let mut defaults = OsString::from("--defaults-file=");
        defaults.push(self.my_cnf());
        let mut cmd = if server.is_mariadb() {
            let mut extra = OsString::from("--extra-file=");
            extra.push(&bootstrap);
            CommandSpec::new(
                self.program(INSTALL_PROGRAMS)?,
                [
                    defaults,
                    "--auth-root-authentication-method=socket".into(),
                    // No second unix_socket superuser named after the OS user.
                    "--auth-root-socket-user=root".into(),
                    "--skip-test-db".into(),
                    extra,
                ],
            )
        } else {
            let mut init = OsString::from("--init-file=");
            init.push(&bootstrap);
            CommandSpec::new(
                self.server_program()?,
                [defaults, "--initialize-insecure".into(), init],
            )
        };
        // The install script runs `mariadbd` and `my_print_defaults` by name.
        cmd.env
            .push(("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()));
        cmd.run_as = self.os_user.clone();
        cmd.workdir = Some(PathBuf::from("/"));
        cmd.timeout = Some(INSTALL_TIMEOUT);
        tracing::info!(data_dir = %self.data_dir.display(), server = %server, "Initialising the data directory.");
        // Not raced against cancellation: killing the tool half-way would leave a half-built
        // data directory that a later prepare refuses.
        match self.run_tool(&cmd).await {
            Ok(_) => Ok(()),
            // The installer may quote the bootstrap SQL in its errors.
            Err(Error::Tool {
                program,
                exit,
                stderr_tail,
            }) => Err(Error::Tool {
                program,
                exit,
                stderr_tail: redact(&stderr_tail, password),
            }),
            Err(e) => Err(e),
        }
    }

    /// Writes `my.cnf` and creates `conf.d/`.
    fn write_base_config(&self, server: &ServerVersion, spec: &PrepareSpec) -> Result<()> {
        ensure_dir(&self.config_dir, 0o755, None)?;
        ensure_dir(&self.config_dir.join(CONF_D), 0o755, None)?;
        let server_id = match self.opts.server_id {
            Some(id) => id,
            None => random_server_id()?,
        };
        let text = BaseConf {
            flavor: server.flavor,
            run_as_root: self.runs_as_root(),
            data_dir: &self.data_dir,
            tmp_dir: &self.tmp_dir,
            socket: &self.connector.socket,
            pid_file: &self.pid_file(),
            bind: self.bind_address,
            port: self.port,
            server_id,
            conf_d: &self.conf_d(),
            memory_mb: spec.memory_mb,
        }
        .render()?;
        write_file(&self.my_cnf(), text.as_bytes(), 0o644, None)
    }

    /// Runs `SELECT 1` on a fresh session.
    pub(crate) async fn ping(&self) -> Result<()> {
        let attempt = async {
            let mut s = self.connector.connect().await?;
            s.conn.query_drop("SELECT 1").await.map_err(stmt(None))?;
            s.close().await;
            Ok::<(), Error>(())
        };
        match tokio::time::timeout(PING_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                operation: "readiness query",
                after: PING_TIMEOUT,
            }),
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
            "server",
            &self.run_dir.join(LOG_FILE),
            || self.ping(),
        )
        .await
    }

    /// Makes the runtime track a server that runs from an earlier agent (its pid file names a
    /// live process), so that it can be stopped.
    async fn adopt_running(&self) -> Result<()> {
        if matches!(self.runtime.state().await, ServerState::Running { .. }) {
            return Ok(());
        }
        let pid = fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        if let Some(pid) = pid.filter(|p| pid_alive(*p)) {
            tracing::info!(pid, "Adopting the running server.");
            self.runtime.start(&self.server_spec()?).await?;
        }
        Ok(())
    }

    /// Starts the server through the runtime and waits until it answers.
    pub(crate) async fn start_server(&self, ctx: &OpContext) -> Result<()> {
        self.connector.forget_version();
        // The server refuses to start without its tmpdir; recreate it if it was cleaned away.
        if !self.tmp_dir.exists() {
            ensure_dir(&self.tmp_dir, 0o700, self.owner()?.as_ref())?;
        }
        self.runtime.start(&self.server_spec()?).await?;
        self.wait_ready(ctx).await
    }

    /// Trove's `secure()`: no anonymous accounts, no remote root, no test database. Not
    /// binary-logged: every server secures itself, and a replica must not receive these.
    async fn secure(&self) -> Result<()> {
        let mut s = self.connector.connect().await?;
        s.exec("SET SESSION sql_log_bin = 0", None).await?;
        let rows: Vec<(String, String)> = s
            .conn
            .exec(
                "SELECT User, Host FROM mysql.user WHERE User = '' OR (User = ? AND Host <> ?)",
                (ROOT_USER, "localhost"),
            )
            .await
            .map_err(stmt(None))?;
        for (user, host) in rows {
            // Anonymous accounts have an empty name, which quote_ident refuses: quote directly.
            let acct = if user.is_empty() {
                format!("''@{}", crate::sql::quote_ident(&host)?)
            } else {
                account(&user, &host)?
            };
            s.exec(&format!("DROP USER IF EXISTS {acct}"), None).await?;
            tracing::info!(user = %user, host = %host, "Removed an insecure account.");
        }
        s.exec("DROP DATABASE IF EXISTS `test`", None).await?;
        s.close().await;
        Ok(())
    }
}

#[async_trait]
impl Lifecycle for MySqlDriver {
    async fn prepare(&self, ctx: &OpContext, spec: &PrepareSpec) -> Result<()> {
        ctx.cancelled()?;
        self.check_fresh_data_dir()?;
        // Overrides are checked before anything is created.
        if let Some(o) = &spec.overrides {
            self.validate(o)?;
        }
        let server = self.installed_version().await?;
        if server.is_mariadb() {
            self.program(INSTALL_PROGRAMS)?;
        }
        let owner = self.owner()?;
        if spec.config_contents.is_some() {
            tracing::info!(
                "Ignoring the base configuration sent with prepare; the driver writes its own \
                 (reset_configuration keeps its tunables)."
            );
        }

        ensure_dir(&self.data_dir, 0o750, owner.as_ref())?;
        ensure_dir(&self.run_dir, 0o755, owner.as_ref())?;
        ensure_dir(&self.tmp_dir, 0o700, owner.as_ref())?;
        if let Some(o) = &owner {
            check_traversable(&self.data_dir, o)?;
            check_traversable(&self.run_dir, o)?;
        }
        self.write_base_config(&server, spec)?;
        let password = Password::generate(ADMIN_PASSWORD_LEN)?;
        self.store_admin_password(&password)?;
        self.initialise(&server, &password, owner.as_ref()).await?;
        ctx.cancelled()?;

        tracing::info!(port = self.port, "Starting the server for the first time.");
        self.start_server(ctx).await?;
        self.secure().await?;
        if let Some(o) = spec.overrides.as_ref().filter(|o| !o.is_empty()) {
            let validated = self.validate(o)?;
            self.apply(ctx, &validated).await?;
        }
        if !spec.databases.is_empty() {
            self.create_databases(ctx, &spec.databases).await?;
        }
        if !spec.users.is_empty() {
            self.create_users(ctx, &spec.users).await?;
        }
        if let Some(pw) = &spec.root_password {
            self.enable_root(ctx, Some(pw.clone())).await?;
        }
        tracing::info!(server = %server, "The server is prepared.");
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
        // SIGTERM is the server's one clean shutdown; "immediate" only waits less before the
        // runtime kills it (InnoDB recovers on the next start).
        let grace = match mode {
            StopMode::Smart | StopMode::Fast => self.stop_timeout(),
            StopMode::Immediate => self.stop_timeout().min(Duration::from_secs(10)),
        };
        self.runtime.stop(StopSignal::Term, grace).await?;
        // The pid file names a dead process now; remove it so a later start does not adopt a
        // recycled pid.
        let pid = self.run_dir.join(PID_FILE);
        if let Err(e) = fs::remove_file(&pid)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %pid.display(), error = %e, "Could not remove the pid file.");
        }
        Ok(())
    }

    async fn restart(&self, ctx: &OpContext) -> Result<()> {
        self.stop(ctx, StopMode::Fast).await?;
        self.start(ctx).await
    }

    async fn status(&self, _ctx: &OpContext) -> DatastoreStatus {
        match self.runtime.state().await {
            ServerState::Running { .. } => {
                if self.ping().await.is_ok() {
                    DatastoreStatus::Healthy
                } else {
                    DatastoreStatus::Running
                }
            }
            // A server left running by an earlier agent is not tracked until `start` adopts
            // it; if it answers, it is healthy all the same.
            ServerState::NotStarted => {
                if self.ping().await.is_ok() {
                    DatastoreStatus::Healthy
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::Flavor;

    #[test]
    fn version_output_of_both_servers() {
        let m = parse_version_output(
            "/usr/sbin/mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64 \
             (Debian 12)\n",
        )
        .unwrap();
        assert_eq!((m.flavor, m.version), (Flavor::MariaDb, (10, 11, 19)));
        let my = parse_version_output(
            "/usr/sbin/mysqld  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)",
        )
        .unwrap();
        assert_eq!((my.flavor, my.version), (Flavor::MySql, (8, 0, 36)));
        assert!(parse_version_output("nonsense").is_err());
    }

    #[test]
    fn bootstrap_creates_the_admin_only() {
        let pw = Password::new("Abc123").unwrap();
        let sql = bootstrap_sql(&pw, None).unwrap();
        assert_eq!(
            sql,
            "FLUSH PRIVILEGES;\n\
             CREATE USER `os_admin`@`localhost` IDENTIFIED BY 'Abc123';\n\
             GRANT ALL PRIVILEGES ON *.* TO `os_admin`@`localhost` WITH GRANT OPTION;\n"
        );
        let root = Password::new("Root1").unwrap();
        let sql = bootstrap_sql(&pw, Some(&root)).unwrap();
        assert!(sql.ends_with("ALTER USER `root`@`localhost` IDENTIFIED BY 'Root1';\n"));
        assert_ne!(random_server_id().unwrap(), 0);
        assert_eq!(
            redact("near 'Abc123'; at line 2", &pw),
            "near '<redacted>'; at line 2"
        );
    }
}

//! Test support: a fresh PostgreSQL 15 server prepared through the driver's own `prepare` in a
//! temporary directory on a free loopback port, a guard that stops it and removes the
//! directory, and a [`Probe`] built on a raw tokio-postgres client (never the driver's code).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use guest_agent_api::lifecycle::PrepareSpec;
use guest_agent_api::runtime::ProcessRuntime;
use guest_agent_api::{Driver, DriverSettings, Lifecycle, OpContext};
use guest_agent_postgres::{ADMIN_PASSWORD_FILE, ADMIN_USER, PgDriver};
use guest_agent_testkit::{Harness, Probe, async_trait};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_postgres::{Client, NoTls};

/// Where the tests expect PostgreSQL 15's server binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The OS user the server runs as when the tests run as root.
pub const OS_USER: &str = "postgres";

/// Panics (never skips) when PostgreSQL 15 is missing.
pub fn require_postgres() {
    if !Path::new(PG_BIN).join("initdb").is_file() {
        panic!("PostgreSQL 15 is not installed: run tools/setup.sh");
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; the server binds it moments later).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Paths of one test server.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The temporary base directory.
    pub base: PathBuf,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Socket, log directory.
    pub run_dir: PathBuf,
    /// The driver's private state directory.
    pub state_dir: PathBuf,
    /// The server port.
    pub port: u16,
}

impl Layout {
    /// The administrative password the driver stored.
    pub fn admin_password(&self) -> String {
        std::fs::read_to_string(self.state_dir.join(ADMIN_PASSWORD_FILE))
            .expect("admin password file")
            .trim_end()
            .to_owned()
    }

    /// The postmaster pid, if the pid file exists.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The server log.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.run_dir.join("postgres.log")).unwrap_or_default()
    }
}

/// Stops the server (SIGQUIT, then SIGKILL, by the pid in `postmaster.pid`) synchronously and
/// removes the temporary directory.
pub struct ServerGuard {
    layout: Layout,
    dir: Option<tempfile::TempDir>,
}

fn alive(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_gone(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

impl ServerGuard {
    /// The server's paths.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.layout.postmaster_pid().filter(|p| *p > 0 && alive(*p)) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
            if !wait_gone(pid, Duration::from_secs(5)) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                wait_gone(pid, Duration::from_secs(5));
            }
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// A temporary layout (base 0755 so the server's OS user can traverse it) and a driver on it
/// that has not been prepared.
pub fn unprepared(options: serde_json::Value) -> (Arc<PgDriver>, ServerGuard) {
    require_postgres();
    let dir = tempfile::Builder::new()
        .prefix("ga-pg-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = dir.path().to_owned();
    let layout = Layout {
        data_dir: base.join("data"),
        run_dir: base.join("run"),
        state_dir: base.join("state"),
        port: free_port(),
        base,
    };
    let mut settings = DriverSettings::new(
        "postgresql",
        &layout.data_dir,
        &layout.run_dir,
        &layout.state_dir,
        layout.port,
        Arc::new(ProcessRuntime::new()),
    );
    settings.bin_dirs = vec![PathBuf::from(PG_BIN)];
    if nix::unistd::geteuid().is_root() {
        settings.os_user = Some(OS_USER.to_owned());
    }
    settings.options = options;
    let driver = Arc::new(PgDriver::new(settings).expect("driver builds"));
    (
        driver,
        ServerGuard {
            layout,
            dir: Some(dir),
        },
    )
}

/// The prepare spec the tests use unless they need another: small memory.
pub fn small_spec() -> PrepareSpec {
    PrepareSpec {
        memory_mb: Some(512),
        ..PrepareSpec::default()
    }
}

/// A fresh server prepared through the driver with `spec`. A port taken between choosing and
/// binding it is retried with a new one.
pub async fn prepared(spec: &PrepareSpec) -> (Arc<PgDriver>, ServerGuard) {
    let mut last = String::new();
    for _ in 0..3 {
        let (driver, guard) = unprepared(serde_json::Value::Null);
        let ctx = OpContext::new("test-prepare");
        match driver.prepare(&ctx, spec).await {
            Ok(()) => return (driver, guard),
            Err(e) => {
                last = format!("{e}\nserver log:\n{}", guard.layout().server_log());
                // Stop whatever is left before the guard removes the directory.
                let _ = driver
                    .stop(
                        &OpContext::new("cleanup"),
                        guest_agent_api::StopMode::Immediate,
                    )
                    .await;
            }
        }
    }
    panic!("prepare failed three times: {last}");
}

/// A raw client into the test server, independent of the driver.
#[derive(Debug, Clone)]
pub struct PgProbe {
    layout: Layout,
    admin_password: String,
}

impl PgProbe {
    /// A probe for the server of `guard`.
    pub fn new(guard: &ServerGuard) -> Self {
        Self {
            admin_password: guard.layout().admin_password(),
            layout: guard.layout().clone(),
        }
    }

    /// A probe into the server of `guard` logging in as the admin role with the password of
    /// `catalog_origin`'s server: a replica's catalog (and so that password) is its
    /// primary's.
    pub fn with_catalog_of(guard: &ServerGuard, catalog_origin: &ServerGuard) -> Self {
        Self {
            admin_password: catalog_origin.layout().admin_password(),
            layout: guard.layout().clone(),
        }
    }

    /// Connects over TCP to 127.0.0.1 as `user`.
    pub async fn connect(
        &self,
        user: &str,
        password: &str,
        database: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.layout.port)
            .user(user)
            .password(password)
            .dbname(database)
            .connect_timeout(Duration::from_secs(5));
        let (client, conn) = cfg.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// An administrative session to `database` over the server's socket, as the driver
    /// itself logs in (peer identity of this process), so it works on a replica whose admin
    /// password came from its primary.
    pub async fn admin(&self, database: &str) -> Result<Client, tokio_postgres::Error> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(&self.layout.run_dir)
            .port(self.layout.port)
            .user(ADMIN_USER)
            .password(&self.admin_password)
            .dbname(database)
            .connect_timeout(Duration::from_secs(5));
        let (client, conn) = cfg.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    async fn admin_bool(&self, sql: &str, arg: &str) -> bool {
        let Ok(c) = self.admin("postgres").await else {
            return false;
        };
        match c.query_opt(sql, &[&arg]).await {
            Ok(Some(row)) => row.get::<_, bool>(0),
            _ => false,
        }
    }
}

#[async_trait]
impl Probe for PgProbe {
    async fn can_login(&self, user: &str, password: &str, database: Option<&str>) -> bool {
        match self
            .connect(user, password, database.unwrap_or("postgres"))
            .await
        {
            Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }

    async fn can_write(&self, user: &str, password: &str, database: &str) -> bool {
        let Ok(c) = self.connect(user, password, database).await else {
            return false;
        };
        c.batch_execute(
            "CREATE TABLE probe_can_write (id int); \
             INSERT INTO probe_can_write VALUES (1); \
             DROP TABLE probe_can_write",
        )
        .await
        .is_ok()
    }

    async fn database_exists(&self, name: &str) -> bool {
        self.admin_bool(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1::text)",
            name,
        )
        .await
    }

    async fn user_exists(&self, name: &str, _host: &str) -> bool {
        self.admin_bool(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1::text)",
            name,
        )
        .await
    }

    async fn is_superuser(&self, name: &str, _host: &str) -> bool {
        self.admin_bool(
            "SELECT COALESCE((SELECT rolsuper FROM pg_roles WHERE rolname = $1::text), false)",
            name,
        )
        .await
    }

    async fn write_something(&self) -> Result<(), String> {
        let c = self.admin("postgres").await.map_err(|e| e.to_string())?;
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS probe_writes (id bigserial PRIMARY KEY, at timestamptz \
             DEFAULT now()); INSERT INTO probe_writes DEFAULT VALUES",
        )
        .await
        .map_err(|e| e.to_string())
    }

    async fn setting(&self, name: &str) -> Result<String, String> {
        let c = self.admin("postgres").await.map_err(|e| e.to_string())?;
        let row = c
            .query_one("SELECT current_setting($1::text)", &[&name])
            .await
            .map_err(|e| e.to_string())?;
        Ok(row.get(0))
    }

    async fn kill_server(&self) -> Result<(), String> {
        let pid = self
            .layout
            .postmaster_pid()
            .ok_or_else(|| "no postmaster.pid".to_owned())?;
        kill(Pid::from_raw(pid), Signal::SIGKILL).map_err(|e| e.to_string())?;
        if wait_gone(pid, Duration::from_secs(10)) {
            Ok(())
        } else {
            Err(format!("postmaster {pid} survived SIGKILL"))
        }
    }
}

/// A fresh prepared server, its probe and its guard.
async fn fresh_harness() -> Harness {
    let (driver, guard) = prepared(&small_spec()).await;
    let probe = PgProbe::new(&guard);
    let driver: Arc<dyn Driver> = driver;
    Harness::new(driver, Box::new(probe), Box::new(guard))
}

/// The conformance kit's harness: a fresh prepared server, its probe and its guard, with
/// more fresh servers for the replication cases.
pub async fn make_harness() -> Harness {
    fresh_harness().await.with_peers(fresh_harness)
}

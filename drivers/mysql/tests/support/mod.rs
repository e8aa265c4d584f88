//! Test support: fresh MariaDB servers prepared through the driver's own `prepare`, each in a
//! temporary directory on a free 127.0.0.1 port, and a [`Probe`] built on a raw `mysql_async`
//! client (never on the driver's code).
//!
//! An [`Instance`] kills its server by the pid file and removes its directory when dropped.
//! A machine without MariaDB fails loudly: the tests never skip.

#![allow(dead_code, unreachable_pub, missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use guest_agent_api::lifecycle::PrepareSpec;
use guest_agent_api::runtime::ProcessRuntime;
use guest_agent_api::{Driver, DriverSettings, OpContext};
use guest_agent_mysql::MySqlDriver;
use guest_agent_testkit::{Harness, Probe, async_trait};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};

/// Where Debian installs the server and its installer.
const MARIADBD: &str = "/usr/sbin/mariadbd";
const INSTALL_DB: &str = "/usr/bin/mariadb-install-db";
/// Bound on one probe connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Panics unless MariaDB is installed.
pub fn require_mariadb() {
    for p in [MARIADBD, INSTALL_DB] {
        assert!(
            Path::new(p).exists(),
            "MariaDB is not installed: run tools/setup.sh ({p} is missing)"
        );
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the server binds it right after).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// One MariaDB server prepared by the driver, killed and removed on drop.
pub struct Instance {
    pub driver: Arc<MySqlDriver>,
    pub port: u16,
    pub base: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("port", &self.port)
            .field("base", &self.base)
            .finish()
    }
}

impl Instance {
    /// Builds the driver over a fresh temporary directory without preparing it.
    pub fn unprepared() -> Self {
        // As root, run the server as root: the `user = root` path of my.cnf.
        let os_user = nix::unistd::geteuid().is_root().then(|| "root".to_owned());
        Self::unprepared_as(os_user)
    }

    /// Like [`Instance::unprepared`], with the server run as `os_user`.
    pub fn unprepared_as(os_user: Option<String>) -> Self {
        require_mariadb();
        let dir = tempfile::Builder::new()
            .prefix("ga-mysql-")
            .tempdir_in("/tmp")
            .expect("temporary directory");
        let base = dir.path().to_owned();
        let port = free_port();
        let mut settings = DriverSettings::new(
            "mariadb",
            base.join("data"),
            base.join("run"),
            base.join("state"),
            port,
            Arc::new(ProcessRuntime::new()),
        );
        settings.os_user = os_user;
        let driver = Arc::new(MySqlDriver::new(settings).expect("driver settings"));
        Self {
            driver,
            port,
            base,
            _dir: dir,
        }
    }

    /// A fresh, prepared, running server.
    pub async fn start() -> Self {
        Self::unprepared().prepared().await
    }

    /// Prepares this instance through the driver.
    pub async fn prepared(self) -> Self {
        let inst = self;
        let spec = PrepareSpec {
            memory_mb: Some(256),
            ..PrepareSpec::default()
        };
        let ctx = OpContext::new("test-prepare");
        if let Err(e) = inst.driver.lifecycle().prepare(&ctx, &spec).await {
            let log = std::fs::read_to_string(inst.base.join("run").join("mysqld.log"))
                .unwrap_or_default();
            panic!("prepare failed: {e} ({e:?})\nserver log:\n{log}");
        }
        inst
    }

    pub fn pid_file(&self) -> PathBuf {
        self.base.join("run").join("mysqld.pid")
    }

    pub fn socket(&self) -> PathBuf {
        self.base.join("run").join("mysqld.sock")
    }

    pub fn admin_password(&self) -> String {
        std::fs::read_to_string(self.base.join("state").join("mysql-admin.password"))
            .expect("admin password file")
            .trim_end()
            .to_owned()
    }

    /// The probe for this server.
    pub fn probe(&self) -> MariaProbe {
        MariaProbe {
            port: self.port,
            socket: self.socket(),
            admin_password: self.admin_password(),
            pid_file: self.pid_file(),
        }
    }

    /// SIGKILL to the server, as a crash would do.
    pub fn kill(&self) -> Result<(), String> {
        kill_by_pid_file(&self.pid_file())
    }
}

fn kill_by_pid_file(pid_file: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(pid_file).map_err(|e| format!("pid file: {e}"))?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|e| format!("pid file holds {text:?}: {e}"))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .map_err(|e| format!("kill {pid}: {e}"))
}

impl Drop for Instance {
    fn drop(&mut self) {
        // The server is not our child's child once the runtime is gone: end it by its pid.
        let _ = kill_by_pid_file(&self.pid_file());
    }
}

/// The independent view into one server: the administrative account over the socket, user
/// logins over TCP on 127.0.0.1 (so that `root@localhost`'s socket authentication never
/// answers for `root@'%'`).
#[derive(Debug, Clone)]
pub struct MariaProbe {
    pub port: u16,
    pub socket: PathBuf,
    pub admin_password: String,
    pub pid_file: PathBuf,
}

impl MariaProbe {
    /// A session as the administrative account.
    pub async fn admin(&self) -> Result<Conn, String> {
        let opts = OptsBuilder::default()
            .socket(Some(self.socket.to_string_lossy().into_owned()))
            .user(Some("os_admin"))
            .pass(Some(self.admin_password.clone()));
        connect(opts).await
    }

    /// A session as `user` over TCP.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        db: Option<&str>,
    ) -> Result<Conn, String> {
        let opts = OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .prefer_socket(false)
            .user(Some(user))
            .pass(Some(password))
            .db_name(db);
        connect(opts).await
    }

    /// Runs statements as the administrative account.
    pub async fn admin_exec(&self, sql: &str) -> Result<(), String> {
        let mut c = self.admin().await?;
        let r = c.query_drop(sql).await.map_err(|e| e.to_string());
        let _ = c.disconnect().await;
        r
    }

    /// One text value as the administrative account.
    pub async fn admin_value(&self, sql: &str) -> Result<Option<String>, String> {
        let mut c = self.admin().await?;
        let r: Result<Option<Option<String>>, String> =
            c.query_first(sql).await.map_err(|e| e.to_string());
        let _ = c.disconnect().await;
        r.map(Option::flatten)
    }

    /// Whether `user` can create and fill a table in `db`, and read it back.
    pub async fn write_as(&self, user: &str, password: &str, db: &str) -> Result<(), String> {
        let mut c = self.login(user, password, Some(db)).await?;
        let table = format!("probe_{}", std::process::id());
        let r = async {
            c.query_drop(format!("CREATE TABLE IF NOT EXISTS `{table}` (id INT)"))
                .await?;
            c.query_drop(format!("INSERT INTO `{table}` VALUES (1)"))
                .await?;
            c.query_drop(format!("DROP TABLE `{table}`")).await?;
            Ok::<(), mysql_async::Error>(())
        }
        .await
        .map_err(|e| e.to_string());
        let _ = c.disconnect().await;
        r
    }
}

async fn connect(opts: OptsBuilder) -> Result<Conn, String> {
    match tokio::time::timeout(PROBE_TIMEOUT, Conn::new(opts)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("probe connection timed out".to_owned()),
    }
}

#[async_trait]
impl Probe for MariaProbe {
    async fn can_login(&self, user: &str, password: &str, database: Option<&str>) -> bool {
        match self.login(user, password, database).await {
            Ok(mut c) => {
                let ok = c.query_drop("SELECT 1").await.is_ok();
                let _ = c.disconnect().await;
                ok
            }
            Err(_) => false,
        }
    }

    async fn can_write(&self, user: &str, password: &str, database: &str) -> bool {
        self.write_as(user, password, database).await.is_ok()
    }

    async fn database_exists(&self, name: &str) -> bool {
        let Ok(mut c) = self.admin().await else {
            return false;
        };
        let r: Option<u8> = c
            .exec_first(
                "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                (name,),
            )
            .await
            .unwrap_or(None);
        let _ = c.disconnect().await;
        r.is_some()
    }

    async fn user_exists(&self, name: &str, host: &str) -> bool {
        let Ok(mut c) = self.admin().await else {
            return false;
        };
        let r: Option<u8> = c
            .exec_first(
                "SELECT 1 FROM mysql.user WHERE User = ? AND Host = ?",
                (name, host),
            )
            .await
            .unwrap_or(None);
        let _ = c.disconnect().await;
        r.is_some()
    }

    async fn is_superuser(&self, name: &str, host: &str) -> bool {
        let Ok(mut c) = self.admin().await else {
            return false;
        };
        let r: Option<String> = c
            .exec_first(
                "SELECT Super_priv FROM mysql.user WHERE User = ? AND Host = ?",
                (name, host),
            )
            .await
            .unwrap_or(None);
        let _ = c.disconnect().await;
        r.as_deref() == Some("Y")
    }

    async fn write_something(&self) -> Result<(), String> {
        self.admin_exec(
            "CREATE DATABASE IF NOT EXISTS probe_w; \
             CREATE TABLE IF NOT EXISTS probe_w.t (id INT AUTO_INCREMENT PRIMARY KEY, at DATETIME(6)); \
             INSERT INTO probe_w.t (at) VALUES (NOW(6))",
        )
        .await
    }

    async fn kill_server(&self) -> Result<(), String> {
        kill_by_pid_file(&self.pid_file)
    }
}

/// A fresh prepared server, its driver and probe.
async fn fresh_harness() -> Harness {
    let inst = Instance::start().await;
    let driver: Arc<dyn Driver> = Arc::<MySqlDriver>::clone(&inst.driver);
    let probe = Box::new(inst.probe());
    Harness::new(driver, probe, Box::new(inst))
}

/// The conformance kit's harness: a fresh prepared server, its driver and probe, with more
/// fresh servers for the replication cases.
pub async fn make_harness() -> Harness {
    fresh_harness().await.with_peers(fresh_harness)
}

//! MariaDB for the end-to-end tests: a [`MariaEnv`] is a [`TestEnv`] (certificates, ports,
//! agent state) plus a MariaDB server directory and port of its own, with an agent
//! configuration for the `mariadb` manager (OS user `mysql`). A [`MariaDirect`] checks
//! results with direct `mysql_async` sessions that do not go through the agent: as the users
//! the agent created (over TCP on 127.0.0.1) or as the driver's administrative account (over
//! the server's socket, with the password the driver keeps in the agent's state directory).
//!
//! Dropping a [`MariaEnv`] stops the server by its pid file (the agent deliberately leaves
//! the server running when it exits). A missing MariaDB install fails loudly.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::client::RpcClient;
use crate::services::postgres::is_alive;
use crate::{Agent, TestEnv, set_mode};

/// Debian's MariaDB server binary.
pub const MARIADBD: &str = "/usr/sbin/mariadbd";
/// Debian's MariaDB data directory installer.
pub const MARIADB_INSTALL_DB: &str = "/usr/bin/mariadb-install-db";
/// The OS user the MariaDB server runs as.
pub const MYSQL_OS_USER: &str = "mysql";
/// The agent's manager name for MariaDB.
pub const MARIADB_MANAGER: &str = "mariadb";
/// The driver's administrative account (`os_admin@localhost`, socket only).
pub const MARIADB_ADMIN_USER: &str = "os_admin";
/// Where the driver keeps the administrative password, under the agent's state directory.
pub const MARIADB_ADMIN_PASSWORD_FILE: &str = "datastore/mysql-admin.password";
/// The managed overrides file, under the configuration directory.
pub const MARIADB_OVERRIDES_FILE: &str = "conf.d/50-guest-agent-overrides.cnf";

/// Bound on opening one direct session: a guard against hanging, not a speed expectation.
const CONNECT_BOUND: Duration = Duration::from_secs(15);

/// Panics unless MariaDB and the `mysql` OS user are installed.
pub fn require_mariadb() {
    for p in [MARIADBD, MARIADB_INSTALL_DB] {
        assert!(
            Path::new(p).is_file(),
            "MariaDB is not installed ({p} is missing): run tools/setup.sh"
        );
    }
    let user = nix::unistd::User::from_name(MYSQL_OS_USER).ok().flatten();
    assert!(
        user.is_some(),
        "the '{MYSQL_OS_USER}' OS user does not exist: run tools/setup.sh"
    );
}

/// Trove-shaped `prepare` arguments for MariaDB with the given databases and users (Trove
/// schema and user dicts) and no root password.
pub fn mariadb_prepare_args(databases: Value, users: Value) -> Value {
    json!({
        "packages": null,
        "databases": databases,
        "memory_mb": 256,
        "users": users,
        "device_path": "/dev/vdb",
        "mount_point": "/var/lib/mysql",
        "backup_info": null,
        "config_contents": null,
        "root_password": null,
        "overrides": {},
        "cluster_config": null,
        "snapshot": null,
        "modules": null,
        "ds_version": "10.11",
    })
}

/// One test's MariaDB world: a [`TestEnv`] for the agent, plus the server's directories and
/// port. Dropping it stops the server.
#[derive(Debug)]
pub struct MariaEnv {
    /// Certificates, HTTPS port, agent state and configuration directories.
    pub env: TestEnv,
    /// Parent of the server's directories (the driver puts `conf/` and `tmp/` here too).
    pub base: PathBuf,
    /// The server's data directory (created by the driver at prepare).
    pub data_dir: PathBuf,
    /// Socket, pid and log directory of the server.
    pub run_dir: PathBuf,
    /// `my.cnf` and `conf.d/` (the driver's default: `conf` beside the data directory).
    pub config_dir: PathBuf,
    /// The server's port on 127.0.0.1.
    pub port: u16,
    /// `[datastore.options]` of the agent configuration (the driver's options).
    pub options: Value,
}

impl MariaEnv {
    /// A fresh environment. Panics (with "run tools/setup.sh") if MariaDB is missing.
    pub fn new() -> Self {
        Self::with_options(json!({}))
    }

    /// A fresh environment whose agent gets these driver options.
    pub fn with_options(options: Value) -> Self {
        require_mariadb();
        let env = TestEnv::new();
        let base = env.dir.join("mariadb");
        fs::create_dir(&base).expect("create the MariaDB base directory");
        set_mode(&base, 0o755);
        Self {
            data_dir: base.join("data"),
            run_dir: base.join("run"),
            config_dir: base.join("conf"),
            port: crate::free_port(),
            options,
            base,
            env,
        }
    }

    /// The agent configuration: manager `mariadb`, OS user `mysql`, the server on
    /// 127.0.0.1, HTTPS with mutual TLS on 127.0.0.1.
    pub fn config(&self) -> Value {
        let mut c = self.env.config();
        c["agent"]["instance_id"] = json!(format!("e2e-mariadb-{}", self.env.http_port));
        c["datastore"] = json!({
            "manager": MARIADB_MANAGER,
            "data_dir": self.data_dir,
            "run_dir": self.run_dir,
            "bind_address": "127.0.0.1",
            "port": self.port,
            "os_user": MYSQL_OS_USER,
            "options": self.options,
        });
        c
    }

    /// A client with the good client certificate.
    pub fn client(&self) -> RpcClient {
        self.env.client()
    }

    /// Starts an agent with [`MariaEnv::config`] and waits until `/healthz` answers.
    pub async fn start_agent(&self) -> Agent {
        self.env.start_agent_with(&self.config()).await
    }

    /// Starts an agent (the binary `bin`) without waiting for it.
    pub fn spawn_agent_bin(&self, bin: &Path) -> Agent {
        Agent::spawn_bin(bin, &self.env, &self.config())
    }

    /// Starts an agent, runs `prepare` with `args` and waits until it succeeded and the
    /// datastore reports `healthy`.
    pub async fn prepared_agent(&self, args: Value) -> (Agent, RpcClient) {
        let agent = self.start_agent().await;
        let client = self.client();
        client.prepare(args).await;
        client.wait_status("healthy").await;
        (agent, client)
    }

    /// The direct view of this server.
    pub fn direct(&self) -> MariaDirect {
        MariaDirect {
            port: self.port,
            socket: self.run_dir.join("mysqld.sock"),
            admin_password_file: self.env.state_dir.join(MARIADB_ADMIN_PASSWORD_FILE),
        }
    }

    /// The server's pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir.join("mysqld.pid")
    }

    /// The managed overrides file.
    pub fn overrides_file(&self) -> PathBuf {
        self.config_dir.join(MARIADB_OVERRIDES_FILE)
    }

    /// The live server process, from its pid file.
    pub fn server_pid(&self) -> Option<Pid> {
        server_pid(&self.pid_file())
    }

    /// SIGKILL to the server, as a crash would do; returns the pid it killed. Panics when no
    /// server runs.
    pub fn kill_server(&self) -> Pid {
        let pid = self
            .server_pid()
            .unwrap_or_else(|| panic!("no MariaDB server runs from {}", self.base.display()));
        kill(pid, Signal::SIGKILL).unwrap_or_else(|e| panic!("kill -9 {pid}: {e}"));
        assert!(
            wait_gone(pid, Duration::from_secs(30)),
            "mariadbd {pid} survived SIGKILL"
        );
        pid
    }

    /// Stops the server if it runs: SIGTERM (clean shutdown), then SIGKILL.
    pub fn stop_server(&self) {
        stop_server(&self.pid_file());
    }

    /// The last `max` bytes of the server log.
    pub fn server_log(&self, max: usize) -> String {
        let path = self.run_dir.join("mysqld.log");
        let text = fs::read_to_string(&path).unwrap_or_default();
        let mut start = text.len().saturating_sub(max);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        format!("--- {} (tail) ---\n{}\n", path.display(), &text[start..])
    }
}

impl Default for MariaEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MariaEnv {
    fn drop(&mut self) {
        self.stop_server();
        if std::thread::panicking() {
            eprintln!("{}", self.server_log(4000));
        }
    }
}

/// The live MariaDB server named by `pid_file` (the process must be `mariadbd`/`mysqld`, so
/// a recycled pid is never signalled).
pub fn server_pid(pid_file: &Path) -> Option<Pid> {
    let text = fs::read_to_string(pid_file).ok()?;
    let pid = Pid::from_raw(text.trim().parse().ok()?);
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmd = String::from_utf8_lossy(&cmdline);
    let is_server = cmd.contains("mariadbd") || cmd.contains("mysqld");
    (is_server && is_alive(pid)).then_some(pid)
}

fn wait_gone(pid: Pid, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if !is_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !is_alive(pid)
}

/// Stops the server of `pid_file` if it runs: SIGTERM, then SIGKILL.
pub fn stop_server(pid_file: &Path) {
    let Some(pid) = server_pid(pid_file) else {
        return;
    };
    for (sig, bound) in [
        (Signal::SIGTERM, Duration::from_secs(30)),
        (Signal::SIGKILL, Duration::from_secs(10)),
    ] {
        if kill(pid, sig).is_err() || wait_gone(pid, bound) {
            return;
        }
    }
    eprintln!("mariadbd {pid} of {} did not stop", pid_file.display());
}

/// The server's code and message of a `mysql_async` error, or the error itself.
pub fn describe(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

/// A server error's code, if `e` is one.
pub fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// Direct sessions to one MariaDB server, bypassing the agent.
#[derive(Debug, Clone)]
pub struct MariaDirect {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// The server's Unix socket.
    pub socket: PathBuf,
    /// File holding the driver's administrative password.
    pub admin_password_file: PathBuf,
}

async fn open(opts: OptsBuilder) -> Result<Conn, mysql_async::Error> {
    match tokio::time::timeout(CONNECT_BOUND, Conn::new(opts)).await {
        Ok(r) => r,
        Err(_) => Err(mysql_async::Error::Other(
            "direct connection did not open within the bound".into(),
        )),
    }
}

impl MariaDirect {
    /// A session as `user` over TCP to 127.0.0.1 (so the server sees host `127.0.0.1`).
    pub async fn connect(
        &self,
        user: &str,
        password: &str,
        db: Option<&str>,
    ) -> Result<Conn, mysql_async::Error> {
        let opts = OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .prefer_socket(false)
            .user(Some(user))
            .pass(Some(password))
            .db_name(db);
        open(opts).await
    }

    /// A session as `user` over the server's socket (the server sees host `localhost`).
    pub async fn connect_socket(
        &self,
        user: &str,
        password: &str,
        db: Option<&str>,
    ) -> Result<Conn, mysql_async::Error> {
        let opts = OptsBuilder::default()
            .socket(Some(self.socket.to_string_lossy().into_owned()))
            .user(Some(user))
            .pass(Some(password))
            .db_name(db);
        open(opts).await
    }

    /// Like [`MariaDirect::connect`], panicking with the server's message on failure.
    pub async fn login(&self, user: &str, password: &str, db: Option<&str>) -> Conn {
        self.connect(user, password, db)
            .await
            .unwrap_or_else(|e| panic!("login as {user} (db {db:?}) failed: {}", describe(&e)))
    }

    /// The driver's administrative password.
    pub fn admin_password(&self) -> String {
        fs::read_to_string(&self.admin_password_file)
            .unwrap_or_else(|e| panic!("{}: {e}", self.admin_password_file.display()))
            .trim_end()
            .to_owned()
    }

    /// A session as the administrative account over the socket.
    pub async fn admin(&self) -> Conn {
        let opts = OptsBuilder::default()
            .socket(Some(self.socket.to_string_lossy().into_owned()))
            .user(Some(MARIADB_ADMIN_USER))
            .pass(Some(self.admin_password()));
        open(opts)
            .await
            .unwrap_or_else(|e| panic!("admin session: {}", describe(&e)))
    }

    /// Runs `sql` (text protocol) as the administrative account; rows as text columns.
    pub async fn admin_rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let mut c = self.admin().await;
        let rows: Vec<mysql_async::Row> = c
            .query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
        let _ = c.disconnect().await;
        rows.into_iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.get::<Option<String>, _>(i).flatten())
                    .collect()
            })
            .collect()
    }

    /// The first column of the first row of `sql`, as the administrative account.
    pub async fn admin_value(&self, sql: &str) -> Option<String> {
        self.admin_rows(sql)
            .await
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
    }

    /// Runs statements as the administrative account.
    pub async fn admin_exec(&self, sql: &str) {
        let mut c = self.admin().await;
        c.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
        let _ = c.disconnect().await;
    }

    /// `@@GLOBAL.<name>` as text.
    pub async fn global(&self, name: &str) -> String {
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "not a variable name: {name}"
        );
        self.admin_value(&format!("SELECT @@GLOBAL.{name}"))
            .await
            .unwrap_or_default()
    }

    /// Names of all databases, sorted.
    pub async fn database_names(&self) -> Vec<String> {
        self.admin_rows("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY 1")
            .await
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect()
    }

    /// `(character set, collation)` of database `db`, if it exists.
    pub async fn database_charset(&self, db: &str) -> Option<(String, String)> {
        let mut c = self.admin().await;
        let r: Option<(String, String)> = c
            .exec_first(
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME \
                 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                (db,),
            )
            .await
            .unwrap_or_else(|e| panic!("SCHEMATA: {}", describe(&e)));
        let _ = c.disconnect().await;
        r
    }

    /// Every account as `(user, host)`, sorted.
    pub async fn accounts(&self) -> Vec<(String, String)> {
        self.admin_rows("SELECT User, Host FROM mysql.user ORDER BY User, Host")
            .await
            .into_iter()
            .map(|r| {
                let mut it = r.into_iter();
                (
                    it.next().flatten().unwrap_or_default(),
                    it.next().flatten().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Whether the account `user@host` exists.
    pub async fn account_exists(&self, user: &str, host: &str) -> bool {
        self.accounts()
            .await
            .iter()
            .any(|(u, h)| u == user && h == host)
    }

    /// Logs in as `user` to `db` and creates, fills and drops a table there. `Err` carries
    /// the step that failed and the server's message.
    pub async fn write_as(&self, user: &str, password: &str, db: &str) -> Result<(), String> {
        let mut c = self
            .connect(user, password, Some(db))
            .await
            .map_err(|e| format!("login: {}", describe(&e)))?;
        let table = format!("e2e_probe_{}", std::process::id());
        let r = async {
            c.query_drop(format!("CREATE TABLE `{table}` (id INT PRIMARY KEY)"))
                .await?;
            c.query_drop(format!("INSERT INTO `{table}` VALUES (1)"))
                .await?;
            c.query_drop(format!("DROP TABLE `{table}`")).await?;
            Ok::<(), mysql_async::Error>(())
        }
        .await
        .map_err(|e| format!("write: {}", describe(&e)));
        let _ = c.disconnect().await;
        r
    }
}

/// One member of a MariaDB replication set: a server of its own with its own agent, driven
/// over HTTPS with mutual TLS. Dropping it stops the agent, then the server.
#[derive(Debug)]
pub struct Member {
    /// A name for messages (`primary`, `r1` ...).
    pub name: String,
    /// The server's `server_id` (given to the driver as an option).
    pub server_id: u32,
    /// The agent, while it runs (dropped first: SIGTERM).
    pub agent: Option<Agent>,
    /// A client of the agent.
    pub client: RpcClient,
    /// The server's environment (dropped after the agent: stops the server).
    pub env: MariaEnv,
}

impl Member {
    /// A member with `server_id`; its agent is not started yet.
    pub fn new(name: &str, server_id: u32) -> Self {
        let env = MariaEnv::with_options(json!({"server_id": server_id}));
        Self {
            name: name.to_owned(),
            server_id,
            agent: None,
            client: env.client(),
            env,
        }
    }

    /// Starts the agent (the built debug binary, or `bin`) and waits until `/healthz`
    /// answers.
    pub async fn start_agent(&mut self, bin: Option<&Path>) {
        let mut agent = match bin {
            Some(b) => self.env.spawn_agent_bin(b),
            None => Agent::spawn(&self.env.env, &self.env.config()),
        };
        agent.wait_healthz(&self.client).await;
        self.agent = Some(agent);
    }

    /// Runs `prepare` and waits until the datastore is healthy.
    pub async fn prepare(&self, args: Value) {
        self.client.prepare(args).await;
        self.client.wait_status("healthy").await;
    }

    /// Starts the agent and prepares the server.
    pub async fn start_prepared(&mut self, bin: Option<&Path>, args: Value) {
        self.start_agent(bin).await;
        self.prepare(args).await;
    }

    /// The direct view of the server.
    pub fn direct(&self) -> MariaDirect {
        self.env.direct()
    }

    /// SIGKILL to the server and to its agent, as when the machine dies.
    pub async fn crash(&mut self) {
        self.env.kill_server();
        if let Some(agent) = self.agent.as_mut() {
            agent.signal(Signal::SIGKILL);
            agent.wait_exit(Duration::from_secs(30)).await;
        }
    }
}

/// One GTID of MariaDB's `domain-server-sequence` form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gtid {
    /// Replication domain.
    pub domain: u32,
    /// `server_id` of the server that wrote it.
    pub server: u32,
    /// Sequence number within the domain.
    pub seq: u64,
}

/// Parses a MariaDB GTID position (`0-1-12,1-2-3`; empty is no position). Panics on
/// anything else, naming the text.
pub fn parse_gtid_pos(text: &str) -> Vec<Gtid> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|g| {
            let parts: Vec<&str> = g.split('-').collect();
            let parsed = match parts[..] {
                [d, s, n] => d.parse().ok().zip(s.parse().ok()).zip(n.parse().ok()).map(
                    |((domain, server), seq)| Gtid {
                        domain,
                        server,
                        seq,
                    },
                ),
                _ => None,
            };
            parsed.unwrap_or_else(|| panic!("not a MariaDB GTID position: {text:?}"))
        })
        .collect()
}

/// Whether position `a` holds everything of position `b` (per domain, a sequence number at
/// least as high).
pub fn gtid_reached(a: &[Gtid], b: &[Gtid]) -> bool {
    b.iter().all(|want| {
        a.iter()
            .any(|have| have.domain == want.domain && have.seq >= want.seq)
    })
}

/// Trove-shaped `snapshot_info` for `get_replication_snapshot` (the taskmanager's dict; the
/// agent needs the replica's id from it).
pub fn snapshot_info(replica_id: &str) -> Value {
    json!({
        "name": format!("Replication snapshot for {replica_id}"),
        "description": "Backup image used to initialize replication slave",
        "instance_id": "e2e-primary",
        "parent_id": null,
        "tenant_id": "e2e",
        "state": "NEW",
        "datastore_version_id": "e2e-mariadb-10.11",
        "deleted": false,
        "replica_number": 1,
        "backup_info": {},
        "storage_driver": "none",
        "id": replica_id,
        "datastore": "mariadb",
        "datastore_version": "10.11",
    })
}

/// The replication RPCs of one member, with Trove's argument names.
impl Member {
    /// `get_replication_snapshot` on a primary, for the replica `replica_id`.
    pub async fn replication_snapshot(&self, replica_id: &str) -> Value {
        self.client
            .call(
                "get_replication_snapshot",
                json!({"snapshot_info": snapshot_info(replica_id), "replica_source_config": ""}),
            )
            .await
    }

    /// `attach_replica` with a snapshot or a replica context.
    pub async fn attach_replica(&self, replica_info: &Value) {
        self.client
            .call(
                "attach_replica",
                json!({"replica_info": replica_info, "slave_config": "", "restart": false}),
            )
            .await;
    }

    /// `detach_replica`.
    pub async fn detach_replica(&self, for_failover: bool) -> Value {
        self.client
            .call("detach_replica", json!({"for_failover": for_failover}))
            .await
    }

    /// `get_replica_context` on a primary.
    pub async fn replica_context(&self) -> Value {
        self.client.call("get_replica_context", json!({})).await
    }

    /// `get_latest_txn_id`: the GTID position as text.
    pub async fn latest_txn_id(&self) -> String {
        let v = self.client.call("get_latest_txn_id", json!({})).await;
        v.as_str()
            .unwrap_or_else(|| panic!("{}: get_latest_txn_id is not a string: {v}", self.name))
            .to_owned()
    }

    /// `get_latest_txn_id`, parsed.
    pub async fn position(&self) -> Vec<Gtid> {
        parse_gtid_pos(&self.latest_txn_id().await)
    }

    /// `wait_for_txn`.
    pub async fn wait_for_txn(&self, txn: &str) {
        self.client.call("wait_for_txn", json!({"txn": txn})).await;
    }

    /// `make_read_only`.
    pub async fn make_read_only(&self, read_only: bool) {
        self.client
            .call("make_read_only", json!({"read_only": read_only}))
            .await;
    }
}

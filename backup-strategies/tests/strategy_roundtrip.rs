//! The strategies against real servers: PostgreSQL 15 (pg_basebackup, pg_dump) and MariaDB
//! (mariabackup full + incremental, mariadb-dump), backed up to the Swift test service,
//! restored into a fresh instance and compared; a tool killed mid-stream and a database that
//! does not exist fail cleanly with nothing committed.
//! Needs `tools/swift.sh start`, PostgreSQL 15 and MariaDB (tools/setup.sh).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::TryStreamExt;
use guest_agent_backup::pipeline::BackupSpec;
use guest_agent_backup::run::{CommandSpec, RunningSink, RunningTool, ToolExit, ToolRunner};
use guest_agent_backup::store::{ObjectStore, RetryPolicy};
use guest_agent_backup::strategies::mariabackup::MyConn;
use guest_agent_backup::strategies::pg_basebackup::PgConn;
use guest_agent_backup::strategies::{Mariabackup, MariadbDump, PgBasebackup, PgDump};
use guest_agent_backup::{
    BackupEngine, BackupError, InstanceKey, PipelineOpts, ProcessRunner, RestoreRequest,
    async_trait,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::sync::CancellationToken;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PG_USER: &str = "postgres";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn base_dir(prefix: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn chown_pg(path: &Path) {
    if is_root() {
        let u = nix::unistd::User::from_name(PG_USER).unwrap().unwrap();
        nix::unistd::chown(path, Some(u.uid), Some(u.gid)).unwrap();
    }
}

/// `program args…` as the postgres OS user when we are root.
fn pg_command(program: &str, args: &[&str]) -> Command {
    let mut c = if is_root() {
        let mut c = Command::new("/usr/bin/setpriv");
        c.args([
            "--reuid",
            PG_USER,
            "--regid",
            PG_USER,
            "--init-groups",
            "--",
            program,
        ]);
        c
    } else {
        Command::new(program)
    };
    c.args(args).env_clear().env("LC_ALL", "C");
    c
}

/// Stops a child server by signal and waits for it; removes nothing (the TempDir does).
struct Server {
    child: Child,
    stop: Signal,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), self.stop);
            for _ in 0..200 {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Pg {
    port: u16,
    data: PathBuf,
    _server: Server,
}

impl Pg {
    fn conn(&self) -> PgConn {
        PgConn {
            bin_dir: PathBuf::from(PG_BIN),
            host: "127.0.0.1".into(),
            port: self.port,
            user: PG_USER.into(),
            passfile: None,
            run_as: is_root().then(|| PG_USER.to_owned()),
        }
    }

    async fn client(&self, db: &str) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname={db}",
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        c
    }
}

/// Starts PostgreSQL on `data` (initialised unless `existing`), waits until it answers.
async fn start_pg(base: &Path, name: &str, existing: bool) -> Pg {
    assert!(
        Path::new(PG_BIN).join("initdb").is_file(),
        "PostgreSQL 15 is not installed: run tools/setup.sh"
    );
    let data = base.join(name);
    let sock = base.join(format!("{name}-sock"));
    std::fs::create_dir_all(&sock).unwrap();
    chown_pg(&sock);
    if !existing {
        std::fs::create_dir_all(&data).unwrap();
        chown_pg(&data);
        let st = pg_command(
            &format!("{PG_BIN}/initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                PG_USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
        )
        .stdout(Stdio::null())
        .status()
        .unwrap();
        assert!(st.success(), "initdb failed");
    }
    let port = free_port();
    let log = std::fs::File::create(base.join(format!("{name}.log"))).unwrap();
    let child = pg_command(
        &format!("{PG_BIN}/postgres"),
        &[
            "-D",
            data.to_str().unwrap(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            &format!("port={port}"),
            "-c",
            &format!("unix_socket_directories={}", sock.display()),
            "-c",
            "fsync=off",
            "-c",
            "wal_level=replica",
            "-c",
            "max_wal_senders=4",
            "-c",
            "logging_collector=off",
        ],
    )
    .stdout(Stdio::null())
    .stderr(log)
    .spawn()
    .unwrap();
    let pg = Pg {
        port,
        data,
        _server: Server {
            child,
            stop: Signal::SIGINT,
        },
    };
    for _ in 0..300 {
        if tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=1"),
            tokio_postgres::NoTls,
        )
        .await
        .is_ok()
        {
            return pg;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "PostgreSQL did not start: {}",
        std::fs::read_to_string(base.join(format!("{name}.log"))).unwrap_or_default()
    );
}

fn opts() -> PipelineOpts {
    PipelineOpts {
        chunk_size: 256 << 10,
        part_size: 5 << 20,
        concurrency: 3,
        retry: RetryPolicy::quick(3),
        ..PipelineOpts::default()
    }
}

fn engine(store: Arc<dyn ObjectStore>, runner: Arc<dyn ToolRunner>) -> BackupEngine {
    BackupEngine::new(store, runner, opts()).unwrap()
}

fn spec(id: &str, dbs: &[&str], key: Option<&InstanceKey>) -> BackupSpec {
    BackupSpec {
        backup_id: id.into(),
        prefix: "inst-1".into(),
        datastore_version: "test".into(),
        databases: dbs.iter().map(|s| (*s).to_owned()).collect(),
        key: key.cloned(),
        ..BackupSpec::default()
    }
}

fn never() -> CancellationToken {
    CancellationToken::new()
}

async fn assert_nothing_stored(store: &dyn ObjectStore) {
    let objects: Vec<_> = store.list("inst-1/").try_collect().await.unwrap();
    assert!(objects.is_empty(), "objects left: {objects:?}");
    let pending = store.list_pending_uploads("inst-1/").await.unwrap();
    assert!(pending.is_empty(), "uploads left: {pending:?}");
}

async fn fill_pg(pg: &Pg, db: &str, rows: i64) {
    let c = pg.client(db).await;
    c.batch_execute("CREATE TABLE items (id bigint PRIMARY KEY, note text NOT NULL);")
        .await
        .unwrap();
    c.execute(
        "INSERT INTO items SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) \
         || md5((g * 31)::text) FROM generate_series(1, $1::bigint) g",
        &[&rows],
    )
    .await
    .unwrap();
}

async fn pg_fingerprint(pg: &Pg, db: &str) -> (i64, String) {
    let c = pg.client(db).await;
    let row = c
        .query_one(
            "SELECT count(*), md5(string_agg(note, ',' ORDER BY id)) FROM items",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Kills the backup tool after it wrote `limit` bytes.
#[derive(Debug)]
struct KillingRunner {
    inner: ProcessRunner,
    limit: u64,
}

struct KillAfter {
    inner: Pin<Box<dyn AsyncRead + Send>>,
    seen: u64,
    limit: u64,
    pid: Option<u32>,
}

impl AsyncRead for KillAfter {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = self.inner.as_mut().poll_read(cx, buf);
        self.seen += (buf.filled().len() - before) as u64;
        if self.seen > self.limit
            && let Some(pid) = self.pid.take()
        {
            let _ = kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGKILL);
        }
        r
    }
}

#[async_trait]
impl ToolRunner for KillingRunner {
    fn kind(&self) -> &'static str {
        "killing"
    }
    async fn spawn_reader(&self, cmd: &CommandSpec) -> guest_agent_backup::Result<RunningTool> {
        let mut t = self.inner.spawn_reader(cmd).await?;
        t.stdout = Box::pin(KillAfter {
            inner: t.stdout,
            seen: 0,
            limit: self.limit,
            pid: t.pid,
        });
        Ok(t)
    }
    async fn spawn_writer(&self, cmd: &CommandSpec) -> guest_agent_backup::Result<RunningSink> {
        self.inner.spawn_writer(cmd).await
    }
    async fn run(&self, cmd: &CommandSpec) -> guest_agent_backup::Result<ToolExit> {
        self.inner.run(cmd).await
    }
}

#[tokio::test]
async fn postgres_physical_backup_restores_into_a_fresh_instance() {
    let s3 = Arc::new(support::s3_store(&support::unique("ga-pgphys")).await);
    let store: Arc<dyn ObjectStore> = Arc::clone(&s3) as Arc<dyn ObjectStore>;
    let base = base_dir("ga-bk-pg-");
    let src = start_pg(base.path(), "src", false).await;
    fill_pg(&src, "postgres", 150_000).await;
    let want = pg_fingerprint(&src, "postgres").await;
    let key = InstanceKey::generate().unwrap();
    let e = engine(Arc::clone(&store), Arc::new(ProcessRunner::new()));
    let strategy = PgBasebackup::new(src.conn());
    let rep = e
        .backup(&strategy, &spec("pgb-1", &[], Some(&key)), None, &never())
        .await
        .unwrap();
    let m = &rep.manifest;
    assert_eq!(m.strategy, "pg_basebackup");
    assert!(m.position.is_some(), "no LSN parsed: {:?}", m.tool);
    assert!(m.data.parts >= 1, "expected a multipart upload: {m:?}");
    e.verify(&rep.manifest_key, Some(&key), None, &never())
        .await
        .unwrap();

    // Restore into an empty directory and start a second server on it.
    let target = base.path().join("restored");
    let rr = RestoreRequest {
        target_dir: Some(target.clone()),
        ..RestoreRequest::default()
    };
    e.restore(
        &strategy,
        &rep.manifest_key,
        rr.clone(),
        Some(&key),
        None,
        &never(),
    )
    .await
    .unwrap();
    let restored = start_pg(base.path(), "restored", true).await;
    assert_eq!(restored.data, target);
    assert_eq!(pg_fingerprint(&restored, "postgres").await, want);

    // A non-empty target is refused before anything is written.
    let e2 = e
        .restore(&strategy, &rep.manifest_key, rr, Some(&key), None, &never())
        .await
        .unwrap_err();
    assert!(matches!(e2, BackupError::InvalidArgument { .. }), "{e2}");
    e.delete(&rep.manifest_key).await.unwrap();
    assert_nothing_stored(store.as_ref()).await;
    s3.delete_bucket().await.unwrap();
}

#[tokio::test]
async fn postgres_tool_killed_mid_stream_commits_nothing() {
    let s3 = Arc::new(support::s3_store(&support::unique("ga-pgkill")).await);
    let store: Arc<dyn ObjectStore> = Arc::clone(&s3) as Arc<dyn ObjectStore>;
    let base = base_dir("ga-bk-pgk-");
    let src = start_pg(base.path(), "src", false).await;
    fill_pg(&src, "postgres", 150_000).await;
    let e = engine(
        Arc::clone(&store),
        Arc::new(KillingRunner {
            inner: ProcessRunner::new(),
            limit: 12 << 20,
        }),
    );
    let err = e
        .backup(
            &PgBasebackup::new(src.conn()),
            &spec("pgk", &[], None),
            None,
            &never(),
        )
        .await
        .unwrap_err();
    match &err {
        BackupError::Tool { exit, .. } => assert!(exit.contains("signal 9"), "{err}"),
        other => panic!("expected a tool failure, got {other}"),
    }
    assert_nothing_stored(store.as_ref()).await;
    s3.delete_bucket().await.unwrap();
    // The server is unharmed.
    assert_eq!(pg_fingerprint(&src, "postgres").await.0, 150_000);
}

#[tokio::test]
async fn postgres_logical_backup_of_one_database() {
    let swift = Arc::new(support::swift_store(&support::unique("ga-pgdump")).await);
    let store: Arc<dyn ObjectStore> = Arc::clone(&swift) as Arc<dyn ObjectStore>;
    let base = base_dir("ga-bk-pgd-");
    let src = start_pg(base.path(), "src", false).await;
    src.client("postgres")
        .await
        .batch_execute("CREATE DATABASE shop")
        .await
        .unwrap();
    fill_pg(&src, "shop", 5_000).await;
    let want = pg_fingerprint(&src, "shop").await;
    let key = InstanceKey::generate().unwrap();
    let e = engine(Arc::clone(&store), Arc::new(ProcessRunner::new()));
    let strategy = PgDump::new(src.conn());

    // A database that does not exist is a clear error, and nothing is stored.
    let err = e
        .backup(
            &strategy,
            &spec("pgd-missing", &["nope"], Some(&key)),
            None,
            &never(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackupError::DatabaseNotFound { name } if name == "nope"),
        "{err}"
    );
    assert_nothing_stored(store.as_ref()).await;

    let rep = e
        .backup(
            &strategy,
            &spec("pgd-1", &["shop"], Some(&key)),
            None,
            &never(),
        )
        .await
        .unwrap();
    let dst = start_pg(base.path(), "dst", false).await;
    let mut restore = PgDump::new(dst.conn());
    restore.create_database = true;
    e.restore(
        &restore,
        &rep.manifest_key,
        RestoreRequest::default(),
        Some(&key),
        None,
        &never(),
    )
    .await
    .unwrap();
    assert_eq!(pg_fingerprint(&dst, "shop").await, want);
    e.delete(&rep.manifest_key).await.unwrap();
    assert_nothing_stored(store.as_ref()).await;
    swift.delete_containers().await.unwrap();
}

// ---- MariaDB ---------------------------------------------------------------------------

struct Maria {
    dir: PathBuf,
    _server: Server,
}

impl Maria {
    fn cnf(&self) -> PathBuf {
        self.dir.join("my.cnf")
    }
    fn sock(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }
    fn datadir(&self) -> PathBuf {
        self.dir.join("data")
    }
    fn conn(&self) -> MyConn {
        MyConn {
            defaults_file: Some(self.cnf()),
            socket: Some(self.sock()),
            user: "root".into(),
            ..MyConn::default()
        }
    }
    async fn pool(&self) -> mysql_async::Conn {
        let opts = mysql_async::OptsBuilder::default()
            .socket(Some(self.sock().display().to_string()))
            .user(Some("root"));
        mysql_async::Conn::new(opts).await.unwrap()
    }
}

fn write_maria_cnf(dir: &Path, port: u16) {
    let cnf = format!(
        "[client]\nsocket = {d}/mysqld.sock\n\n[mysqld]\nuser = root\ndatadir = {d}/data\ntmpdir = {d}/tmp\n\
         socket = {d}/mysqld.sock\npid-file = {d}/mysqld.pid\nlog-error = {d}/error.log\nport = {port}\n\
         bind-address = 127.0.0.1\nskip-name-resolve\nserver_id = 1\nlog_bin = {d}/bin\n\
         innodb_buffer_pool_size = 64M\ninnodb_log_file_size = 48M\ninnodb_flush_log_at_trx_commit = 2\n",
        d = dir.display()
    );
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::fs::write(dir.join("my.cnf"), cnf).unwrap();
}

/// Starts MariaDB in `dir` (a fresh instance unless `existing` data is there).
async fn start_maria(dir: &Path, existing: bool) -> Maria {
    assert!(
        Path::new("/usr/sbin/mariadbd").is_file() && Path::new("/usr/bin/mariabackup").is_file(),
        "MariaDB is not installed: run tools/setup.sh (apt-get install -y mariadb-server mariadb-backup)"
    );
    assert!(
        is_root(),
        "the MariaDB tests run mariadbd with user=root and need root"
    );
    std::fs::create_dir_all(dir).unwrap();
    write_maria_cnf(dir, free_port());
    let cnf = dir.join("my.cnf");
    let defaults = format!("--defaults-file={}", cnf.display());
    if !existing {
        let st = Command::new("/usr/bin/mariadb-install-db")
            .args([
                defaults.as_str(),
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "mariadb-install-db failed");
    }
    let child = Command::new("/usr/sbin/mariadbd")
        .arg(&defaults)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let m = Maria {
        dir: dir.to_owned(),
        _server: Server {
            child,
            stop: Signal::SIGTERM,
        },
    };
    for _ in 0..300 {
        let opts = mysql_async::OptsBuilder::default()
            .socket(Some(m.sock().display().to_string()))
            .user(Some("root"));
        if let Ok(c) = mysql_async::Conn::new(opts).await {
            let _ = c.disconnect().await;
            return m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "MariaDB did not start: {}",
        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
    );
}

async fn maria_rows(m: &Maria, db: &str) -> (u64, String) {
    use mysql_async::prelude::Queryable;
    let mut c = m.pool().await;
    let r: (u64, String) = c
        .query_first(format!(
            "SELECT COUNT(*), MD5(GROUP_CONCAT(note ORDER BY id SEPARATOR ',')) FROM {db}.items"
        ))
        .await
        .unwrap()
        .unwrap();
    c.disconnect().await.unwrap();
    r
}

async fn maria_exec(m: &Maria, sql: &str) {
    use mysql_async::prelude::Queryable;
    let mut c = m.pool().await;
    c.query_drop(sql).await.unwrap();
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn mariadb_physical_full_and_incremental() {
    let s3 = Arc::new(support::s3_store(&support::unique("ga-mbk")).await);
    let store: Arc<dyn ObjectStore> = Arc::clone(&s3) as Arc<dyn ObjectStore>;
    let base = base_dir("ga-bk-my-");
    let src = start_maria(&base.path().join("src"), false).await;
    maria_exec(&src, "CREATE DATABASE shop").await;
    maria_exec(
        &src,
        "CREATE TABLE shop.items (id INT PRIMARY KEY, note TEXT) ENGINE=InnoDB",
    )
    .await;
    maria_exec(
        &src,
        "INSERT INTO shop.items SELECT seq, REPEAT(MD5(seq), 8) FROM shop.seq_1_to_20000",
    )
    .await;
    let key = InstanceKey::generate().unwrap();
    let e = engine(Arc::clone(&store), Arc::new(ProcessRunner::new()));
    let mut strategy = Mariabackup::new(src.conn(), base.path().join("scratch"));
    strategy.datadir = Some(src.datadir());
    let full = e
        .backup(&strategy, &spec("mb-full", &[], Some(&key)), None, &never())
        .await
        .unwrap();
    assert!(
        full.manifest.tool.contains_key("to_lsn"),
        "{:?}",
        full.manifest.tool
    );

    maria_exec(
        &src,
        "INSERT INTO shop.items SELECT seq, REPEAT(MD5(seq), 4) FROM shop.seq_20001_to_25000",
    )
    .await;
    let mut s = spec("mb-inc", &[], Some(&key));
    s.parent_manifest = Some(full.manifest_key.clone());
    let inc = e.backup(&strategy, &s, None, &never()).await.unwrap();
    assert!(inc.manifest.data.raw_size < full.manifest.data.raw_size);
    let want = maria_rows(&src, "shop").await;
    assert_eq!(want.0, 25_000);

    let dst_dir = base.path().join("dst");
    let rr = RestoreRequest {
        target_dir: Some(dst_dir.join("data")),
        work_dir: Some(base.path().join("work")),
        ..RestoreRequest::default()
    };
    let report = e
        .restore(&strategy, &inc.manifest_key, rr, Some(&key), None, &never())
        .await
        .unwrap();
    assert_eq!(
        report.chain,
        vec!["mb-full".to_owned(), "mb-inc".to_owned()]
    );
    let dst = start_maria(&dst_dir, true).await;
    assert_eq!(maria_rows(&dst, "shop").await, want);
    e.delete(&inc.manifest_key).await.unwrap();
    e.delete(&full.manifest_key).await.unwrap();
    assert_nothing_stored(store.as_ref()).await;
    s3.delete_bucket().await.unwrap();
}

#[tokio::test]
async fn mariadb_logical_chosen_databases() {
    let swift = Arc::new(support::swift_store(&support::unique("ga-mdump")).await);
    let store: Arc<dyn ObjectStore> = Arc::clone(&swift) as Arc<dyn ObjectStore>;
    let base = base_dir("ga-bk-myd-");
    let src = start_maria(&base.path().join("src"), false).await;
    for db in ["shop", "other"] {
        maria_exec(&src, &format!("CREATE DATABASE {db}")).await;
        maria_exec(
            &src,
            &format!("CREATE TABLE {db}.items (id INT PRIMARY KEY, note TEXT)"),
        )
        .await;
        maria_exec(
            &src,
            &format!("INSERT INTO {db}.items SELECT seq, MD5(seq) FROM {db}.seq_1_to_3000"),
        )
        .await;
    }
    let want = maria_rows(&src, "shop").await;
    let e = engine(Arc::clone(&store), Arc::new(ProcessRunner::new()));
    let strategy = MariadbDump::new(src.conn());

    let err = e
        .backup(
            &strategy,
            &spec("md-missing", &["nope"], None),
            None,
            &never(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackupError::DatabaseNotFound { name } if name == "nope"),
        "{err}"
    );
    assert_nothing_stored(store.as_ref()).await;

    let rep = e
        .backup(&strategy, &spec("md-1", &["shop"], None), None, &never())
        .await
        .unwrap();
    let dst = start_maria(&base.path().join("dst"), false).await;
    e.restore(
        &MariadbDump::new(dst.conn()),
        &rep.manifest_key,
        RestoreRequest::default(),
        None,
        None,
        &never(),
    )
    .await
    .unwrap();
    assert_eq!(maria_rows(&dst, "shop").await, want);
    // Only the chosen database came along.
    use mysql_async::prelude::Queryable;
    let mut c = dst.pool().await;
    let other: Option<String> = c
        .query_first(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name = 'other'",
        )
        .await
        .unwrap();
    assert!(other.is_none());
    c.disconnect().await.unwrap();
    e.delete(&rep.manifest_key).await.unwrap();
    assert_nothing_stored(store.as_ref()).await;
    swift.delete_containers().await.unwrap();
}

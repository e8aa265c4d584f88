//! PostgreSQL-specific integration tests beyond the conformance kit: prepare's refusals and
//! what it writes, stop modes, crashes, adoption of a running server by a new agent, positions,
//! awkward and reserved names, and passwords kept out of the server log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::time::Duration;

use guest_agent_api::admin::{
    DatabaseSpec, PageRequest, PasswordChange, UserRef, UserSpec, UserUpdate,
};
use guest_agent_api::config::Overrides;
use guest_agent_api::ident::{DbName, HostPattern, Password, UserName};
use guest_agent_api::lifecycle::PrepareSpec;
use guest_agent_api::runtime::ProcessRuntime;
use guest_agent_api::{
    Admin, DatastoreStatus, DriverSettings, Error, Health, Lifecycle, OpContext, Position, StopMode,
};
use guest_agent_postgres::{ADMIN_PASSWORD_FILE, MANAGED_CONF_FILE, PgDriver};
use guest_agent_testkit::Probe;
use support::{PG_BIN, PgProbe, ServerGuard, prepared, small_spec, unprepared};

fn ctx(op: &str) -> OpContext {
    OpContext::new(format!("test-{op}"))
}

fn db(name: &str) -> DbName {
    DbName::new(name).unwrap()
}

fn user(name: &str) -> UserRef {
    UserRef {
        name: UserName::new(name).unwrap(),
        host: HostPattern::any(),
    }
}

fn pw(text: &str) -> Password {
    Password::new(text).unwrap()
}

fn user_spec(name: &str, password: &Password, dbs: &[&str]) -> UserSpec {
    UserSpec {
        name: UserName::new(name).unwrap(),
        host: HostPattern::any(),
        password: password.clone(),
        databases: dbs.iter().map(|d| db(d)).collect(),
    }
}

/// The files prepare wrote, by name, for "nothing changed" comparisons.
fn managed_files(guard: &ServerGuard) -> BTreeMap<String, Vec<u8>> {
    let l = guard.layout();
    [
        l.data_dir.join("postgresql.conf"),
        l.data_dir.join(MANAGED_CONF_FILE),
        l.data_dir.join("pg_hba.conf"),
        l.data_dir.join("PG_VERSION"),
        l.state_dir.join(ADMIN_PASSWORD_FILE),
    ]
    .into_iter()
    .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
    .collect()
}

async fn wait_status(driver: &PgDriver, want: DatastoreStatus) -> DatastoreStatus {
    let mut last = driver.status(&ctx("status")).await;
    for _ in 0..100 {
        if last == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = driver.status(&ctx("status")).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_twice_is_refused_and_changes_nothing() {
    let (driver, guard) = prepared(&small_spec()).await;
    let probe = PgProbe::new(&guard);
    let before = managed_files(&guard);
    let pid = guard.layout().postmaster_pid();

    let spec = PrepareSpec {
        databases: vec![DatabaseSpec::named(db("second_db"))],
        users: vec![user_spec("second_user", &pw("pw-second-1"), &[])],
        root_password: Some(pw("root-second-1")),
        memory_mb: Some(4096),
        ..PrepareSpec::default()
    };
    let e = driver.prepare(&ctx("prepare"), &spec).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidState {
                operation: "prepare",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("already holds a PostgreSQL cluster"),
        "{e}"
    );

    assert_eq!(
        managed_files(&guard),
        before,
        "a refused prepare changed files"
    );
    assert_eq!(
        guard.layout().postmaster_pid(),
        pid,
        "a refused prepare restarted the server"
    );
    assert!(!probe.database_exists("second_db").await);
    assert!(!probe.user_exists("second_user", "%").await);
    assert!(!probe.user_exists("root", "%").await);
    assert_eq!(
        driver.status(&ctx("status")).await,
        DatastoreStatus::Healthy
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_refuses_a_non_empty_data_dir_and_overrides_touching_nothing() {
    let (driver, guard) = unprepared(serde_json::Value::Null);
    let l = guard.layout().clone();

    // Invalid overrides are refused before anything is created.
    let mut overrides = Overrides::new();
    overrides.insert("max_connections".into(), 50.into());
    overrides.insert("work_mem".into(), "a lot".into());
    let spec = PrepareSpec {
        overrides: Some(overrides),
        ..small_spec()
    };
    let e = driver.prepare(&ctx("prepare"), &spec).await.unwrap_err();
    assert!(
        matches!(&e, Error::InvalidConfig { key, .. } if key == "work_mem"),
        "{e}"
    );
    for p in [&l.data_dir, &l.run_dir, &l.state_dir] {
        assert!(!p.exists(), "{} was created", p.display());
    }

    // A cancelled operation stops before anything is created.
    let cancelled = ctx("prepare");
    cancelled.cancel.cancel();
    let e = driver.prepare(&cancelled, &small_spec()).await.unwrap_err();
    assert!(matches!(e, Error::Cancelled), "{e}");
    assert!(!l.data_dir.exists() && !l.run_dir.exists());

    // A data directory holding something else is refused, untouched.
    std::fs::create_dir(&l.data_dir).unwrap();
    std::fs::write(l.data_dir.join("precious"), b"keep me").unwrap();
    let e = driver
        .prepare(&ctx("prepare"), &small_spec())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidState { .. }), "{e}");
    assert!(e.to_string().contains("not empty"), "{e}");
    assert_eq!(
        std::fs::read(l.data_dir.join("precious")).unwrap(),
        b"keep me"
    );
    assert!(!l.run_dir.exists() && !l.state_dir.exists());
    assert_eq!(
        driver.status(&ctx("status")).await,
        DatastoreStatus::Shutdown
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_creates_requested_objects_and_private_files() {
    let app_pw = pw("App'pw\"with\\quotes 1");
    let spec = PrepareSpec {
        databases: vec![
            DatabaseSpec::named(db("app")),
            DatabaseSpec::new(db("latin"), Some("LATIN1".into()), Some("C".into())).unwrap(),
        ],
        users: vec![user_spec("app_user", &app_pw, &["app"])],
        root_password: Some(pw("Root-pw-123")),
        ..small_spec()
    };
    let (driver, guard) = prepared(&spec).await;
    let probe = PgProbe::new(&guard);
    let l = guard.layout();

    assert!(probe.can_write("app_user", app_pw.expose(), "app").await);
    assert!(!probe.can_write("app_user", app_pw.expose(), "latin").await);
    assert!(probe.is_superuser("root", "%").await);
    assert!(probe.can_login("root", "Root-pw-123", None).await);
    assert!(driver.is_root_enabled(&ctx("root")).await.unwrap());

    let dbs = driver
        .list_databases(&ctx("list"), &PageRequest::default())
        .await
        .unwrap();
    let latin = dbs
        .items
        .iter()
        .find(|d| d.name.as_str() == "latin")
        .unwrap();
    assert_eq!(latin.character_set.as_deref(), Some("LATIN1"));
    assert_eq!(latin.collate.as_deref(), Some("C"));
    let names: Vec<&str> = dbs.items.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["app", "latin"]);

    // Private files: the admin password only for the agent, the initdb password file gone.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&l.state_dir), 0o700);
    assert_eq!(mode(&l.state_dir.join(ADMIN_PASSWORD_FILE)), 0o600);
    assert_eq!(mode(&l.data_dir), 0o700);
    assert!(
        std::fs::read_dir(&l.run_dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("initdb")),
        "the initdb password file was left behind"
    );
    if nix::unistd::geteuid().is_root() {
        let pg = nix::unistd::User::from_name(support::OS_USER)
            .unwrap()
            .unwrap();
        assert_eq!(
            std::fs::metadata(&l.data_dir).unwrap().uid(),
            pg.uid.as_raw()
        );
        assert_eq!(
            std::fs::metadata(l.data_dir.join(MANAGED_CONF_FILE))
                .unwrap()
                .uid(),
            pg.uid.as_raw()
        );
    }
    let conf = std::fs::read_to_string(l.data_dir.join(MANAGED_CONF_FILE)).unwrap();
    assert!(conf.contains(&format!("port = {}", l.port)), "{conf}");
    assert!(conf.contains("shared_buffers = '128MB'"), "{conf}");
    // Nothing is trusted: the administrative role needs its password, locally too.
    assert!(!probe.can_login("postgres", "wrong-password", None).await);
    assert!(probe.can_login("postgres", &l.admin_password(), None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_stop_and_start_keep_data() {
    let (driver, guard) = prepared(&small_spec()).await;
    let probe = PgProbe::new(&guard);
    driver
        .create_databases(&ctx("create"), &[DatabaseSpec::named(db("keep"))])
        .await
        .unwrap();
    let c = probe.admin("keep").await.unwrap();
    c.batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')")
        .await
        .unwrap();
    drop(c);

    // Smart waits for sessions: the driver's own must not hold it up for the grace time.
    driver.stop(&ctx("stop"), StopMode::Smart).await.unwrap();
    assert_eq!(
        driver.status(&ctx("status")).await,
        DatastoreStatus::Shutdown
    );
    assert!(driver.readiness(&ctx("ready")).await.is_err());
    assert!(driver.liveness(&ctx("live")).await.is_err());
    driver.start(&ctx("start")).await.unwrap();
    assert_eq!(
        driver.status(&ctx("status")).await,
        DatastoreStatus::Healthy
    );
    let c = probe.admin("keep").await.unwrap();
    let v: String = c.query_one("SELECT v FROM t", &[]).await.unwrap().get(0);
    assert_eq!(v, "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_is_crashed_and_start_recovers() {
    let (driver, guard) = prepared(&small_spec()).await;
    let probe = PgProbe::new(&guard);
    let pid = guard.layout().postmaster_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(
        wait_status(&driver, DatastoreStatus::Crashed).await,
        DatastoreStatus::Crashed
    );
    assert!(driver.liveness(&ctx("live")).await.is_err());
    driver.start(&ctx("start")).await.unwrap();
    assert_eq!(
        driver.status(&ctx("status")).await,
        DatastoreStatus::Healthy
    );
    assert_ne!(guard.layout().postmaster_pid(), Some(pid));
    probe.write_something().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_runs_a_new_postmaster() {
    let (driver, guard) = prepared(&small_spec()).await;
    let before = guard.layout().postmaster_pid().unwrap();
    driver.restart(&ctx("restart")).await.unwrap();
    let after = guard.layout().postmaster_pid().unwrap();
    assert_ne!(before, after);
    assert_eq!(
        driver.status(&ctx("status")).await,
        DatastoreStatus::Healthy
    );
    // Starting a running server is a no-op.
    driver.start(&ctx("start")).await.unwrap();
    assert_eq!(guard.layout().postmaster_pid(), Some(after));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_agent_adopts_the_running_server() {
    let (driver, guard) = prepared(&small_spec()).await;
    let pid = guard.layout().postmaster_pid().unwrap();
    let l = guard.layout();

    // A second driver with its own runtime, as after an agent restart.
    let mut settings = DriverSettings::new(
        "postgresql",
        &l.data_dir,
        &l.run_dir,
        &l.state_dir,
        l.port,
        Arc::new(ProcessRuntime::new()),
    );
    settings.bin_dirs = vec![PG_BIN.into()];
    settings.os_user = nix::unistd::geteuid()
        .is_root()
        .then(|| support::OS_USER.to_owned());
    let reborn = (guest_agent_postgres::factory().build)(settings)
        .await
        .unwrap();
    let lc = reborn.lifecycle();
    assert_eq!(lc.status(&ctx("status")).await, DatastoreStatus::Healthy);
    reborn.health().liveness(&ctx("live")).await.unwrap();
    lc.stop(&ctx("stop"), StopMode::Fast).await.unwrap();
    assert_eq!(lc.status(&ctx("status")).await, DatastoreStatus::Shutdown);
    assert!(
        driver.readiness(&ctx("ready")).await.is_err(),
        "the adopted server still answers"
    );
    lc.start(&ctx("start")).await.unwrap();
    assert_eq!(lc.status(&ctx("status")).await, DatastoreStatus::Healthy);
    assert_ne!(guard.layout().postmaster_pid(), Some(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn position_is_an_lsn_that_advances_after_a_write() {
    let (driver, guard) = prepared(&small_spec()).await;
    let probe = PgProbe::new(&guard);
    let Position::Lsn(before) = driver.position(&ctx("pos")).await.unwrap() else {
        panic!("PostgreSQL positions are LSNs");
    };
    probe.write_something().await.unwrap();
    // The insert position includes the commit at once: no polling needed.
    let Position::Lsn(after) = driver.position(&ctx("pos")).await.unwrap() else {
        panic!("PostgreSQL positions are LSNs");
    };
    assert!(after > before, "{after} after {before}");

    let d = driver.details(&ctx("details")).await.unwrap();
    assert!(d.version.unwrap().starts_with("15."));
    assert_eq!(d.replication.unwrap().role, "primary");
    assert!(d.uptime_seconds.is_some() && d.max_connections.unwrap() >= 1);
    let extra = driver.filesystem_extra(&ctx("fs")).await.unwrap();
    assert!(extra["wal_size"].as_u64().unwrap() > 0, "{extra:?}");
    assert_eq!(extra["wal_archive_size"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_names_are_quoted_and_reserved_names_refused() {
    let (driver, guard) = prepared(&small_spec()).await;
    let probe = PgProbe::new(&guard);
    let admin_pw = guard.layout().admin_password();

    // Valid names that are keywords, mixed case or carry '-' and '$' work verbatim.
    let awkward = ["select", "My-DB$1", "1db", "drop", "_x"];
    let specs: Vec<DatabaseSpec> = awkward.iter().map(|n| DatabaseSpec::named(db(n))).collect();
    driver
        .create_databases(&ctx("create"), &specs)
        .await
        .unwrap();
    for n in awkward {
        assert!(probe.database_exists(n).await, "{n}");
    }
    let listed = driver
        .list_databases(&ctx("list"), &PageRequest::default())
        .await
        .unwrap();
    let mut expected: Vec<&str> = awkward.to_vec();
    expected.sort_unstable();
    let names: Vec<&str> = listed.items.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, expected);

    let p = pw("x'); DROP DATABASE \"1db\"; --");
    driver
        .create_users(
            &ctx("users"),
            &[user_spec("User-X$", &p, &["My-DB$1", "select"])],
        )
        .await
        .unwrap();
    assert!(probe.can_write("User-X$", p.expose(), "My-DB$1").await);
    assert!(probe.can_write("User-X$", p.expose(), "select").await);
    let update = UserUpdate {
        name: Some(UserName::new("table").unwrap()),
        ..UserUpdate::default()
    };
    driver
        .update_attributes(&ctx("rename"), &user("User-X$"), &update)
        .await
        .unwrap();
    assert!(probe.can_write("table", p.expose(), "My-DB$1").await);
    assert!(probe.database_exists("1db").await);

    // Reserved names are refused before any statement runs.
    let e = driver
        .create_users(
            &ctx("users"),
            &[user_spec("postgres", &pw("hijack-1"), &[])],
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "InvalidArgument", "{e}");
    for reserved in ["postgres", "root", "pg_monitor"] {
        let change = PasswordChange {
            user: user(reserved),
            password: pw("hijack-1"),
        };
        let e = driver
            .change_passwords(&ctx("pw"), &[change])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "InvalidArgument", "{reserved}: {e}");
        let e = driver
            .drop_user(&ctx("drop"), &user(reserved))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "InvalidArgument", "{reserved}: {e}");
        assert!(
            driver
                .get_user(&ctx("get"), &user(reserved))
                .await
                .unwrap()
                .is_none()
        );
    }
    assert!(probe.can_login("postgres", &admin_pw, None).await);
    for reserved in ["postgres", "template0", "template1"] {
        let e = driver
            .drop_database(&ctx("drop"), &db(reserved))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "InvalidArgument", "{reserved}: {e}");
        let e = driver
            .grant_access(&ctx("grant"), &user("table"), &[db(reserved)])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "InvalidArgument", "{reserved}: {e}");
    }
    assert!(probe.database_exists("postgres").await);
    // PostgreSQL itself reserves `public` and `none` as role names.
    for name in ["public", "none"] {
        let e = driver
            .create_users(&ctx("users"), &[user_spec(name, &pw("pw-public-1"), &[])])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "InvalidArgument", "{name}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_user_keeps_its_tables_and_revoking_ends_its_sessions() {
    let (driver, guard) = prepared(&small_spec()).await;
    let probe = PgProbe::new(&guard);
    let p = pw("owner-pw-1");
    driver
        .create_databases(&ctx("create"), &[DatabaseSpec::named(db("shop"))])
        .await
        .unwrap();
    driver
        .create_users(&ctx("users"), &[user_spec("owner", &p, &["shop"])])
        .await
        .unwrap();
    let session = probe.connect("owner", p.expose(), "shop").await.unwrap();
    session
        .batch_execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (7)")
        .await
        .unwrap();

    driver
        .revoke_access(&ctx("revoke"), &user("owner"), &db("shop"))
        .await
        .unwrap();
    assert!(
        session.simple_query("SELECT 1").await.is_err(),
        "an open session survived revoke_access"
    );
    assert!(!probe.can_login("owner", p.expose(), Some("shop")).await);
    assert!(
        driver
            .list_access(&ctx("access"), &user("owner"))
            .await
            .unwrap()
            .is_empty()
    );

    // The user owns a table: dropping it reassigns the table instead of failing.
    driver
        .drop_user(&ctx("drop"), &user("owner"))
        .await
        .unwrap();
    assert!(!probe.user_exists("owner", "%").await);
    let c = probe.admin("shop").await.unwrap();
    let row = c
        .query_one(
            "SELECT tableowner::text, (SELECT count(*) FROM orders) FROM pg_tables \
             WHERE tablename = 'orders'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "postgres");
    assert_eq!(row.get::<_, i64>(1), 1);

    // Missing objects: revoke is idempotent, list_access and password changes say NotFound.
    driver
        .revoke_access(&ctx("revoke"), &user("owner"), &db("shop"))
        .await
        .unwrap();
    let e = driver
        .list_access(&ctx("access"), &user("owner"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "NotFound", "{e}");
    let e = driver
        .update_attributes(
            &ctx("update"),
            &user("owner"),
            &UserUpdate {
                password: Some(pw("x-pw-12345")),
                ..UserUpdate::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "NotFound", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_reach_the_server_log() {
    let (driver, guard) = prepared(&small_spec()).await;
    let probe = PgProbe::new(&guard);
    // Log every statement, so anything the driver sends shows up.
    let c = probe.admin("postgres").await.unwrap();
    c.batch_execute("ALTER SYSTEM SET log_statement = 'all'")
        .await
        .unwrap();
    c.simple_query("SELECT pg_reload_conf()").await.unwrap();
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let secrets = [
        "Plain-Secret-One",
        "Plain-Secret-Two",
        "Plain-Secret-Three",
        "Plain-Root-Four",
    ];
    driver
        .create_users(&ctx("users"), &[user_spec("leaky", &pw(secrets[0]), &[])])
        .await
        .unwrap();
    let change = PasswordChange {
        user: user("leaky"),
        password: pw(secrets[1]),
    };
    driver
        .change_passwords(&ctx("pw"), &[change])
        .await
        .unwrap();
    let update = UserUpdate {
        password: Some(pw(secrets[2])),
        ..UserUpdate::default()
    };
    driver
        .update_attributes(&ctx("update"), &user("leaky"), &update)
        .await
        .unwrap();
    driver
        .enable_root(&ctx("root"), Some(pw(secrets[3])))
        .await
        .unwrap();
    // A failing statement with a password must not leak it through the error either.
    let e = driver
        .create_users(&ctx("users"), &[user_spec("public", &pw(secrets[0]), &[])])
        .await
        .unwrap_err();
    assert!(!e.to_string().contains(secrets[0]), "{e}");
    assert!(probe.can_login("leaky", secrets[2], None).await);

    let log = guard.layout().server_log();
    assert!(
        log.contains("SCRAM-SHA-256$"),
        "statements were not logged:\n{log}"
    );
    for s in secrets {
        assert!(!log.contains(s), "password {s} in the server log");
    }
    assert!(!log.contains(&guard.layout().admin_password()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_options_are_refused_at_build_time() {
    let mut settings = DriverSettings::new(
        "postgresql",
        "/tmp/never/data",
        "/tmp/never/run",
        "/tmp/never/state",
        5432,
        Arc::new(ProcessRuntime::new()),
    );
    settings.os_user = Some(support::OS_USER.to_owned());
    settings.options = serde_json::json!({"start_timeout_secs": 5, "bogus": true});
    let e = (guest_agent_postgres::factory().build)(settings)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidConfig { key, reason } if key == "datastore.options" && reason.contains("bogus")),
        "{e}"
    );
    assert!(
        !std::path::Path::new("/tmp/never").exists(),
        "building touched the disk"
    );
}

//! MariaDB-specific behaviour beyond the conformance kit: what prepare leaves behind,
//! host-scoped accounts, character sets, revocation of open sessions, and configuration
//! overrides (dynamic, restart-required, all-or-nothing).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::PermissionsExt;

use guest_agent_api::admin::{DatabaseSpec, PageRequest, UserRef, UserSpec, UserUpdate};
use guest_agent_api::config::{ConfigValue, ValidatedOverrides};
use guest_agent_api::ident::{ConfigKey, DbName, HostPattern, Password, UserName};
use guest_agent_api::{Driver, Error, OpContext};
use guest_agent_testkit::Probe;
use mysql_async::prelude::Queryable;
use support::Instance;

fn ctx(what: &str) -> OpContext {
    OpContext::new(format!("test-{what}"))
}

fn overrides(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_secures_the_server() {
    let inst = Instance::start().await;
    let p = inst.probe();
    let count = |sql: &'static str| {
        let p = p.clone();
        async move { p.admin_value(sql).await.unwrap().unwrap_or_default() }
    };
    assert_eq!(
        count("SELECT COUNT(*) FROM mysql.user WHERE User = ''").await,
        "0"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM mysql.user WHERE User = 'root' AND Host <> 'localhost'").await,
        "0"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'test'").await,
        "0"
    );
    // Nothing of prepare is in the binary log: a fresh server can become anyone's replica.
    assert_eq!(count("SELECT @@GLOBAL.gtid_binlog_pos").await, "");
    assert_eq!(count("SELECT @@GLOBAL.binlog_format").await, "ROW");
    assert_eq!(count("SELECT @@GLOBAL.gtid_strict_mode").await, "1");
    assert_eq!(count("SELECT @@GLOBAL.log_slave_updates").await, "1");
    assert_eq!(count("SELECT @@GLOBAL.bind_address").await, "127.0.0.1");
    assert_eq!(
        count("SELECT @@GLOBAL.innodb_buffer_pool_size").await,
        (128u64 << 20).to_string()
    );
    assert_ne!(count("SELECT @@GLOBAL.server_id").await, "1");
    let pw_file = inst.base.join("state").join("mysql-admin.password");
    assert_eq!(
        std::fs::metadata(&pw_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let cnf = std::fs::read_to_string(inst.base.join("conf").join("my.cnf")).unwrap();
    assert!(cnf.contains(&format!("port = {}\n", inst.port)), "{cnf}");
    if nix::unistd::geteuid().is_root() {
        assert!(cnf.contains("user = root\n"), "{cnf}");
    }
    assert!(!cnf.contains(&inst.admin_password()));
    let d = inst.driver.health().details(&ctx("details")).await.unwrap();
    assert!(d.version.unwrap().contains("MariaDB"));
    assert_eq!(d.replication.unwrap().role, "primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_host_scoped_and_databases_keep_their_charset() {
    let inst = Instance::start().await;
    let a = inst.driver.admin();
    let p = inst.probe();
    let db = DbName::new("shop_db").unwrap();
    a.create_databases(
        &ctx("create_databases"),
        &[DatabaseSpec::new(
            db.clone(),
            Some("utf8mb4".into()),
            Some("utf8mb4_bin".into()),
        )
        .unwrap()],
    )
    .await
    .unwrap();
    let listed = a
        .list_databases(&ctx("list_databases"), &PageRequest::default())
        .await
        .unwrap();
    let shop = listed.items.iter().find(|d| d.name == db).unwrap();
    assert_eq!(shop.character_set.as_deref(), Some("utf8mb4"));
    assert_eq!(shop.collate.as_deref(), Some("utf8mb4_bin"));

    let name = UserName::new("hp").unwrap();
    let (pw_local, pw_net) = (
        Password::new("local-pw").unwrap(),
        Password::new("net-pw").unwrap(),
    );
    let spec = |host: &str, pw: &Password| UserSpec {
        name: name.clone(),
        host: HostPattern::new(host).unwrap(),
        password: pw.clone(),
        databases: vec![db.clone()],
    };
    a.create_users(
        &ctx("create_users"),
        &[spec("127.0.0.1", &pw_local), spec("10.%", &pw_net)],
    )
    .await
    .unwrap();
    // Logins over TCP come from 127.0.0.1: only that account's password works.
    assert!(p.can_login("hp", pw_local.expose(), Some("shop_db")).await);
    assert!(!p.can_login("hp", pw_net.expose(), None).await);
    let users = a
        .list_users(&ctx("list_users"), &PageRequest::default())
        .await
        .unwrap();
    let hosts: Vec<&str> = users
        .items
        .iter()
        .filter(|u| u.name == name)
        .map(|u| u.host.as_str())
        .collect();
    assert_eq!(hosts, ["10.%", "127.0.0.1"]);
    // The grant on shop_db does not leak to shopXdb (`_` is a wildcard in grants).
    a.create_databases(
        &ctx("create_databases"),
        &[DatabaseSpec::named(DbName::new("shopXdb").unwrap())],
    )
    .await
    .unwrap();
    assert!(p.can_write("hp", pw_local.expose(), "shop_db").await);
    assert!(!p.can_write("hp", pw_local.expose(), "shopXdb").await);

    // Moving the account to another host takes its login away from 127.0.0.1.
    let local = UserRef {
        name: name.clone(),
        host: HostPattern::new("127.0.0.1").unwrap(),
    };
    let moved = UserUpdate {
        host: Some(HostPattern::new("localhost").unwrap()),
        ..UserUpdate::default()
    };
    let e = a
        .update_attributes(
            &ctx("update_attributes"),
            &local,
            &UserUpdate {
                host: Some(HostPattern::new("10.%").unwrap()),
                ..UserUpdate::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AlreadyExists { .. }), "{e}");
    a.update_attributes(&ctx("update_attributes"), &local, &moved)
        .await
        .unwrap();
    assert!(!p.can_login("hp", pw_local.expose(), None).await);
    assert!(p.user_exists("hp", "localhost").await);
    assert!(!p.user_exists("hp", "127.0.0.1").await);
    let access = a
        .list_access(
            &ctx("list_access"),
            &UserRef {
                name: name.clone(),
                host: HostPattern::new("localhost").unwrap(),
            },
        )
        .await
        .unwrap();
    assert_eq!(access, [DatabaseSpec::named(db.clone())]);
    // Reserved accounts and databases are refused.
    let e = a
        .drop_database(&ctx("drop_database"), &DbName::new("mysql").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let admin = UserRef {
        name: UserName::new("os_admin").unwrap(),
        host: HostPattern::new("localhost").unwrap(),
    };
    assert!(a.drop_user(&ctx("drop_user"), &admin).await.is_err());
    assert!(
        a.get_user(&ctx("get_user"), &admin)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_ends_open_sessions_and_denies_new_ones() {
    let inst = Instance::start().await;
    let a = inst.driver.admin();
    let p = inst.probe();
    let db = DbName::new("ledger").unwrap();
    a.create_databases(&ctx("create_databases"), &[DatabaseSpec::named(db.clone())])
        .await
        .unwrap();
    let user = UserRef {
        name: UserName::new("clerk").unwrap(),
        host: HostPattern::any(),
    };
    let pw = Password::new("clerk's \\pw").unwrap();
    a.create_users(
        &ctx("create_users"),
        &[UserSpec {
            name: user.name.clone(),
            host: user.host.clone(),
            password: pw.clone(),
            databases: vec![db.clone()],
        }],
    )
    .await
    .unwrap();
    let mut open = p.login("clerk", pw.expose(), Some("ledger")).await.unwrap();
    open.query_drop("CREATE TABLE entries (id INT)")
        .await
        .unwrap();
    a.revoke_access(&ctx("revoke_access"), &user, &db)
        .await
        .unwrap();
    assert!(
        open.query_drop("INSERT INTO entries VALUES (1)")
            .await
            .is_err(),
        "the open session survived the revoke"
    );
    let e = p
        .login("clerk", pw.expose(), Some("ledger"))
        .await
        .unwrap_err();
    assert!(e.contains("1044") || e.contains("Access denied"), "{e}");
    assert!(!p.can_write("clerk", pw.expose(), "ledger").await);
    assert!(p.can_login("clerk", pw.expose(), None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_overrides_apply_all_or_nothing() {
    let inst = Instance::start().await;
    let cfg = inst.driver.config();
    let p = inst.probe();
    let global = |name: &'static str| {
        let p = p.clone();
        async move {
            p.admin_value(&format!("SELECT @@GLOBAL.{name}"))
                .await
                .unwrap()
                .unwrap_or_default()
        }
    };

    let v = cfg
        .validate(&overrides(serde_json::json!({
            "max_connections": 120,
            "innodb_buffer_pool_size": "192M",
            "slow_query_log": true,
        })))
        .unwrap();
    let out = cfg.apply(&ctx("apply"), &v).await.unwrap();
    assert_eq!(out.dynamic_applied, ["max_connections", "slow_query_log"]);
    assert_eq!(out.restart_required, ["innodb_buffer_pool_size"]);
    assert_eq!(global("max_connections").await, "120");
    assert_eq!(global("slow_query_log").await, "1");
    let current = cfg.current(&ctx("current")).await.unwrap();
    assert_eq!(
        current.get("innodb_buffer_pool_size").map(String::as_str),
        Some("201326592")
    );
    let file = inst
        .base
        .join("conf")
        .join("conf.d")
        .join("50-guest-agent-overrides.cnf");
    let before = std::fs::read_to_string(&file).unwrap();

    // One invalid value: nothing is applied.
    let e = cfg
        .validate(&overrides(
            serde_json::json!({"max_connections": 130, "wait_timeout": 0}),
        ))
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidConfig { key, .. } if key == "wait_timeout"),
        "{e}"
    );
    // A value the rules accept but the server refuses: the earlier ones are undone and the
    // previous file is back.
    let mut bad = ValidatedOverrides::default();
    bad.values.insert(
        ConfigKey::new("max_connections").unwrap(),
        ConfigValue::Int(140),
    );
    bad.values.insert(
        ConfigKey::new("sql_mode").unwrap(),
        ConfigValue::Str("NOT_A_MODE".into()),
    );
    let e = cfg.apply(&ctx("apply"), &bad).await.unwrap_err();
    assert!(
        matches!(&e, Error::InvalidConfig { key, .. } if key == "sql_mode"),
        "{e:?}"
    );
    assert_eq!(global("max_connections").await, "120");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);

    // Restart-required values take effect after a restart; dynamic ones persist.
    inst.driver
        .lifecycle()
        .restart(&ctx("restart"))
        .await
        .unwrap();
    assert_eq!(
        global("innodb_buffer_pool_size").await,
        (192u64 << 20).to_string()
    );
    assert_eq!(global("max_connections").await, "120");

    // Removing the set reports what keeps running until the next restart.
    let out = cfg
        .remove_overrides(&ctx("remove_overrides"))
        .await
        .unwrap();
    assert!(out.dynamic_applied.is_empty());
    assert_eq!(
        out.restart_required,
        [
            "innodb_buffer_pool_size",
            "max_connections",
            "slow_query_log"
        ]
    );
    assert!(cfg.current(&ctx("current")).await.unwrap().is_empty());

    // The control plane's base file keeps only known tunables.
    cfg.reset_base(
        &ctx("reset_base"),
        "[mysqld]\ndatadir = /elsewhere\nmax_connections = 77\n",
    )
    .await
    .unwrap();
    inst.driver
        .lifecycle()
        .restart(&ctx("restart"))
        .await
        .unwrap();
    assert_eq!(global("max_connections").await, "77");
    assert!(
        global("datadir")
            .await
            .starts_with(inst.base.to_str().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_from_a_physical_backup_brings_the_data_back() {
    use guest_agent_api::runtime::{CommandSpec, DatastoreRuntime, ProcessRuntime};

    let inst = Instance::start().await;
    let p = inst.probe();
    p.admin_exec(
        "CREATE DATABASE kept; CREATE TABLE kept.t (v INT); INSERT INTO kept.t VALUES (42)",
    )
    .await
    .unwrap();
    let hooks = inst.driver.backup().expect("backup hooks");
    let meta = hooks.before_backup(&ctx("before_backup")).await.unwrap();
    let gtid = meta["log_executed_gtid_set"].as_str().unwrap().to_owned();
    assert!(gtid.starts_with("0-"), "{meta:?}");
    assert!(meta["log_file"].as_str().unwrap().starts_with("mysql-bin."));
    assert!(meta["log_position"].as_u64().unwrap() > 0);

    let rt = ProcessRuntime::new();
    let target = inst.base.join("backup");
    let cnf = format!(
        "--defaults-file={}",
        inst.base.join("conf/my.cnf").display()
    );
    let run = |args: Vec<String>| {
        let rt = rt.clone();
        async move {
            let out = rt
                .run(&CommandSpec::new("/usr/bin/mariabackup", args))
                .await
                .unwrap();
            assert!(out.success(), "mariabackup: {}", out.stderr_text());
        }
    };
    run(vec![
        cnf.clone(),
        "--backup".into(),
        format!("--target-dir={}", target.display()),
        "--user=os_admin".into(),
        format!("--password={}", inst.admin_password()),
        format!("--socket={}", inst.socket().display()),
    ])
    .await;
    hooks.after_backup(&ctx("after_backup")).await.unwrap();
    p.admin_exec("DROP DATABASE kept").await.unwrap();

    hooks
        .prepare_restore(&ctx("prepare_restore"))
        .await
        .unwrap();
    let data = inst.base.join("data");
    assert!(data.is_dir() && std::fs::read_dir(&data).unwrap().count() == 0);
    run(vec![
        "--prepare".into(),
        format!("--target-dir={}", target.display()),
    ])
    .await;
    run(vec![
        cnf,
        "--copy-back".into(),
        format!("--target-dir={}", target.display()),
    ])
    .await;
    hooks.finish_restore(&ctx("finish_restore")).await.unwrap();
    assert_eq!(
        p.admin_value("SELECT v FROM kept.t")
            .await
            .unwrap()
            .as_deref(),
        Some("42")
    );
    // The binary logs are not part of a physical backup; the position a replica seeded from
    // it starts at is recorded beside it, and matches what before_backup reported.
    let info = ["mariadb_backup_binlog_info", "xtrabackup_binlog_info"]
        .iter()
        .find_map(|f| std::fs::read_to_string(target.join(f)).ok())
        .expect("binlog info in the backup");
    assert!(info.contains(&gtid), "{info} vs {gtid}");
}

/// As root with an unprivileged OS user (Debian's `mysql`, created by mariadb-server), the
/// server and the installer run as that user and own the data; as another user, the server
/// runs as that user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_runs_as_the_os_user() {
    use std::os::unix::fs::MetadataExt;

    let root = nix::unistd::geteuid().is_root();
    let os_user = root.then(|| "mysql".to_owned());
    let expected = match &os_user {
        Some(name) => nix::unistd::User::from_name(name)
            .unwrap()
            .unwrap_or_else(|| panic!("OS user {name} missing: run tools/setup.sh"))
            .uid
            .as_raw(),
        None => nix::unistd::geteuid().as_raw(),
    };
    // The temporary directory is 0700; the OS user must traverse it.
    let inst = Instance::unprepared_as(os_user);
    std::fs::set_permissions(&inst.base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let inst = inst.prepared().await;
    let data = inst.base.join("data");
    assert_eq!(
        std::fs::metadata(data.join("mysql")).unwrap().uid(),
        expected
    );
    let pid: u32 = std::fs::read_to_string(inst.pid_file())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().nth(1) == Some(expected.to_string().as_str()),
        "{uid_line}"
    );
    assert!(inst.probe().write_something().await.is_ok());
    let cnf = std::fs::read_to_string(inst.base.join("conf").join("my.cnf")).unwrap();
    assert!(!cnf.contains("user = root"), "{cnf}");
}

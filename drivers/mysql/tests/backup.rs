//! Backup hooks on real MariaDB servers: the tools log in with the option file `tool_access`
//! writes (and nothing on their command line), and a `mariabackup` of one instance restored
//! into another runs there on the target's own port with the target's administrative account,
//! the source's data and no replication from the source.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use guest_agent_api::OpContext;
use guest_agent_api::admin::PageRequest;
use guest_agent_api::backup::{BackupHooks, ToolAccess};
use guest_agent_api::{Driver, Error};
use mysql_async::prelude::Queryable;
use support::Instance;

fn ctx(what: &str) -> OpContext {
    OpContext::new(format!("test-{what}"))
}

fn hooks(inst: &Instance) -> &dyn BackupHooks {
    inst.driver.backup().expect("backup hooks")
}

/// The first of `names` in the access description's bin dirs.
fn tool(access: &ToolAccess, names: &[&str]) -> PathBuf {
    access
        .bin_dirs
        .iter()
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("none of {names:?} in {:?}", access.bin_dirs))
}

/// Runs `program` with `args` (no password anywhere on it); panics with its stderr when it
/// fails, returns its stdout.
fn run(program: &Path, args: &[String]) -> String {
    let out = Command::new(program)
        .args(args)
        .env_remove("MYSQL_PWD")
        .env_remove("MYSQL_HOME")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn defaults_file(access: &ToolAccess) -> String {
    format!(
        "--defaults-file={}",
        access.credentials_file.as_ref().unwrap().display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_log_in_with_the_option_file() {
    let inst = Instance::start().await;
    let access = hooks(&inst).tool_access(&ctx("tool_access")).await.unwrap();
    let cnf = access.credentials_file.clone().expect("an option file");
    let meta = std::fs::metadata(&cnf).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(!cnf.starts_with(&access.data_dir));
    assert_eq!(access.port, inst.port);
    assert_eq!(access.socket, inst.socket());
    let text = std::fs::read_to_string(&cnf).unwrap();
    assert!(text.contains(&inst.admin_password()));
    let config = access.server_config.clone().expect("my.cnf");
    assert!(config.is_file());

    let client = tool(&access, &["mariadb", "mysql"]);
    // As the only option file (it includes the server's), and as an extra one.
    let one = run(
        &client,
        &[
            defaults_file(&access),
            "-N".into(),
            "-e".into(),
            "SELECT CURRENT_USER(), @@port".into(),
        ],
    );
    assert_eq!(one.trim(), format!("os_admin@localhost\t{}", inst.port));
    let extra = run(
        &client,
        &[
            format!("--defaults-file={}", config.display()),
            format!("--defaults-extra-file={}", cnf.display()),
            "-N".into(),
            "-e".into(),
            "SELECT 1".into(),
        ],
    );
    assert_eq!(extra.trim(), "1");
    // Written again (atomically) on each call, with the same content.
    hooks(&inst).tool_access(&ctx("tool_access")).await.unwrap();
    assert_eq!(std::fs::read_to_string(&cnf).unwrap(), text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_physical_backup_of_another_instance_restores_into_this_one() {
    let a = Instance::start().await;
    let b = Instance::start().await;
    assert_ne!(a.port, b.port);
    let (password_a, password_b) = (a.admin_password(), b.admin_password());
    assert_ne!(password_a, password_b);

    b.probe()
        .admin_exec(
            "CREATE DATABASE from_b; CREATE TABLE from_b.t (v INT PRIMARY KEY); \
             INSERT INTO from_b.t VALUES (1), (2), (3)",
        )
        .await
        .unwrap();
    // B knows replication sources (never started): the default one and a named one.
    b.probe()
        .admin_exec(
            "CHANGE MASTER TO MASTER_HOST='192.0.2.1', MASTER_PORT=3306, \
             MASTER_USER='repl', MASTER_PASSWORD='x'; \
             CHANGE MASTER 'ext' TO MASTER_HOST='192.0.2.2', MASTER_PORT=3306, \
             MASTER_USER='repl', MASTER_PASSWORD='x'",
        )
        .await
        .unwrap();
    let access_b = hooks(&b).tool_access(&ctx("tool_access")).await.unwrap();
    let mariabackup = tool(&access_b, &["mariabackup", "mariadb-backup"]);
    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("backup");
    let target_arg = format!("--target-dir={}", target.display());
    hooks(&b)
        .before_backup(&ctx("before_backup"))
        .await
        .unwrap();
    run(
        &mariabackup,
        &[
            defaults_file(&access_b),
            "--backup".into(),
            target_arg.clone(),
        ],
    );
    hooks(&b).after_backup(&ctx("after_backup")).await.unwrap();
    run(&mariabackup, &["--prepare".into(), target_arg.clone()]);
    // mariabackup leaves the replication state files out; a plain copy of the data directory
    // would carry them: keep them to put them in too.
    let state = scratch.path().join("replication-state");
    std::fs::create_dir(&state).unwrap();
    for e in std::fs::read_dir(&access_b.data_dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".info") || name.contains("relay") {
            std::fs::copy(access_b.data_dir.join(&name), state.join(&name)).unwrap();
        }
    }
    drop(b);

    hooks(&a)
        .prepare_restore(&ctx("prepare_restore"))
        .await
        .unwrap();
    let access_a = hooks(&a).tool_access(&ctx("tool_access")).await.unwrap();
    assert_eq!(std::fs::read_dir(&access_a.data_dir).unwrap().count(), 0);
    run(
        &mariabackup,
        &[
            format!(
                "--defaults-file={}",
                access_a.server_config.as_ref().unwrap().display()
            ),
            "--copy-back".into(),
            target_arg,
            format!("--datadir={}", access_a.data_dir.display()),
        ],
    );
    let mut carried = Vec::new();
    for e in std::fs::read_dir(&state).unwrap() {
        let name = e.unwrap().file_name();
        std::fs::copy(state.join(&name), access_a.data_dir.join(&name)).unwrap();
        carried.push(name.to_string_lossy().into_owned());
    }
    assert!(
        carried.iter().any(|n| n == "multi-master.info"),
        "{carried:?}"
    );
    hooks(&a)
        .finish_restore(&ctx("finish_restore"))
        .await
        .unwrap();

    // The driver's own session works: B's databases, seen through A's admin account.
    let dbs = a
        .driver
        .admin()
        .list_databases(&ctx("list_databases"), &PageRequest::default())
        .await
        .unwrap();
    assert!(
        dbs.items.iter().any(|d| d.name.as_str() == "from_b"),
        "{:?}",
        dbs.items
    );
    let p = a.probe();
    assert_eq!(
        p.admin_value("SELECT SUM(v) FROM from_b.t")
            .await
            .unwrap()
            .as_deref(),
        Some("6")
    );
    assert_eq!(
        p.admin_value("SELECT @@port").await.unwrap(),
        Some(a.port.to_string())
    );
    // A's password, not B's, and the full privileges prepare gave.
    assert!(p.login("os_admin", &password_b, None).await.is_err());
    let grants = p
        .admin_value("SHOW GRANTS FOR CURRENT_USER()")
        .await
        .unwrap()
        .unwrap();
    assert!(
        grants.contains("ALL PRIVILEGES ON *.*") && grants.contains("WITH GRANT OPTION"),
        "{grants}"
    );
    // No replication from anywhere.
    let mut c = p.admin().await.unwrap();
    let sources: Vec<mysql_async::Row> = c.query("SHOW ALL SLAVES STATUS").await.unwrap();
    c.disconnect().await.unwrap();
    assert!(sources.is_empty(), "{} sources left", sources.len());
    // The one-shot init file is gone, and the tools log in to the restored server.
    assert!(
        std::fs::read_dir(a.base.join("run")).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".sql"))
    );
    let client = tool(&access_a, &["mariadb", "mysql"]);
    let one = run(
        &client,
        &[
            defaults_file(&access_a),
            "-N".into(),
            "-e".into(),
            "SELECT COUNT(*) FROM from_b.t".into(),
        ],
    );
    assert_eq!(one.trim(), "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_restore_without_a_backup_is_refused() {
    let a = Instance::start().await;
    hooks(&a)
        .prepare_restore(&ctx("prepare_restore"))
        .await
        .unwrap();
    let e = hooks(&a)
        .finish_restore(&ctx("finish_restore"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidState { .. }), "{e:?}");
}

//! Backup hooks on real PostgreSQL 15 servers: the backup tools (`pg_basebackup`, `pg_dump`)
//! log in with nothing but what `tool_access` describes, and a physical backup of one
//! instance restored into another runs there on the target's own port and configuration,
//! with the source's data and none of its replication state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use guest_agent_api::admin::PageRequest;
use guest_agent_api::backup::ToolAccess;
use guest_agent_api::{BackupHooks, Driver, OpContext};
use guest_agent_postgres::{MANAGED_CONF_FILE, PgDriver, ROLE_CONF_FILE};
use guest_agent_testkit::Probe;
use support::{PgProbe, prepared, small_spec};

fn ctx(op: &str) -> OpContext {
    OpContext::new(format!("test-{op}"))
}

fn hooks(driver: &PgDriver) -> &dyn BackupHooks {
    Driver::backup(driver).expect("backup hooks")
}

/// A client tool from the access description's bin dirs.
fn tool(access: &ToolAccess, name: &str) -> PathBuf {
    access
        .bin_dirs
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not in {:?}", access.bin_dirs))
}

/// Runs `program` with `args` as this process (the agent's OS user), without a password
/// prompt; panics with its stderr when it fails.
fn run(program: &Path, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .env_remove("PGPASSWORD")
        .env_remove("PGPASSFILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pg_basebackup` of the server `access` describes, in tar format with the WAL it needs
/// (in `base.tar`), into `dir`.
fn basebackup(access: &ToolAccess, dir: &Path) {
    let port = access.port.to_string();
    run(
        &tool(access, "pg_basebackup"),
        &[
            "-D",
            dir.to_str().unwrap(),
            "-Ft",
            "-X",
            "fetch",
            "-c",
            "fast",
            "-h",
            access.socket.to_str().unwrap(),
            "-p",
            &port,
            "-U",
            &access.user,
            "-w",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_log_in_with_what_tool_access_describes() {
    let (driver, guard) = prepared(&small_spec()).await;
    let probe = PgProbe::new(&guard);
    let c = probe.admin("postgres").await.unwrap();
    c.batch_execute("CREATE DATABASE dumped").await.unwrap();
    let access = hooks(&driver)
        .tool_access(&ctx("tool_access"))
        .await
        .unwrap();
    assert_eq!(access.credentials_file, None, "peer identity needs no file");
    assert_eq!(access.port, guard.layout().port);
    assert!(access.tmp_dir.is_dir() && !access.tmp_dir.starts_with(&access.data_dir));

    let meta = hooks(&driver)
        .before_backup(&ctx("before_backup"))
        .await
        .unwrap();
    assert!(meta["lsn"].as_str().unwrap().contains('/'), "{meta:?}");
    let out = access.tmp_dir.join("base");
    basebackup(&access, &out);
    assert!(out.join("base.tar").is_file());
    hooks(&driver)
        .after_backup(&ctx("after_backup"))
        .await
        .unwrap();

    let dump = access.tmp_dir.join("dumped.dump");
    let port = access.port.to_string();
    run(
        &tool(&access, "pg_dump"),
        &[
            "-h",
            access.socket.to_str().unwrap(),
            "-p",
            &port,
            "-U",
            &access.user,
            "-w",
            "-Fc",
            "-f",
            dump.to_str().unwrap(),
            "dumped",
        ],
    );
    assert!(std::fs::metadata(&dump).unwrap().len() > 0);
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_physical_backup_of_another_instance_restores_into_this_one() {
    let (a, guard_a) = prepared(&small_spec()).await;
    let (b, guard_b) = prepared(&small_spec()).await;
    let (layout_a, layout_b) = (guard_a.layout().clone(), guard_b.layout().clone());
    assert_ne!(layout_a.port, layout_b.port);
    let password_b = layout_b.admin_password();

    // Data only B has.
    let probe_b = PgProbe::new(&guard_b);
    let c = probe_b.admin("postgres").await.unwrap();
    c.batch_execute("CREATE DATABASE from_b").await.unwrap();
    c.batch_execute(
        "CREATE TABLE restored_rows (id int PRIMARY KEY); \
         INSERT INTO restored_rows SELECT generate_series(1, 100)",
    )
    .await
    .unwrap();
    drop(c);
    let access_b = hooks(&b).tool_access(&ctx("tool_access")).await.unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let backup = scratch.path().join("backup");
    basebackup(&access_b, &backup);
    drop(b);
    drop(guard_b);

    hooks(&a)
        .prepare_restore(&ctx("prepare_restore"))
        .await
        .unwrap();
    assert_eq!(std::fs::read_dir(&layout_a.data_dir).unwrap().count(), 0);
    // A retried prepare keeps the stash of A's own files.
    hooks(&a)
        .prepare_restore(&ctx("prepare_restore"))
        .await
        .unwrap();

    // Extracted as this process, owning nothing to the server's user: finish_restore hands
    // the tree over. The source looks like a replica: it left recovery state behind.
    let data = layout_a.data_dir.to_str().unwrap();
    run(
        Path::new("tar"),
        &[
            "--no-same-owner",
            "-xf",
            backup.join("base.tar").to_str().unwrap(),
            "-C",
            data,
        ],
    );
    let conf_b = std::fs::read_to_string(layout_a.data_dir.join(MANAGED_CONF_FILE)).unwrap();
    assert!(
        conf_b.contains(&format!("port = {}", layout_b.port)),
        "{conf_b}"
    );
    std::fs::write(layout_a.data_dir.join("standby.signal"), b"").unwrap();
    std::fs::write(
        layout_a.data_dir.join(ROLE_CONF_FILE),
        "primary_conninfo = 'host=192.0.2.1 port=5432 user=replicator'\n",
    )
    .unwrap();

    hooks(&a)
        .finish_restore(&ctx("finish_restore"))
        .await
        .unwrap();

    // A's own port and configuration, B's data, no recovery.
    let conf = std::fs::read_to_string(layout_a.data_dir.join(MANAGED_CONF_FILE)).unwrap();
    assert!(
        conf.contains(&format!("port = {}", layout_a.port)),
        "{conf}"
    );
    let main = std::fs::read_to_string(layout_a.data_dir.join("postgresql.conf")).unwrap();
    assert_eq!(
        main.lines()
            .filter(|l| l.trim() == format!("include '{MANAGED_CONF_FILE}'"))
            .count(),
        1
    );
    for gone in ["standby.signal", "recovery.signal", ROLE_CONF_FILE] {
        assert!(!layout_a.data_dir.join(gone).exists(), "{gone} survived");
    }
    let probe_a = PgProbe::new(&guard_a);
    assert!(probe_a.database_exists("from_b").await);
    assert_eq!(
        probe_a.setting("port").await.unwrap(),
        layout_a.port.to_string()
    );
    assert_eq!(
        probe_a.setting("transaction_read_only").await.unwrap(),
        "off"
    );
    let c = probe_a.admin("postgres").await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM restored_rows", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
    let in_recovery: bool = c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!in_recovery);
    // A's stored admin password works again over TCP (the catalog came with B's).
    assert!(
        probe_a
            .can_login("postgres", &layout_a.admin_password(), None)
            .await
    );
    assert!(!probe_a.can_login("postgres", &password_b, None).await);
    // The driver's own session works.
    let dbs = Driver::admin(&*a)
        .list_databases(&ctx("list_databases"), &PageRequest::default())
        .await
        .unwrap();
    assert!(dbs.items.iter().any(|d| d.name.as_str() == "from_b"));
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::MetadataExt;
        let pg = nix::unistd::User::from_name(support::OS_USER)
            .unwrap()
            .unwrap();
        let owner = std::fs::metadata(layout_a.data_dir.join("base"))
            .unwrap()
            .uid();
        assert_eq!(owner, pg.uid.as_raw());
    }
    assert!(!layout_a.state_dir.join("restore-stash").exists());
    drop(guard_a);
}

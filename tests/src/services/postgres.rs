//! PostgreSQL, seen from outside the agent: logging in as a user over TCP with tokio-postgres
//! (to check that users, passwords and grants really work), and finding and stopping the
//! postmaster by the pid in `<data_dir>/postmaster.pid`.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_postgres::{Client, NoTls};

/// Logs in to `dbname` on `127.0.0.1:port` as `user` with `password`.
pub async fn connect(
    port: u16,
    user: &str,
    password: &str,
    dbname: &str,
) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname(dbname)
        .connect_timeout(Duration::from_secs(10))
        .application_name("guest-agent-e2e")
        .connect(NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Like [`connect`], but panics with the server's message on failure.
pub async fn login(port: u16, user: &str, password: &str, dbname: &str) -> Client {
    connect(port, user, password, dbname)
        .await
        .unwrap_or_else(|e| panic!("login as {user} to {dbname} failed: {}", describe(&e)))
}

/// The server's own message of a tokio-postgres error, or the error itself.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => format!("{e}"),
    }
}

/// Names of the databases on the server (as seen by `client`), without templates.
pub async fn database_names(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname",
            &[],
        )
        .await
        .expect("query pg_database")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Names of the roles that can log in.
pub async fn login_role_names(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT rolname FROM pg_roles WHERE rolcanlogin ORDER BY rolname",
            &[],
        )
        .await
        .expect("query pg_roles")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Whether process `pid` exists and is not a zombie (servers started in the background may
/// be reaped late, and `kill -0` succeeds on zombies).
pub fn is_alive(pid: Pid) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The live postmaster of `data_dir`, from `postmaster.pid`, if it runs.
pub fn postmaster_pid(data_dir: &Path) -> Option<Pid> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let pid = Pid::from_raw(pid);
    // Guard against a recycled pid: the process must be a postgres server.
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let is_postgres = String::from_utf8_lossy(&cmdline).contains("postgres");
    (is_postgres && is_alive(pid)).then_some(pid)
}

fn wait_gone(pid: Pid, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if !is_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !is_alive(pid)
}

/// Stops the server of `data_dir` if it runs: SIGINT (fast shutdown), then SIGQUIT
/// (immediate), then SIGKILL.
pub fn stop_postmaster(data_dir: &Path) {
    let Some(pid) = postmaster_pid(data_dir) else {
        return;
    };
    for (sig, bound) in [
        (Signal::SIGINT, Duration::from_secs(30)),
        (Signal::SIGQUIT, Duration::from_secs(10)),
        (Signal::SIGKILL, Duration::from_secs(10)),
    ] {
        if kill(pid, sig).is_err() || wait_gone(pid, bound) {
            return;
        }
    }
    eprintln!("postmaster {pid} of {} did not stop", data_dir.display());
}

//! End-to-end test support for the `guest-agent` binary.
//!
//! A [`TestEnv`] owns one temporary directory tree (agent state, PostgreSQL data and run
//! directories, a certificate set), free loopback ports, and cleans all of it up on drop,
//! stopping the PostgreSQL server the agent left running (the agent deliberately keeps it
//! running across its own restarts). [`agent::Agent`] spawns the built binary with a TOML
//! configuration and SIGTERMs it on drop; [`client::RpcClient`] talks to it over HTTPS with
//! mutual TLS; [`services::postgres`] checks results with a direct database connection that
//! does not go through the agent.
//!
//! Nothing here skips: a missing PostgreSQL install or agent binary is a loud failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};

pub mod agent;
pub mod backup;
pub mod certs;
pub mod client;
pub mod mariadb;
pub mod services;

pub use agent::{Agent, agent_binary};
pub use certs::CertSet;
pub use client::{Reply, RpcClient};

/// Where Debian's PostgreSQL 15 server binaries live.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The OS user the PostgreSQL server runs as.
pub const PG_OS_USER: &str = "postgres";

/// Set to keep a failed test's directory tree for inspection.
pub const KEEP_ENV: &str = "GUEST_AGENT_E2E_KEEP";

/// Database created by [`prepare_args`].
pub const APP_DB: &str = "app";
/// User created by [`prepare_args`], with access to [`APP_DB`].
pub const APP_USER: &str = "app_user";
/// Password of [`APP_USER`].
pub const APP_PASSWORD: &str = "app-Pass-1234";
/// Trove's root user name.
pub const ROOT_USER: &str = "root";
/// Root password given to [`prepare_args`].
pub const ROOT_PASSWORD: &str = "root-Pass-5678";

/// Trove-shaped `prepare` arguments: one database, one user with access to it, a root
/// password (so `root` exists as a superuser for independent checks), and the keys Trove
/// always sends.
pub fn prepare_args() -> Value {
    json!({
        "packages": null,
        "databases": [{"_name": APP_DB, "_character_set": null, "_collate": null}],
        "memory_mb": 512,
        "users": [{"_name": APP_USER, "_password": APP_PASSWORD, "_host": "%",
                   "_databases": [{"_name": APP_DB}]}],
        "device_path": "/dev/vdb",
        "mount_point": "/var/lib/postgresql",
        "backup_info": null,
        "config_contents": null,
        "root_password": ROOT_PASSWORD,
        "overrides": {},
        "cluster_config": null,
        "snapshot": null,
        "modules": null,
        "ds_version": "15",
    })
}

/// Installs ring as the process-wide rustls provider (idempotent). reqwest is built with
/// `rustls-no-provider` and panics without one.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Panics unless PostgreSQL 15 and the `postgres` OS user are installed.
pub fn require_postgres() {
    let initdb = Path::new(PG_BIN).join("initdb");
    assert!(
        initdb.is_file(),
        "PostgreSQL 15 is not installed ({} is missing): run tools/setup.sh",
        initdb.display()
    );
    let user = nix::unistd::User::from_name(PG_OS_USER).ok().flatten();
    assert!(
        user.is_some(),
        "the '{PG_OS_USER}' OS user does not exist: run tools/setup.sh"
    );
}

/// Ports handed out in this process, so parallel tests never get the same one twice.
static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free TCP port on 127.0.0.1 (bound once to find it, then released).
pub fn free_port() -> u16 {
    let mut guard = PORTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let used = guard.get_or_insert_with(HashSet::new);
    loop {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        if used.insert(port) {
            return port;
        }
    }
}

/// One test's world: directories, ports and certificates. Dropping it stops the PostgreSQL
/// server whose data directory it owns and removes the tree.
#[derive(Debug)]
pub struct TestEnv {
    root: Option<tempfile::TempDir>,
    /// Root of the tree (mode 0755, so the `postgres` user can traverse it).
    pub dir: PathBuf,
    /// The agent's private state directory.
    pub state_dir: PathBuf,
    /// The PostgreSQL data directory (empty, owned by `postgres`, mode 0700).
    pub data_dir: PathBuf,
    /// Socket, pid and log directory of the server (owned by `postgres`).
    pub run_dir: PathBuf,
    /// Where configuration files and agent logs go.
    pub conf_dir: PathBuf,
    /// Port of the agent's HTTPS API.
    pub http_port: u16,
    /// Port of PostgreSQL.
    pub pg_port: u16,
    /// CA, server, client and rogue client certificates.
    pub certs: CertSet,
    /// Grace period written into the agent configuration.
    pub grace_secs: u64,
}

impl TestEnv {
    /// A fresh environment. Panics (with "run tools/setup.sh") if PostgreSQL is missing.
    pub fn new() -> Self {
        require_postgres();
        init_crypto();
        let root = tempfile::Builder::new()
            .prefix("ga-e2e-")
            .tempdir()
            .expect("create temp dir");
        let dir = root.path().to_owned();
        set_mode(&dir, 0o755);
        let state_dir = dir.join("state");
        let data_dir = dir.join("pgdata");
        let run_dir = dir.join("run");
        let conf_dir = dir.join("conf");
        for d in [&state_dir, &data_dir, &run_dir, &conf_dir] {
            fs::create_dir(d).expect("create dir");
        }
        set_mode(&state_dir, 0o700);
        set_mode(&conf_dir, 0o700);
        set_mode(&data_dir, 0o700);
        set_mode(&run_dir, 0o755);
        chown_to_postgres(&data_dir);
        chown_to_postgres(&run_dir);
        let certs = CertSet::generate(&dir.join("certs"));
        Self {
            root: Some(root),
            dir,
            state_dir,
            data_dir,
            run_dir,
            conf_dir,
            http_port: free_port(),
            pg_port: free_port(),
            certs,
            grace_secs: 30,
        }
    }

    /// `https://127.0.0.1:<http_port>`.
    pub fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.http_port)
    }

    /// The default configuration: PostgreSQL on loopback, HTTPS with mutual TLS on loopback.
    /// Tests edit the returned JSON (it is written out as TOML) before starting an agent.
    pub fn config(&self) -> Value {
        json!({
            "agent": {
                "instance_id": format!("e2e-{}", self.http_port),
                "state_dir": self.state_dir,
                "shutdown_grace_secs": self.grace_secs,
            },
            "log": {"level": "info"},
            "datastore": {
                "manager": "postgresql",
                "data_dir": self.data_dir,
                "run_dir": self.run_dir,
                "bind_address": "127.0.0.1",
                "port": self.pg_port,
                "os_user": PG_OS_USER,
                "bin_dirs": [PG_BIN],
            },
            "transport": {"http": {
                "enabled": true,
                "listen": format!("127.0.0.1:{}", self.http_port),
                "tls": {
                    "cert": self.certs.server_cert,
                    "key": self.certs.server_key,
                    "client_ca": self.certs.ca_cert,
                },
            }},
        })
    }

    /// A client with the good client certificate.
    pub fn client(&self) -> RpcClient {
        RpcClient::mtls(&self.https_url(), &self.certs, certs::Identity::Client)
    }

    /// Starts an agent with [`TestEnv::config`] and waits until `/healthz` answers.
    pub async fn start_agent(&self) -> Agent {
        self.start_agent_with(&self.config()).await
    }

    /// Starts an agent with `config` and waits until `/healthz` answers.
    pub async fn start_agent_with(&self, config: &Value) -> Agent {
        let mut agent = Agent::spawn(self, config);
        agent.wait_healthz(&self.client()).await;
        agent
    }

    /// Starts an agent and prepares it with [`prepare_args`]; returns once prepare succeeded
    /// and the datastore reports `healthy`.
    pub async fn prepared_agent(&self) -> (Agent, RpcClient) {
        let agent = self.start_agent().await;
        let client = self.client();
        client.prepare(prepare_args()).await;
        client.wait_status("healthy").await;
        (agent, client)
    }

    /// Logs in as the superuser `root` created by [`prepare_args`] (for independent checks).
    pub async fn root_login(&self, dbname: &str) -> tokio_postgres::Client {
        services::postgres::login(self.pg_port, ROOT_USER, ROOT_PASSWORD, dbname).await
    }

    /// Stops the PostgreSQL server of this environment, if one runs (fast shutdown, then
    /// harder signals). Used on drop; tests may call it too.
    pub fn stop_postgres(&self) {
        services::postgres::stop_postmaster(&self.data_dir);
    }

    /// The last `max` bytes of every log file under the run directory (server logs).
    pub fn server_logs(&self, max: usize) -> String {
        let mut out = String::new();
        if let Ok(rd) = fs::read_dir(&self.run_dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let text = fs::read_to_string(&p).unwrap_or_default();
                    let start = text.len().saturating_sub(max);
                    let start = (start..text.len())
                        .find(|i| text.is_char_boundary(*i))
                        .unwrap_or(0);
                    out.push_str(&format!(
                        "--- {} (tail) ---\n{}\n",
                        p.display(),
                        &text[start..]
                    ));
                }
            }
        }
        out
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.stop_postgres();
        if std::thread::panicking() {
            eprintln!("{}", self.server_logs(4000));
            if std::env::var_os(KEEP_ENV).is_some()
                && let Some(root) = self.root.take()
            {
                eprintln!("kept test directory {}", root.keep().display());
            }
        }
    }
}

/// Sets the permission bits of `p`.
pub fn set_mode(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", p.display()));
}

/// Hands `p` to the `postgres` OS user (when running as root).
pub fn chown_to_postgres(p: &Path) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let user = nix::unistd::User::from_name(PG_OS_USER)
        .ok()
        .flatten()
        .expect("the postgres OS user (run tools/setup.sh)");
    nix::unistd::chown(p, Some(user.uid), Some(user.gid))
        .unwrap_or_else(|e| panic!("chown postgres {}: {e}", p.display()));
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// Parses a benchmark's `--agent PATH`: the agent binary must exist (benchmarks measure a
/// release build they do not build themselves).
pub fn bench_agent(path: &str) -> Result<std::path::PathBuf, String> {
    let p = std::path::PathBuf::from(path);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{path} does not exist; build it: cargo build --release -p guest-agent"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

    use super::*;

    fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(path)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn roots(path: &Path) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        for c in certs(path) {
            roots.add(c).unwrap();
        }
        Arc::new(roots)
    }

    /// Runs an in-memory TLS handshake (plus one application byte, which makes TLS 1.3
    /// deliver the server's verdict on the client certificate); `Err` carries the failure.
    fn handshake(set: &CertSet, client_cert: Option<(&Path, &Path)>) -> Result<(), rustls::Error> {
        init_crypto();
        let verifier = rustls::server::WebPkiClientVerifier::builder(roots(&set.ca_cert))
            .build()
            .unwrap();
        let server_cfg = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                certs(&set.server_cert),
                PrivateKeyDer::from_pem_file(&set.server_key).unwrap(),
            )
            .unwrap();
        let builder = ClientConfig::builder().with_root_certificates(roots(&set.ca_cert));
        let client_cfg = match client_cert {
            Some((c, k)) => builder
                .with_client_auth_cert(certs(c), PrivateKeyDer::from_pem_file(k).unwrap())
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut client = ClientConnection::new(Arc::new(client_cfg), name).unwrap();
        let mut server = ServerConnection::new(Arc::new(server_cfg)).unwrap();
        std::io::Write::write_all(&mut client.writer(), b"x").unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
            }
            server.process_new_packets()?;
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
            }
            client.process_new_packets()?;
            let mut got = [0u8; 1];
            if std::io::Read::read(&mut server.reader(), &mut got).is_ok_and(|n| n == 1) {
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn generated_pki_works_for_mutual_tls() {
        let dir = tempfile::tempdir().unwrap();
        let set = CertSet::generate(&dir.path().join("certs"));
        handshake(&set, Some((&set.client_cert, &set.client_key))).unwrap();
        assert!(handshake(&set, Some((&set.rogue_cert, &set.rogue_key))).is_err());
        assert!(handshake(&set, None).is_err());
    }

    #[test]
    fn config_renders_as_toml() {
        let env = TestEnv::new();
        let path = agent::write_config(&env, &env.config());
        let text = fs::read_to_string(path).unwrap();
        let back: toml::Table = text.parse().unwrap();
        assert_eq!(
            back["datastore"]["port"].as_integer(),
            Some(i64::from(env.pg_port))
        );
        assert_eq!(
            back["transport"]["http"]["tls"]["client_ca"].as_str(),
            env.certs.ca_cert.to_str()
        );
        assert_eq!(back["agent"]["shutdown_grace_secs"].as_integer(), Some(30));
    }

    #[test]
    fn ports_are_distinct() {
        let a: HashSet<u16> = (0..20).map(|_| free_port()).collect();
        assert_eq!(a.len(), 20);
    }
}

//! Backups as the agent serves them: the configured object store, instance key and pipeline
//! ([`BackupService`]), the strategy for a driver's tools ([`BackupService::strategy`]) and
//! the `location` strings handed to the control plane and taken back for restores.
//!
//! A location is `<store>://<container>/<manifest key>` (`s3://database_backups/i-1/b-1.tar.zst.enc.manifest.json`).
//! Locations in Trove's own form (`<swift_url>/<container>/<object>`) and bare keys are read
//! too, so a control plane may pass back whatever it stored.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use guest_agent_api::backup::ToolAccess;
use guest_agent_backup::pipeline::compress::ZstdOpts;
use guest_agent_backup::store::{LocalStore, S3Store, S3StoreBuilder, SwiftAuth, SwiftStore};
use guest_agent_backup::strategies::mariabackup::MyConn;
use guest_agent_backup::strategies::pg_basebackup::PgConn;
use guest_agent_backup::strategies::{Mariabackup, MariadbDump, PgBasebackup, PgDump};
use guest_agent_backup::{
    BackupEngine, BackupError, BackupStrategy, Cipher, InstanceKey, ObjectKey, ObjectStore,
    PipelineOpts, ProcessRunner,
};

use crate::config::{BackupCipher, BackupSection, BackupStoreKind, ConfigError};

/// Every strategy the agent can build, physical first per datastore.
pub const STRATEGIES: &[&str] = &["pg_basebackup", "pg_dump", "mariabackup", "mariadb_dump"];

/// Whether `strategy` restores into a running server (logical) rather than a data directory.
pub fn is_logical(strategy: &str) -> bool {
    matches!(strategy, "pg_dump" | "mariadb_dump")
}

/// The store handle kept for creating its bucket or containers on first use.
#[derive(Debug)]
enum Backend {
    Local,
    S3(Arc<S3Store>),
    Swift(Arc<SwiftStore>),
}

/// The agent's backup machinery, built once from `[backup]`.
#[derive(Debug)]
pub struct BackupService {
    engine: BackupEngine,
    backend: Backend,
    key: Option<InstanceKey>,
    kind: BackupStoreKind,
    container: String,
    prefix: String,
    /// Set once the bucket or containers are known to exist.
    ensured: tokio::sync::OnceCell<()>,
    /// The backup running now (one at a time).
    running: Arc<Mutex<Option<String>>>,
}

/// Releases the "backup running" slot when dropped.
#[derive(Debug)]
pub struct RunningGuard(Arc<Mutex<Option<String>>>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if let Ok(mut r) = self.0.lock() {
            *r = None;
        }
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Reads the instance backup key: base64 of 32 bytes, in a file nobody else may read.
///
/// # Errors
/// [`ConfigError::Invalid`] naming `backup.key_file` when the file is missing, readable by
/// group or others, or not a key.
pub fn load_key(path: &Path) -> Result<InstanceKey, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| invalid("backup.key_file", format!("{}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(invalid(
            "backup.key_file",
            format!(
                "{} must not be readable by group or others (chmod 600)",
                path.display()
            ),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid("backup.key_file", format!("{}: {e}", path.display())))?;
    // The error names the rule, never the content.
    InstanceKey::from_base64(&text).map_err(|_| {
        invalid(
            "backup.key_file",
            format!("{} must hold base64 of exactly 32 bytes", path.display()),
        )
    })
}

/// A fresh key in the form `backup.key_file` takes.
///
/// # Errors
/// When the system's random source fails.
pub fn generate_key_text() -> Result<String, BackupError> {
    use base64::Engine;
    let mut raw = [0u8; 32];
    getrandom_fill(&mut raw)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(raw))
}

fn getrandom_fill(buf: &mut [u8]) -> Result<(), BackupError> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| BackupError::io("reading /dev/urandom", e))
}

impl BackupService {
    /// Builds the store client, reads the key and checks the pipeline options. Makes no
    /// request to the store (it may be down at boot; backups then fail with a clear error).
    ///
    /// # Errors
    /// [`ConfigError`] for an unusable key file, local directory or store setting.
    pub fn build(
        cfg: &BackupSection,
        state_dir: &Path,
        instance_id: &str,
    ) -> Result<Self, ConfigError> {
        let key = cfg.key_file.as_deref().map(load_key).transpose()?;
        let (store, backend): (Arc<dyn ObjectStore>, Backend) = match cfg.store {
            BackupStoreKind::Local => {
                let dir = cfg
                    .local_dir
                    .clone()
                    .unwrap_or_else(|| state_dir.join("backups"))
                    .join(&cfg.container);
                create_private_dir(&dir)?;
                let s = LocalStore::new(&dir)
                    .map_err(|e| invalid("backup.local_dir", e.to_string()))?;
                (Arc::new(s), Backend::Local)
            }
            BackupStoreKind::S3 => {
                let s3 = cfg
                    .s3
                    .as_ref()
                    .ok_or_else(|| invalid("backup.s3", "required for store = \"s3\""))?;
                let mut b = S3StoreBuilder::new(&cfg.container)
                    .with_region(&s3.region)
                    .with_credentials(&s3.access_key, &s3.secret_key)
                    .with_path_style(s3.path_style);
                if let Some(e) = &s3.endpoint {
                    b = b.with_endpoint(e);
                }
                let s = Arc::new(b.build().map_err(|e| invalid("backup.s3", e.to_string()))?);
                (Arc::clone(&s) as Arc<dyn ObjectStore>, Backend::S3(s))
            }
            BackupStoreKind::Swift => {
                let sw = cfg
                    .swift
                    .as_ref()
                    .ok_or_else(|| invalid("backup.swift", "required for store = \"swift\""))?;
                let auth = SwiftAuth::TempAuth {
                    auth_url: sw.auth_url.clone(),
                    user: sw.user.clone(),
                    key: sw.key.clone(),
                };
                let s = Arc::new(
                    guest_agent_backup::store::SwiftStoreBuilder::new(auth, &cfg.container)
                        .build()
                        .map_err(|e| invalid("backup.swift", e.to_string()))?,
                );
                (Arc::clone(&s) as Arc<dyn ObjectStore>, Backend::Swift(s))
            }
        };
        let mib = usize::try_from(cfg.part_size_mib)
            .map_err(|_| invalid("backup.part_size_mib", "too large"))?;
        let opts = PipelineOpts {
            zstd: ZstdOpts {
                level: cfg.compression_level,
                workers: cfg.compression_workers,
            },
            cipher: match cfg.cipher {
                BackupCipher::Aes256Gcm => Cipher::Aes256Gcm,
                BackupCipher::ChaCha20Poly1305 => Cipher::ChaCha20Poly1305,
            },
            part_size: mib << 20,
            concurrency: cfg.upload_concurrency,
            upload_rate: cfg.upload_limit_bytes_per_sec,
            download_rate: cfg.download_limit_bytes_per_sec,
            progress_interval: Duration::from_secs(cfg.progress_interval_secs),
            verify_before_restore: cfg.verify_before_restore,
            ..PipelineOpts::default()
        };
        let engine = BackupEngine::new(store, Arc::new(ProcessRunner::new()), opts)
            .map_err(|e| invalid("backup", e.to_string()))?;
        Ok(Self {
            engine,
            backend,
            key,
            kind: cfg.store,
            container: cfg.container.clone(),
            prefix: cfg.prefix.clone().unwrap_or_else(|| instance_id.to_owned()),
            ensured: tokio::sync::OnceCell::new(),
            running: Arc::new(Mutex::new(None)),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &BackupEngine {
        &self.engine
    }

    /// The instance key, if backups are encrypted.
    pub fn key(&self) -> Option<&InstanceKey> {
        self.key.as_ref()
    }

    /// Key prefix of this instance's backups.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Claims the single backup slot for `backup_id`; `Err(other id)` while another runs.
    pub fn claim(&self, backup_id: &str) -> Result<RunningGuard, String> {
        let mut r = self
            .running
            .lock()
            .map_err(|_| "the backup slot is poisoned".to_owned())?;
        if let Some(other) = r.as_ref() {
            return Err(other.clone());
        }
        *r = Some(backup_id.to_owned());
        Ok(RunningGuard(Arc::clone(&self.running)))
    }

    /// The id of the backup running now, if any.
    pub fn running(&self) -> Option<String> {
        self.running.lock().ok().and_then(|r| r.clone())
    }

    /// Creates the bucket or containers when they do not exist yet (once per process).
    ///
    /// # Errors
    /// Store errors (unreachable, refused credentials).
    pub async fn ensure_store(&self) -> Result<(), BackupError> {
        self.ensured
            .get_or_try_init(|| async {
                match &self.backend {
                    Backend::Local => Ok(()),
                    Backend::S3(s) => s.ensure_bucket().await,
                    Backend::Swift(s) => s.ensure_containers().await,
                }
            })
            .await
            .map(|_| ())
    }

    fn scheme(&self) -> &'static str {
        match self.kind {
            BackupStoreKind::Local => "local",
            BackupStoreKind::S3 => "s3",
            BackupStoreKind::Swift => "swift",
        }
    }

    /// The location string of the backup whose manifest is `key`.
    pub fn location(&self, key: &ObjectKey) -> String {
        format!("{}://{}/{}", self.scheme(), self.container, key.as_str())
    }

    /// The manifest key a location names.
    ///
    /// # Errors
    /// A reason when it is empty, names another store or container, or is not a valid key.
    pub fn parse_location(&self, location: &str) -> Result<ObjectKey, String> {
        let loc = location.trim();
        if loc.is_empty() {
            return Err("must not be empty".to_owned());
        }
        let key = match loc.split_once("://") {
            None => loc,
            Some((scheme, rest)) => {
                let (container, key) = match scheme {
                    "local" | "s3" | "swift" => {
                        if scheme != self.scheme() {
                            return Err(format!(
                                "names a '{scheme}' store; this agent stores backups in '{}'",
                                self.scheme()
                            ));
                        }
                        rest.split_once('/').unwrap_or((rest, ""))
                    }
                    // Trove's form: <swift_url>/<container>/<object>.
                    "http" | "https" => {
                        let marker = format!("/{}/", self.container);
                        match rest.find(&marker) {
                            Some(i) => (self.container.as_str(), &rest[i + marker.len()..]),
                            None => {
                                return Err(format!(
                                    "does not name the container '{}'",
                                    self.container
                                ));
                            }
                        }
                    }
                    other => return Err(format!("unknown scheme '{other}'")),
                };
                if container != self.container {
                    return Err(format!(
                        "names container '{container}'; this agent's is '{}'",
                        self.container
                    ));
                }
                key
            }
        };
        ObjectKey::new(key).map_err(|e| e.to_string())
    }

    /// The strategy `id` for tools that reach the datastore as `access` says. `keep_owners`:
    /// a logical restore keeps the source's object owners and grants (the target has those
    /// roles: the same server); otherwise objects go to the restoring administrator.
    ///
    /// # Errors
    /// `InvalidArgument` for a strategy this agent does not know.
    pub fn strategy(
        id: &str,
        access: &ToolAccess,
        keep_owners: bool,
    ) -> Result<Box<dyn BackupStrategy>, BackupError> {
        let find = |name: &str| find_tool(&access.bin_dirs, name);
        match id {
            "pg_basebackup" | "pg_dump" => {
                let bin_dir = find("pg_basebackup")
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .unwrap_or_else(|| PathBuf::from("/usr/bin"));
                let conn = PgConn {
                    bin_dir,
                    host: access.socket.display().to_string(),
                    port: access.port,
                    user: access.user.clone(),
                    passfile: access.credentials_file.clone(),
                    run_as: access.os_user.clone(),
                };
                if id == "pg_basebackup" {
                    Ok(Box::new(PgBasebackup::new(conn)))
                } else {
                    let mut s = PgDump::new(conn);
                    s.create_database = true;
                    // A new server lacks the source's roles: there objects go to the
                    // restoring administrator and grants are given again through the agent.
                    s.no_owner = !keep_owners;
                    s.no_privileges = !keep_owners;
                    Ok(Box::new(s))
                }
            }
            "mariabackup" | "mariadb_dump" => {
                // The tools take one option file first; the credentials file includes the
                // server's.
                let conn = MyConn {
                    defaults_file: access
                        .credentials_file
                        .clone()
                        .or_else(|| access.server_config.clone()),
                    defaults_extra_file: None,
                    socket: Some(access.socket.clone()),
                    host: None,
                    port: None,
                    user: access.user.clone(),
                    run_as: access.os_user.clone(),
                };
                if id == "mariabackup" {
                    let mut s = Mariabackup::new(conn, &access.tmp_dir);
                    if let Some(p) = find("mariabackup").or_else(|| find("mariadb-backup")) {
                        s.mariabackup = p;
                    }
                    if let Some(p) = find("mbstream") {
                        s.mbstream = p;
                    }
                    s.datadir = Some(access.data_dir.clone());
                    Ok(Box::new(s))
                } else {
                    let mut s = MariadbDump::new(conn);
                    if let Some(p) = find("mariadb-dump").or_else(|| find("mysqldump")) {
                        s.dump = p;
                    }
                    if let Some(p) = find("mariadb").or_else(|| find("mysql")) {
                        s.client = p;
                    }
                    Ok(Box::new(s))
                }
            }
            other => Err(BackupError::invalid(
                "strategy",
                format!(
                    "unknown strategy '{other}' (known: {})",
                    STRATEGIES.join(", ")
                ),
            )),
        }
    }
}

/// `name` in the first of `dirs` (then `/usr/bin`) that has it.
fn find_tool(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter()
        .map(PathBuf::as_path)
        .chain([Path::new("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn create_private_dir(dir: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            invalid(
                "backup.local_dir",
                format!("creating {}: {e}", dir.display()),
            )
        })
}

/// Gigabytes (GiB), Trove's unit for a backup's `size`, to the byte's precision a float
/// keeps (small backups must not read as 0).
#[allow(clippy::cast_precision_loss)]
pub fn gb(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(store: BackupStoreKind) -> (tempfile::TempDir, BackupService) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = BackupSection::default();
        let mut s = BackupService::build(&cfg, dir.path(), "inst-1").unwrap();
        s.kind = store;
        (dir, s)
    }

    #[test]
    fn locations_round_trip_and_foreign_ones_are_refused() {
        let (_d, s) = service(BackupStoreKind::S3);
        let key = ObjectKey::new("inst-1/b1.tar.zst.manifest.json").unwrap();
        let loc = s.location(&key);
        assert_eq!(loc, "s3://database_backups/inst-1/b1.tar.zst.manifest.json");
        assert_eq!(s.parse_location(&loc).unwrap(), key);
        assert_eq!(s.parse_location(key.as_str()).unwrap(), key);
        assert_eq!(
            s.parse_location(
                "http://swift:8080/v1/AUTH_x/database_backups/inst-1/b1.tar.zst.manifest.json"
            )
            .unwrap(),
            key
        );
        assert!(
            s.parse_location("swift://database_backups/x")
                .unwrap_err()
                .contains("'swift' store")
        );
        assert!(
            s.parse_location("s3://other/x")
                .unwrap_err()
                .contains("container 'other'")
        );
        assert!(s.parse_location("").is_err());
        assert!(
            s.parse_location("s3://database_backups/../etc/passwd")
                .is_err()
        );
        assert!(s.parse_location("ftp://x/y").is_err());
    }

    #[test]
    fn one_backup_at_a_time() {
        let (_d, s) = service(BackupStoreKind::Local);
        let g = s.claim("b1").unwrap();
        assert_eq!(s.claim("b2").unwrap_err(), "b1");
        drop(g);
        assert!(s.claim("b2").is_ok());
    }

    #[test]
    fn key_file_rules() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, generate_key_text().unwrap()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_key(&p).unwrap_err().to_string().contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_key(&p).is_ok());
        std::fs::write(&p, "c2VjcmV0LXZhbHVl").unwrap();
        let e = load_key(&p).unwrap_err().to_string();
        assert!(e.contains("32 bytes") && !e.contains("c2VjcmV0"), "{e}");
        assert!(load_key(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn strategies_build_from_tool_access() {
        let access = ToolAccess {
            bin_dirs: vec![],
            socket: "/run/pg".into(),
            port: 5432,
            user: "postgres".into(),
            credentials_file: None,
            server_config: None,
            data_dir: "/var/lib/pg".into(),
            tmp_dir: "/var/lib/ga/tmp".into(),
            os_user: Some("postgres".into()),
        };
        for id in STRATEGIES {
            assert_eq!(
                BackupService::strategy(id, &access, false).unwrap().id(),
                *id
            );
        }
        assert!(BackupService::strategy("rsync", &access, true).is_err());
        assert!(is_logical("pg_dump") && !is_logical("mariabackup"));
        assert!((gb(3 << 30) - 3.0).abs() < 1e-9);
    }
}

//! Shared test support: the Swift test service's address and credentials (from the
//! environment `tools/swift.sh env` prints, or its documented defaults), store builders, and
//! a file-copying test strategy.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use guest_agent_backup::run::{CommandSpec, ToolExit, ToolRunner};
use guest_agent_backup::store::{
    S3Store, S3StoreBuilder, SwiftAuth, SwiftStore, SwiftStoreBuilder,
};
use guest_agent_backup::strategy::{BackupRequest, BackupStrategy, RestoreRequest, ToolReport};
use guest_agent_backup::{BackupError, Result, async_trait};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Swift tempauth URL.
pub fn swift_auth_url() -> String {
    env_or("GA_SWIFT_AUTH_URL", "http://127.0.0.1:18080/auth/v1.0")
}

/// S3 endpoint of the same proxy.
pub fn s3_endpoint() -> String {
    env_or("GA_S3_ENDPOINT", "http://127.0.0.1:18080")
}

/// Panics (never skips) when nothing answers at `url`'s host and port.
pub fn require_swift(url: &str) {
    let hostport = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("127.0.0.1:18080")
        .to_owned();
    let reachable = hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok());
    if !reachable {
        panic!("Swift is not running: run tools/swift.sh start (looked for {hostport})");
    }
}

/// A unique name for this run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub fn swift_auth() -> SwiftAuth {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = swift_auth_url();
    require_swift(&url);
    SwiftAuth::TempAuth {
        auth_url: url,
        user: env_or("GA_SWIFT_USER", "test:tester"),
        key: env_or("GA_SWIFT_KEY", "testing"),
    }
}

/// A Swift native store on `container` (containers created).
pub async fn swift_store(container: &str) -> SwiftStore {
    let store = SwiftStoreBuilder::new(swift_auth(), container)
        .build()
        .unwrap();
    store.ensure_containers().await.unwrap();
    store
}

/// A store that reads the segments container of `container` (to look for leftovers).
pub fn swift_segments(container: &str) -> SwiftStore {
    let segs = format!("{container}_segments");
    SwiftStoreBuilder::new(swift_auth(), &segs)
        .with_segments_container(&segs)
        .build()
        .unwrap()
}

/// An S3 API store on `bucket` (bucket created).
pub async fn s3_store(bucket: &str) -> S3Store {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let endpoint = s3_endpoint();
    require_swift(&endpoint);
    let store = S3StoreBuilder::new(bucket)
        .with_endpoint(endpoint)
        .with_region(env_or("GA_S3_REGION", "us-east-1"))
        .with_credentials(
            env_or("GA_S3_ACCESS_KEY", "test:tester"),
            env_or("GA_S3_SECRET_KEY", "testing"),
        )
        .build()
        .unwrap();
    store.ensure_bucket().await.unwrap();
    store
}

/// A strategy whose "datastore" is a file: the backup tool is `cat FILE` (or any argv), the
/// restore tool writes stdin to `target_dir/restored` with `dd`.
#[derive(Debug, Clone)]
pub struct FileStrategy {
    /// Backup argv (program first).
    pub argv: Vec<String>,
    /// Whether to claim incremental support.
    pub incremental: bool,
}

impl FileStrategy {
    pub fn cat(path: &std::path::Path) -> Self {
        Self {
            argv: vec!["/bin/cat".into(), path.display().to_string()],
            incremental: false,
        }
    }

    pub fn sh(script: &str) -> Self {
        Self {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            incremental: false,
        }
    }

    pub fn restored(dir: &std::path::Path) -> PathBuf {
        dir.join("restored")
    }
}

#[async_trait]
impl BackupStrategy for FileStrategy {
    fn id(&self) -> &'static str {
        "file"
    }
    fn datastore(&self) -> &'static str {
        "test"
    }
    fn extension(&self) -> &'static str {
        "bin"
    }
    fn supports_incremental(&self) -> bool {
        self.incremental
    }
    fn backup_command(&self, _req: &BackupRequest) -> Result<CommandSpec> {
        Ok(CommandSpec::new(&self.argv[0], self.argv[1..].to_vec()))
    }
    fn judge_backup(&self, _req: &BackupRequest, exit: &ToolExit) -> Result<ToolReport> {
        if !exit.success() || exit.stderr_text().contains("error:") {
            return Err(exit.to_error());
        }
        let mut r = ToolReport::default();
        r.values.insert("tool".into(), "file".into());
        Ok(r)
    }
    async fn before_restore(&self, _runner: &dyn ToolRunner, req: &RestoreRequest) -> Result<()> {
        let dir = req.require_target()?;
        std::fs::create_dir_all(dir).map_err(|e| BackupError::io("mkdir", e))?;
        let _ = std::fs::remove_file(Self::restored(dir));
        Ok(())
    }
    fn restore_command(&self, req: &RestoreRequest, step: usize) -> Result<CommandSpec> {
        let out = Self::restored(req.require_target()?);
        let mut args = vec![
            format!("of={}", out.display()),
            "status=none".into(),
            "bs=65536".into(),
        ];
        if step > 0 {
            args.push("oflag=append".into());
            args.push("conv=notrunc".into());
        }
        Ok(CommandSpec::new("/bin/dd", args))
    }
    async fn finish_restore(&self, _runner: &dyn ToolRunner, _req: &RestoreRequest) -> Result<()> {
        Ok(())
    }
}

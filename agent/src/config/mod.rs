//! Agent configuration: typed, documented, validated before anything binds or starts.
//!
//! Loading is pure: sources (a TOML file, Trove's INI guest files, environment overrides) are
//! read into a [`Config`] by [`Config::load`], then [`Config::validate`] checks it as a whole;
//! only then does `App::build` do I/O. Every field is documented in `guest-agent.example.toml`,
//! which a test parses. [`Config::redacted`] renders the effective configuration for
//! `check-config` with secrets replaced.
//!
//! Sources apply in the order given, on top of [`Config::default`]:
//! - [`ConfigSource::Toml`] sets the keys the file names ([`toml`]);
//! - [`ConfigSource::TroveDir`] fills what Trove's `guest_info.conf` and
//!   `trove-guestagent.conf` say ([`trove_ini`]);
//! - [`ConfigSource::Env`] overrides single keys from `GUEST_AGENT__<SECTION>__<KEY>`
//!   variables ([`env`](mod@env)).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod env;
pub mod redact;
pub mod toml;
pub mod trove_ini;
mod validate;

pub use env::ENV_PREFIX;

/// A configuration problem; the agent exits with EX_USAGE (64) on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file did not parse.
    #[error("cannot parse {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser message (with line and column where known).
        message: String,
    },
    /// A value is invalid.
    #[error("invalid configuration '{key}': {reason}")]
    Invalid {
        /// Dotted key (`transport.http.listen`).
        key: String,
        /// Why.
        reason: String,
    },
    /// A key of Trove's INI files is missing or has a value the agent cannot use.
    #[error("{path}: [{section}] {key}: {reason}")]
    Trove {
        /// The file (or the directory, when a required key is in none of its files).
        path: PathBuf,
        /// INI section (`DEFAULT`, `postgresql` ...).
        section: String,
        /// INI key.
        key: String,
        /// Why.
        reason: String,
    },
    /// An environment override is unknown or has a value of the wrong type.
    #[error("environment variable {name}: {reason}")]
    Env {
        /// The variable (`GUEST_AGENT__DATASTORE__PORT`), or several, comma-separated, when
        /// only their combination is invalid.
        name: String,
        /// Why.
        reason: String,
    },
}

/// Where configuration comes from; [`Config::load`] applies a list of them in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A TOML file in the schema of [`Config`]; it sets the keys it names.
    Toml(PathBuf),
    /// Trove's guest configuration directory (`/etc/trove/conf.d`): every `*.conf` in it, in
    /// sorted order, as oslo.config's `--config-dir` reads them.
    TroveDir(PathBuf),
    /// Environment overrides, `GUEST_AGENT__<SECTION>__<KEY>` = value; variables without the
    /// [`ENV_PREFIX`] are ignored, so the binary may pass `std::env::vars()` as they are.
    Env(BTreeMap<String, String>),
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Identity and local state of the agent.
    pub agent: AgentSection,
    /// Logging.
    pub log: LogSection,
    /// The managed datastore.
    pub datastore: DatastoreSection,
    /// Control-plane transports (inbound operations).
    pub transport: TransportSection,
    /// Outbound reports (heartbeats) to the control plane.
    pub control_plane: ControlPlaneSection,
    /// Backups: object store, encryption, compression and limits.
    pub backup: BackupSection,
    /// Trove's messaging settings (`transport_url`, `control_exchange`,
    /// `instance_rpc_encr_key`, `[oslo_messaging_rabbit]`), kept for the AMQP transport.
    /// Present when a Trove directory was read or the TOML file has a `[trove]` table.
    pub trove: Option<TroveSection>,
}

impl Config {
    /// Builds the configuration from `sources`, applied in order on top of the defaults.
    ///
    /// Reads the named files and nothing else: no directory is created, nothing is bound.
    /// The result is not validated; call [`Config::validate`] next.
    ///
    /// # Errors
    /// [`ConfigError::Read`]/[`ConfigError::Parse`] for unreadable or malformed files (TOML
    /// unknown keys included, with line and column), [`ConfigError::Trove`] for a missing
    /// `guest_id` or a malformed value of a Trove key the agent maps, [`ConfigError::Env`] for
    /// an unknown or mistyped override.
    pub fn load(sources: &[ConfigSource]) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        for source in sources {
            config = match source {
                ConfigSource::Toml(path) => toml::overlay_file(config, path)?,
                ConfigSource::TroveDir(dir) => trove_ini::overlay_dir(config, dir)?,
                ConfigSource::Env(vars) => env::overlay_env(config, vars)?,
            };
        }
        Ok(config)
    }

    /// Checks the configuration as a whole; the first problem found is returned.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the dotted key, e.g. `transport.http.tls` when the HTTP
    /// transport listens off loopback without mutual TLS.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::validate(self)
    }

    /// The effective configuration as TOML, secrets replaced by `<redacted>`
    /// ([`redact::REDACTED`]): the password of URLs, `trove.instance_rpc_encr_key`, and
    /// password-, secret- or key-like entries of `datastore.options`. File paths are shown.
    pub fn redacted(&self) -> String {
        redact::render(self)
    }
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// Instance id (Trove's `guest_id`); names the AMQP topic and goes into heartbeats.
    pub instance_id: String,
    /// Private directory for the agent's own state (prepare markers, credentials).
    pub state_dir: PathBuf,
    /// Seconds given to in-flight operations to finish on shutdown before they are cancelled.
    pub shutdown_grace_secs: u64,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            instance_id: "local".to_owned(),
            state_dir: PathBuf::from("/var/lib/guest-agent"),
            shutdown_grace_secs: 30,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `human` or `json`.
    pub format: LogFormat,
    /// A tracing filter (`info`, `guest_agent=debug,info`); `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".to_owned(),
        }
    }
}

/// How the datastore server is run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// A supervised local process.
    #[default]
    Process,
}

/// `[datastore]`.
///
/// `Debug` is hand-written: `options` may hold driver secrets, which are redacted.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatastoreSection {
    /// Trove manager name: `postgresql` (`mysql`, `mariadb` once their driver is registered).
    pub manager: String,
    /// Datastore version the control plane expects (informational).
    pub version: Option<String>,
    /// Data directory of the server.
    pub data_dir: PathBuf,
    /// Directory for the server's socket, pid and log files.
    pub run_dir: PathBuf,
    /// Address the server listens on.
    pub bind_address: IpAddr,
    /// Port the server listens on.
    pub port: u16,
    /// Directories searched for server binaries; empty = the driver's default.
    pub bin_dirs: Vec<PathBuf>,
    /// OS user the server runs as when the agent runs as root.
    pub os_user: Option<String>,
    /// How the server runs.
    pub runtime: RuntimeKind,
    /// Driver-specific options, checked by the driver.
    pub options: ::toml::Table,
}

impl Default for DatastoreSection {
    fn default() -> Self {
        Self {
            manager: "postgresql".to_owned(),
            version: None,
            data_dir: PathBuf::from("/var/lib/postgresql/data"),
            run_dir: PathBuf::from("/run/guest-agent/datastore"),
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 5432,
            bin_dirs: Vec::new(),
            os_user: Some("postgres".to_owned()),
            runtime: RuntimeKind::Process,
            options: ::toml::Table::new(),
        }
    }
}

impl fmt::Debug for DatastoreSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatastoreSection")
            .field("manager", &self.manager)
            .field("version", &self.version)
            .field("data_dir", &self.data_dir)
            .field("run_dir", &self.run_dir)
            .field("bind_address", &self.bind_address)
            .field("port", &self.port)
            .field("bin_dirs", &self.bin_dirs)
            .field("os_user", &self.os_user)
            .field("runtime", &self.runtime)
            .field("options", &redact::redact_options(&self.options))
            .finish()
    }
}

/// `[transport]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportSection {
    /// The HTTPS transport.
    pub http: HttpSection,
}

/// `[transport.http]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Serve the HTTP API.
    pub enabled: bool,
    /// Listen address. Anything but loopback requires `tls`.
    pub listen: SocketAddr,
    /// TLS with client certificates; absent means plaintext, allowed on loopback only.
    pub tls: Option<TlsSection>,
    /// Largest accepted request body in bytes.
    pub body_limit_bytes: usize,
    /// Seconds before a request is answered with 504 (long operations run tracked instead).
    pub request_timeout_secs: u64,
    /// Most concurrent connections.
    pub max_connections: usize,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8780),
            tls: None,
            body_limit_bytes: 1 << 20,
            request_timeout_secs: 300,
            max_connections: 256,
        }
    }
}

/// Server certificate and the CA that client certificates must chain to (mutual TLS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain of this agent.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA bundle; client certificates must chain to it.
    pub client_ca: PathBuf,
}

/// Where heartbeats go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlPlaneKind {
    /// Nowhere but the log and `GET /v1/status`.
    #[default]
    None,
    /// POSTed as JSON to `control_plane.http.url`.
    Http,
}

/// `[control_plane]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlaneSection {
    /// `none` or `http`.
    pub kind: ControlPlaneKind,
    /// Seconds between heartbeats (Trove's `report_interval`).
    pub heartbeat_interval_secs: u64,
    /// Settings for `kind = "http"`.
    pub http: Option<ControlPlaneHttp>,
}

impl Default for ControlPlaneSection {
    fn default() -> Self {
        Self {
            kind: ControlPlaneKind::None,
            heartbeat_interval_secs: 30,
            http: None,
        }
    }
}

/// `[control_plane.http]`.
///
/// `Debug` is hand-written: the URL may carry a password.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneHttp {
    /// Heartbeats are POSTed to `<url>/heartbeat`.
    pub url: String,
    /// CA bundle to verify the control plane's certificate (system roots are not used).
    pub ca: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// Client key for mutual TLS.
    pub client_key: Option<PathBuf>,
}

impl fmt::Debug for ControlPlaneHttp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlaneHttp")
            .field("url", &redact::redact_url(&self.url))
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .finish()
    }
}

/// Where backups are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupStoreKind {
    /// A local directory (`backup.local_dir`): the embedded default.
    #[default]
    Local,
    /// An S3 API endpoint (`[backup.s3]`): AWS, OpenStack Swift with s3api, Ceph RGW.
    S3,
    /// OpenStack Swift's native API (`[backup.swift]`).
    Swift,
}

/// The chunk cipher of encrypted backups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupCipher {
    /// AES-256-GCM (fast with AES-NI).
    #[default]
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    /// ChaCha20-Poly1305 (fast without AES hardware).
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
}

/// `[backup]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupSection {
    /// `local`, `s3` or `swift`.
    pub store: BackupStoreKind,
    /// Directory of the `local` store; default `<agent.state_dir>/backups`.
    pub local_dir: Option<PathBuf>,
    /// Bucket (S3) or container (Swift); Trove's default is `database_backups`.
    pub container: String,
    /// Key prefix of this instance's backups; default: the instance id.
    pub prefix: Option<String>,
    /// File holding the instance backup key (base64 of 32 random bytes, e.g. from
    /// `guest-agent gen-backup-key`); absent = backups are stored unencrypted.
    pub key_file: Option<PathBuf>,
    /// `aes-256-gcm` or `chacha20-poly1305`.
    pub cipher: BackupCipher,
    /// zstd level, 1 to 19.
    pub compression_level: i32,
    /// zstd worker threads (0 = compress on the pipeline's own thread).
    pub compression_workers: u32,
    /// Size of each uploaded part in MiB (5 to 512); the pipeline's buffers take about
    /// `part_size_mib × (upload_concurrency + 1) + 3` MiB, plus about 16 MiB for zstd.
    pub part_size_mib: u64,
    /// Parts uploaded at once (1 to 16).
    pub upload_concurrency: usize,
    /// Upload bandwidth limit in bytes per second; absent = unlimited.
    pub upload_limit_bytes_per_sec: Option<u64>,
    /// Download (restore, verify) bandwidth limit in bytes per second; absent = unlimited.
    pub download_limit_bytes_per_sec: Option<u64>,
    /// Authenticate and checksum every stored byte of a backup before a restore writes
    /// anything (reads the backup twice).
    pub verify_before_restore: bool,
    /// Seconds between progress reports (`update_backup`) while a backup runs.
    pub progress_interval_secs: u64,
    /// Settings for `store = "s3"`.
    pub s3: Option<BackupS3>,
    /// Settings for `store = "swift"`.
    pub swift: Option<BackupSwift>,
}

impl Default for BackupSection {
    fn default() -> Self {
        Self {
            store: BackupStoreKind::Local,
            local_dir: None,
            container: "database_backups".to_owned(),
            prefix: None,
            key_file: None,
            cipher: BackupCipher::Aes256Gcm,
            compression_level: 3,
            compression_workers: 2,
            part_size_mib: 8,
            upload_concurrency: 2,
            upload_limit_bytes_per_sec: None,
            download_limit_bytes_per_sec: None,
            verify_before_restore: false,
            progress_interval_secs: 5,
            s3: None,
            swift: None,
        }
    }
}

/// `[backup.s3]`.
///
/// `Debug` is hand-written: `secret_key` is a secret.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupS3 {
    /// Endpoint URL (`http://127.0.0.1:8080` for Swift's s3api); absent = AWS.
    pub endpoint: Option<String>,
    /// Signing region.
    #[serde(default = "default_region")]
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key. Secret.
    pub secret_key: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by Swift and most RGW setups.
    #[serde(default = "default_true")]
    pub path_style: bool,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

fn default_true() -> bool {
    true
}

impl fmt::Debug for BackupS3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupS3")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &redact::REDACTED)
            .field("path_style", &self.path_style)
            .finish()
    }
}

/// `[backup.swift]`: tempauth (v1.0) credentials.
///
/// `Debug` is hand-written: `key` is a secret.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSwift {
    /// Auth URL (`http://127.0.0.1:8080/auth/v1.0`).
    pub auth_url: String,
    /// `account:user`.
    pub user: String,
    /// The key. Secret.
    pub key: String,
}

impl fmt::Debug for BackupSwift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupSwift")
            .field("auth_url", &self.auth_url)
            .field("user", &self.user)
            .field("key", &redact::REDACTED)
            .finish()
    }
}

/// `[trove]`: Trove's messaging settings, read from its guest files and kept for the AMQP
/// transport, which will connect to `transport_url`, consume `guestagent.<instance_id>` on
/// `control_exchange` with queue attributes from `oslo_messaging_rabbit`, and decrypt with
/// `instance_rpc_encr_key`. Nothing else in the agent reads it.
///
/// `transport_url` and `instance_rpc_encr_key` are secrets: `Debug` and
/// [`Config::redacted`] hide them.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TroveSection {
    /// `[DEFAULT] transport_url`: `rabbit://user:pass@host:5672[,user:pass@host2:5672]/vhost`.
    /// Secret (carries the broker password).
    pub transport_url: Option<String>,
    /// `[DEFAULT] control_exchange`: the exchange of the RPC topics. The default is
    /// oslo.messaging's (`openstack`); Trove deployments set `trove`.
    pub control_exchange: String,
    /// `[DEFAULT] instance_rpc_encr_key` (`guest_info.conf`): the per-instance key that
    /// encrypts RPC message bodies. Secret.
    pub instance_rpc_encr_key: Option<String>,
    /// `[oslo_messaging_rabbit]`.
    pub oslo_messaging_rabbit: OsloMessagingRabbit,
}

impl Default for TroveSection {
    fn default() -> Self {
        Self {
            transport_url: None,
            control_exchange: "openstack".to_owned(),
            instance_rpc_encr_key: None,
            oslo_messaging_rabbit: OsloMessagingRabbit::default(),
        }
    }
}

impl fmt::Debug for TroveSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TroveSection")
            .field(
                "transport_url",
                &self.transport_url.as_deref().map(redact::redact_url),
            )
            .field("control_exchange", &self.control_exchange)
            .field(
                "instance_rpc_encr_key",
                &self
                    .instance_rpc_encr_key
                    .as_ref()
                    .map(|_| redact::REDACTED),
            )
            .field("oslo_messaging_rabbit", &self.oslo_messaging_rabbit)
            .finish()
    }
}

/// `[trove.oslo_messaging_rabbit]`: the oslo.messaging rabbit driver options the agent needs
/// to declare Trove's queues with identical attributes and to reconnect like oslo does. Names
/// and defaults are oslo.messaging's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OsloMessagingRabbit {
    /// Connect over TLS.
    pub ssl: bool,
    /// TLS version name (`TLSv1_2` ...); unset = the library's default.
    pub ssl_version: Option<String>,
    /// PEM private key of the client certificate.
    pub ssl_key_file: Option<PathBuf>,
    /// PEM client certificate.
    pub ssl_cert_file: Option<PathBuf>,
    /// PEM CA bundle for the broker's certificate.
    pub ssl_ca_file: Option<PathBuf>,
    /// Seconds to wait before reconnecting after a consumer cancel notification.
    pub kombu_reconnect_delay: f64,
    /// Message compression (`gzip`, `bz2`); unset = none.
    pub kombu_compression: Option<String>,
    /// Seconds to keep retrying a reply to a missing consumer.
    pub kombu_missing_consumer_retry_timeout: u64,
    /// Next broker on failover: `round-robin` or `shuffle`.
    pub kombu_failover_strategy: String,
    /// SASL mechanism: `AMQPLAIN`, `PLAIN`, `EXTERNAL`.
    pub rabbit_login_method: String,
    /// Seconds between connection retries, initially.
    pub rabbit_retry_interval: u64,
    /// Seconds added to the retry interval after each failure.
    pub rabbit_retry_backoff: u64,
    /// Longest retry interval in seconds.
    pub rabbit_interval_max: u64,
    /// Declare queues with `x-ha-policy: all`.
    pub rabbit_ha_queues: bool,
    /// Declare queues as quorum queues (durable regardless of `amqp_durable_queues`).
    pub rabbit_quorum_queue: bool,
    /// Quorum queues also for reply and fanout queues.
    pub rabbit_transient_quorum_queue: bool,
    /// Quorum queue `x-delivery-limit`; 0 = unset.
    pub rabbit_quorum_delivery_limit: u64,
    /// Quorum queue `x-max-in-memory-length`; 0 = unset.
    pub rabbit_quorum_max_memory_length: u64,
    /// Quorum queue `x-max-in-memory-bytes`; 0 = unset.
    pub rabbit_quorum_max_memory_bytes: u64,
    /// Seconds of `x-expires` on reply and fanout queues; 0 = none.
    pub rabbit_transient_queues_ttl: u64,
    /// AMQP prefetch count; 0 = unlimited.
    pub rabbit_qos_prefetch_count: u16,
    /// Seconds without broker heartbeats before the connection is considered dead; 0 = off.
    pub heartbeat_timeout_threshold: u64,
    /// Heartbeat checks per `heartbeat_timeout_threshold`.
    pub heartbeat_rate: u64,
    /// Use one stream queue for fanout instead of a queue per consumer.
    pub rabbit_stream_fanout: bool,
    /// Stable queue names from host and process name instead of random ones.
    pub use_queue_manager: bool,
    /// Declare exchanges and queues durable.
    pub amqp_durable_queues: bool,
    /// Declare exchanges and queues auto-delete.
    pub amqp_auto_delete: bool,
}

impl Default for OsloMessagingRabbit {
    fn default() -> Self {
        Self {
            ssl: false,
            ssl_version: None,
            ssl_key_file: None,
            ssl_cert_file: None,
            ssl_ca_file: None,
            kombu_reconnect_delay: 1.0,
            kombu_compression: None,
            kombu_missing_consumer_retry_timeout: 60,
            kombu_failover_strategy: "round-robin".to_owned(),
            rabbit_login_method: "AMQPLAIN".to_owned(),
            rabbit_retry_interval: 1,
            rabbit_retry_backoff: 2,
            rabbit_interval_max: 30,
            rabbit_ha_queues: false,
            rabbit_quorum_queue: false,
            rabbit_transient_quorum_queue: false,
            rabbit_quorum_delivery_limit: 0,
            rabbit_quorum_max_memory_length: 0,
            rabbit_quorum_max_memory_bytes: 0,
            rabbit_transient_queues_ttl: 1800,
            rabbit_qos_prefetch_count: 0,
            heartbeat_timeout_threshold: 60,
            heartbeat_rate: 3,
            rabbit_stream_fanout: false,
            use_queue_manager: false,
            amqp_durable_queues: false,
            amqp_auto_delete: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-agent.example.toml")
    }

    /// The example with its optional settings enabled: lines of the form `#key = value` or
    /// `#[table]` lose their `#`; prose comments (`# ...`) stay.
    fn example_enabled() -> String {
        let text = std::fs::read_to_string(example_path()).unwrap();
        text.lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c != ' ' && c != '#') => rest,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Dotted paths of every leaf key in `table`.
    fn leaf_keys(table: &::toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                ::toml::Value::Table(inner) => leaf_keys(inner, &path, out),
                _ => out.push(path),
            }
        }
    }

    #[test]
    fn defaults_are_what_the_schema_says() {
        let config = Config::load(&[]).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.agent.instance_id, "local");
        assert_eq!(config.datastore.port, 5432);
        assert_eq!(
            config.transport.http.listen,
            "127.0.0.1:8780".parse().unwrap()
        );
        assert_eq!(config.trove, None);
    }

    #[test]
    fn example_file_is_the_defaults() {
        // The file deliberately differs from the defaults in nothing: optional settings are
        // commented out, so loading it must give exactly `Config::default()`.
        let config = Config::load(&[ConfigSource::Toml(example_path())]).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn example_optional_settings_parse_and_validate() {
        let config = toml::overlay_str(Config::default(), &example_enabled()).unwrap();
        config.validate().unwrap();
        assert_eq!(config.datastore.version.as_deref(), Some("16"));
        assert!(config.transport.http.tls.is_some());
        assert!(config.control_plane.http.is_some());
        assert_eq!(
            config.datastore.options["start_timeout_secs"].as_integer(),
            Some(60)
        );
        let trove = config.trove.unwrap();
        // The enabled example keeps oslo.messaging's defaults apart from the optional ones.
        let rabbit = OsloMessagingRabbit {
            ssl_version: None,
            ssl_key_file: None,
            ssl_cert_file: None,
            ssl_ca_file: None,
            kombu_compression: None,
            ..trove.oslo_messaging_rabbit.clone()
        };
        assert_eq!(rabbit, OsloMessagingRabbit::default());
        assert_eq!(
            trove.control_exchange,
            TroveSection::default().control_exchange
        );
    }

    #[test]
    fn example_documents_every_field() {
        let text = example_enabled();
        let file: ::toml::Table = text.parse().unwrap();
        let config = toml::overlay_str(Config::default(), &text).unwrap();
        let mut schema = Vec::new();
        leaf_keys(&toml::to_table(&config).unwrap(), "", &mut schema);
        let mut documented = Vec::new();
        leaf_keys(&file, "", &mut documented);
        let missing: Vec<&String> = schema.iter().filter(|k| !documented.contains(k)).collect();
        assert!(
            missing.is_empty(),
            "not in guest-agent.example.toml: {missing:?}"
        );
    }

    #[test]
    fn sources_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("agent.toml");
        std::fs::write(&toml_path, "[control_plane]\nheartbeat_interval_secs = 5\n").unwrap();
        let trove_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trove");
        let env: BTreeMap<String, String> = [(
            "GUEST_AGENT__AGENT__INSTANCE_ID".to_owned(),
            "from-env".to_owned(),
        )]
        .into();

        let config = Config::load(&[
            ConfigSource::Toml(toml_path.clone()),
            ConfigSource::TroveDir(trove_dir.clone()),
            ConfigSource::Env(env),
        ])
        .unwrap();
        // Trove's report_interval (20) overrides the file's 5; the environment overrides
        // Trove's guest_id.
        assert_eq!(config.control_plane.heartbeat_interval_secs, 20);
        assert_eq!(config.agent.instance_id, "from-env");

        let config = Config::load(&[
            ConfigSource::TroveDir(trove_dir),
            ConfigSource::Toml(toml_path),
        ])
        .unwrap();
        assert_eq!(config.control_plane.heartbeat_interval_secs, 5);
        assert_eq!(
            config.agent.instance_id,
            "9f2c4e1a-5b7d-4c3e-8a6f-0d1b2c3e4f5a"
        );
    }

    #[test]
    fn trove_values_are_redacted_in_output() {
        let trove_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trove");
        let config = Config::load(&[ConfigSource::TroveDir(trove_dir)]).unwrap();
        let text = config.redacted();
        for secret in ["Fx93kQpz7LwR", "r8Yb2XqL5vNw0TzK3mHd7GcJ1pFs9aEu"] {
            assert!(!text.contains(secret), "{secret} leaked:\n{text}");
            assert!(
                !format!("{config:?}").contains(secret),
                "{secret} leaked in Debug"
            );
        }
        assert!(
            text.contains("stackrabbit:<redacted>@10.0.0.11:5672"),
            "{text}"
        );
    }
}

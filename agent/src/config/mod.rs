//! Agent configuration: typed, documented, validated before anything binds or starts.
//!
//! Loading is pure: sources (a TOML file, Trove's INI guest files, environment overrides) are
//! read into a [`Config`], then [`Config::validate`] checks it as a whole; only then does
//! `App::build` do I/O. Every field is documented in `guest-agent.example.toml`, which a test
//! parses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod redact;
pub mod toml;
pub mod trove_ini;

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
        Self { format: LogFormat::Human, level: "info".to_owned() }
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
        Self { kind: ControlPlaneKind::None, heartbeat_interval_secs: 30, http: None }
    }
}

/// `[control_plane.http]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

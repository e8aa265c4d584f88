//! Whole-configuration checks run before anything binds or starts.
//!
//! Each rule names the dotted key it is about. The one with consequences for security: the HTTP
//! transport serves plaintext only on loopback; any other listen address requires
//! `transport.http.tls` (mutual TLS).

use std::path::Path;

use super::{BackupSection, BackupStoreKind, Config, ConfigError, ControlPlaneKind};

/// Longest instance id; Trove's are 36-character UUIDs.
const MAX_INSTANCE_ID_LEN: usize = 128;
/// Bounds of `transport.http.body_limit_bytes`.
const BODY_LIMIT_RANGE: std::ops::RangeInclusive<usize> = 1024..=64 * 1024 * 1024;
/// Bounds of `control_plane.heartbeat_interval_secs`.
const HEARTBEAT_RANGE: std::ops::RangeInclusive<u64> = 1..=3600;
/// Longest `agent.shutdown_grace_secs`.
const MAX_SHUTDOWN_GRACE_SECS: u64 = 3600;

/// Checks `config`; the first problem is returned.
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    let agent = &config.agent;
    let id = &agent.instance_id;
    // The id becomes an AMQP topic (`guestagent.<id>`) and a path component; a narrow alphabet
    // keeps both safe.
    if id.is_empty()
        || id.len() > MAX_INSTANCE_ID_LEN
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return invalid(
            "agent.instance_id",
            format!("{id:?} must be 1 to {MAX_INSTANCE_ID_LEN} characters of A-Z a-z 0-9 . _ -"),
        );
    }
    if agent.shutdown_grace_secs > MAX_SHUTDOWN_GRACE_SECS {
        return invalid(
            "agent.shutdown_grace_secs",
            format!("must be at most {MAX_SHUTDOWN_GRACE_SECS} seconds"),
        );
    }
    absolute("agent.state_dir", &agent.state_dir)?;

    let datastore = &config.datastore;
    if datastore.manager.trim().is_empty() {
        return invalid(
            "datastore.manager",
            "must name a datastore manager".to_owned(),
        );
    }
    if datastore.port == 0 {
        return invalid("datastore.port", "must not be 0".to_owned());
    }
    absolute("datastore.data_dir", &datastore.data_dir)?;
    absolute("datastore.run_dir", &datastore.run_dir)?;

    let http = &config.transport.http;
    if !HEARTBEAT_RANGE.contains(&config.control_plane.heartbeat_interval_secs) {
        return invalid(
            "control_plane.heartbeat_interval_secs",
            "must be 1 to 3600 seconds".to_owned(),
        );
    }
    if !BODY_LIMIT_RANGE.contains(&http.body_limit_bytes) {
        return invalid(
            "transport.http.body_limit_bytes",
            "must be 1024 (1 KiB) to 67108864 (64 MiB)".to_owned(),
        );
    }
    if http.request_timeout_secs == 0 {
        return invalid(
            "transport.http.request_timeout_secs",
            "must be at least 1".to_owned(),
        );
    }
    if http.max_connections == 0 {
        return invalid(
            "transport.http.max_connections",
            "must be at least 1".to_owned(),
        );
    }
    // `::ffff:127.0.0.1` is loopback too; `to_canonical` unwraps it before the check.
    if http.enabled && http.tls.is_none() && !http.listen.ip().to_canonical().is_loopback() {
        return invalid(
            "transport.http.tls",
            format!(
                "mutual TLS is required off loopback: transport.http.listen is {}; set \
                 [transport.http.tls] or listen on 127.0.0.1/::1",
                http.listen
            ),
        );
    }
    if let Some(tls) = &http.tls {
        non_empty("transport.http.tls.cert", &tls.cert)?;
        non_empty("transport.http.tls.key", &tls.key)?;
        non_empty("transport.http.tls.client_ca", &tls.client_ca)?;
    }

    let control_plane = &config.control_plane;
    if let Some(cp) = &control_plane.http {
        let url = cp.url.to_ascii_lowercase();
        let host = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        if host.is_none_or(|rest| rest.is_empty() || rest.starts_with('/')) {
            return invalid(
                "control_plane.http.url",
                "must be an http:// or https:// URL with a host".to_owned(),
            );
        }
        for (key, path) in [
            ("control_plane.http.ca", &cp.ca),
            ("control_plane.http.client_cert", &cp.client_cert),
            ("control_plane.http.client_key", &cp.client_key),
        ] {
            if let Some(path) = path {
                non_empty(key, path)?;
            }
        }
        if cp.client_cert.is_some() != cp.client_key.is_some() {
            return invalid(
                "control_plane.http.client_key",
                "client_cert and client_key go together".to_owned(),
            );
        }
    } else if control_plane.kind == ControlPlaneKind::Http {
        return invalid(
            "control_plane.http",
            "control_plane.kind = \"http\" requires [control_plane.http] with a url".to_owned(),
        );
    }

    if let Some(trove) = &config.trove
        && trove.control_exchange.trim().is_empty()
    {
        return invalid("trove.control_exchange", "must not be empty".to_owned());
    }
    validate_backup(&config.backup)
}

fn validate_backup(b: &BackupSection) -> Result<(), ConfigError> {
    // Bucket rules of S3 (and a subset of Swift's container rules).
    let c = &b.container;
    if !(3..=63).contains(&c.len())
        || !c.bytes().all(|x| {
            x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'-' | b'_' | b'.')
        })
    {
        return invalid(
            "backup.container",
            format!("{c:?} must be 3 to 63 characters of a-z 0-9 - _ ."),
        );
    }
    if let Some(p) = &b.prefix
        && (p.is_empty()
            || p.len() > 200
            || p.starts_with('/')
            || p.split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            || !p
                .bytes()
                .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'-' | b'_' | b'.' | b'/')))
    {
        return invalid(
            "backup.prefix",
            format!(
                "{p:?} must be 1 to 200 characters of A-Z a-z 0-9 - _ . / without empty, . or .. segments"
            ),
        );
    }
    if let Some(d) = &b.local_dir {
        absolute("backup.local_dir", d)?;
    }
    if let Some(k) = &b.key_file {
        absolute("backup.key_file", k)?;
    }
    if !(1..=19).contains(&b.compression_level) {
        return invalid("backup.compression_level", "must be 1 to 19".to_owned());
    }
    if b.compression_workers > 64 {
        return invalid("backup.compression_workers", "must be 0 to 64".to_owned());
    }
    if !(5..=512).contains(&b.part_size_mib) {
        return invalid(
            "backup.part_size_mib",
            "must be 5 to 512 (S3 parts are at least 5 MiB)".to_owned(),
        );
    }
    if !(1..=16).contains(&b.upload_concurrency) {
        return invalid("backup.upload_concurrency", "must be 1 to 16".to_owned());
    }
    for (key, v) in [
        (
            "backup.upload_limit_bytes_per_sec",
            b.upload_limit_bytes_per_sec,
        ),
        (
            "backup.download_limit_bytes_per_sec",
            b.download_limit_bytes_per_sec,
        ),
    ] {
        if v.is_some_and(|v| v < 65_536) {
            return invalid(key, "must be at least 65536 (64 KiB/s)".to_owned());
        }
    }
    if !(1..=3600).contains(&b.progress_interval_secs) {
        return invalid(
            "backup.progress_interval_secs",
            "must be 1 to 3600 seconds".to_owned(),
        );
    }
    match b.store {
        BackupStoreKind::Local => {}
        BackupStoreKind::S3 => {
            let Some(s3) = &b.s3 else {
                return invalid(
                    "backup.s3",
                    "backup.store = \"s3\" requires [backup.s3] with access_key and secret_key"
                        .to_owned(),
                );
            };
            if let Some(e) = &s3.endpoint
                && !(e.starts_with("http://") || e.starts_with("https://"))
            {
                return invalid("backup.s3.endpoint", "must be an http(s):// URL".to_owned());
            }
            if s3.access_key.is_empty() || s3.secret_key.is_empty() {
                return invalid(
                    "backup.s3.secret_key",
                    "access_key and secret_key must not be empty".to_owned(),
                );
            }
        }
        BackupStoreKind::Swift => {
            let Some(sw) = &b.swift else {
                return invalid(
                    "backup.swift",
                    "backup.store = \"swift\" requires [backup.swift] with auth_url, user and key"
                        .to_owned(),
                );
            };
            if !(sw.auth_url.starts_with("http://") || sw.auth_url.starts_with("https://")) {
                return invalid(
                    "backup.swift.auth_url",
                    "must be an http(s):// URL".to_owned(),
                );
            }
            if sw.user.is_empty() || sw.key.is_empty() {
                return invalid(
                    "backup.swift.key",
                    "user and key must not be empty".to_owned(),
                );
            }
        }
    }
    Ok(())
}

fn invalid(key: &str, reason: String) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key: key.to_owned(),
        reason,
    })
}

fn absolute(key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() {
        Ok(())
    } else {
        invalid(key, format!("{} must be an absolute path", path.display()))
    }
}

fn non_empty(key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        invalid(key, "must not be empty".to_owned())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{ControlPlaneHttp, TlsSection, TroveSection};

    fn tls() -> TlsSection {
        TlsSection {
            cert: PathBuf::from("/tls/cert.pem"),
            key: PathBuf::from("/tls/key.pem"),
            client_ca: PathBuf::from("/tls/ca.pem"),
        }
    }

    fn cp_http(url: &str) -> ControlPlaneHttp {
        ControlPlaneHttp {
            url: url.to_owned(),
            ca: None,
            client_cert: None,
            client_key: None,
        }
    }

    /// Asserts that `change` applied to the defaults fails on `key`.
    fn rejects(key: &str, change: impl FnOnce(&mut Config)) {
        let mut config = Config::default();
        change(&mut config);
        match config.validate() {
            Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key),
            other => panic!("expected an error on {key}, got {other:?}"),
        }
    }

    fn accepts(change: impl FnOnce(&mut Config)) {
        let mut config = Config::default();
        change(&mut config);
        config.validate().unwrap();
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn instance_id_rules() {
        rejects("agent.instance_id", |c| c.agent.instance_id.clear());
        rejects("agent.instance_id", |c| {
            c.agent.instance_id = "a/b".to_owned()
        });
        rejects("agent.instance_id", |c| {
            c.agent.instance_id = "a b".to_owned()
        });
        rejects("agent.instance_id", |c| {
            c.agent.instance_id = "é".to_owned()
        });
        rejects("agent.instance_id", |c| {
            c.agent.instance_id = "a".repeat(129)
        });
        accepts(|c| c.agent.instance_id = "a".repeat(128));
        accepts(|c| c.agent.instance_id = "9f2c4e1a-5b7d-4c3e-8a6f-0d1b2c3e4f5a".to_owned());
        accepts(|c| c.agent.instance_id = "inst_1.x".to_owned());
    }

    #[test]
    fn numeric_ranges() {
        rejects("datastore.manager", |c| {
            c.datastore.manager = " ".to_owned()
        });
        rejects("datastore.port", |c| c.datastore.port = 0);
        rejects("control_plane.heartbeat_interval_secs", |c| {
            c.control_plane.heartbeat_interval_secs = 0;
        });
        rejects("control_plane.heartbeat_interval_secs", |c| {
            c.control_plane.heartbeat_interval_secs = 3601;
        });
        accepts(|c| c.control_plane.heartbeat_interval_secs = 3600);
        rejects("agent.shutdown_grace_secs", |c| {
            c.agent.shutdown_grace_secs = 3601
        });
        accepts(|c| c.agent.shutdown_grace_secs = 0);
        rejects("transport.http.body_limit_bytes", |c| {
            c.transport.http.body_limit_bytes = 1023
        });
        rejects("transport.http.body_limit_bytes", |c| {
            c.transport.http.body_limit_bytes = 64 * 1024 * 1024 + 1;
        });
        accepts(|c| c.transport.http.body_limit_bytes = 1024);
        accepts(|c| c.transport.http.body_limit_bytes = 64 * 1024 * 1024);
        rejects("transport.http.request_timeout_secs", |c| {
            c.transport.http.request_timeout_secs = 0;
        });
        rejects("transport.http.max_connections", |c| {
            c.transport.http.max_connections = 0
        });
    }

    #[test]
    fn off_loopback_http_requires_tls() {
        for listen in ["0.0.0.0:8780", "10.0.0.5:8780", "[::]:8780"] {
            let mut config = Config::default();
            config.transport.http.listen = listen.parse().unwrap();
            let err = config.validate().unwrap_err();
            let text = err.to_string();
            assert!(text.contains("transport.http.tls"), "{text}");
            assert!(
                text.contains("mutual TLS is required off loopback"),
                "{text}"
            );
        }
        accepts(|c| c.transport.http.listen = "[::1]:8780".parse().unwrap());
        accepts(|c| c.transport.http.listen = "[::ffff:127.0.0.1]:8780".parse().unwrap());
        accepts(|c| c.transport.http.listen = "127.0.0.2:8780".parse().unwrap());
        accepts(|c| {
            c.transport.http.listen = "0.0.0.0:8780".parse().unwrap();
            c.transport.http.tls = Some(tls());
        });
        accepts(|c| {
            c.transport.http.enabled = false;
            c.transport.http.listen = "0.0.0.0:8780".parse().unwrap();
        });
    }

    #[test]
    fn tls_paths_must_not_be_empty() {
        rejects("transport.http.tls.cert", |c| {
            c.transport.http.tls = Some(TlsSection {
                cert: PathBuf::new(),
                ..tls()
            });
        });
        rejects("transport.http.tls.key", |c| {
            c.transport.http.tls = Some(TlsSection {
                key: PathBuf::new(),
                ..tls()
            });
        });
        rejects("transport.http.tls.client_ca", |c| {
            c.transport.http.tls = Some(TlsSection {
                client_ca: PathBuf::new(),
                ..tls()
            });
        });
    }

    #[test]
    fn http_control_plane_needs_an_http_url() {
        rejects("control_plane.http", |c| {
            c.control_plane.kind = ControlPlaneKind::Http
        });
        for url in ["ftp://cp", "cp.example", "https://", "http:///path", ""] {
            rejects("control_plane.http.url", |c| {
                c.control_plane.kind = ControlPlaneKind::Http;
                c.control_plane.http = Some(cp_http(url));
            });
        }
        accepts(|c| {
            c.control_plane.kind = ControlPlaneKind::Http;
            c.control_plane.http = Some(cp_http("HTTPS://cp.example:8443/v1"));
        });
        rejects("control_plane.http.ca", |c| {
            c.control_plane.http = Some(ControlPlaneHttp {
                ca: Some(PathBuf::new()),
                ..cp_http("https://cp")
            });
        });
        rejects("control_plane.http.client_key", |c| {
            c.control_plane.http = Some(ControlPlaneHttp {
                client_cert: Some(PathBuf::from("/c.pem")),
                ..cp_http("https://cp")
            });
        });
    }

    #[test]
    fn directories_must_be_absolute() {
        rejects("agent.state_dir", |c| {
            c.agent.state_dir = PathBuf::from("state")
        });
        rejects("datastore.data_dir", |c| {
            c.datastore.data_dir = PathBuf::from("data")
        });
        rejects("datastore.run_dir", |c| {
            c.datastore.run_dir = PathBuf::new()
        });
    }

    #[test]
    fn trove_exchange_must_not_be_empty() {
        rejects("trove.control_exchange", |c| {
            c.trove = Some(TroveSection {
                control_exchange: String::new(),
                ..Default::default()
            });
        });
        accepts(|c| c.trove = Some(TroveSection::default()));
    }
}

//! Reading Trove's INI guest files (`guest_info.conf`, `trove-guestagent.conf`).
//!
//! Trove starts its agent with `--config-dir=/etc/trove/conf.d`; oslo.config then reads every
//! `*.conf` file there in sorted order (`guest_info.conf`, then `trove-guestagent.conf`), a
//! later file overriding an earlier one key by key. This module does the same and fills the
//! keys the agent maps; everything else in the files (Trove's files carry many keys) is
//! ignored. Values are read like oslo.config reads them: surrounding whitespace and one pair
//! of matching quotes are dropped, backslashes are literal, indented lines continue a value,
//! section names other than `DEFAULT` are lowercased. An empty value leaves the field as it
//! was.
//!
//! | Trove key | Agent field |
//! |---|---|
//! | `[DEFAULT] guest_id` (required) | `agent.instance_id` |
//! | `[DEFAULT] datastore_manager` | `datastore.manager` |
//! | `[DEFAULT] datastore_version` | `datastore.version` |
//! | `[DEFAULT] report_interval` | `control_plane.heartbeat_interval_secs` |
//! | `[<manager>] mount_point` | `datastore.data_dir`: `<mount_point>/data/pgdata` for `postgresql`, `<mount_point>/data` otherwise |
//! | `[postgresql] postgresql_port`, else `[<manager>] tcp_ports` (first entry) | `datastore.port` |
//! | `[DEFAULT] transport_url`, `control_exchange`, `instance_rpc_encr_key` | `trove.*` |
//! | `[oslo_messaging_rabbit] <option>` | `trove.oslo_messaging_rabbit.<option>` |
//!
//! When `datastore_manager` names another manager than the configuration had so far, the
//! fields that belonged to the old one (`port`, `data_dir`, `os_user`) are first reset to
//! Trove's defaults for the new one (MySQL and MariaDB: 3306, `/var/lib/mysql/data`, `mysql`;
//! PostgreSQL: 5432, `/var/lib/postgresql/data/pgdata`, `postgres`), then the keys above apply.
//! With an unchanged manager, fields the files do not mention keep their earlier values.
//!
//! A malformed value of a mapped key is an error naming file, section and key; the value is
//! quoted only for keys that are not secrets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ini::{Ini, ParseOption};

use super::{Config, ConfigError, DatastoreSection, TroveSection};

/// oslo.config's name of the default section.
const DEFAULT: &str = "DEFAULT";
/// Section of the oslo.messaging rabbit driver options.
const RABBIT: &str = "oslo_messaging_rabbit";
/// Trove's manager name for PostgreSQL.
const POSTGRESQL: &str = "postgresql";

/// `base` with what the `*.conf` files in `dir` say.
///
/// # Errors
/// [`ConfigError::Read`] if the directory or a file cannot be read, [`ConfigError::Parse`] if a
/// file is not INI, [`ConfigError::Trove`] if no file sets `[DEFAULT] guest_id` or a mapped key
/// has a malformed value.
pub fn overlay_dir(base: Config, dir: &Path) -> Result<Config, ConfigError> {
    let files = TroveFiles::read(dir)?;
    let mut config = base;

    let guest_id = files
        .string(DEFAULT, "guest_id")
        .ok_or_else(|| ConfigError::Trove {
            path: dir.to_owned(),
            section: DEFAULT.to_owned(),
            key: "guest_id".to_owned(),
            reason: "required (Trove writes it to guest_info.conf) but set by no *.conf file here"
                .to_owned(),
        })?;
    config.agent.instance_id = guest_id;

    if let Some(manager) = files.string(DEFAULT, "datastore_manager") {
        if manager != config.datastore.manager {
            reset_for_manager(&mut config.datastore, &manager);
        }
        config.datastore.manager = manager;
    }
    if let Some(version) = files.string(DEFAULT, "datastore_version") {
        config.datastore.version = Some(version);
    }
    files.set(
        DEFAULT,
        &["report_interval"],
        &mut config.control_plane.heartbeat_interval_secs,
    )?;

    let manager = config.datastore.manager.clone();
    if let Some(entry) = files.get(&manager, "mount_point") {
        let mount_point = PathBuf::from(&entry.value);
        if !mount_point.is_absolute() {
            return Err(files.invalid(entry, &manager, "mount_point", "expected an absolute path"));
        }
        config.datastore.data_dir = data_dir(&manager, &mount_point);
    }
    if manager == POSTGRESQL && files.get(POSTGRESQL, "postgresql_port").is_some() {
        files.set(POSTGRESQL, &["postgresql_port"], &mut config.datastore.port)?;
    } else if let Some(entry) = files.get(&manager, "tcp_ports") {
        config.datastore.port = first_port(&entry.value)
            .map_err(|reason| files.invalid(entry, &manager, "tcp_ports", &reason))?;
    }

    let mut trove = config.trove.take().unwrap_or_default();
    read_trove_section(&files, &mut trove)?;
    config.trove = Some(trove);
    Ok(config)
}

/// Fills `trove` from `[DEFAULT]` and `[oslo_messaging_rabbit]`.
fn read_trove_section(files: &TroveFiles, trove: &mut TroveSection) -> Result<(), ConfigError> {
    if let Some(url) = files.string(DEFAULT, "transport_url") {
        trove.transport_url = Some(url);
    }
    if let Some(exchange) = files.string(DEFAULT, "control_exchange") {
        trove.control_exchange = exchange;
    }
    if let Some(key) = files.string(DEFAULT, "instance_rpc_encr_key") {
        trove.instance_rpc_encr_key = Some(key);
    }

    let r = &mut trove.oslo_messaging_rabbit;
    // Older names (oslo.messaging's `deprecated_name`s) come after the current one.
    files.set_bool(RABBIT, &["ssl", "rabbit_use_ssl"], &mut r.ssl)?;
    set_some(
        files.any_string(RABBIT, &["ssl_version", "kombu_ssl_version"]),
        &mut r.ssl_version,
    );
    set_some(
        files.any_path(RABBIT, &["ssl_key_file", "kombu_ssl_keyfile"]),
        &mut r.ssl_key_file,
    );
    set_some(
        files.any_path(RABBIT, &["ssl_cert_file", "kombu_ssl_certfile"]),
        &mut r.ssl_cert_file,
    );
    set_some(
        files.any_path(RABBIT, &["ssl_ca_file", "kombu_ssl_ca_certs"]),
        &mut r.ssl_ca_file,
    );
    files.set(
        RABBIT,
        &["kombu_reconnect_delay"],
        &mut r.kombu_reconnect_delay,
    )?;
    set_some(
        files.any_string(RABBIT, &["kombu_compression"]),
        &mut r.kombu_compression,
    );
    files.set(
        RABBIT,
        &[
            "kombu_missing_consumer_retry_timeout",
            "kombu_reconnect_timeout",
        ],
        &mut r.kombu_missing_consumer_retry_timeout,
    )?;
    files.set_choice(
        RABBIT,
        "kombu_failover_strategy",
        &["round-robin", "shuffle"],
        &mut r.kombu_failover_strategy,
    )?;
    files.set_choice(
        RABBIT,
        "rabbit_login_method",
        &["PLAIN", "AMQPLAIN", "EXTERNAL", "RABBIT-CR-DEMO"],
        &mut r.rabbit_login_method,
    )?;
    files.set(
        RABBIT,
        &["rabbit_retry_interval"],
        &mut r.rabbit_retry_interval,
    )?;
    files.set(
        RABBIT,
        &["rabbit_retry_backoff"],
        &mut r.rabbit_retry_backoff,
    )?;
    files.set(RABBIT, &["rabbit_interval_max"], &mut r.rabbit_interval_max)?;
    files.set_bool(RABBIT, &["rabbit_ha_queues"], &mut r.rabbit_ha_queues)?;
    files.set_bool(RABBIT, &["rabbit_quorum_queue"], &mut r.rabbit_quorum_queue)?;
    files.set_bool(
        RABBIT,
        &["rabbit_transient_quorum_queue"],
        &mut r.rabbit_transient_quorum_queue,
    )?;
    files.set(
        RABBIT,
        &["rabbit_quorum_delivery_limit"],
        &mut r.rabbit_quorum_delivery_limit,
    )?;
    files.set(
        RABBIT,
        &[
            "rabbit_quorum_max_memory_length",
            "rabbit_quroum_max_memory_length",
        ],
        &mut r.rabbit_quorum_max_memory_length,
    )?;
    files.set(
        RABBIT,
        &[
            "rabbit_quorum_max_memory_bytes",
            "rabbit_quroum_max_memory_bytes",
        ],
        &mut r.rabbit_quorum_max_memory_bytes,
    )?;
    files.set(
        RABBIT,
        &["rabbit_transient_queues_ttl"],
        &mut r.rabbit_transient_queues_ttl,
    )?;
    files.set(
        RABBIT,
        &["rabbit_qos_prefetch_count"],
        &mut r.rabbit_qos_prefetch_count,
    )?;
    files.set(
        RABBIT,
        &["heartbeat_timeout_threshold"],
        &mut r.heartbeat_timeout_threshold,
    )?;
    files.set(RABBIT, &["heartbeat_rate"], &mut r.heartbeat_rate)?;
    files.set_bool(
        RABBIT,
        &["rabbit_stream_fanout"],
        &mut r.rabbit_stream_fanout,
    )?;
    files.set_bool(RABBIT, &["use_queue_manager"], &mut r.use_queue_manager)?;
    files.set_bool(RABBIT, &["amqp_durable_queues"], &mut r.amqp_durable_queues)?;
    files.set_bool(RABBIT, &["amqp_auto_delete"], &mut r.amqp_auto_delete)?;
    Ok(())
}

fn set_some<T>(value: Option<T>, target: &mut Option<T>) {
    if value.is_some() {
        *target = value;
    }
}

/// Trove's data directory under `mount_point`, as its managers lay it out.
fn data_dir(manager: &str, mount_point: &Path) -> PathBuf {
    if manager == POSTGRESQL {
        mount_point.join("data").join("pgdata")
    } else {
        mount_point.join("data")
    }
}

/// Puts the manager-specific fields to Trove's defaults for `manager`; unknown managers keep
/// them (the driver registry rejects those later).
fn reset_for_manager(datastore: &mut DatastoreSection, manager: &str) {
    let (mount_point, port, os_user) = match manager {
        POSTGRESQL => ("/var/lib/postgresql", 5432, "postgres"),
        "mysql" | "mariadb" => ("/var/lib/mysql", 3306, "mysql"),
        _ => return,
    };
    datastore.data_dir = data_dir(manager, Path::new(mount_point));
    datastore.port = port;
    datastore.os_user = Some(os_user.to_owned());
}

/// The server port from a `tcp_ports` list (`5432`, `3306,33060`, `5432-5432`): its first entry,
/// which must be a single port.
fn first_port(list: &str) -> Result<u16, String> {
    let first = list.split(',').next().unwrap_or_default().trim();
    let (low, high) = first.split_once('-').unwrap_or((first, first));
    match (low.trim().parse::<u16>(), high.trim().parse::<u16>()) {
        (Ok(low), Ok(high)) if low == high => Ok(low),
        (Ok(_), Ok(_)) => Err(format!(
            "the first entry {first:?} is a range; the agent needs the server's single port"
        )),
        _ => Err(format!(
            "expected a comma-separated list of ports, got {list:?}"
        )),
    }
}

/// One value and the file that set it last.
struct Entry {
    value: String,
    file: PathBuf,
}

/// The merged view of every `*.conf` file of a directory, keyed by (section, key).
struct TroveFiles {
    values: BTreeMap<(String, String), Entry>,
}

impl TroveFiles {
    fn read(dir: &Path) -> Result<Self, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: dir.to_owned(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            // `*.conf` as Python's glob matches it: hidden files are not included.
            let matches = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".conf") && !n.starts_with('.'));
            if matches && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();

        let mut values = BTreeMap::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let options = ParseOption {
                // oslo.config keeps backslashes (regex values) and quotes as written.
                enabled_escape: false,
                enabled_quote: false,
                enabled_indented_mutiline_value: true,
                ..ParseOption::default()
            };
            let ini = Ini::load_from_str_opt(&text, options).map_err(|e| ConfigError::Parse {
                path: path.clone(),
                message: format!("line {}, column {}: {}", e.line, e.col, e.msg),
            })?;
            // Sections and keys in file order, so a repeated key's last value wins as in oslo.
            for (section, properties) in ini.iter() {
                let Some(section) = section else {
                    // Keys before any section header; oslo.config refuses them, Trove writes none.
                    continue;
                };
                let section = if section == DEFAULT {
                    section.to_owned()
                } else {
                    section.to_lowercase()
                };
                for (key, value) in properties.iter() {
                    values.insert(
                        (section.clone(), key.trim().to_owned()),
                        Entry {
                            value: clean(value),
                            file: path.clone(),
                        },
                    );
                }
            }
        }
        Ok(Self { values })
    }

    /// The entry for a key, unless absent or empty.
    fn get(&self, section: &str, key: &str) -> Option<&Entry> {
        self.values
            .get(&(section.to_owned(), key.to_owned()))
            .filter(|entry| !entry.value.is_empty())
    }

    /// The first of `names` that is set, with the name.
    fn any(&self, section: &str, names: &[&'static str]) -> Option<(&'static str, &Entry)> {
        names
            .iter()
            .find_map(|name| self.get(section, name).map(|entry| (*name, entry)))
    }

    fn string(&self, section: &str, key: &str) -> Option<String> {
        self.get(section, key).map(|entry| entry.value.clone())
    }

    fn any_string(&self, section: &str, names: &[&'static str]) -> Option<String> {
        self.any(section, names)
            .map(|(_, entry)| entry.value.clone())
    }

    fn any_path(&self, section: &str, names: &[&'static str]) -> Option<PathBuf> {
        self.any(section, names)
            .map(|(_, entry)| PathBuf::from(&entry.value))
    }

    /// Parses the first set of `names` into `target` (integers, floats).
    fn set<T: std::str::FromStr>(
        &self,
        section: &str,
        names: &[&'static str],
        target: &mut T,
    ) -> Result<(), ConfigError> {
        if let Some((name, entry)) = self.any(section, names) {
            *target = entry.value.parse().map_err(|_| {
                let what = format!(
                    "expected a number in the range of {}, got {:?}",
                    std::any::type_name::<T>(),
                    entry.value
                );
                self.invalid(entry, section, name, &what)
            })?;
        }
        Ok(())
    }

    /// Parses the first set of `names` as an oslo.config boolean.
    fn set_bool(
        &self,
        section: &str,
        names: &[&'static str],
        target: &mut bool,
    ) -> Result<(), ConfigError> {
        if let Some((name, entry)) = self.any(section, names) {
            *target = match entry.value.to_ascii_lowercase().as_str() {
                "true" | "1" | "on" | "yes" => true,
                "false" | "0" | "off" | "no" => false,
                _ => {
                    let what = format!("expected true or false, got {:?}", entry.value);
                    return Err(self.invalid(entry, section, name, &what));
                }
            };
        }
        Ok(())
    }

    /// Sets a string option restricted to `choices`, as oslo.config's `choices` does.
    fn set_choice(
        &self,
        section: &str,
        name: &'static str,
        choices: &[&str],
        target: &mut String,
    ) -> Result<(), ConfigError> {
        if let Some(entry) = self.get(section, name) {
            if !choices.contains(&entry.value.as_str()) {
                let what = format!("expected one of {choices:?}, got {:?}", entry.value);
                return Err(self.invalid(entry, section, name, &what));
            }
            target.clone_from(&entry.value);
        }
        Ok(())
    }

    fn invalid(&self, entry: &Entry, section: &str, key: &str, reason: &str) -> ConfigError {
        ConfigError::Trove {
            path: entry.file.clone(),
            section: section.to_owned(),
            key: key.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// A value as oslo.config's parser yields it: trimmed, one pair of matching quotes removed.
fn clean(raw: &str) -> String {
    let value = raw.trim();
    let quoted = value.len() >= 2
        && (value.starts_with('"') && value.ends_with('"')
            || value.starts_with('\'') && value.ends_with('\''));
    if quoted {
        value[1..value.len() - 1].to_owned()
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSource;

    fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trove")
    }

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn load_dir(dir: &tempfile::TempDir) -> Result<Config, ConfigError> {
        Config::load(&[ConfigSource::TroveDir(dir.path().to_owned())])
    }

    const GUEST_INFO: &str = "[DEFAULT]\nguest_id=abc-123\ndatastore_manager=postgresql\n";

    #[test]
    fn realistic_trove_files_map_onto_the_config() {
        let config = Config::load(&[ConfigSource::TroveDir(fixture_dir())]).unwrap();
        assert_eq!(
            config.agent.instance_id,
            "9f2c4e1a-5b7d-4c3e-8a6f-0d1b2c3e4f5a"
        );
        assert_eq!(config.datastore.manager, "postgresql");
        assert_eq!(config.datastore.version.as_deref(), Some("16"));
        assert_eq!(config.control_plane.heartbeat_interval_secs, 20);
        assert_eq!(
            config.datastore.data_dir,
            PathBuf::from("/var/lib/postgresql/data/pgdata")
        );
        assert_eq!(config.datastore.port, 5432);
        let trove = config.trove.as_ref().unwrap();
        assert_eq!(
            trove.transport_url.as_deref(),
            Some("rabbit://stackrabbit:Fx93kQpz7LwR@10.0.0.11:5672/")
        );
        assert_eq!(trove.control_exchange, "trove");
        assert_eq!(
            trove.instance_rpc_encr_key.as_deref(),
            Some("r8Yb2XqL5vNw0TzK3mHd7GcJ1pFs9aEu")
        );
        let rabbit = &trove.oslo_messaging_rabbit;
        assert!(rabbit.amqp_durable_queues);
        assert!(!rabbit.rabbit_ha_queues);
        assert_eq!(rabbit.heartbeat_timeout_threshold, 60);
        assert_eq!(rabbit.rabbit_transient_queues_ttl, 1800);
        // What Trove's files do not decide keeps its default.
        let defaults = Config::default();
        assert_eq!(config.transport, defaults.transport);
        assert_eq!(config.agent.state_dir, defaults.agent.state_dir);
        assert_eq!(config.datastore.os_user, defaults.datastore.os_user);
        config.validate().unwrap();
    }

    #[test]
    fn missing_guest_id_is_an_error() {
        let dir = dir_with(&[(
            "guest_info.conf",
            "[DEFAULT]\ndatastore_manager=postgresql\n",
        )]);
        let err = load_dir(&dir).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Trove { key, .. } if key == "guest_id"),
            "{err:?}"
        );
        assert!(err.to_string().contains("[DEFAULT] guest_id"), "{err}");
        let empty = dir_with(&[("guest_info.conf", "[DEFAULT]\nguest_id =\n")]);
        assert!(load_dir(&empty).is_err());
        let none = dir_with(&[("README", "guest_id=x")]);
        assert!(load_dir(&none).is_err());
    }

    #[test]
    fn malformed_mapped_value_names_file_section_and_key() {
        let dir = dir_with(&[
            ("guest_info.conf", GUEST_INFO),
            ("trove-guestagent.conf", "[DEFAULT]\nreport_interval=abc\n"),
        ]);
        let err = load_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("trove-guestagent.conf"), "{err}");
        assert!(err.contains("[DEFAULT] report_interval"), "{err}");
        assert!(err.contains("\"abc\""), "{err}");

        for (section, line) in [
            ("oslo_messaging_rabbit", "amqp_durable_queues = maybe"),
            ("oslo_messaging_rabbit", "rabbit_qos_prefetch_count = 70000"),
            ("oslo_messaging_rabbit", "kombu_failover_strategy = random"),
            ("postgresql", "postgresql_port = 99999"),
            ("postgresql", "tcp_ports = 5432-5440"),
            ("postgresql", "mount_point = relative/dir"),
        ] {
            let text = format!("[{section}]\n{line}\n");
            let dir = dir_with(&[("guest_info.conf", GUEST_INFO), ("z.conf", &text)]);
            let err = load_dir(&dir).unwrap_err().to_string();
            let key = line.split(' ').next().unwrap();
            assert!(err.contains(&format!("[{section}] {key}")), "{err}");
            assert!(err.contains("z.conf"), "{err}");
        }
    }

    #[test]
    fn unknown_keys_and_sections_are_ignored() {
        let dir = dir_with(&[(
            "guest_info.conf",
            "[DEFAULT]\nguest_id=abc\nno_such_option=1\n[no_such_section]\nx=y\n",
        )]);
        assert_eq!(load_dir(&dir).unwrap().agent.instance_id, "abc");
    }

    #[test]
    fn later_files_override_earlier_ones_in_sorted_order() {
        let dir = dir_with(&[
            ("trove-guestagent.conf", "[DEFAULT]\nreport_interval = 20\n"),
            (
                "guest_info.conf",
                "[DEFAULT]\nguest_id=abc\nreport_interval=10\n",
            ),
            ("ignored.conf.bak", "[DEFAULT]\nreport_interval = 99\n"),
            (".hidden.conf", "[DEFAULT]\nreport_interval = 98\n"),
        ]);
        assert_eq!(
            load_dir(&dir)
                .unwrap()
                .control_plane
                .heartbeat_interval_secs,
            20
        );
    }

    #[test]
    fn values_are_read_like_oslo_config() {
        let dir = dir_with(&[(
            "guest_info.conf",
            "[DEFAULT]\nguest_id = \"abc\"\nrepeated = 1\ncontrol_exchange = first\n\
             control_exchange = 'trove'\ntransport_url = rabbit://u:p\\w@h:5672/\n\
             [POSTGRESQL]\npostgresql_port = 5433\n[oslo_messaging_rabbit]\nssl = Yes\n\
             rabbit_quroum_max_memory_length = 7\nkombu_compression =\n  gzip\n",
        )]);
        let config = load_dir(&dir).unwrap();
        assert_eq!(config.agent.instance_id, "abc");
        assert_eq!(config.datastore.port, 5433);
        let trove = config.trove.unwrap();
        assert_eq!(trove.control_exchange, "trove");
        assert_eq!(
            trove.transport_url.as_deref(),
            Some("rabbit://u:p\\w@h:5672/")
        );
        assert!(trove.oslo_messaging_rabbit.ssl);
        assert_eq!(
            trove.oslo_messaging_rabbit.rabbit_quorum_max_memory_length,
            7
        );
        assert_eq!(
            trove.oslo_messaging_rabbit.kombu_compression.as_deref(),
            Some("gzip")
        );
    }

    #[test]
    fn switching_manager_resets_its_fields_to_trove_defaults() {
        let dir = dir_with(&[(
            "guest_info.conf",
            "[DEFAULT]\nguest_id=abc\ndatastore_manager=mysql\ndatastore_version=8.0\n",
        )]);
        let config = load_dir(&dir).unwrap();
        assert_eq!(config.datastore.manager, "mysql");
        assert_eq!(config.datastore.port, 3306);
        assert_eq!(
            config.datastore.data_dir,
            PathBuf::from("/var/lib/mysql/data")
        );
        assert_eq!(config.datastore.os_user.as_deref(), Some("mysql"));

        let dir = dir_with(&[
            (
                "guest_info.conf",
                "[DEFAULT]\nguest_id=abc\ndatastore_manager=mariadb\n",
            ),
            (
                "trove-guestagent.conf",
                "[mariadb]\nmount_point=/srv/db\ntcp_ports=3307,4444\n",
            ),
        ]);
        let config = load_dir(&dir).unwrap();
        assert_eq!(config.datastore.data_dir, PathBuf::from("/srv/db/data"));
        assert_eq!(config.datastore.port, 3307);
    }

    #[test]
    fn unchanged_manager_keeps_earlier_values() {
        let dir = dir_with(&[("guest_info.conf", GUEST_INFO)]);
        let mut base = Config::default();
        base.datastore.port = 6543;
        base.datastore.data_dir = PathBuf::from("/data/pg");
        let config = overlay_dir(base, dir.path()).unwrap();
        assert_eq!(config.datastore.port, 6543);
        assert_eq!(config.datastore.data_dir, PathBuf::from("/data/pg"));
    }

    #[test]
    fn unparsable_file_and_missing_dir_are_errors() {
        let dir = dir_with(&[("guest_info.conf", "[DEFAULT\nguest_id=abc\n")]);
        let err = load_dir(&dir).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
        assert!(err.to_string().contains("guest_info.conf"), "{err}");
        let err = Config::load(&[ConfigSource::TroveDir(PathBuf::from("/nonexistent/conf.d"))])
            .unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    }

    #[test]
    fn first_port_rules() {
        assert_eq!(first_port("5432"), Ok(5432));
        assert_eq!(first_port(" 3306 , 33060"), Ok(3306));
        assert_eq!(first_port("5432-5432"), Ok(5432));
        assert!(first_port("5432-5433").is_err());
        assert!(first_port("x").is_err());
    }
}

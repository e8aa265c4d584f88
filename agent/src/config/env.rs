//! Environment overrides: `GUEST_AGENT__<SECTION>__<KEY>=value`.
//!
//! The name after [`ENV_PREFIX`] is the dotted key with `.` written as `__`, in any case:
//! `GUEST_AGENT__TRANSPORT__HTTP__LISTEN` sets `transport.http.listen`,
//! `GUEST_AGENT__DATASTORE__OPTIONS__START_TIMEOUT_SECS` sets
//! `datastore.options.start_timeout_secs`. Names are lowercased, so keys with capitals cannot be
//! set this way.
//!
//! The value is parsed into the field's type: integers, booleans (`true`/`false`) and floats
//! for such fields, strings verbatim, lists either as a TOML array (`["/a", "/b"]`) or
//! comma-separated strings. A key that is unset so far (an optional field, a new
//! `datastore.options` entry) takes a TOML literal when the field accepts it (`60`, `true`),
//! else the string. A variable naming no field is rejected, as is one naming a whole table.
//!
//! The variables come in as a map (linkerd's `Strings` idea), so tests never touch the process
//! environment.

use std::collections::BTreeMap;

use ::toml::{Table, Value};

use super::toml::{from_table, table_error, to_table};
use super::{Config, ConfigError};

/// Prefix of override variables; others in the map are ignored.
pub const ENV_PREFIX: &str = "GUEST_AGENT__";

/// `base` with the overrides in `vars` applied, in name order.
///
/// # Errors
/// [`ConfigError::Env`] naming the variable when it names no field or a table, when its value
/// does not parse into the field's type, or (naming all the variables) when together they leave
/// a table such as `transport.http.tls` incomplete.
pub fn overlay_env(base: Config, vars: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    let overrides: Vec<(&str, &str)> = vars
        .iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    if overrides.is_empty() {
        return Ok(base);
    }
    let mut table = to_table(&base).map_err(|reason| env_error("(all)", reason))?;
    for (name, raw) in &overrides {
        apply(&mut table, name, raw)?;
    }
    // Each variable was checked as it was set; what can still fail is a table that several of
    // them fill together and that is still incomplete.
    from_table(table).map_err(|e| {
        let names: Vec<&str> = overrides.iter().map(|(name, _)| *name).collect();
        env_error(&names.join(", "), table_error(&e))
    })
}

/// What deserializing a candidate table said about the variable just set.
enum Check {
    /// Fine, or only a table still missing a required key that a later variable may set.
    Acceptable,
    /// The variable names no field.
    Unknown,
    /// The value does not fit.
    Invalid(String),
}

fn check(table: &Table) -> Check {
    match from_table(table.clone()) {
        Ok(_) => Check::Acceptable,
        Err(e) => {
            // serde's derived messages ("unknown field `x`", "missing field `y`") are the only
            // way to tell these apart without a second copy of the schema.
            let message = e.message();
            if message.contains("unknown field") {
                Check::Unknown
            } else if message.contains("missing field") {
                Check::Acceptable
            } else {
                Check::Invalid(table_error(&e))
            }
        }
    }
}

fn apply(table: &mut Table, name: &str, raw: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = name
        .get(ENV_PREFIX.len()..)
        .unwrap_or_default()
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    let dotted = path.join(".");
    if path.iter().any(String::is_empty) {
        return Err(env_error(
            name,
            format!("`{dotted}` is not a configuration key"),
        ));
    }
    let unknown = || {
        env_error(
            name,
            format!("unknown variable: no configuration key `{dotted}`"),
        )
    };
    let candidates = match lookup(table, &path) {
        Lookup::BlockedByValue => return Err(unknown()),
        Lookup::Found(Value::Table(_)) => {
            return Err(env_error(
                name,
                format!("`{dotted}` is a table; set its keys with {name}__<KEY>"),
            ));
        }
        Lookup::Found(current) => vec![typed_like(current, raw).map_err(|r| env_error(name, r))?],
        // Unset so far: the schema decides. A literal first so `60` becomes an integer where
        // one is accepted (`datastore.options`), then the verbatim string (`version = "16"`).
        Lookup::Absent => literal(raw)
            .into_iter()
            .chain([Value::String(raw.to_owned())])
            .collect(),
    };
    let mut last_reason = None;
    for candidate in candidates {
        let mut probe = table.clone();
        insert(&mut probe, &path, candidate);
        match check(&probe) {
            Check::Acceptable => {
                *table = probe;
                return Ok(());
            }
            Check::Unknown => return Err(unknown()),
            Check::Invalid(reason) => last_reason = Some(reason),
        }
    }
    Err(env_error(
        name,
        last_reason.unwrap_or_else(|| "invalid value".to_owned()),
    ))
}

enum Lookup<'a> {
    Found(&'a Value),
    Absent,
    /// A prefix of the path is a plain value, so the path cannot name a field.
    BlockedByValue,
}

fn lookup<'a>(table: &'a Table, path: &[String]) -> Lookup<'a> {
    let mut current = table;
    for (i, segment) in path.iter().enumerate() {
        match current.get(segment) {
            None => return Lookup::Absent,
            Some(value) if i + 1 == path.len() => return Lookup::Found(value),
            Some(Value::Table(inner)) => current = inner,
            Some(_) => return Lookup::BlockedByValue,
        }
    }
    Lookup::Absent
}

/// Sets `path` to `value`, creating missing tables on the way.
fn insert(table: &mut Table, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = table;
    for segment in parents {
        let slot = current
            .entry(segment.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        if !slot.is_table() {
            *slot = Value::Table(Table::new());
        }
        let Value::Table(inner) = slot else {
            return;
        };
        current = inner;
    }
    current.insert(last.clone(), value);
}

/// `raw` parsed into the type of the value it replaces.
fn typed_like(current: &Value, raw: &str) -> Result<Value, String> {
    let text = raw.trim();
    match current {
        Value::String(_) => Ok(Value::String(raw.to_owned())),
        Value::Integer(_) => text
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| format!("expected an integer, got {raw:?}")),
        Value::Float(_) => text
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| format!("expected a number, got {raw:?}")),
        Value::Boolean(_) => match text.to_ascii_lowercase().as_str() {
            "true" => Ok(Value::Boolean(true)),
            "false" => Ok(Value::Boolean(false)),
            _ => Err(format!("expected true or false, got {raw:?}")),
        },
        Value::Array(_) if text.starts_with('[') => match literal(text) {
            Some(array @ Value::Array(_)) => Ok(array),
            _ => Err(format!(
                "expected a TOML array or comma-separated values, got {raw:?}"
            )),
        },
        Value::Array(_) => Ok(Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| Value::String(item.to_owned()))
                .collect(),
        )),
        Value::Datetime(_) | Value::Table(_) => {
            literal(text).ok_or_else(|| format!("expected a TOML value, got {raw:?}"))
        }
    }
}

/// `raw` as a single TOML value (`60`, `true`, `"x"`, `[1, 2]`), if it is one.
fn literal(raw: &str) -> Option<Value> {
    let mut doc: Table = format!("v = {raw}").parse().ok()?;
    // A value with a newline could smuggle in further keys or tables.
    if doc.len() != 1 {
        return None;
    }
    doc.remove("v")
}

fn env_error(name: &str, reason: String) -> ConfigError {
    ConfigError::Env {
        name: name.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::ConfigSource;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load(&[ConfigSource::Env(map)])
    }

    fn err_text(vars: &[(&str, &str)]) -> String {
        let err = load(vars).unwrap_err();
        assert!(matches!(err, ConfigError::Env { .. }), "{err:?}");
        err.to_string()
    }

    #[test]
    fn no_variables_change_nothing() {
        assert_eq!(
            load(&[("PATH", "/bin"), ("GUEST_AGENTX", "1")]).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn overrides_parse_into_field_types() {
        let config = load(&[
            ("GUEST_AGENT__TRANSPORT__HTTP__LISTEN", "127.0.0.1:9000"),
            ("GUEST_AGENT__DATASTORE__PORT", "5433"),
            ("GUEST_AGENT__TRANSPORT__HTTP__ENABLED", "false"),
            ("GUEST_AGENT__AGENT__INSTANCE_ID", "12345"),
            ("GUEST_AGENT__DATASTORE__VERSION", "16"),
            (
                "GUEST_AGENT__DATASTORE__BIN_DIRS",
                "/usr/lib/postgresql/16/bin, /usr/bin",
            ),
            ("GUEST_AGENT__LOG__FORMAT", "json"),
            ("guest_agent__ignored_lowercase_prefix", "x"),
        ])
        .unwrap();
        assert_eq!(
            config.transport.http.listen,
            "127.0.0.1:9000".parse().unwrap()
        );
        assert_eq!(config.datastore.port, 5433);
        assert!(!config.transport.http.enabled);
        assert_eq!(config.agent.instance_id, "12345");
        assert_eq!(config.datastore.version.as_deref(), Some("16"));
        assert_eq!(
            config.datastore.bin_dirs,
            [
                PathBuf::from("/usr/lib/postgresql/16/bin"),
                PathBuf::from("/usr/bin")
            ]
        );
        assert_eq!(config.log.format, crate::config::LogFormat::Json);
    }

    #[test]
    fn overrides_fill_absent_optional_tables() {
        let config = load(&[
            ("GUEST_AGENT__TRANSPORT__HTTP__TLS__CERT", "/tls/cert.pem"),
            (
                "GUEST_AGENT__TRANSPORT__HTTP__TLS__CLIENT_CA",
                "/tls/ca.pem",
            ),
            ("GUEST_AGENT__TRANSPORT__HTTP__TLS__KEY", "/tls/key.pem"),
            ("GUEST_AGENT__CONTROL_PLANE__KIND", "http"),
            (
                "GUEST_AGENT__CONTROL_PLANE__HTTP__URL",
                "https://cp.example/v1",
            ),
            (
                "GUEST_AGENT__TROVE__OSLO_MESSAGING_RABBIT__AMQP_DURABLE_QUEUES",
                "true",
            ),
            ("GUEST_AGENT__DATASTORE__OPTIONS__START_TIMEOUT_SECS", "90"),
            ("GUEST_AGENT__DATASTORE__OPTIONS__NOTE", "free text"),
        ])
        .unwrap();
        let tls = config.transport.http.tls.unwrap();
        assert_eq!(tls.key, PathBuf::from("/tls/key.pem"));
        assert_eq!(
            config.control_plane.http.unwrap().url,
            "https://cp.example/v1"
        );
        assert!(
            config
                .trove
                .unwrap()
                .oslo_messaging_rabbit
                .amqp_durable_queues
        );
        assert_eq!(
            config.datastore.options["start_timeout_secs"].as_integer(),
            Some(90)
        );
        assert_eq!(config.datastore.options["note"].as_str(), Some("free text"));
    }

    #[test]
    fn bad_value_names_the_variable() {
        let text = err_text(&[("GUEST_AGENT__DATASTORE__PORT", "abc")]);
        assert!(text.contains("GUEST_AGENT__DATASTORE__PORT"), "{text}");
        assert!(text.contains("expected an integer"), "{text}");
        let text = err_text(&[("GUEST_AGENT__DATASTORE__PORT", "70000")]);
        assert!(text.contains("GUEST_AGENT__DATASTORE__PORT"), "{text}");
        let text = err_text(&[("GUEST_AGENT__TRANSPORT__HTTP__LISTEN", "not-an-address")]);
        assert!(
            text.contains("GUEST_AGENT__TRANSPORT__HTTP__LISTEN"),
            "{text}"
        );
        let text = err_text(&[("GUEST_AGENT__LOG__FORMAT", "xml")]);
        assert!(text.contains("GUEST_AGENT__LOG__FORMAT"), "{text}");
    }

    #[test]
    fn unknown_variable_is_rejected_by_name() {
        for name in [
            "GUEST_AGENT__TRANSPORT__HTTP__LISTEN_ADDR",
            "GUEST_AGENT__NOPE__X",
            "GUEST_AGENT__DATASTORE__PORT__X",
            "GUEST_AGENT__TRANSPORT__HTTP__TLS__PASSWORD",
            "GUEST_AGENT__",
            "GUEST_AGENT__AGENT____INSTANCE_ID",
        ] {
            let text = err_text(&[(name, "1")]);
            assert!(text.contains(name), "{text}");
            assert!(
                text.contains("not a configuration key") || text.contains("unknown"),
                "{text}"
            );
        }
    }

    #[test]
    fn table_variable_is_rejected() {
        let text = err_text(&[("GUEST_AGENT__TRANSPORT__HTTP", "x")]);
        assert!(text.contains("is a table"), "{text}");
    }

    #[test]
    fn incomplete_table_names_the_variables() {
        let text = err_text(&[("GUEST_AGENT__TRANSPORT__HTTP__TLS__CERT", "/tls/cert.pem")]);
        assert!(
            text.contains("GUEST_AGENT__TRANSPORT__HTTP__TLS__CERT"),
            "{text}"
        );
        assert!(
            text.contains("missing field `key` in `transport.http.tls`"),
            "{text}"
        );
    }

    #[test]
    fn env_overrides_earlier_sources() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, "[datastore]\nport = 6000\nmanager = \"mysql\"\n").unwrap();
        let vars = [("GUEST_AGENT__DATASTORE__PORT".to_owned(), "6001".to_owned())].into();
        let config = Config::load(&[ConfigSource::Toml(path), ConfigSource::Env(vars)]).unwrap();
        assert_eq!(config.datastore.port, 6001);
        assert_eq!(config.datastore.manager, "mysql");
    }

    #[test]
    fn literal_rejects_smuggled_keys() {
        assert_eq!(literal("60"), Some(Value::Integer(60)));
        assert_eq!(literal("1\nx = 2"), None);
        assert_eq!(literal("free text"), None);
    }
}

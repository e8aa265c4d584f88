//! Loading the TOML configuration file.
//!
//! A file sets the keys it names on top of the configuration built so far. It is first checked
//! alone against the schema, so an unknown key or a mistyped value is reported with the file's
//! line and column; then its tables are merged into the current configuration key by key (a
//! table in the file does not erase the keys it does not name).
//!
//! Error messages quote no file content: a malformed line may hold a password.

use std::path::Path;

use ::toml::{Table, Value};
use serde::Deserialize;

use super::{Config, ConfigError};

/// `base` with the keys set by the TOML file at `path`.
///
/// # Errors
/// [`ConfigError::Read`] if the file cannot be read, [`ConfigError::Parse`] (with line and
/// column) if it is not TOML or does not fit the schema: unknown key, wrong type, a table such as
/// `transport.http.tls` without its required keys.
pub fn overlay_file(base: Config, path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    overlay_str(base, &text).map_err(|message| ConfigError::Parse {
        path: path.to_owned(),
        message,
    })
}

/// `base` with the keys set by the TOML document `text`; the error is a message for
/// [`ConfigError::Parse`].
pub(crate) fn overlay_str(base: Config, text: &str) -> Result<Config, String> {
    // Checking the file on its own gives errors with spans in the file; errors found after
    // merging would point into a generated document instead.
    ::toml::from_str::<Config>(text).map_err(|e| describe(text, &e))?;
    let file: Table = text.parse().map_err(|e| describe(text, &e))?;
    let mut merged = to_table(&base)?;
    merge(&mut merged, file);
    from_table(merged).map_err(|e| table_error(&e))
}

/// `config` as a TOML table (absent optional values are absent keys).
pub(crate) fn to_table(config: &Config) -> Result<Table, String> {
    Table::try_from(config).map_err(|e| format!("cannot represent the configuration: {e}"))
}

/// The configuration a TOML table describes.
pub(crate) fn from_table(table: Table) -> Result<Config, ::toml::de::Error> {
    Config::deserialize(table)
}

/// One-line text of an error from [`from_table`]: the message and, where known, the dotted key,
/// e.g. "missing field `key` in `transport.http.tls`". Such errors carry no source text, so no
/// snippet of a value is shown.
pub(crate) fn table_error(err: &::toml::de::Error) -> String {
    err.to_string().trim_end().replace('\n', " ")
}

/// Sets every key of `overlay` in `base`, descending into tables both have.
fn merge(base: &mut Table, overlay: Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(inner)), Value::Table(over)) => merge(inner, over),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// `line L, column C: message` for an error in `text`.
fn describe(text: &str, err: &::toml::de::Error) -> String {
    match err.span() {
        Some(span) => {
            let (line, column) = position(text, span.start);
            format!("line {line}, column {column}: {}", err.message())
        }
        None => err.message().to_owned(),
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{ConfigSource, LogFormat, TroveSection};

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn empty_file_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "");
        assert_eq!(
            Config::load(&[ConfigSource::Toml(path)]).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn file_sets_what_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            r#"
[agent]
instance_id = "inst-1"
[log]
format = "json"
[transport.http]
listen = "127.0.0.1:9000"
[datastore.options]
start_timeout_secs = 90
"#,
        );
        let config = Config::load(&[ConfigSource::Toml(path)]).unwrap();
        let mut expected = Config::default();
        expected.agent.instance_id = "inst-1".to_owned();
        expected.log.format = LogFormat::Json;
        expected.transport.http.listen = "127.0.0.1:9000".parse().unwrap();
        expected
            .datastore
            .options
            .insert("start_timeout_secs".to_owned(), 90.into());
        assert_eq!(config, expected);
    }

    #[test]
    fn file_keeps_earlier_values_it_does_not_name() {
        let mut base = Config::default();
        base.agent.instance_id = "from-trove".to_owned();
        base.trove = Some(TroveSection::default());
        base.datastore.options.insert("a".to_owned(), 1.into());
        let config = overlay_str(
            base,
            "[agent]\nshutdown_grace_secs = 5\n[datastore.options]\nb = 2\n",
        )
        .unwrap();
        assert_eq!(config.agent.instance_id, "from-trove");
        assert_eq!(config.agent.shutdown_grace_secs, 5);
        assert!(config.trove.is_some());
        assert_eq!(config.datastore.options.len(), 2);
    }

    #[test]
    fn unknown_key_names_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "[transport.http]\nenabled = true\nlisten_addr = \"0.0.0.0:1\"\n",
        );
        let err = Config::load(&[ConfigSource::Toml(path.clone())]).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("unknown field `listen_addr`"), "{text}");
        assert!(text.contains("line 3, column 1"), "{text}");
    }

    #[test]
    fn wrong_type_names_line_without_quoting_the_value() {
        let err = overlay_str(Config::default(), "[datastore]\nport = \"hunter2\"\n").unwrap_err();
        assert!(err.starts_with("line 2, column 8:"), "{err}");
        assert!(!err.contains("port = "), "{err}");
    }

    #[test]
    fn syntax_error_names_line() {
        let err = overlay_str(Config::default(), "[agent]\ninstance_id = \n").unwrap_err();
        assert!(err.starts_with("line 2, "), "{err}");
    }

    #[test]
    fn incomplete_optional_table_is_an_error() {
        let err = overlay_str(
            Config::default(),
            "[transport.http.tls]\ncert = \"/c.pem\"\n",
        )
        .unwrap_err();
        assert!(err.contains("missing field `key`"), "{err}");
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let err = Config::load(&[ConfigSource::Toml(PathBuf::from("/nonexistent/agent.toml"))])
            .unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    }

    #[test]
    fn positions_count_characters() {
        assert_eq!(position("ab\ncdé f", 8), (2, 5));
        assert_eq!(position("x", 0), (1, 1));
    }
}

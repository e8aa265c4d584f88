//! The validation rules shipped with the driver: every PostgreSQL 15 parameter a
//! configuration group may set, with its type, range, unit, allowed values and whether a
//! change needs a server restart (`pg_settings.context = 'postmaster'`).
//!
//! The table is `rules/validation-rules.json` (Trove's `validation-rules.json` format, plus
//! `context`, `unit` and `allowed_values`), built from `pg_settings` of PostgreSQL 15 and
//! embedded at compile time. Parameters the driver decides itself (addresses, paths,
//! authentication, replication, archiving, log destination, preloaded libraries) are not in
//! it, so no override can change them.
//!
//! Validation is pure: [`validate_overrides`] checks every value and converts it to the
//! parameter's base unit; the first bad one fails the whole set naming the key and the rule.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use guest_agent_api::config::{ConfigValue, Overrides, ValidatedOverrides};
use guest_agent_api::ident::ConfigKey;
use guest_agent_api::{Error, Result};
use serde::Deserialize;
use serde_json::Value;

/// The embedded rules file.
const RULES_JSON: &str = include_str!("../rules/validation-rules.json");

/// Longest string value accepted (PostgreSQL itself has no limit; a configuration line of
/// this size is already absurd).
const MAX_STRING_LEN: usize = 4096;

/// A parameter's type, as `pg_settings.vartype` has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ParamType {
    /// `on`/`off`.
    Boolean,
    /// Whole number, possibly with a unit.
    Integer,
    /// Real number.
    Float,
    /// Free text.
    String,
    /// One of `allowed_values`.
    Enum,
}

/// One parameter's rule.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Rule {
    /// Parameter name.
    pub(crate) name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub(crate) kind: ParamType,
    /// Whether a change takes effect only after a restart.
    pub(crate) restart_required: bool,
    /// `pg_settings.context`.
    pub(crate) context: String,
    /// Smallest value (integers and floats), in the base unit.
    #[serde(default)]
    pub(crate) min: Option<f64>,
    /// Largest value (integers and floats), in the base unit.
    #[serde(default)]
    pub(crate) max: Option<f64>,
    /// Base unit (`kB`, `8kB`, `MB`, `B`, `ms`, `s`, `min`).
    #[serde(default)]
    pub(crate) unit: Option<String>,
    /// Allowed values of an enumeration.
    #[serde(default)]
    pub(crate) allowed_values: Vec<String>,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ParamType::Boolean => "boolean",
            ParamType::Integer => "integer",
            ParamType::Float => "float",
            ParamType::String => "string",
            ParamType::Enum => "enum",
        };
        write!(f, "{kind}")?;
        if let (Some(min), Some(max)) = (self.min, self.max) {
            write!(f, " {min}..{max}")?;
        }
        if let Some(unit) = &self.unit {
            write!(f, " {unit}")?;
        }
        if !self.allowed_values.is_empty() {
            write!(f, " of {}", self.allowed_values.join("|"))?;
        }
        if self.restart_required {
            write!(f, ", restart required")
        } else {
            write!(f, ", dynamic ({})", self.context)
        }
    }
}

#[derive(Debug, Deserialize)]
struct RulesFile {
    #[serde(rename = "configuration-parameters")]
    parameters: Vec<Rule>,
}

/// Every rule by name.
pub(crate) type Rules = BTreeMap<String, Rule>;

/// The embedded rules, parsed once.
pub(crate) fn rules() -> Result<&'static Rules> {
    static RULES: OnceLock<std::result::Result<Rules, String>> = OnceLock::new();
    RULES
        .get_or_init(|| {
            let file: RulesFile = serde_json::from_str(RULES_JSON)
                .map_err(|e| format!("the embedded validation rules do not parse: {e}"))?;
            Ok(file
                .parameters
                .into_iter()
                .map(|r| (r.name.clone(), r))
                .collect())
        })
        .as_ref()
        .map_err(|e| Error::Internal(e.clone()))
}

fn bad(key: &str, rule: &Rule, problem: impl fmt::Display) -> Error {
    Error::InvalidConfig {
        key: key.to_owned(),
        reason: format!("{problem} (rule: {rule})"),
    }
}

/// Bytes in one memory unit as PostgreSQL spells it.
fn memory_unit(unit: &str) -> Option<f64> {
    Some(match unit {
        "B" => 1.0,
        "kB" => 1024.0,
        "8kB" => 8192.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    })
}

/// Milliseconds in one time unit as PostgreSQL spells it.
fn time_unit(unit: &str) -> Option<f64> {
    Some(match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return None,
    })
}

/// Splits `128MB` into `(128, "MB")`; a bare number has an empty unit.
fn split_unit(text: &str) -> Option<(f64, &str)> {
    let text = text.trim();
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+')))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(end);
    let n: f64 = num.parse().ok()?;
    Some((n, unit.trim()))
}

/// Converts `text` (a number with an optional unit) into the base unit `base`, rounding to
/// the nearest whole base unit as the server does.
fn to_base_unit(text: &str, base: Option<&str>) -> std::result::Result<i64, String> {
    let (n, unit) = split_unit(text).ok_or_else(|| format!("'{text}' is not a number"))?;
    let value = if unit.is_empty() {
        n
    } else {
        let base = base.ok_or_else(|| format!("'{text}': this parameter takes no unit"))?;
        let factor = match (
            memory_unit(unit),
            memory_unit(base),
            time_unit(unit),
            time_unit(base),
        ) {
            (Some(u), Some(b), _, _) => u / b,
            (_, _, Some(u), Some(b)) => u / b,
            _ => {
                return Err(format!(
                    "'{text}': unit '{unit}' does not fit a parameter measured in {base}"
                ));
            }
        };
        (n * factor).round()
    };
    if value.fract() != 0.0 || !value.is_finite() || value.abs() > 9.0e15 {
        return Err(format!("'{text}' is not a whole number"));
    }
    // Exact: whole and far inside i64.
    #[allow(clippy::cast_possible_truncation)]
    Ok(value as i64)
}

fn check_range(key: &str, rule: &Rule, v: f64, shown: &str) -> Result<()> {
    let below = rule.min.is_some_and(|m| v < m);
    let above = rule.max.is_some_and(|m| v > m);
    if below || above {
        return Err(bad(key, rule, format!("{shown} is out of range")));
    }
    Ok(())
}

fn bool_word(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" | "t" | "y" => Some(true),
        "off" | "false" | "no" | "0" | "f" | "n" => Some(false),
        _ => None,
    }
}

/// Checks one value against `rule` and returns it typed (integers in the base unit).
pub(crate) fn check_value(key: &str, rule: &Rule, v: &Value) -> Result<ConfigValue> {
    match rule.kind {
        ParamType::Boolean => {
            let b = match v {
                Value::Bool(b) => Some(*b),
                Value::Number(n) => match n.as_i64() {
                    Some(0) => Some(false),
                    Some(1) => Some(true),
                    _ => None,
                },
                Value::String(s) => bool_word(s),
                _ => None,
            };
            b.map(ConfigValue::Bool)
                .ok_or_else(|| bad(key, rule, format!("{v} is not a boolean")))
        }
        ParamType::Integer => {
            let n = match v {
                Value::Number(n) => match n.as_i64() {
                    Some(i) => i,
                    None => return Err(bad(key, rule, format!("{v} is not a whole number"))),
                },
                Value::String(s) => {
                    to_base_unit(s, rule.unit.as_deref()).map_err(|e| bad(key, rule, e))?
                }
                _ => return Err(bad(key, rule, format!("{v} is not an integer"))),
            };
            // Exact for every value inside the rules' ranges (at most 2^53).
            #[allow(clippy::cast_precision_loss)]
            check_range(key, rule, n as f64, &v.to_string())?;
            Ok(ConfigValue::Int(n))
        }
        ParamType::Float => {
            let f = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            }
            .filter(|f| f.is_finite())
            .ok_or_else(|| bad(key, rule, format!("{v} is not a number")))?;
            check_range(key, rule, f, &v.to_string())?;
            Ok(ConfigValue::Float(f))
        }
        ParamType::Enum => {
            let text = match v {
                Value::String(s) => s.trim().to_owned(),
                Value::Bool(true) => "on".to_owned(),
                Value::Bool(false) => "off".to_owned(),
                Value::Number(n) => n.to_string(),
                _ => {
                    return Err(bad(
                        key,
                        rule,
                        format!("{v} is not one of the allowed values"),
                    ));
                }
            };
            rule.allowed_values
                .iter()
                .find(|a| a.eq_ignore_ascii_case(&text))
                .map(|a| ConfigValue::Str(a.clone()))
                .ok_or_else(|| bad(key, rule, format!("{v} is not one of the allowed values")))
        }
        ParamType::String => {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(bad(key, rule, format!("{v} is not a string"))),
            };
            if text.chars().any(char::is_control) {
                return Err(bad(key, rule, "control characters are not allowed"));
            }
            if text.len() > MAX_STRING_LEN {
                return Err(bad(
                    key,
                    rule,
                    format!("longer than {MAX_STRING_LEN} bytes"),
                ));
            }
            Ok(ConfigValue::Str(text))
        }
    }
}

/// Validates a whole override set: every key known, every value of the right type and in
/// range. The first bad one fails the set; nothing is partially accepted.
pub(crate) fn validate_overrides(overrides: &Overrides) -> Result<ValidatedOverrides> {
    let rules = rules()?;
    let mut out = ValidatedOverrides::default();
    for (k, v) in overrides {
        let key = ConfigKey::new(k.as_str())?;
        let rule = rules
            .get(key.as_str())
            .ok_or_else(|| Error::InvalidConfig {
                key: k.clone(),
                reason: "not a parameter a configuration group may set on PostgreSQL 15 \
                     (unknown, or managed by the agent)"
                    .to_owned(),
            })?;
        let value = check_value(k, rule, v)?;
        if rule.restart_required {
            out.restart_required.push(key.clone());
        }
        out.values.insert(key, value);
    }
    Ok(out)
}

/// The value as JSON again (for re-validating a typed set).
pub(crate) fn to_json(v: &ConfigValue) -> Value {
    match v {
        ConfigValue::Bool(b) => Value::Bool(*b),
        ConfigValue::Int(i) => Value::from(*i),
        ConfigValue::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        ConfigValue::Str(s) => Value::String(s.clone()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn set(v: Value) -> Overrides {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn rules_parse_and_are_sane() {
        let r = rules().unwrap();
        assert!(r.len() > 150, "{}", r.len());
        for rule in r.values() {
            assert_eq!(
                rule.restart_required,
                rule.context == "postmaster",
                "{}",
                rule.name
            );
            if rule.kind == ParamType::Enum {
                assert!(!rule.allowed_values.is_empty(), "{}", rule.name);
            }
            if matches!(rule.kind, ParamType::Integer | ParamType::Float) {
                assert!(rule.min.is_some() && rule.max.is_some(), "{}", rule.name);
            }
        }
        // Nothing the driver manages is settable.
        for managed in [
            "port",
            "listen_addresses",
            "unix_socket_directories",
            "wal_level",
            "hot_standby",
            "primary_conninfo",
            "primary_slot_name",
            "password_encryption",
            "archive_command",
            "hba_file",
            "data_directory",
            "shared_preload_libraries",
            "search_path",
            "wal_log_hints",
        ] {
            assert!(!r.contains_key(managed), "{managed} must not be settable");
        }
        for known in [
            "shared_buffers",
            "work_mem",
            "max_connections",
            "autovacuum",
        ] {
            assert!(r.contains_key(known), "{known}");
        }
    }

    #[test]
    fn values_are_typed_and_converted_to_base_units() {
        let v = validate_overrides(&set(json!({
            "shared_buffers": "256MB",
            "work_mem": 8192,
            "maintenance_work_mem": "1GB",
            "checkpoint_timeout": "15min",
            "log_min_duration_statement": "2s",
            "autovacuum": "off",
            "jit": true,
            "random_page_cost": 1.1,
            "seq_page_cost": "2",
            "log_statement": "DDL",
            "max_connections": 200,
            "application_name": "x",
        })))
        .unwrap_err();
        // application_name is per-session, not a server parameter a group may set.
        assert!(
            matches!(&v, Error::InvalidConfig { key, .. } if key == "application_name"),
            "{v}"
        );
        let v = validate_overrides(&set(json!({
            "shared_buffers": "256MB",
            "work_mem": 8192,
            "maintenance_work_mem": "1GB",
            "checkpoint_timeout": "15min",
            "log_min_duration_statement": "2s",
            "autovacuum": "off",
            "jit": true,
            "random_page_cost": 1.1,
            "seq_page_cost": "2",
            "log_statement": "DDL",
            "max_connections": 200,
        })))
        .unwrap();
        let get = |k: &str| {
            v.values
                .iter()
                .find(|(key, _)| key.as_str() == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get("shared_buffers"), ConfigValue::Int(32768)); // 8kB pages
        assert_eq!(get("work_mem"), ConfigValue::Int(8192));
        assert_eq!(get("maintenance_work_mem"), ConfigValue::Int(1 << 20));
        assert_eq!(get("checkpoint_timeout"), ConfigValue::Int(900));
        assert_eq!(get("log_min_duration_statement"), ConfigValue::Int(2000));
        assert_eq!(get("autovacuum"), ConfigValue::Bool(false));
        assert_eq!(get("jit"), ConfigValue::Bool(true));
        assert_eq!(get("random_page_cost"), ConfigValue::Float(1.1));
        assert_eq!(get("seq_page_cost"), ConfigValue::Float(2.0));
        assert_eq!(get("log_statement"), ConfigValue::Str("ddl".into()));
        let restart: Vec<&str> = v.restart_required.iter().map(ConfigKey::as_str).collect();
        assert_eq!(restart, ["max_connections", "shared_buffers"]);
        assert!(
            validate_overrides(&Overrides::new())
                .unwrap()
                .values
                .is_empty()
        );
    }

    #[test]
    fn bad_values_name_the_key_and_the_rule() {
        for (set_json, key, words) in [
            (
                json!({"no_such_param": 1}),
                "no_such_param",
                "not a parameter",
            ),
            (json!({"port": 5433}), "port", "managed by the agent"),
            (json!({"work_mem": 10}), "work_mem", "out of range"),
            (json!({"work_mem": "lots"}), "work_mem", "not a number"),
            (json!({"work_mem": "10s"}), "work_mem", "does not fit"),
            (json!({"work_mem": 1.5}), "work_mem", "whole number"),
            (
                json!({"max_connections": "10MB"}),
                "max_connections",
                "no unit",
            ),
            (
                json!({"autovacuum": "maybe"}),
                "autovacuum",
                "not a boolean",
            ),
            (json!({"autovacuum": [1]}), "autovacuum", "not a boolean"),
            (
                json!({"random_page_cost": -1}),
                "random_page_cost",
                "out of range",
            ),
            (
                json!({"log_statement": "everything"}),
                "log_statement",
                "allowed values",
            ),
            (
                json!({"log_line_prefix": "a\nlisten_addresses='*'"}),
                "log_line_prefix",
                "control characters",
            ),
            (json!({"x; DROP": 1}), "x; DROP", "key"),
        ] {
            let e = validate_overrides(&set(set_json.clone())).unwrap_err();
            match &e {
                Error::InvalidConfig { key: k, reason } => {
                    assert!(k.starts_with(key), "{set_json}: {e}");
                    assert!(reason.contains(words), "{set_json}: {e}");
                }
                other => panic!("{set_json}: {other:?}"),
            }
        }
        // The rule is named in range errors.
        let e = validate_overrides(&set(json!({"work_mem": 10})))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rule: integer 64..2147483647 kB"), "{e}");
        // One bad key fails the whole set.
        assert!(validate_overrides(&set(json!({"work_mem": "4MB", "nope": 1}))).is_err());
    }

    #[test]
    fn unit_conversion_edges() {
        assert_eq!(to_base_unit("1", Some("kB")), Ok(1));
        assert_eq!(to_base_unit("1MB", Some("8kB")), Ok(128));
        assert_eq!(to_base_unit("12kB", Some("8kB")), Ok(2)); // rounds like the server
        assert_eq!(to_base_unit("1h", Some("s")), Ok(3600));
        assert_eq!(to_base_unit("-1", Some("ms")), Ok(-1));
        assert!(to_base_unit("1.5", None).is_err());
        assert!(to_base_unit("MB", Some("kB")).is_err());
        assert!(to_base_unit("1 parsec", Some("kB")).is_err());
    }
}

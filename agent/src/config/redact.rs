//! Redaction of secrets in the effective configuration printed by `check-config`.
//!
//! Secrets are known fields (`trove.transport_url`'s password, `trove.instance_rpc_encr_key`,
//! the password of `control_plane.http.url`, `backup.s3.secret_key`, `backup.swift.key`) and, in the free-form `datastore.options`, any
//! entry whose name looks like a password, secret, token or key. File paths are not secrets:
//! `transport.http.tls.key` names a file and is shown. A new secret field must be added to
//! `render` here, and to its type's hand-written `Debug`.

use ::toml::{Table, Value};

use super::Config;

/// What a secret is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Renders `config` as TOML with every secret replaced by [`REDACTED`].
pub(crate) fn render(config: &Config) -> String {
    // Redact on the typed value, so renaming a secret field breaks the build here instead of
    // silently printing it.
    let mut shown = config.clone();
    shown.datastore.options = redact_options(&config.datastore.options);
    if let Some(http) = shown.control_plane.http.as_mut() {
        http.url = redact_url(&http.url);
    }
    if let Some(s3) = shown.backup.s3.as_mut() {
        s3.secret_key = REDACTED.to_owned();
    }
    if let Some(swift) = shown.backup.swift.as_mut() {
        swift.key = REDACTED.to_owned();
        swift.auth_url = redact_url(&swift.auth_url);
    }
    if let Some(trove) = shown.trove.as_mut() {
        trove.transport_url = trove.transport_url.as_deref().map(redact_url);
        if trove.instance_rpc_encr_key.is_some() {
            trove.instance_rpc_encr_key = Some(REDACTED.to_owned());
        }
    }
    match ::toml::to_string_pretty(&shown) {
        Ok(text) => text,
        // Only non-UTF-8 paths get here; the message names no value.
        Err(e) => format!("# cannot render the configuration as TOML: {e}\n"),
    }
}

/// `url` with the password of every `user:password@host` replaced by [`REDACTED`].
///
/// Understands oslo.messaging's `driver://user:pass@host:port,user2:pass2@host2:port/vhost?query`.
/// When the URL cannot be split unambiguously (an unencoded `@`, `/` or `,` in a password), the
/// whole URL is redacted rather than risking a partial leak.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains('@') {
            REDACTED.to_owned()
        } else {
            url.to_owned()
        };
    };
    let netloc_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (netloc, tail) = rest.split_at(netloc_end);
    if !netloc.contains('@') {
        // A password holding `/`, `?` or `#` ends the host part early; its `@` is then in the
        // tail and the "host" is really `user:pass-prefix`.
        return if tail.contains('@') {
            REDACTED.to_owned()
        } else {
            url.to_owned()
        };
    }
    let mut hosts = Vec::new();
    for entry in netloc.split(',') {
        // Every host of a multi-host URL with credentials carries its own; an entry without
        // exactly one `@` means a `,` or `@` inside a password.
        let mut parts = entry.split('@');
        let (Some(userinfo), Some(host), None) = (parts.next(), parts.next(), parts.next()) else {
            return REDACTED.to_owned();
        };
        match userinfo.split_once(':') {
            Some((user, _password)) => hosts.push(format!("{user}:{REDACTED}@{host}")),
            None => hosts.push(entry.to_owned()),
        }
    }
    format!("{scheme}://{}{tail}", hosts.join(","))
}

/// Whether an option named `name` holds a secret (password, secret, token, credential, key
/// material) rather than, say, the path of a key file or a password length.
pub fn is_secret_key(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    // `ssl_key_file`, `password_length`: about a secret, not one.
    if let Some(last) = words.last()
        && [
            "file", "path", "dir", "dirs", "length", "len", "size", "bits",
        ]
        .contains(last)
    {
        return false;
    }
    [
        "password",
        "passwd",
        "passphrase",
        "secret",
        "token",
        "credential",
        "privkey",
        "apikey",
    ]
    .iter()
    .any(|s| lower.contains(s))
        || words.iter().any(|w| ["key", "pwd", "psk"].contains(w))
}

/// A copy of `options` with every secret-named entry (see [`is_secret_key`]) replaced by
/// [`REDACTED`], at any depth.
pub fn redact_options(options: &Table) -> Table {
    options
        .iter()
        .map(|(name, value)| {
            let shown = if is_secret_key(name) {
                Value::String(REDACTED.to_owned())
            } else {
                redact_value(value)
            };
            (name.clone(), shown)
        })
        .collect()
}

fn redact_value(value: &Value) -> Value {
    match value {
        Value::Table(table) => Value::Table(redact_options(table)),
        Value::Array(items) => Value::Array(items.iter().map(redact_value).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{ControlPlaneHttp, TlsSection, TroveSection};

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(
            redact_url("rabbit://trove:s3cr3t@10.0.0.2:5672/"),
            "rabbit://trove:<redacted>@10.0.0.2:5672/"
        );
        assert_eq!(
            redact_url("rabbit://a:p1@h1:5672,b:p2@h2:5672/vhost?ssl=1"),
            "rabbit://a:<redacted>@h1:5672,b:<redacted>@h2:5672/vhost?ssl=1"
        );
        assert_eq!(redact_url("rabbit://h1:5672/"), "rabbit://h1:5672/");
        assert_eq!(redact_url("https://cp.example/v1"), "https://cp.example/v1");
        assert_eq!(redact_url("rabbit://guest@h/"), "rabbit://guest@h/");
    }

    #[test]
    fn ambiguous_urls_are_redacted_whole() {
        for url in [
            "rabbit://u:pa/ss@h:5672/",
            "rabbit://u:pa,ss@h:5672/",
            "rabbit://u:pa@ss@h:5672/",
            "rabbit://u:pa?ss@h/",
            "u:secret@h",
        ] {
            assert_eq!(redact_url(url), REDACTED, "{url}");
        }
    }

    #[test]
    fn secret_names() {
        for name in [
            "password",
            "admin_password",
            "secret",
            "api_token",
            "key",
            "ssl_key",
            "psk",
        ] {
            assert!(is_secret_key(name), "{name}");
        }
        for name in [
            "ssl_key_file",
            "password_length",
            "start_timeout_secs",
            "ignore_users",
        ] {
            assert!(!is_secret_key(name), "{name}");
        }
    }

    #[test]
    fn nested_options_are_redacted() {
        let options: Table =
            ::toml::from_str("replication_password = 'x1'\n[nested]\ntoken = 'x2'\nkeep = 'ok'\n")
                .unwrap();
        let shown = redact_options(&options);
        assert_eq!(shown["replication_password"].as_str(), Some(REDACTED));
        assert_eq!(shown["nested"]["token"].as_str(), Some(REDACTED));
        assert_eq!(shown["nested"]["keep"].as_str(), Some("ok"));
    }

    fn config_with_secrets() -> Config {
        let mut config = Config {
            trove: Some(TroveSection {
                transport_url: Some("rabbit://trove:amqp-pass-123@10.0.0.2:5672/".to_owned()),
                instance_rpc_encr_key: Some("rpc-key-0123456789abcdef01234567".to_owned()),
                ..TroveSection::default()
            }),
            ..Config::default()
        };
        config
            .datastore
            .options
            .insert("admin_password".to_owned(), "pg-pass-456".into());
        config
            .datastore
            .options
            .insert("start_timeout_secs".to_owned(), 60.into());
        config.control_plane.http = Some(ControlPlaneHttp {
            url: "https://hb:cp-pass-789@cp.example/v1".to_owned(),
            ca: None,
            client_cert: None,
            client_key: None,
        });
        config.transport.http.tls = Some(TlsSection {
            cert: PathBuf::from("/etc/guest-agent/tls/cert.pem"),
            key: PathBuf::from("/etc/guest-agent/tls/key.pem"),
            client_ca: PathBuf::from("/etc/guest-agent/tls/ca.pem"),
        });
        config
    }

    const SECRETS: [&str; 4] = [
        "amqp-pass-123",
        "rpc-key-0123456789abcdef01234567",
        "pg-pass-456",
        "cp-pass-789",
    ];

    #[test]
    fn rendered_config_hides_secrets_and_shows_paths() {
        let text = config_with_secrets().redacted();
        for secret in SECRETS {
            assert!(!text.contains(secret), "{secret} leaked:\n{text}");
        }
        assert!(
            text.contains("rabbit://trove:<redacted>@10.0.0.2:5672/"),
            "{text}"
        );
        assert!(text.contains("/etc/guest-agent/tls/key.pem"), "{text}");
        assert!(text.contains("start_timeout_secs = 60"), "{text}");
        // The output is TOML in the agent's own schema.
        let parsed: Config = ::toml::from_str(&text).unwrap();
        assert_eq!(parsed.datastore.port, 5432);
    }

    #[test]
    fn debug_hides_secrets() {
        let text = format!("{:?}", config_with_secrets());
        for secret in SECRETS {
            assert!(!text.contains(secret), "{secret} leaked:\n{text}");
        }
    }
}

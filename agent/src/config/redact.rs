//! Redaction of secrets in the effective configuration printed by `check-config`.

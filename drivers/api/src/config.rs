//! Configuration group: validate and apply configuration overrides.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Serialize;

use crate::ident::ConfigKey;
use crate::{OpContext, Result};

/// Overrides as the control plane sends them: parameter name to JSON value.
pub type Overrides = serde_json::Map<String, serde_json::Value>;

/// A validated, typed configuration value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ConfigValue {
    /// On/off.
    Bool(bool),
    /// Whole number (already in the parameter's base unit).
    Int(i64),
    /// Real number.
    Float(f64),
    /// String (enumerations, paths, unit-suffixed sizes the server parses itself).
    Str(String),
}

/// Overrides that passed validation, with what each needs to take effect.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidatedOverrides {
    /// Key to typed value.
    pub values: BTreeMap<ConfigKey, ConfigValue>,
    /// Keys whose change needs a server restart.
    pub restart_required: Vec<ConfigKey>,
}

/// What applying overrides did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyOutcome {
    /// Parameters now in effect.
    pub dynamic_applied: Vec<String>,
    /// Parameters written but waiting for a restart.
    pub restart_required: Vec<String>,
}

/// Validation and application of configuration.
#[async_trait]
pub trait ConfigApply: Send + Sync {
    /// Validates every override against the driver's rules; the first bad key fails the whole
    /// set with [`crate::Error::InvalidConfig`] naming the key and the rule. Pure: no I/O.
    fn validate(&self, overrides: &Overrides) -> Result<ValidatedOverrides>;

    /// Makes `overrides` the managed override set (replacing the previous one), reloading
    /// dynamic parameters. Atomic: on failure the previous files stay.
    async fn apply(&self, ctx: &OpContext, overrides: &ValidatedOverrides) -> Result<ApplyOutcome>;

    /// Removes all managed overrides.
    async fn remove_overrides(&self, ctx: &OpContext) -> Result<ApplyOutcome>;

    /// Replaces the base configuration file with `contents`.
    async fn reset_base(&self, ctx: &OpContext, contents: &str) -> Result<()>;

    /// Current values of the managed override set.
    async fn current(&self, ctx: &OpContext) -> Result<BTreeMap<String, String>>;
}

//! What a driver hands the kit: the driver under test, an independent [`Probe`] into its
//! server, and a [`Names`] source for per-run unique identifiers.
//!
//! The probe is implemented in each driver's `tests/support` with a raw client of its own, so
//! every effect the kit asserts is observed outside the driver's code path.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use guest_agent_api::{Driver, OpContext};

use crate::names::Names;

/// An independent view into the datastore server, built on a raw client and the
/// administrative credentials, never on the driver's own code.
///
/// Every method answers about the server as it is right now; connection failures of a probe
/// that is asked "can this user log in" are a `false`, not a panic.
#[async_trait]
pub trait Probe: Send + Sync {
    /// Whether `user` can open a session with `password`, on `database` or the default one.
    async fn can_login(&self, user: &str, password: &str, database: Option<&str>) -> bool;

    /// Whether `user` can create and drop a table in `database`.
    async fn can_write(&self, user: &str, password: &str, database: &str) -> bool;

    /// Whether database `name` exists.
    async fn database_exists(&self, name: &str) -> bool;

    /// Whether user `name` exists (at `host` where the datastore scopes users by host).
    async fn user_exists(&self, name: &str, host: &str) -> bool;

    /// Whether user `name` (at `host`) has superuser rights.
    async fn is_superuser(&self, name: &str, host: &str) -> bool;

    /// Commits one write as the administrative user so that the server's position advances.
    async fn write_something(&self) -> Result<(), String>;

    /// Kills the server process with `SIGKILL`, as a crash would.
    async fn kill_server(&self) -> Result<(), String>;

    /// The value the server uses for configuration parameter `name` right now, as the server
    /// shows it. The default cannot tell; the configuration cases then check the driver's
    /// own answers only.
    async fn setting(&self, name: &str) -> Result<String, String> {
        Err(format!("this probe cannot read the setting {name}"))
    }
}

/// One configuration parameter and a value for it that differs from the server's default.
#[derive(Debug, Clone)]
pub struct SampleSetting {
    /// Parameter name.
    pub key: &'static str,
    /// The value to set, as the control plane sends it.
    pub value: serde_json::Value,
    /// How the server shows it once in effect (see [`Probe::setting`]).
    pub shown: &'static str,
}

/// What the configuration cases set: one parameter that takes effect at once and one that
/// needs a restart.
#[derive(Debug, Clone)]
pub struct ConfigSample {
    /// A dynamic parameter.
    pub dynamic: SampleSetting,
    /// A restart-required parameter.
    pub restart: SampleSetting,
}

/// A boxed, sendable future of a harness, what a [`PeerMaker`] returns.
pub type BoxedHarness = Pin<Box<dyn Future<Output = Harness> + Send>>;

/// Builds another fresh, prepared, running server of the same driver (a replica-to-be).
pub type PeerMaker = Arc<dyn Fn() -> BoxedHarness + Send + Sync>;

/// One driver on a fresh, prepared, running server, with its probe.
pub struct Harness {
    /// The driver under test.
    pub driver: Arc<dyn Driver>,
    /// The independent view into the server.
    pub probe: Box<dyn Probe>,
    /// Unique names for this run.
    pub names: Names,
    /// Whatever keeps the server alive (temporary directories, process handles); dropped last
    /// with the harness.
    pub guard: Box<dyn Any + Send + Sync>,
    /// Parameters for the configuration cases, when the driver's support names them (the kit
    /// knows samples for the drivers of this workspace).
    pub config_sample: Option<ConfigSample>,
    /// Makes further servers for the replication cases.
    pub peers: Option<PeerMaker>,
}

impl Harness {
    /// A harness around `driver` and `probe`, with fresh [`Names`] and `guard` kept alive.
    pub fn new(
        driver: Arc<dyn Driver>,
        probe: Box<dyn Probe>,
        guard: Box<dyn Any + Send + Sync>,
    ) -> Self {
        Self {
            driver,
            probe,
            names: Names::new(),
            guard,
            config_sample: None,
            peers: None,
        }
    }

    /// Names the parameters the configuration cases set.
    #[must_use]
    pub fn with_config_sample(mut self, sample: ConfigSample) -> Self {
        self.config_sample = Some(sample);
        self
    }

    /// Lets the replication cases build further servers with `make` (usually the same
    /// function that built this harness).
    #[must_use]
    pub fn with_peers<F, Fut>(mut self, make: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Harness> + Send + 'static,
    {
        self.peers = Some(Arc::new(move || Box::pin(make())));
        self
    }

    /// An operation context with a unique request id naming `operation`.
    pub fn ctx(&self, operation: &str) -> OpContext {
        OpContext::new(self.names.request_id(operation))
    }

    /// The driver's name, for messages.
    pub fn driver_name(&self) -> &'static str {
        self.driver.info().name
    }
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("driver", &self.driver)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

//! What a driver hands the kit: the driver under test, an independent [`Probe`] into its
//! server, and a [`Names`] source for per-run unique identifiers.
//!
//! The probe is implemented in each driver's `tests/support` with a raw client of its own, so
//! every effect the kit asserts is observed outside the driver's code path.

use std::any::Any;
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
}

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
        }
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

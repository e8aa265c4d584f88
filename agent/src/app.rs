//! The application: builds the driver, dispatcher, transports and control-plane client from a
//! validated [`Config`], then runs them until shutdown and drains.
//!
//! `App::build` does all the I/O that can fail on bad configuration (directories, TLS files,
//! binding the listen address) so that errors surface before the agent reports itself ready.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use guest_agent_api::runtime::ProcessRuntime;
use guest_agent_api::{DriverSettings, OpContext, Registry};
use tokio_util::sync::CancellationToken;

use crate::backup::BackupService;
use crate::config::{Config, ControlPlaneKind, RuntimeKind};
use crate::rpc::Dispatcher;
use crate::state::{AgentState, Phase};
use crate::telemetry::Metrics;
use crate::transport::http::{BoundHttp, HttpControlPlane, HttpTransport};
use crate::transport::{ControlPlane, LogControlPlane, Transport, TransportError};

/// How long transports may take to close their connections once operations have drained.
const TRANSPORT_SLACK: Duration = Duration::from_secs(3);

/// Why the agent could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The configuration is unusable (exit code 64).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The driver could not be built.
    #[error("datastore driver: {0}")]
    Driver(#[from] guest_agent_api::Error),
    /// A transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        source: std::io::Error,
    },
}

impl AppError {
    /// Whether this is the operator's configuration at fault (EX_USAGE) rather than the
    /// environment.
    pub fn is_usage(&self) -> bool {
        match self {
            Self::Config(_) => true,
            Self::Driver(e) => matches!(e, guest_agent_api::Error::InvalidConfig { .. }),
            Self::Transport(TransportError::Tls(_)) => true,
            _ => false,
        }
    }
}

/// Every driver this agent ships, by Trove manager name.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    // Registering two fixed factories cannot collide; a collision would be a build-time bug
    // caught by the registry test below.
    let _ = r.register(guest_agent_postgres::factory());
    let _ = r.register(guest_agent_mysql::factory());
    r
}

fn ensure_dir(path: &Path, mode: u32) -> Result<(), AppError> {
    let io = |e| AppError::Io {
        context: format!("creating {}", path.display()),
        source: e,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)
}

/// A transport whose listen address is already bound (so bind errors surface in
/// [`App::build`], before the agent reports itself ready).
#[derive(Debug)]
enum BoundTransport {
    Http(std::sync::Mutex<Option<BoundHttp>>),
}

#[async_trait::async_trait]
impl Transport for BoundTransport {
    fn kind(&self) -> &'static str {
        match self {
            Self::Http(_) => "http",
        }
    }

    async fn serve(
        &self,
        dispatcher: Arc<Dispatcher>,
        shutdown: CancellationToken,
    ) -> Result<(), TransportError> {
        match self {
            Self::Http(slot) => {
                let bound = slot.lock().ok().and_then(|mut s| s.take());
                match bound {
                    Some(b) => b.serve(dispatcher, shutdown).await,
                    None => Err(TransportError::Io {
                        context: "serving the HTTP transport".to_owned(),
                        source: std::io::Error::other("already served once"),
                    }),
                }
            }
        }
    }
}

/// A built, not yet running agent.
pub struct App {
    config: Config,
    dispatcher: Arc<Dispatcher>,
    control_plane: Arc<dyn ControlPlane>,
    transports: Vec<Box<dyn Transport>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("transports", &self.transports)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Builds everything from a validated configuration.
    pub async fn build(config: Config) -> Result<Self, AppError> {
        config.validate()?;
        let state_dir = &config.agent.state_dir;
        ensure_dir(state_dir, 0o700)?;
        let driver_state = state_dir.join("datastore");
        ensure_dir(&driver_state, 0o700)?;
        let ds = &config.datastore;
        let runtime = match ds.runtime {
            RuntimeKind::Process => Arc::new(ProcessRuntime::new()),
        };
        let options =
            serde_json::to_value(&ds.options).map_err(|e| crate::config::ConfigError::Invalid {
                key: "datastore.options".to_owned(),
                reason: e.to_string(),
            })?;
        let settings = DriverSettings {
            manager: ds.manager.clone(),
            version: ds.version.clone(),
            data_dir: ds.data_dir.clone(),
            run_dir: ds.run_dir.clone(),
            state_dir: driver_state,
            bind_address: ds.bind_address,
            port: ds.port,
            bin_dirs: ds.bin_dirs.clone(),
            os_user: ds.os_user.clone(),
            runtime,
            options,
        };
        let driver = registry().build(settings).await?;
        let state = Arc::new(AgentState::load(state_dir));
        let metrics = Arc::new(Metrics::default());
        let control_plane: Arc<dyn ControlPlane> = match config.control_plane.kind {
            ControlPlaneKind::None => Arc::new(LogControlPlane),
            ControlPlaneKind::Http => match &config.control_plane.http {
                Some(h) => Arc::new(HttpControlPlane::new(h)?),
                None => {
                    return Err(crate::config::ConfigError::Invalid {
                        key: "control_plane.http".to_owned(),
                        reason: "required when control_plane.kind = \"http\"".to_owned(),
                    }
                    .into());
                }
            },
        };
        let backups = Arc::new(BackupService::build(
            &config.backup,
            state_dir,
            &config.agent.instance_id,
        )?);
        let dispatcher = Arc::new(
            Dispatcher::new(driver, state, metrics)
                .with_manager(&ds.manager)
                .with_backups(
                    backups,
                    Arc::clone(&control_plane),
                    &config.agent.instance_id,
                    ds.version.clone().unwrap_or_default(),
                ),
        );
        let mut transports: Vec<Box<dyn Transport>> = Vec::new();
        if config.transport.http.enabled {
            let bound = HttpTransport::bind(&config.transport.http)?;
            transports.push(Box::new(BoundTransport::Http(std::sync::Mutex::new(Some(
                bound,
            )))));
        }
        Ok(Self {
            config,
            dispatcher,
            control_plane,
            transports,
        })
    }

    /// The dispatcher (for tests and embedding).
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// Runs until `shutdown` fires, then stops accepting, drains in-flight operations within
    /// the configured grace period, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let App {
            config,
            dispatcher,
            control_plane,
            transports,
        } = self;
        if dispatcher.state().phase() == Phase::Prepared {
            // After an agent restart the server may still run (it is adopted) or be down.
            let ctx = OpContext::child_of("startup", &shutdown);
            if let Err(e) = dispatcher.driver().lifecycle().start(&ctx).await {
                tracing::error!(error = %e, "Could not start the prepared datastore.");
            }
        }
        let beats_stop = CancellationToken::new();
        let beats = tokio::spawn(crate::heartbeat::run(
            Arc::clone(&dispatcher),
            control_plane,
            config.agent.instance_id.clone(),
            Duration::from_secs(config.control_plane.heartbeat_interval_secs),
            beats_stop.clone(),
        ));
        let mut serving = tokio::task::JoinSet::new();
        for t in transports {
            let d = Arc::clone(&dispatcher);
            let token = shutdown.clone();
            serving.spawn(async move {
                let kind = t.kind();
                (kind, t.serve(d, token).await)
            });
        }
        tracing::info!(
            instance_id = %config.agent.instance_id,
            manager = %config.datastore.manager,
            "Agent ready."
        );
        let mut failure = None;
        tokio::select! {
            // A normal shutdown also ends the transports: look at the token first so that is
            // not mistaken for a transport failure.
            biased;
            () = shutdown.cancelled() => {}
            Some(joined) = serving.join_next() => {
                // A transport ended on its own: that is fatal for the agent.
                match joined {
                    Ok((kind, Err(e))) => {
                        tracing::error!(transport = kind, error = %e, "Transport failed.");
                        failure = Some(AppError::Transport(e));
                    }
                    Ok((kind, Ok(()))) => tracing::error!(transport = kind, "Transport stopped."),
                    Err(e) => tracing::error!(error = %e, "Transport task failed."),
                }
                shutdown.cancel();
            }
        }
        let grace = Duration::from_secs(config.agent.shutdown_grace_secs);
        dispatcher.stop_accepting();
        let drained = dispatcher.drain(grace).await;
        // Operations are drained by now; what remains are responses being written and idle
        // connections (an idle HTTP/2 client may never acknowledge the shutdown), so the
        // transports get a short slack, not another grace period.
        if tokio::time::timeout(TRANSPORT_SLACK, async {
            while serving.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("Transports did not stop in time.");
        }
        beats_stop.cancel();
        let _ = beats.await;
        tracing::info!(drained, "Agent stopped.");
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_lists_shipped_managers() {
        let r = registry();
        assert_eq!(r.managers(), ["mariadb", "mysql", "postgresql"]);
        let e = r.get("redis").unwrap_err().to_string();
        assert!(e.contains("known: mariadb, mysql, postgresql"), "{e}");
    }
}

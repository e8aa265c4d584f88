//! Datastore runtime: how the database server process is run, behind one trait so a driver
//! does not care whether it is a supervised local process or (later) a container.
//!
//! Tools (initdb, pg_ctl, mariadb-install-db) run through [`DatastoreRuntime::run`] as argv
//! vectors with a cleared environment; there is no shell anywhere.

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::{Error, OpContext, Result};

mod process;

pub use process::{ProcessRuntime, find_program};

/// How to run the long-lived datastore server.
#[derive(Debug, Clone, Default)]
pub struct ServerSpec {
    /// Short name for logs (`postgres`).
    pub name: String,
    /// Absolute path of the server binary.
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<OsString>,
    /// The whole environment (nothing is inherited).
    pub env: Vec<(OsString, OsString)>,
    /// OS user to run as, when the agent runs as root.
    pub run_as: Option<String>,
    /// Working directory.
    pub workdir: Option<PathBuf>,
    /// File that receives the server's stdout and stderr (appended).
    pub log_file: Option<PathBuf>,
    /// A pid file the server writes (first line = pid). When it names a live process at start,
    /// that process is adopted instead of starting a second server.
    pub pid_file: Option<PathBuf>,
}

/// A one-shot tool invocation.
#[derive(Debug, Clone, Default)]
pub struct CommandSpec {
    /// Absolute path of the program.
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<OsString>,
    /// The whole environment (nothing is inherited).
    pub env: Vec<(OsString, OsString)>,
    /// OS user to run as, when the agent runs as root.
    pub run_as: Option<String>,
    /// Working directory.
    pub workdir: Option<PathBuf>,
    /// Bytes fed to stdin (stdin is closed after them); `None` gives an empty stdin.
    pub stdin: Option<Vec<u8>>,
    /// Kill the tool after this long.
    pub timeout: Option<Duration>,
}

impl CommandSpec {
    /// A command with `program` and `args` and an empty environment.
    pub fn new<I, S>(program: impl Into<PathBuf>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// `program arg arg…` for logs and errors (arguments are shown as given; never put secrets
    /// in argv: pass them through stdin or files).
    pub fn display(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }
}

/// What a finished tool left behind.
#[derive(Clone, Default)]
pub struct CommandOutput {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Captured stdout (bounded).
    pub stdout: Vec<u8>,
    /// The tail of stderr (bounded).
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Lossy UTF-8 of the stderr tail.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_owned()
    }
}

impl fmt::Debug for CommandOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandOutput")
            .field("code", &self.code)
            .field("stdout_len", &self.stdout.len())
            .field("stderr", &self.stderr_text())
            .finish()
    }
}

/// The signal that asks the server to stop (each datastore gives them its own meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM.
    Term,
    /// SIGINT.
    Int,
    /// SIGQUIT.
    Quit,
}

/// What the runtime knows of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerState {
    /// Never started by this runtime.
    NotStarted,
    /// Running with this pid.
    Running {
        /// Process id.
        pid: u32,
    },
    /// It exited.
    Exited {
        /// Exit code, when it exited normally.
        code: Option<i32>,
        /// Whether it exited because [`DatastoreRuntime::stop`] asked it to.
        requested: bool,
    },
}

/// Runs the datastore server and its tools.
#[async_trait]
pub trait DatastoreRuntime: Send + Sync + fmt::Debug {
    /// `process` or `docker`.
    fn kind(&self) -> &'static str;

    /// Starts the server (or adopts a running one, see [`ServerSpec::pid_file`]). Returns once
    /// the process exists; readiness is the driver's to check. Idempotent while it runs.
    async fn start(&self, spec: &ServerSpec) -> Result<()>;

    /// Sends `signal`, waits up to `grace` for the exit, then kills. Idempotent.
    async fn stop(&self, signal: StopSignal, grace: Duration) -> Result<()>;

    /// The server's state now.
    async fn state(&self) -> ServerState;

    /// Runs a tool to completion. A non-zero exit is not an error here: inspect the output.
    async fn run(&self, cmd: &CommandSpec) -> Result<CommandOutput>;
}

/// Waits until `ping` succeeds (the server accepts sessions), the server process exits, the
/// start timeout (cut short by the caller's deadline) passes, or the operation is cancelled.
///
/// `server` names the server in messages ("the {server} exited while starting"); an exit
/// quotes the tail of the server's `log`, so a failed start explains itself.
pub async fn wait_ready<F, Fut>(
    ctx: &OpContext,
    runtime: &dyn DatastoreRuntime,
    start_timeout: Duration,
    poll: Duration,
    server: &str,
    log: &Path,
    mut ping: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let timeout = ctx
        .remaining()
        .map_or(start_timeout, |left| left.min(start_timeout));
    let deadline = Instant::now() + timeout;
    loop {
        ctx.cancelled()?;
        if let ServerState::Exited { code, .. } = runtime.state().await {
            return Err(Error::Unavailable {
                message: format!(
                    "the {server} exited while starting ({}): {}",
                    code.map_or_else(|| "signal".to_owned(), |c| format!("exit code {c}")),
                    crate::fsutil::log_tail(log)
                ),
                source: None,
            });
        }
        let last = match ping().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            tracing::warn!(error = %last, "The {server} did not become ready in time.");
            return Err(Error::Timeout {
                operation: "start",
                after: timeout,
            });
        }
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = ctx.cancel.cancelled() => return Err(Error::Cancelled),
        }
    }
}

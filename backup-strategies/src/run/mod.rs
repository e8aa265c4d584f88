//! Running backup and restore tools: the [`ToolRunner`] trait and what a running tool gives
//! back. Tools are argv vectors ([`CommandSpec`]) with an explicit environment, never a
//! shell. [`process::ProcessRunner`] runs them as local child processes; a container runner
//! fits behind the same trait.

use std::fmt;
use std::pin::Pin;

use async_trait::async_trait;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

pub use guest_agent_api::runtime::CommandSpec;

use crate::error::{BackupError, Result};

pub mod process;

pub use process::ProcessRunner;

/// Most stderr kept from one tool (the tail).
pub const STDERR_TAIL: usize = 16 << 10;

/// How a tool ended.
#[derive(Clone, Default)]
pub struct ToolExit {
    /// The program, for messages.
    pub program: String,
    /// Exit code (`None` when a signal ended it).
    pub code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    /// The tail of its stderr.
    pub stderr_tail: Vec<u8>,
}

impl fmt::Debug for ToolExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolExit")
            .field("program", &self.program)
            .field("code", &self.code)
            .field("signal", &self.signal)
            .field("stderr", &self.stderr_text())
            .finish()
    }
}

impl ToolExit {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The stderr tail as text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr_tail).trim().to_owned()
    }

    /// The last few non-empty lines of stderr.
    pub fn last_lines(&self, n: usize) -> String {
        let text = self.stderr_text();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `exit code 2` / `killed by signal 9`.
    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            (None, None) => "unknown exit".into(),
        }
    }

    /// A [`BackupError::Tool`] for this exit.
    pub fn to_error(&self) -> BackupError {
        BackupError::Tool {
            program: self.program.clone(),
            exit: self.describe(),
            stderr_tail: self.last_lines(5),
        }
    }
}

/// Stops a running tool.
#[derive(Debug, Clone, Default)]
pub struct ToolKiller(CancellationToken);

impl ToolKiller {
    /// A killer not yet fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Kills the tool (idempotent).
    pub fn kill(&self) {
        self.0.cancel();
    }

    /// Resolves once [`ToolKiller::kill`] was called.
    pub async fn killed(&self) {
        self.0.cancelled().await;
    }
}

/// A tool writing its output to us.
pub struct RunningTool {
    /// Its stdout.
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    /// Resolves when it exited and its stderr was drained.
    pub done: BoxFuture<'static, Result<ToolExit>>,
    /// Kills it.
    pub killer: ToolKiller,
    /// Its process id, when it is a local process.
    pub pid: Option<u32>,
}

impl fmt::Debug for RunningTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningTool")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// A tool reading its input from us.
pub struct RunningSink {
    /// Its stdin; drop or shut it down to signal the end of input.
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
    /// Resolves when it exited and its stderr was drained.
    pub done: BoxFuture<'static, Result<ToolExit>>,
    /// Kills it.
    pub killer: ToolKiller,
    /// Its process id, when it is a local process.
    pub pid: Option<u32>,
}

impl fmt::Debug for RunningSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningSink")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// Runs tools for the strategies.
///
/// Contract: the environment is exactly `cmd.env` (nothing inherited); `cmd.run_as` drops to
/// that OS user when the agent is root; a dropped [`RunningTool`]/[`RunningSink`] kills its
/// tool; stderr is drained concurrently and only its tail is kept.
#[async_trait]
pub trait ToolRunner: Send + Sync + fmt::Debug {
    /// `process` or `container`.
    fn kind(&self) -> &'static str;

    /// Starts `cmd` with stdout piped to us and stdin empty.
    async fn spawn_reader(&self, cmd: &CommandSpec) -> Result<RunningTool>;

    /// Starts `cmd` with stdin piped from us and stdout discarded.
    async fn spawn_writer(&self, cmd: &CommandSpec) -> Result<RunningSink>;

    /// Runs `cmd` to completion (stdin from `cmd.stdin`, stdout discarded).
    async fn run(&self, cmd: &CommandSpec) -> Result<ToolExit>;
}

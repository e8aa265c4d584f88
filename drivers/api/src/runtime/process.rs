//! The process runtime: the server is a child process of the agent in its own process group
//! (so a signal to the agent does not reach it), with a monitor task recording its exit.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, geteuid};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::{Mutex, watch};

use super::{CommandOutput, CommandSpec, DatastoreRuntime, ServerSpec, ServerState, StopSignal};
use crate::{Error, Result};

/// Most stdout kept from one tool run.
const MAX_STDOUT: usize = 16 << 20;
/// Stderr tail kept from one tool run.
const MAX_STDERR: usize = 16 << 10;
/// Where util-linux keeps `setpriv`, used to drop to the datastore's OS user.
const SETPRIV: &str = "/usr/bin/setpriv";

#[derive(Debug)]
enum Tracked {
    None,
    Child {
        pid: u32,
        exit: watch::Receiver<Option<Option<i32>>>,
    },
    Adopted {
        pid: u32,
    },
}

/// Runs the datastore as a supervised local process.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    tracked: Tracked,
    stop_requested: bool,
}

impl Default for ProcessRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessRuntime {
    /// A runtime with no server yet.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                tracked: Tracked::None,
                stop_requested: false,
            })),
        }
    }
}

/// Builds the program + argv, wrapping in `setpriv` to drop privileges when asked to.
fn command_for(program: &Path, args: &[OsString], run_as: Option<&str>) -> Result<Command> {
    let Some(user) = run_as else {
        let mut c = Command::new(program);
        c.args(args);
        return Ok(c);
    };
    let me = geteuid();
    if !me.is_root() {
        let current = User::from_uid(me).ok().flatten().map(|u| u.name);
        if current.as_deref() == Some(user) {
            let mut c = Command::new(program);
            c.args(args);
            return Ok(c);
        }
        return Err(Error::InvalidState {
            operation: "run as datastore user",
            reason: format!("the agent is not root and not '{user}'"),
        });
    }
    match User::from_name(user) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(Error::InvalidState {
                operation: "run as datastore user",
                reason: format!("OS user '{user}' does not exist"),
            });
        }
        Err(e) => return Err(Error::Internal(format!("looking up OS user '{user}': {e}"))),
    }
    let mut c = Command::new(SETPRIV);
    c.args(["--reuid", user, "--regid", user, "--init-groups", "--"])
        .arg(program)
        .args(args);
    Ok(c)
}

fn prepare(c: &mut Command, env: &[(OsString, OsString)], workdir: Option<&Path>) {
    c.env_clear();
    c.envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(w) = workdir {
        c.current_dir(w);
    }
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    if kill(Pid::from_raw(p), None).is_err() {
        return false;
    }
    // A zombie still answers kill(0); its state letter in /proc tells.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn read_pid_file(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().next()?.trim().parse().ok()
}

fn signal_of(s: StopSignal) -> Signal {
    match s {
        StopSignal::Term => Signal::SIGTERM,
        StopSignal::Int => Signal::SIGINT,
        StopSignal::Quit => Signal::SIGQUIT,
    }
}

fn send(pid: u32, sig: Signal) -> Result<()> {
    let p = i32::try_from(pid).map_err(|_| Error::Internal(format!("pid {pid} out of range")))?;
    match kill(Pid::from_raw(p), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(Error::Internal(format!("signal {sig} to {pid}: {e}"))),
    }
}

async fn read_bounded<R: AsyncRead + Unpin>(mut r: R, limit: usize, keep_tail: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > limit {
                    if keep_tail {
                        let cut = out.len() - limit;
                        out.drain(..cut);
                    } else {
                        out.truncate(limit);
                    }
                }
            }
        }
    }
    out
}

impl ProcessRuntime {
    async fn wait_exit(&self, pid: u32, grace: Duration) -> bool {
        let rx = {
            let inner = self.inner.lock().await;
            match &inner.tracked {
                Tracked::Child { exit, .. } => Some(exit.clone()),
                _ => None,
            }
        };
        match rx {
            Some(mut rx) => tokio::time::timeout(grace, rx.wait_for(Option::is_some))
                .await
                .is_ok(),
            None => {
                let deadline = tokio::time::Instant::now() + grace;
                while alive(pid) {
                    if tokio::time::Instant::now() >= deadline {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                true
            }
        }
    }

    async fn current_pid(&self) -> Option<u32> {
        let inner = self.inner.lock().await;
        match &inner.tracked {
            Tracked::Child { pid, exit } if exit.borrow().is_none() => Some(*pid),
            Tracked::Adopted { pid } if alive(*pid) => Some(*pid),
            _ => None,
        }
    }
}

#[async_trait]
impl DatastoreRuntime for ProcessRuntime {
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn start(&self, spec: &ServerSpec) -> Result<()> {
        let mut inner = self.inner.lock().await;
        match &inner.tracked {
            Tracked::Child { exit, .. } if exit.borrow().is_none() => return Ok(()),
            Tracked::Adopted { pid } if alive(*pid) => return Ok(()),
            _ => {}
        }
        if let Some(pid) = spec.pid_file.as_deref().and_then(read_pid_file)
            && alive(pid)
        {
            tracing::info!(pid, server = %spec.name, "Adopted a running server.");
            inner.tracked = Tracked::Adopted { pid };
            inner.stop_requested = false;
            return Ok(());
        }
        let mut cmd = command_for(&spec.program, &spec.args, spec.run_as.as_deref())?;
        prepare(&mut cmd, &spec.env, spec.workdir.as_deref());
        let (out, err) = match &spec.log_file {
            Some(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| Error::io(format!("opening log {}", path.display()), e))?;
                let f2 = f
                    .try_clone()
                    .map_err(|e| Error::io("duplicating log handle", e))?;
                (Stdio::from(f), Stdio::from(f2))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", spec.program.display()), e))?;
        let pid = child
            .id()
            .ok_or_else(|| Error::Internal("spawned child has no pid".into()))?;
        let (tx, rx) = watch::channel(None);
        let name = spec.name.clone();
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let status = child.wait().await;
            let code = status
                .as_ref()
                .ok()
                .and_then(std::process::ExitStatus::code);
            let requested = match weak.upgrade() {
                Some(inner) => inner.lock().await.stop_requested,
                None => true,
            };
            if requested {
                tracing::info!(pid, ?code, server = %name, "Server exited as asked.");
            } else {
                tracing::warn!(pid, ?code, server = %name, "Server exited unexpectedly.");
            }
            let _ = tx.send(Some(code));
        });
        tracing::info!(pid, server = %spec.name, "Server started.");
        inner.tracked = Tracked::Child { pid, exit: rx };
        inner.stop_requested = false;
        Ok(())
    }

    async fn stop(&self, signal: StopSignal, grace: Duration) -> Result<()> {
        let Some(pid) = self.current_pid().await else {
            return Ok(());
        };
        self.inner.lock().await.stop_requested = true;
        send(pid, signal_of(signal))?;
        if self.wait_exit(pid, grace).await {
            return Ok(());
        }
        tracing::warn!(pid, ?grace, "Server did not stop in time; killing it.");
        send(pid, Signal::SIGKILL)?;
        if self.wait_exit(pid, Duration::from_secs(10)).await {
            Ok(())
        } else {
            Err(Error::Timeout {
                operation: "stop",
                after: grace,
            })
        }
    }

    async fn state(&self) -> ServerState {
        let inner = self.inner.lock().await;
        match &inner.tracked {
            Tracked::None => ServerState::NotStarted,
            Tracked::Child { pid, exit } => match *exit.borrow() {
                None => ServerState::Running { pid: *pid },
                Some(code) => ServerState::Exited {
                    code,
                    requested: inner.stop_requested,
                },
            },
            Tracked::Adopted { pid } if alive(*pid) => ServerState::Running { pid: *pid },
            Tracked::Adopted { .. } => ServerState::Exited {
                code: None,
                requested: inner.stop_requested,
            },
        }
    }

    async fn run(&self, spec: &CommandSpec) -> Result<CommandOutput> {
        let mut cmd = command_for(&spec.program, &spec.args, spec.run_as.as_deref())?;
        prepare(&mut cmd, &spec.env, spec.workdir.as_deref());
        cmd.stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("running {}", spec.program.display()), e))?;
        let stdin_task = match (child.stdin.take(), spec.stdin.clone()) {
            (Some(mut w), Some(bytes)) => Some(tokio::spawn(async move {
                // A tool that exits without reading its stdin is not our error; its exit says.
                let _ = w.write_all(&bytes).await;
                let _ = w.shutdown().await;
            })),
            _ => None,
        };
        let out = child
            .stdout
            .take()
            .map(|r| tokio::spawn(read_bounded(r, MAX_STDOUT, false)));
        let err = child
            .stderr
            .take()
            .map(|r| tokio::spawn(read_bounded(r, MAX_STDERR, true)));
        let status = match spec.timeout {
            Some(t) => match tokio::time::timeout(t, child.wait()).await {
                Ok(s) => s,
                Err(_) => {
                    let _ = child.kill().await;
                    return Err(Error::Timeout {
                        operation: "tool run",
                        after: t,
                    });
                }
            },
            None => child.wait().await,
        }
        .map_err(|e| Error::io(format!("waiting for {}", spec.program.display()), e))?;
        if let Some(t) = stdin_task {
            let _ = t.await;
        }
        let stdout = match out {
            Some(t) => t.await.unwrap_or_default(),
            None => Vec::new(),
        };
        let stderr = match err {
            Some(t) => t.await.unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(CommandOutput {
            code: status.code(),
            stdout,
            stderr,
        })
    }
}

/// Absolute path of `name` in `dirs`, the first that exists.
pub fn find_program(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn run_captures_output_and_exit() {
        let rt = ProcessRuntime::new();
        let mut spec = CommandSpec::new("/bin/sh", ["-c", "echo out; echo err >&2; exit 3"]);
        spec.env.push(("PATH".into(), "/usr/bin:/bin".into()));
        let out = rt.run(&spec).await.unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr_text(), "err");
    }

    #[tokio::test]
    async fn run_feeds_stdin_and_times_out() {
        let rt = ProcessRuntime::new();
        let mut spec = CommandSpec::new("/bin/cat", Vec::<String>::new());
        spec.stdin = Some(b"hello".to_vec());
        assert_eq!(rt.run(&spec).await.unwrap().stdout, b"hello");
        let mut slow = CommandSpec::new("/bin/sleep", ["5"]);
        slow.timeout = Some(Duration::from_millis(100));
        assert!(matches!(rt.run(&slow).await, Err(Error::Timeout { .. })));
    }

    #[tokio::test]
    async fn server_start_stop_and_crash_are_seen() {
        let rt = ProcessRuntime::new();
        assert_eq!(rt.state().await, ServerState::NotStarted);
        let spec = ServerSpec {
            name: "sleeper".into(),
            program: "/bin/sleep".into(),
            args: vec!["30".into()],
            ..ServerSpec::default()
        };
        rt.start(&spec).await.unwrap();
        let ServerState::Running { pid } = rt.state().await else {
            panic!("not running")
        };
        rt.start(&spec).await.unwrap();
        assert_eq!(rt.state().await, ServerState::Running { pid });
        rt.stop(StopSignal::Term, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(
            rt.state().await,
            ServerState::Exited {
                requested: true,
                ..
            }
        ));
        rt.stop(StopSignal::Term, Duration::from_secs(1))
            .await
            .unwrap();

        // A crash (exit not asked for) is reported as such.
        let crash = ServerSpec {
            program: "/bin/false".into(),
            args: vec![],
            ..spec
        };
        rt.start(&crash).await.unwrap();
        for _ in 0..100 {
            if matches!(rt.state().await, ServerState::Exited { .. }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            rt.state().await,
            ServerState::Exited {
                code: Some(1),
                requested: false
            }
        );
    }
}

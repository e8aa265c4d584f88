//! [`ProcessRunner`]: tools as local child processes (argv, cleared environment,
//! `kill_on_drop`, optional privilege drop through `setpriv`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;
use nix::unistd::{User, geteuid};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::{CommandSpec, RunningSink, RunningTool, STDERR_TAIL, ToolExit, ToolKiller, ToolRunner};
use crate::error::{BackupError, Result};

/// util-linux's `setpriv`, used to drop to the datastore's OS user.
const SETPRIV: &str = "/usr/bin/setpriv";

/// Runs tools as child processes of the agent.
#[derive(Debug, Clone)]
pub struct ProcessRunner {
    setpriv: PathBuf,
}

impl Default for ProcessRunner {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessRunner {
    /// A runner using `/usr/bin/setpriv` for `run_as`.
    pub fn new() -> Self {
        Self {
            setpriv: PathBuf::from(SETPRIV),
        }
    }

    fn command(&self, spec: &CommandSpec) -> Result<Command> {
        if !spec.program.is_absolute() {
            return Err(BackupError::invalid(
                "program",
                format!("'{}' is not an absolute path", spec.program.display()),
            ));
        }
        let mut c = match spec.run_as.as_deref() {
            Some(user) if needs_setpriv(user)? => {
                let mut c = Command::new(&self.setpriv);
                c.args(["--reuid", user, "--regid", user, "--init-groups", "--"])
                    .arg(&spec.program)
                    .args(&spec.args);
                c
            }
            _ => {
                let mut c = Command::new(&spec.program);
                c.args(&spec.args);
                c
            }
        };
        c.env_clear();
        c.envs(spec.env.iter().map(|(k, v)| (k, v)));
        if let Some(w) = &spec.workdir {
            c.current_dir(w);
        }
        c.stderr(Stdio::piped()).kill_on_drop(true);
        Ok(c)
    }
}

/// Whether running as `user` needs a privilege drop (we are root) or is refused.
fn needs_setpriv(user: &str) -> Result<bool> {
    let me = geteuid();
    if me.is_root() {
        return match User::from_name(user) {
            Ok(Some(_)) => Ok(true),
            Ok(None) => Err(BackupError::invalid(
                "run_as",
                format!("OS user '{user}' does not exist"),
            )),
            Err(e) => Err(BackupError::Internal(format!(
                "looking up OS user '{user}': {e}"
            ))),
        };
    }
    let current = User::from_uid(me).ok().flatten().map(|u| u.name);
    if current.as_deref() == Some(user) {
        Ok(false)
    } else {
        Err(BackupError::invalid(
            "run_as",
            format!("the agent is neither root nor '{user}'"),
        ))
    }
}

async fn read_tail<R: AsyncRead + Unpin>(mut r: R, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > limit * 2 {
                    let cut = out.len() - limit;
                    out.drain(..cut);
                }
            }
        }
    }
    if out.len() > limit {
        let cut = out.len() - limit;
        out.drain(..cut);
    }
    out
}

/// Waits for `child` (killing it when `killer` fires), drains stderr, reports the exit.
fn supervise(
    mut child: Child,
    program: &Path,
    killer: ToolKiller,
) -> futures::future::BoxFuture<'static, Result<ToolExit>> {
    use std::os::unix::process::ExitStatusExt;
    let program = program.display().to_string();
    let stderr = child
        .stderr
        .take()
        .map(|e| tokio::spawn(read_tail(e, STDERR_TAIL)));
    // The wait runs as its own task so the tool is reaped (and its stderr drained) even while
    // nobody polls `done`.
    let task = tokio::spawn(async move {
        let status = tokio::select! {
            s = child.wait() => s,
            () = killer.killed() => {
                let _ = child.start_kill();
                child.wait().await
            }
        };
        let stderr_tail = match stderr {
            Some(t) => t.await.unwrap_or_default(),
            None => Vec::new(),
        };
        let status = status.map_err(|e| BackupError::io(format!("waiting for {program}"), e))?;
        Ok(ToolExit {
            program,
            code: status.code(),
            signal: status.signal(),
            stderr_tail,
        })
    });
    Box::pin(async move {
        task.await
            .map_err(|e| BackupError::Internal(format!("tool supervisor: {e}")))?
    })
}

/// Pipe capacity asked for between a tool and the pipeline (Linux's default is 64 KiB).
const PIPE_SIZE: i32 = 1 << 20;

/// Widens the pipe to a streaming tool: a tool writing 1 GB through 64 KiB of pipe wakes the
/// pipeline (and is woken) tens of thousands of times. Kernel memory, not the agent's; a
/// refusal (e.g. above `/proc/sys/fs/pipe-max-size`) keeps the default.
fn widen_pipe(fd: &impl std::os::fd::AsFd) {
    if let Err(e) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE)) {
        tracing::debug!(error = %e, "Could not widen the tool's pipe.");
    }
}

#[async_trait]
impl ToolRunner for ProcessRunner {
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn spawn_reader(&self, spec: &CommandSpec) -> Result<RunningTool> {
        let mut c = self.command(spec)?;
        c.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = c
            .spawn()
            .map_err(|e| BackupError::io(format!("starting {}", spec.program.display()), e))?;
        let pid = child.id();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BackupError::Internal("no stdout pipe".into()))?;
        widen_pipe(&stdout);
        let killer = ToolKiller::new();
        Ok(RunningTool {
            stdout: Box::pin(stdout),
            done: supervise(child, &spec.program, killer.clone()),
            killer,
            pid,
        })
    }

    async fn spawn_writer(&self, spec: &CommandSpec) -> Result<RunningSink> {
        let mut c = self.command(spec)?;
        c.stdin(Stdio::piped()).stdout(Stdio::null());
        let mut child = c
            .spawn()
            .map_err(|e| BackupError::io(format!("starting {}", spec.program.display()), e))?;
        let pid = child.id();
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| BackupError::Internal("no stdin pipe".into()))?;
        widen_pipe(&stdin);
        let killer = ToolKiller::new();
        Ok(RunningSink {
            stdin: Box::pin(stdin),
            done: supervise(child, &spec.program, killer.clone()),
            killer,
            pid,
        })
    }

    async fn run(&self, spec: &CommandSpec) -> Result<ToolExit> {
        let mut c = self.command(spec)?;
        c.stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null());
        let mut child = c
            .spawn()
            .map_err(|e| BackupError::io(format!("running {}", spec.program.display()), e))?;
        if let (Some(mut w), Some(bytes)) = (child.stdin.take(), spec.stdin.clone()) {
            tokio::spawn(async move {
                // A tool that exits without reading its stdin says so through its exit.
                let _ = w.write_all(&bytes).await;
                let _ = w.shutdown().await;
            });
        }
        let killer = ToolKiller::new();
        let done = supervise(child, &spec.program, killer.clone());
        match spec.timeout {
            Some(t) => match tokio::time::timeout(t, done).await {
                Ok(r) => r,
                Err(_) => {
                    killer.kill();
                    Err(BackupError::Tool {
                        program: spec.program.display().to_string(),
                        exit: format!("killed after {t:?}"),
                        stderr_tail: String::new(),
                    })
                }
            },
            None => done.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn reader_gets_stdout_exit_and_stderr_tail() {
        let r = ProcessRunner::new();
        let spec = CommandSpec::new("/bin/sh", ["-c", "echo hello; echo oops >&2; exit 3"]);
        let mut t = r.spawn_reader(&spec).await.unwrap();
        let mut out = String::new();
        t.stdout.read_to_string(&mut out).await.unwrap();
        let exit = t.done.await.unwrap();
        assert_eq!(out, "hello\n");
        assert_eq!(exit.code, Some(3));
        assert_eq!(exit.stderr_text(), "oops");
        assert!(exit.to_error().to_string().contains("exit code 3"));
    }

    #[tokio::test]
    async fn environment_is_cleared_and_kill_works() {
        let r = ProcessRunner::new();
        let spec = CommandSpec::new("/usr/bin/env", Vec::<String>::new());
        let mut t = r.spawn_reader(&spec).await.unwrap();
        let mut out = String::new();
        t.stdout.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "");
        t.done.await.unwrap();

        let spec = CommandSpec::new("/bin/sleep", ["30"]);
        let t = r.spawn_reader(&spec).await.unwrap();
        t.killer.kill();
        let exit = t.done.await.unwrap();
        assert_eq!(exit.signal, Some(9));
        assert!(!exit.success());
    }

    #[tokio::test]
    async fn writer_feeds_stdin_and_relative_programs_are_refused() {
        let r = ProcessRunner::new();
        let spec = CommandSpec::new("/bin/sh", ["-c", "test \"$(cat)\" = abc"]);
        let mut s = r.spawn_writer(&spec).await.unwrap();
        s.stdin.write_all(b"abc").await.unwrap();
        s.stdin.shutdown().await.unwrap();
        drop(s.stdin);
        assert!(s.done.await.unwrap().success());
        assert!(
            r.spawn_reader(&CommandSpec::new("sh", ["-c", "true"]))
                .await
                .is_err()
        );
    }
}

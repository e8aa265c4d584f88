//! Launching the built `guest-agent` binary: the configuration is written as TOML, stderr
//! (the agent's log) goes to a file that is printed when a test fails, and dropping an
//! [`Agent`] SIGTERMs it (then SIGKILLs it if it does not exit).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::TestEnv;
use crate::client::RpcClient;

/// Upper bound for an agent to answer `/healthz` after spawn, or to exit after a signal.
/// A guard against hanging tests, not a speed expectation.
pub const START_BOUND: Duration = Duration::from_secs(60);

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Keeps the caller's environment from changing the agent's configuration: drops
/// `RUST_LOG` and every `GUEST_AGENT__*` override.
fn hermetic(cmd: &mut Command) {
    cmd.env_remove("RUST_LOG");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("GUEST_AGENT__") {
            cmd.env_remove(name);
        }
    }
}

/// Path of the built agent binary: `$CARGO_TARGET_DIR/debug/guest-agent` or
/// `<workspace>/target/debug/guest-agent`. Panics if it has not been built.
pub fn agent_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_relative() {
                crate::workspace_root().join(p)
            } else {
                p
            }
        })
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    let bin = target.join("debug").join("guest-agent");
    assert!(
        bin.is_file(),
        "the agent binary {} does not exist; build it: cargo build -p guest-agent",
        bin.display()
    );
    bin
}

/// Writes `config` (JSON, converted to TOML) to a new file under the environment's
/// configuration directory and returns its path.
pub fn write_config(env: &TestEnv, config: &Value) -> PathBuf {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let path = env.conf_dir.join(format!("guest-agent-{n}.toml"));
    let toml_value = toml::Value::try_from(config).expect("config JSON converts to TOML");
    let text = toml::to_string_pretty(&toml_value).expect("serialize TOML");
    fs::write(&path, text).expect("write config");
    path
}

/// A running agent process.
#[derive(Debug)]
pub struct Agent {
    child: Option<Child>,
    /// The configuration file it was started with.
    pub config_path: PathBuf,
    /// File receiving its stderr (the log).
    pub stderr_path: PathBuf,
    grace: Duration,
    status: Option<ExitStatus>,
}

impl Agent {
    /// Spawns `guest-agent run --config <written config>` without waiting for it.
    pub fn spawn(env: &TestEnv, config: &Value) -> Self {
        Self::spawn_bin(&agent_binary(), env, config)
    }

    /// Like [`Agent::spawn`] with an explicit binary (the benchmark runs the release build).
    pub fn spawn_bin(bin: &Path, env: &TestEnv, config: &Value) -> Self {
        let config_path = write_config(env, config);
        let stderr_path = config_path.with_extension("stderr.log");
        let stderr = fs::File::create(&stderr_path).expect("create stderr file");
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("dup stderr file"))
            .stderr(stderr);
        hermetic(&mut cmd);
        let child = cmd.spawn().expect("spawn guest-agent");
        let grace = config
            .pointer("/agent/shutdown_grace_secs")
            .and_then(Value::as_u64)
            .map_or(Duration::from_secs(30), Duration::from_secs);
        Self {
            child: Some(child),
            config_path,
            stderr_path,
            grace,
            status: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> Pid {
        let child = self.child.as_ref().expect("agent child");
        Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"))
    }

    /// Everything the agent wrote to stderr/stdout so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The exit status if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(child) = self.child.as_mut()
        {
            self.status = child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Polls `GET /healthz` with `client` until it answers 200; panics (with the log) if the
    /// process exits first or [`START_BOUND`] passes.
    pub async fn wait_healthz(&mut self, client: &RpcClient) {
        let deadline = Instant::now() + START_BOUND;
        loop {
            if let Some(st) = self.try_status() {
                panic!(
                    "the agent exited ({st}) before answering /healthz; its log:\n{}",
                    self.stderr()
                );
            }
            if let Ok(r) = client.try_get("/healthz").await
                && r.status == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not answer /healthz on {}; its log:\n{}",
                client.base(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `sig` to the agent.
    pub fn signal(&self, sig: Signal) {
        if self.status.is_none() {
            kill(self.pid(), sig).unwrap_or_else(|e| panic!("kill -{sig} agent: {e}"));
        }
    }

    /// Waits (asynchronously) until the process exits, at most `bound`; panics with the log
    /// if it is still running then.
    pub async fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(st) = self.try_status() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit within {bound:?}; its log:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits for the exit (bounded by the grace period plus a margin).
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.wait_exit(self.grace + START_BOUND).await
    }

    fn stop_blocking(&mut self) {
        if self.try_status().is_some() || self.child.is_none() {
            return;
        }
        let _ = kill(self.pid(), Signal::SIGTERM);
        let deadline = Instant::now() + self.grace + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.try_status().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("the agent ignored SIGTERM; killing it");
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            self.status = child.wait().ok();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop_blocking();
        if std::thread::panicking() {
            eprintln!(
                "--- agent log {} ---\n{}\n--- end of agent log ---",
                self.stderr_path.display(),
                self.stderr()
            );
        }
    }
}

/// Runs the agent binary with `args` to completion (stdin closed), bounded by
/// [`START_BOUND`]; panics if it does not exit.
pub fn run_to_exit(args: &[&str]) -> Output {
    run_bin_to_exit(&agent_binary(), args)
}

/// Runs `bin` with `args` to completion, bounded by [`START_BOUND`] (the process is killed
/// and the test fails past it).
pub fn run_bin_to_exit(bin: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    hermetic(&mut cmd);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(START_BOUND) {
        Ok(out) => out.expect("collect output"),
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            let out = rx.recv().expect("waiter thread").expect("collect output");
            panic!(
                "{} {args:?} did not exit within {START_BOUND:?}; stderr:\n{}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

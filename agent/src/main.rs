//! The `guest-agent` binary: parse the command line, load and validate configuration, then
//! run the agent (or a one-off command). `anyhow` lives only here.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use guest_agent::app::App;
use guest_agent::cli::{Cli, Command, ConfigArgs};
use guest_agent::config::{Config, ConfigSource, ENV_PREFIX};
use guest_agent::transport::http::{ClientTls, HttpClient};
use tokio_util::sync::CancellationToken;

/// Exit code for configuration errors (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

fn load_config(args: &ConfigArgs) -> Result<Config, guest_agent::config::ConfigError> {
    let mut sources = Vec::new();
    if let Some(p) = &args.config {
        sources.push(ConfigSource::Toml(p.clone()));
    }
    if let Some(d) = &args.trove_config_dir {
        sources.push(ConfigSource::TroveDir(d.clone()));
    }
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    sources.push(ConfigSource::Env(env));
    let config = Config::load(&sources)?;
    config.validate()?;
    Ok(config)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    // Two workers match the machines the agent is sized for; the agent is I/O bound.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Heap allocations from 128 KiB up get their own mappings, returned to the OS when freed.
const MMAP_THRESHOLD: i32 = 128 << 10;

/// Fixes glibc's mmap threshold. Left adaptive, glibc raises it to the size of any large block
/// freed, after which zstd's megabyte job buffers (allocated anew by every backup, from
/// whichever threads run it) stay cached in per-thread arenas: the agent's resident set grew by
/// about 4 MiB with each backup, by 28 MiB over seven. A fixed threshold keeps every backup's
/// memory at the pipeline budget and gives it back afterwards. Only this process is affected;
/// the datastore's tools keep their own allocator settings.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn fix_malloc_thresholds() {
    // SAFETY: mallopt only changes allocator parameters; it is thread-safe and runs here
    // before any other thread exists. It returns 0 on failure, which leaves glibc's defaults.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    if ok == 0 {
        eprintln!("guest-agent: could not fix the allocator's mmap threshold");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fix_malloc_thresholds() {}

fn main() -> ExitCode {
    fix_malloc_thresholds();
    // Must run before any TLS configuration is built: only ring is compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig(args) => match load_config(&args) {
            Ok(c) => {
                println!("{}", c.redacted());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("guest-agent: {e}");
                ExitCode::from(EX_USAGE)
            }
        },
        Command::Run(args) => {
            let config = match load_config(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("guest-agent: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            guest_agent::telemetry::init_logging(&config.log);
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("guest-agent: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(run(config))
        }
        Command::Call {
            method,
            args,
            url,
            ca,
            cert,
            key,
            timeout,
        } => {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("guest-agent: cannot start the async runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            rt.block_on(call(method, args, url, ca.zip(cert).zip(key), timeout))
        }
        Command::GenBackupKey { path } => match gen_backup_key(&path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("guest-agent: {}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
    }
}

/// Creates `path` (never replacing a file: losing a key loses its backups) with a new key.
fn gen_backup_key(path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = guest_agent::backup::generate_key_text()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(())
}

async fn run(config: Config) -> ExitCode {
    let shutdown = CancellationToken::new();
    if let Err(e) = guest_agent::shutdown::install(shutdown.clone()) {
        eprintln!("guest-agent: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "Startup failed.");
            eprintln!("guest-agent: {e}");
            return if e.is_usage() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::FAILURE
            };
        }
    };
    match app.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guest-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

type TlsPaths = Option<((std::path::PathBuf, std::path::PathBuf), std::path::PathBuf)>;

async fn call(method: String, args: String, url: String, tls: TlsPaths, timeout: u64) -> ExitCode {
    let args: serde_json::Value = match serde_json::from_str(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("guest-agent: --args is not JSON: {e}");
            return ExitCode::from(2);
        }
    };
    let tls = tls.map(|((ca, cert), key)| ClientTls { ca, cert, key });
    let client = match HttpClient::new(&url, tls, Duration::from_secs(timeout)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("guest-agent: {e}");
            return ExitCode::from(2);
        }
    };
    match client.call(&method, args).await {
        Ok(outcome) => {
            println!("{}", outcome.body);
            if (200..300).contains(&outcome.status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("guest-agent: {e}");
            ExitCode::from(2)
        }
    }
}

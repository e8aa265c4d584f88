//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// A hardened database guest agent.
#[derive(Debug, Parser)]
#[command(name = "guest-agent", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the configuration comes from.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Trove's guest configuration directory (`guest_info.conf`, `trove-guestagent.conf`),
    /// read after the TOML file.
    #[arg(long, value_name = "DIR")]
    pub trove_config_dir: Option<PathBuf>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent.
    Run(ConfigArgs),
    /// Validate the configuration and print the effective values, secrets redacted.
    CheckConfig(ConfigArgs),
    /// Call one operation on a running agent over HTTP(S) and print the JSON reply.
    Call {
        /// Method name (`rpc_ping`, `list_databases` ...).
        method: String,
        /// Keyword arguments as a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
        /// Base URL of the agent.
        #[arg(long, default_value = "http://127.0.0.1:8780")]
        url: String,
        /// CA bundle that signed the agent's certificate (https).
        #[arg(long, requires_all = ["cert", "key"])]
        ca: Option<PathBuf>,
        /// Client certificate (https).
        #[arg(long, requires_all = ["ca", "key"])]
        cert: Option<PathBuf>,
        /// Client key (https).
        #[arg(long, requires_all = ["ca", "cert"])]
        key: Option<PathBuf>,
        /// Seconds to wait for the reply.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Write a new instance backup key (base64 of 32 random bytes) to a new file, mode 0600,
    /// for `backup.key_file`. An existing file is never overwritten.
    GenBackupKey {
        /// The file to create.
        path: PathBuf,
    },
}

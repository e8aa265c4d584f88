//! The strategies: PostgreSQL physical ([`PgBasebackup`]) and logical ([`PgDump`]), MariaDB
//! physical ([`Mariabackup`], full and incremental) and logical ([`MariadbDump`]).
//!
//! Each builds absolute-path argv commands with an explicit environment (`LC_ALL=C` so stderr
//! is parseable English) and judges its tool's exit and stderr.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{BackupError, Result};

pub mod mariabackup;
pub mod mariadb_dump;
pub mod pg_basebackup;
pub mod pg_dump;

pub use mariabackup::Mariabackup;
pub use mariadb_dump::MariadbDump;
pub use pg_basebackup::PgBasebackup;
pub use pg_dump::PgDump;

/// The environment every tool gets.
fn base_env() -> Vec<(OsString, OsString)> {
    vec![
        ("LC_ALL".into(), "C".into()),
        ("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()),
    ]
}

/// Makes `dir` an empty directory (creating it) owned by `run_as` with mode 0700. A directory
/// that has entries is refused, so a restore never mixes with existing data.
fn prepare_empty_dir(dir: &Path, run_as: Option<&str>) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| BackupError::io(format!("creating {}", dir.display()), e))?;
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| BackupError::io(format!("reading {}", dir.display()), e))?;
    if entries.next().is_some() {
        return Err(BackupError::invalid(
            "target_dir",
            format!("{} is not empty", dir.display()),
        ));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| BackupError::io(format!("chmod {}", dir.display()), e))?;
    chown_to(dir, run_as)
}

/// Hands `path` to `user` (when the agent is root and a user is named).
fn chown_to(path: &Path, user: Option<&str>) -> Result<()> {
    let Some(user) = user else { return Ok(()) };
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let u = nix::unistd::User::from_name(user)
        .map_err(|e| BackupError::Internal(format!("looking up '{user}': {e}")))?
        .ok_or_else(|| {
            BackupError::invalid("run_as", format!("OS user '{user}' does not exist"))
        })?;
    nix::unistd::chown(path, Some(u.uid), Some(u.gid))
        .map_err(|e| BackupError::io(format!("chown {}", path.display()), e.into()))
}

/// The text after `marker` on the last line containing it, up to `end`.
fn find_after<'a>(text: &'a str, marker: &str, end: char) -> Option<&'a str> {
    text.lines()
        .rev()
        .find_map(|l| l.split_once(marker).map(|(_, rest)| rest))
        .map(|rest| rest.split(end).next().unwrap_or(rest).trim())
}

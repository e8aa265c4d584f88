//! Support code for driver authors: safe handling of a datastore's files on the local host.
//!
//! When the agent runs as root, the server runs as a configured OS user ([`Owner`]), who owns
//! the data and run directories. Those directories must not let that user redirect the
//! agent's writes or reads elsewhere, so files are written through a temporary file opened
//! with `O_NOFOLLOW` and `create_new`, with mode and owner set on the open descriptor, never
//! through a (replaceable) path; logs are read with `O_NOFOLLOW` as well.
//!
//! Also here: the directory helpers ([`ensure_dir`], [`chown_dir`]), the early check that the
//! OS user can reach its directories ([`check_traversable`]), the refusal of a non-empty data
//! directory ([`check_empty_data_dir`]), the tail of a server log for error messages
//! ([`log_tail`]), a liveness probe for a process id ([`pid_alive`]) and the disk use of a
//! file system ([`disk_usage`]).

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User};

use crate::health::DiskUsage;
use crate::{Error, Result};

/// How much of a server log's end [`log_tail`] reads.
pub const LOG_TAIL_BYTES: u64 = 2048;
/// How many (non-blank) lines [`log_tail`] quotes.
const LOG_TAIL_LINES: usize = 6;

/// The OS account files are handed to when the agent runs as root.
#[derive(Debug, Clone)]
pub struct Owner {
    /// The account name.
    pub name: String,
    /// Its user id.
    pub uid: Uid,
    /// Its primary group id.
    pub gid: Gid,
}

impl Owner {
    /// Looks up the OS account `name`; a missing account is an invalid state of `prepare`.
    pub fn lookup(name: &str) -> Result<Self> {
        match User::from_name(name) {
            Ok(Some(u)) => Ok(Self {
                name: name.to_owned(),
                uid: u.uid,
                gid: u.gid,
            }),
            Ok(None) => Err(Error::InvalidState {
                operation: "prepare",
                reason: format!("OS user '{name}' does not exist"),
            }),
            Err(e) => Err(Error::Internal(format!("looking up OS user '{name}': {e}"))),
        }
    }
}

/// Removes a file when dropped, whatever path the code took.
#[derive(Debug)]
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.0.display(), error = %e, "Could not remove a temporary file.");
        }
    }
}

/// Maps an I/O error to [`Error::io`] with the context "`what` `path`".
pub fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let context = format!("{what} {}", path.display());
    move |e| Error::io(context, e)
}

/// Hands a directory to `owner`. Only for directories whose parents the agent controls; files
/// inside the OS user's directories go through [`write_file`], which works on descriptors.
pub fn chown_dir(path: &Path, owner: Option<&Owner>) -> Result<()> {
    if let Some(o) = owner {
        nix::unistd::chown(path, Some(o.uid), Some(o.gid)).map_err(|e| {
            Error::io(
                format!("changing the owner of {} to {}", path.display(), o.name),
                e.into(),
            )
        })?;
    }
    Ok(())
}

/// Creates `path` (and missing parents) and sets its mode and owner.
pub fn ensure_dir(path: &Path, mode: u32, owner: Option<&Owner>) -> Result<()> {
    fs::create_dir_all(path).map_err(io_err("creating", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", path))?;
    chown_dir(path, owner)
}

/// Opening flags that refuse a symbolic link in the last path component: the directories
/// written to as root may belong to the server's OS user, who must not be able to redirect
/// the agent's writes (or reads) elsewhere.
pub fn no_follow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

/// Writes `contents` to `path` atomically, with `mode` and owner: a temporary file beside it,
/// fsync, rename, and an fsync of the directory so the rename survives a crash.
/// Mode and owner are set on the open descriptor, never through the (replaceable) path, and a
/// symbolic link planted at `path` is replaced, never written through.
pub fn write_file(path: &Path, contents: &[u8], mode: u32, owner: Option<&Owner>) -> Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // A leftover from an interrupted write; `create_new` below refuses anything still there.
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(no_follow())
        .open(&tmp)
        .map_err(io_err("creating", &tmp))?;
    let written = f
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", &tmp))
        .and_then(|()| match owner {
            Some(o) => std::os::unix::fs::fchown(&f, Some(o.uid.as_raw()), Some(o.gid.as_raw()))
                .map_err(|e| {
                    Error::io(
                        format!("changing the owner of {} to {}", tmp.display(), o.name),
                        e,
                    )
                }),
            None => Ok(()),
        })
        .and_then(|()| {
            f.write_all(contents)
                .and_then(|()| f.sync_all())
                .map_err(io_err("writing", &tmp))
        })
        .and_then(|()| fs::rename(&tmp, path).map_err(io_err("renaming into", path)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
        return written;
    }
    if let Some(dir) = path.parent()
        && let Ok(d) = fs::File::open(dir)
    {
        d.sync_all().map_err(io_err("syncing", dir))?;
    }
    Ok(())
}

/// Whether `owner` may search (traverse) the directory with metadata `meta`, given the
/// groups `owner` belongs to.
pub fn can_traverse(meta: &fs::Metadata, owner: &Owner, groups: &[Gid]) -> bool {
    let mode = meta.mode();
    if meta.uid() == owner.uid.as_raw() {
        return mode & 0o100 != 0;
    }
    if groups.iter().any(|g| g.as_raw() == meta.gid()) {
        return mode & 0o010 != 0;
    }
    mode & 0o001 != 0
}

/// Refuses early, with a clear message, when `owner` cannot reach `dir` through its parents
/// (a 0700 parent would otherwise surface as a cryptic initialisation or server failure).
pub fn check_traversable(dir: &Path, owner: &Owner) -> Result<()> {
    let name = CString::new(owner.name.as_str())
        .map_err(|_| Error::invalid("datastore.os_user", "contains NUL"))?;
    let groups = nix::unistd::getgrouplist(&name, owner.gid).unwrap_or_else(|_| vec![owner.gid]);
    for ancestor in dir.ancestors().skip(1) {
        let meta = fs::metadata(ancestor).map_err(io_err("inspecting", ancestor))?;
        if !can_traverse(&meta, owner, &groups) {
            return Err(Error::InvalidState {
                operation: "prepare",
                reason: format!(
                    "OS user '{}' cannot traverse {} (mode {:o}) to reach {}",
                    owner.name,
                    ancestor.display(),
                    meta.mode() & 0o7777,
                    dir.display()
                ),
            });
        }
    }
    Ok(())
}

/// Refuses a data directory `dir` that holds anything; a missing one is fine (it is created).
pub fn check_empty_data_dir(dir: &Path) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::InvalidState {
                    operation: "prepare",
                    reason: format!("the data directory {} is not empty", dir.display()),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("reading {}", dir.display()), e)),
    }
}

/// The last lines of the server log, for an error message. A log that is a symbolic link is
/// not read.
pub fn log_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(no_follow())
            .open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join(" | ")
        }
        Err(e) => format!("(no server log: {e})"),
    }
}

/// Whether `pid` names a live, non-zombie process.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Disk use of the file system holding `path`.
// `c_ulong` and `fsblkcnt_t` are narrower than `u64` on some targets.
#[allow(clippy::useless_conversion)]
pub fn disk_usage(path: &Path) -> Option<DiskUsage> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = u64::from(st.fragment_size());
    let blocks = u64::from(st.blocks());
    let free = u64::from(st.blocks_free());
    let avail = u64::from(st.blocks_available());
    Some(DiskUsage {
        total_bytes: blocks.saturating_mul(frag),
        used_bytes: blocks.saturating_sub(free).saturating_mul(frag),
        available_bytes: avail.saturating_mul(frag),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_rules() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let owner = Owner {
            name: "x".into(),
            uid: Uid::from_raw(4242),
            gid: Gid::from_raw(4242),
        };
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(can_traverse(
            &fs::metadata(p).unwrap(),
            &owner,
            &[owner.gid]
        ));
        fs::set_permissions(p, fs::Permissions::from_mode(0o750)).unwrap();
        assert!(!can_traverse(
            &fs::metadata(p).unwrap(),
            &owner,
            &[owner.gid]
        ));
        let meta = fs::metadata(p).unwrap();
        let group_member = [Gid::from_raw(meta.gid())];
        assert!(can_traverse(&meta, &owner, &group_member));
    }

    #[test]
    fn files_are_written_atomically_with_mode() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        write_file(&f, b"one", 0o600, None).unwrap();
        write_file(&f, b"two", 0o600, None).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn symlinks_are_replaced_or_refused_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"untouched").unwrap();
        // A link planted where a managed file goes is replaced, not written through.
        let managed = dir.path().join("pg_hba.conf");
        std::os::unix::fs::symlink(&victim, &managed).unwrap();
        write_file(&managed, b"managed", 0o600, None).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
        assert_eq!(fs::read(&managed).unwrap(), b"managed");
        assert!(!fs::symlink_metadata(&managed).unwrap().is_symlink());
        // A log that is a link is not quoted.
        let log = dir.path().join("postgres.log");
        std::os::unix::fs::symlink(&victim, &log).unwrap();
        assert!(!log_tail(&log).contains("untouched"));
    }

    #[test]
    fn log_tail_quotes_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("log");
        let text: String = (0..20).map(|i| format!("line {i}\n")).collect();
        fs::write(&f, text).unwrap();
        let tail = log_tail(&f);
        assert!(
            tail.starts_with("line 14") && tail.ends_with("line 19"),
            "{tail}"
        );
        assert!(log_tail(&dir.path().join("none")).contains("no server log"));
    }

    #[test]
    fn empty_or_missing_data_dirs_only() {
        let dir = tempfile::tempdir().unwrap();
        check_empty_data_dir(&dir.path().join("missing")).unwrap();
        check_empty_data_dir(dir.path()).unwrap();
        fs::write(dir.path().join("x"), b"").unwrap();
        let e = check_empty_data_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is not empty"), "{e}");
    }

    #[test]
    fn disk_usage_of_a_temp_dir() {
        let dir = tempfile::tempdir().unwrap();
        let d = disk_usage(dir.path()).unwrap();
        assert!(d.total_bytes > 0 && d.used_bytes <= d.total_bytes);
        assert!(disk_usage(Path::new("/nonexistent/path")).is_none());
    }
}

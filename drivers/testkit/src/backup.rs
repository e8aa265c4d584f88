//! Conformance functions for backup hooks: what the agent's backup tools get from a driver
//! must be usable as it is (absolute paths, a private credentials file, scratch space outside
//! the data directory), and the hooks around a backup must run on a live server.

use std::os::unix::fs::PermissionsExt;

use crate::Harness;
use crate::check::{ok, within};

/// `tool_access` describes a reachable server: absolute paths, the driver's data directory,
/// an existing socket, a credentials file only its owner can read, scratch space outside the
/// data directory; `before_backup` and `after_backup` succeed on the running server.
pub async fn tool_access_is_usable(h: &Harness) {
    let Some(b) = h.driver.backup() else {
        return;
    };
    let ctx = h.ctx("tool_access");
    let a = ok(
        "tool_access",
        within("tool_access", b.tool_access(&ctx)).await,
    );
    assert_eq!(
        a.data_dir,
        h.driver.info().data_dir,
        "tool_access names the driver's data directory"
    );
    for (what, p) in [
        ("socket", &a.socket),
        ("data_dir", &a.data_dir),
        ("tmp_dir", &a.tmp_dir),
    ] {
        assert!(
            p.is_absolute(),
            "tool_access.{what} must be absolute: {}",
            p.display()
        );
        assert!(p.exists(), "tool_access.{what} must exist: {}", p.display());
    }
    assert!(
        !a.tmp_dir.starts_with(&a.data_dir),
        "tool_access.tmp_dir must be outside the data directory (a backup would carry it)"
    );
    assert!(!a.user.is_empty(), "tool_access names an account");
    assert!(a.port != 0, "tool_access names the server's port");
    for d in &a.bin_dirs {
        assert!(
            d.is_absolute(),
            "tool_access.bin_dirs must be absolute: {}",
            d.display()
        );
    }
    if let Some(f) = &a.credentials_file {
        let meta = std::fs::metadata(f)
            .unwrap_or_else(|e| panic!("credentials file {}: {e}", f.display()));
        assert_eq!(
            meta.permissions().mode() & 0o077,
            0,
            "the credentials file {} must be readable by its owner only",
            f.display()
        );
        assert!(
            !f.starts_with(&a.data_dir),
            "the credentials file must not be inside the data directory (backups would carry it)"
        );
    }
    let meta = ok(
        "before_backup",
        within("before_backup", b.before_backup(&ctx)).await,
    );
    assert!(
        meta.keys().all(|k| !k.is_empty()),
        "before_backup metadata keys are names"
    );
    ok(
        "after_backup",
        within("after_backup", b.after_backup(&ctx)).await,
    );
}

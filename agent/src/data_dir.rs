//! Where the agent keeps its state: `credentials.json` and the spool database.
//!
//! The directory holds a device credential and a record of someone's work, so it is created
//! readable by its owner only (0700 on unix).

use std::io;
use std::path::{Path, PathBuf};

/// File name of the spool database inside the data directory.
pub const SPOOL_FILE: &str = "spool.sqlite3";

/// The data directory could not be determined.
#[derive(Debug, thiserror::Error)]
#[error("cannot determine a data directory for this user (no home directory?); pass --data-dir or set BACKLIGHT_AGENT_DIR")]
pub struct NoDataDir;

/// The directory given on the command line, or the platform's per-user local data directory
/// (`~/.local/share/backlight-agent` on Linux).
pub fn resolve(explicit: Option<PathBuf>) -> Result<PathBuf, NoDataDir> {
    if let Some(dir) = explicit {
        return Ok(dir);
    }
    directories::ProjectDirs::from("", "", "backlight-agent")
        .map(|dirs| dirs.data_local_dir().to_path_buf())
        .ok_or(NoDataDir)
}

/// Creates the directory (and its parents) if needed. A directory created here is private to
/// its owner; an existing one is left as the administrator set it up.
pub fn ensure(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Path of the spool database in `dir`.
pub fn spool_path(dir: &Path) -> PathBuf {
    dir.join(SPOOL_FILE)
}

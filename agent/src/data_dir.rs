//! Where the agent keeps its state: `credentials.json` and the spool database.
//!
//! The directory holds a device credential and a record of someone's work, so it is created
//! readable by its owner only (0700 on unix; on Windows a protected DACL granting only the
//! current user, inherited by every file created inside).

use std::io;
use std::path::{Path, PathBuf};

/// File name of the spool database inside the data directory.
pub const SPOOL_FILE: &str = "spool.sqlite3";
/// Held locked by the one `run` using the data directory.
pub const RUN_LOCK_FILE: &str = "run.lock";
/// Where `--log-to-file` writes, inside the data directory.
pub const LOG_DIR: &str = "logs";

/// The data directory could not be determined.
#[derive(Debug, thiserror::Error)]
#[error("cannot determine a data directory for this user (no home directory?); pass --data-dir or set BACKLIGHT_AGENT_DIR")]
pub struct NoDataDir;

/// The directory given on the command line, or the platform's per-user local data directory
/// (`~/.local/share/backlight-agent` on Linux, `%LOCALAPPDATA%\Backlight\agent` on Windows:
/// local, not roaming, because a spool must not follow the user to another machine).
pub fn resolve(explicit: Option<PathBuf>) -> Result<PathBuf, NoDataDir> {
    if let Some(dir) = explicit {
        return Ok(dir);
    }
    #[cfg(windows)]
    {
        directories::BaseDirs::new()
            .map(|dirs| dirs.data_local_dir().join("Backlight").join("agent"))
            .ok_or(NoDataDir)
    }
    #[cfg(not(windows))]
    {
        directories::ProjectDirs::from("", "", "backlight-agent")
            .map(|dirs| dirs.data_local_dir().to_path_buf())
            .ok_or(NoDataDir)
    }
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
    builder.create(dir)?;
    #[cfg(windows)]
    {
        use crate::platform::windows::acl::{restrict_to_current_user, Target};
        restrict_to_current_user(dir, Target::Directory)?;
    }
    Ok(())
}

/// Path of the spool database in `dir`.
pub fn spool_path(dir: &Path) -> PathBuf {
    dir.join(SPOOL_FILE)
}

/// Another `run` holds the data directory.
#[derive(Debug, thiserror::Error)]
pub enum RunLockError {
    #[error("another `backlight-agent run` is already using {dir}")]
    AlreadyRunning { dir: PathBuf },
    #[error("cannot lock {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Locks `dir` for one `run` until the returned file is dropped (or the process ends, however
/// it ends). Two agents on one data directory would record every span twice — on Windows both
/// the MSI's machine-wide and a user's own autostart entry may start one.
pub fn lock_for_run(dir: &Path) -> Result<std::fs::File, RunLockError> {
    let path = dir.join(RUN_LOCK_FILE);
    let io_error = |source| RunLockError::Io {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(RunLockError::AlreadyRunning {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_run_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_for_run(dir.path()).unwrap();
        assert!(matches!(
            lock_for_run(dir.path()),
            Err(RunLockError::AlreadyRunning { .. })
        ));
        drop(held);
        lock_for_run(dir.path()).unwrap();
    }
}

//! The device's enrollment, stored as `credentials.json` in the data directory.
//!
//! The file is written atomically (temporary file, fsync, rename, fsync of the directory) so a
//! crash during enrollment leaves either the old enrollment or the new one, never half a file,
//! and it is created with mode 0600 (on Windows: a protected DACL for the current user only,
//! set before the secret is written) because the credential lets anyone upload as this device.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// File name of the enrollment inside the data directory.
pub const FILE_NAME: &str = "credentials.json";

/// Largest credentials file we read: a real one is a few hundred bytes, so anything bigger is
/// not ours and must not be loaded into memory whole.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// What enrollment gave this device.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Base URL of the server, e.g. `https://backlight.example.com`.
    pub server_url: String,
    pub device_id: Uuid,
    pub tenant_id: String,
    /// Sent as `Authorization: Bearer …` on every upload. Never logged.
    pub device_credential: String,
    /// Plain `http://` to a server that is not on this computer was chosen at enrollment
    /// (`enroll --insecure-http`, labs only). Absent, and so false, in every other file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_http: bool,
}

impl Credentials {
    /// Whether plain HTTP may be used to reach the server.
    pub fn plain_http(&self) -> crate::http::PlainHttp {
        if self.insecure_http {
            crate::http::PlainHttp::Anywhere
        } else {
            crate::http::PlainHttp::LoopbackOnly
        }
    }
}

// The credential must never reach a log line, even at debug level.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("server_url", &self.server_url)
            .field("device_id", &self.device_id)
            .field("tenant_id", &self.tenant_id)
            .field("device_credential", &"<redacted>")
            .field("insecure_http", &self.insecure_http)
            .finish()
    }
}

/// Reading or writing the credentials file failed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "{path} is larger than {MAX_FILE_BYTES} bytes; it is not a Backlight credentials file"
    )]
    TooLarge { path: PathBuf },
    #[error("{source}")]
    NotPrivate { path: PathBuf, source: io::Error },
    #[error("{path} is damaged ({source}); enroll again with --force")]
    Malformed {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Path of the credentials file in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// The stored enrollment, or `None` when this device was never enrolled.
pub fn load(dir: &Path) -> Result<Option<Credentials>, CredentialsError> {
    let path = path(dir);
    let file = match fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CredentialsError::Read { path, source }),
    };
    crate::private_file::check(&path, &file).map_err(|source| CredentialsError::NotPrivate {
        path: path.clone(),
        source,
    })?;
    let mut text = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|source| CredentialsError::Read {
            path: path.clone(),
            source,
        })?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(CredentialsError::TooLarge { path });
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| CredentialsError::Malformed { path, source })
}

/// Stores the enrollment atomically, replacing any previous one.
pub fn store(dir: &Path, credentials: &Credentials) -> Result<(), CredentialsError> {
    let target = path(dir);
    let temporary = dir.join(format!("{FILE_NAME}.tmp"));
    let write_error = |source| CredentialsError::Write {
        path: target.clone(),
        source,
    };
    let mut json = serde_json::to_vec_pretty(credentials).map_err(|e| write_error(e.into()))?;
    json.push(b'\n');

    // A leftover from a crash may have other permissions; start from nothing.
    match fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_error(e)),
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary).map_err(write_error)?;
    #[cfg(windows)]
    {
        use crate::platform::windows::acl::{restrict_to_current_user, Target};
        restrict_to_current_user(&temporary, Target::File).map_err(write_error)?;
    }
    file.write_all(&json).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);
    fs::rename(&temporary, &target).map_err(write_error)?;
    // Make the rename itself durable; directories cannot be opened for syncing on Windows.
    #[cfg(unix)]
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Credentials {
        Credentials {
            server_url: "https://backlight.example.com".into(),
            device_id: Uuid::new_v4(),
            tenant_id: "acme".into(),
            device_credential: format!("bld_1a_{}", "b".repeat(64)),
            insecure_http: false,
        }
    }

    #[test]
    fn round_trips_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let creds = sample();
        store(dir.path(), &creds).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(creds.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(path(dir.path())).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!format!("{creds:?}").contains("bbbb"));
    }

    /// Issue 10: a credentials file others can read may have leaked; one others can write may
    /// point the agent at another server. Neither is trusted.
    #[cfg(unix)]
    #[test]
    fn file_open_to_other_users_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &sample()).unwrap();
        for mode in [0o644, 0o620, 0o606] {
            fs::set_permissions(path(dir.path()), fs::Permissions::from_mode(mode)).unwrap();
            let error = load(dir.path()).unwrap_err().to_string();
            assert!(error.contains("chmod 600"), "{mode:o}: {error}");
        }
        fs::set_permissions(path(dir.path()), fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load(dir.path()).unwrap().is_some());
    }

    #[test]
    fn damaged_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(path(dir.path()), b"{ not json").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path(dir.path()), fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(matches!(
            load(dir.path()),
            Err(CredentialsError::Malformed { .. })
        ));
    }
}

//! Files that hold a secret of this user (the device credential, the local API token) are
//! trusted only when nobody else could have read or replaced them.
//!
//! A secret file others can read may have leaked; one others can write, or that another user
//! owns, may have been planted (a token the planter knows, a server URL of theirs). The check
//! looks at the file already opened (`fstat`), so it cannot be swapped between check and read.
//!
//! Unix: the owner must be the effective user and the mode must give group and others nothing.
//! Windows: the owner must be this user (or SYSTEM or the Administrators group, who can take
//! any file anyway) and the access list may grant nobody else the right to read, change or
//! delete the data or its access list ([`sddl`] judges the descriptor the system renders).

pub mod sddl;

use std::fs::File;
use std::io;
use std::path::Path;

/// Refuses `file` (opened from `path`) unless only this user can read and write it. The error
/// says what is wrong and how to fix it.
#[cfg(unix)]
pub fn check(path: &Path, file: &File) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to user id {}, not to this user ({me}); it may have been planted. \
                 Delete it (the agent creates a new one) or `chown` it to this user and \
                 `chmod 600` it",
                path.display(),
                meta.uid()
            ),
        ));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is open to other users (mode {mode:04o}), so its secret may have leaked or \
                 been replaced. Run `chmod 600 {}` (and ask an admin to revoke and re-enroll \
                 the device if others may have read it)",
                path.display(),
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Refuses `file` (opened from `path`) unless its owner and access list keep it to this user.
/// The error says what is wrong and how to fix it.
#[cfg(windows)]
pub fn check(path: &Path, file: &File) -> io::Result<()> {
    use crate::platform::windows::acl::{current_user_sid, security_descriptor_sddl};
    let sddl = security_descriptor_sddl(file)?;
    sddl::judge(&sddl, &current_user_sid()?).map_err(|problem| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not private to this user: {problem}, so its secret may have leaked or \
                 been replaced. Delete it (the agent creates a new one) or run \
                 `icacls \"{}\" /inheritance:r /grant:r \"%USERNAME%:F\"` and remove the \
                 other entries (and ask an admin to revoke and re-enroll the device if others \
                 may have read it)",
                path.display(),
                path.display()
            ),
        )
    })
}

//! Windows-only pieces outside capture: the data directory's access control, the registry
//! (autostart, the MSI's machine configuration), stop requests from the session, the default
//! browser. Every `unsafe` block is a call into `windows-sys` with buffers owned here.

pub mod acl;
pub mod registry;
pub mod session_end;

use std::ffi::OsStr;
use std::os::windows::ffi::OsStrExt;

use windows_sys::Win32::UI::Shell::ShellExecuteW;
use windows_sys::Win32::UI::WindowsAndMessaging::SW_SHOWNORMAL;

/// `text` as a NUL-terminated UTF-16 string for a `PCWSTR` argument.
pub fn wide(text: impl AsRef<OsStr>) -> Vec<u16> {
    text.as_ref().encode_wide().chain(Some(0)).collect()
}

/// The UTF-16 text before the first NUL (or all of it), lossily decoded.
pub fn from_wide(units: &[u16]) -> String {
    let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
    String::from_utf16_lossy(&units[..end])
}

/// Opens `url` in the user's default browser (`ShellExecuteW` "open"), as Explorer would.
pub fn open_url(url: &str) -> std::io::Result<()> {
    let operation = wide("open");
    let file = wide(url);
    // SAFETY: both strings are NUL-terminated and outlive the call; null window, parameters
    // and directory are allowed.
    let result = unsafe {
        ShellExecuteW(
            std::ptr::null_mut(),
            operation.as_ptr(),
            file.as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            SW_SHOWNORMAL,
        )
    };
    // ShellExecute returns a fake HINSTANCE: values above 32 mean success.
    if result as usize > 32 {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ShellExecuteW failed with code {}",
            result as usize
        )))
    }
}

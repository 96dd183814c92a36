//! The few registry operations the agent needs: string values under one key, read, written and
//! deleted. Always the 64-bit view, so a 64-bit agent and a 64-bit MSI see the same keys.

use std::io;

use windows_sys::Win32::Foundation::{ERROR_FILE_NOT_FOUND, ERROR_SUCCESS, WIN32_ERROR};
use windows_sys::Win32::System::Registry::{
    RegCloseKey, RegCreateKeyExW, RegDeleteValueW, RegGetValueW, RegOpenKeyExW, RegSetValueExW,
    HKEY, HKEY_CURRENT_USER, HKEY_LOCAL_MACHINE, KEY_READ, KEY_SET_VALUE, KEY_WOW64_64KEY,
    REG_OPTION_NON_VOLATILE, REG_SZ, RRF_RT_REG_SZ,
};

use super::{from_wide, wide};

/// Longest string value read: the values the agent reads are URLs, keys and command lines.
const MAX_VALUE_BYTES: u32 = 64 * 1024;

/// The registry hives the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// `HKEY_CURRENT_USER`: the per-user Run key.
    CurrentUser,
    /// `HKEY_LOCAL_MACHINE`: what the MSI and Group Policy write.
    LocalMachine,
}

impl Root {
    fn handle(self) -> HKEY {
        match self {
            Root::CurrentUser => HKEY_CURRENT_USER,
            Root::LocalMachine => HKEY_LOCAL_MACHINE,
        }
    }
}

/// An open registry key, closed on drop.
#[derive(Debug)]
pub struct Key(HKEY);

fn check(status: WIN32_ERROR) -> io::Result<()> {
    if status == ERROR_SUCCESS {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(status as i32))
    }
}

impl Key {
    /// Opens `root\path` for reading (and writing, with `write`); `None` when it does not exist.
    pub fn open(root: Root, path: &str, write: bool) -> io::Result<Option<Key>> {
        let path = wide(path);
        let access = KEY_READ | KEY_WOW64_64KEY | if write { KEY_SET_VALUE } else { 0 };
        let mut key: HKEY = std::ptr::null_mut();
        // SAFETY: `path` is NUL-terminated; writes the key handle, closed by Drop.
        let status = unsafe { RegOpenKeyExW(root.handle(), path.as_ptr(), 0, access, &mut key) };
        if status == ERROR_FILE_NOT_FOUND {
            return Ok(None);
        }
        check(status)?;
        Ok(Some(Key(key)))
    }

    /// Opens `root\path` for writing, creating it if needed.
    pub fn create(root: Root, path: &str) -> io::Result<Key> {
        let path = wide(path);
        let mut key: HKEY = std::ptr::null_mut();
        // SAFETY: `path` is NUL-terminated; default security; writes the handle, closed by Drop.
        let status = unsafe {
            RegCreateKeyExW(
                root.handle(),
                path.as_ptr(),
                0,
                std::ptr::null(),
                REG_OPTION_NON_VOLATILE,
                KEY_READ | KEY_SET_VALUE | KEY_WOW64_64KEY,
                std::ptr::null(),
                &mut key,
                std::ptr::null_mut(),
            )
        };
        check(status)?;
        Ok(Key(key))
    }

    /// The `REG_SZ` value `name`, or `None` when it does not exist.
    pub fn get_string(&self, name: &str) -> io::Result<Option<String>> {
        let name = wide(name);
        let mut bytes = 0u32;
        // SAFETY: a size query: no buffer, writes the size in bytes.
        let status = unsafe {
            RegGetValueW(
                self.0,
                std::ptr::null(),
                name.as_ptr(),
                RRF_RT_REG_SZ,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut bytes,
            )
        };
        if status == ERROR_FILE_NOT_FOUND {
            return Ok(None);
        }
        check(status)?;
        if bytes > MAX_VALUE_BYTES {
            return Err(io::Error::other(format!(
                "the value is {bytes} bytes, more than the {MAX_VALUE_BYTES} read"
            )));
        }
        let mut buffer = vec![0u16; (bytes as usize).div_ceil(2) + 1];
        let mut bytes = (buffer.len() * 2) as u32;
        // SAFETY: `buffer` holds `bytes` bytes; the call writes at most that and updates it.
        let status = unsafe {
            RegGetValueW(
                self.0,
                std::ptr::null(),
                name.as_ptr(),
                RRF_RT_REG_SZ,
                std::ptr::null_mut(),
                buffer.as_mut_ptr().cast(),
                &mut bytes,
            )
        };
        if status == ERROR_FILE_NOT_FOUND {
            return Ok(None);
        }
        check(status)?;
        Ok(Some(from_wide(&buffer)))
    }

    /// Writes the `REG_SZ` value `name`.
    pub fn set_string(&self, name: &str, value: &str) -> io::Result<()> {
        let name = wide(name);
        let data = wide(value);
        let bytes = u32::try_from(data.len() * 2)
            .map_err(|_| io::Error::other("the registry value is too long"))?;
        // SAFETY: `data` holds `bytes` bytes of UTF-16 including the NUL, as REG_SZ wants.
        let status = unsafe {
            RegSetValueExW(
                self.0,
                name.as_ptr(),
                0,
                REG_SZ,
                data.as_ptr().cast(),
                bytes,
            )
        };
        check(status)
    }

    /// Deletes the value `name`; `false` when there was none.
    pub fn delete_value(&self, name: &str) -> io::Result<bool> {
        let name = wide(name);
        // SAFETY: `name` is NUL-terminated.
        let status = unsafe { RegDeleteValueW(self.0, name.as_ptr()) };
        if status == ERROR_FILE_NOT_FOUND {
            return Ok(false);
        }
        check(status)?;
        Ok(true)
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: the handle was opened by this type and is closed once.
        unsafe { RegCloseKey(self.0) };
    }
}

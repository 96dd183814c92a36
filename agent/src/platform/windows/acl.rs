//! Owner-only access for the agent's state: an explicit, protected DACL that grants the user
//! who runs the agent full control and nobody else anything.
//!
//! `%LOCALAPPDATA%` is private to its user by default, but an administrator may point
//! `--data-dir` anywhere, and inherited ACLs are only as good as the parent's. So the data
//! directory gets a protected DACL (no inherited entries) whose one entry is inherited by every
//! file created in it (the spool, its WAL, the local API token), and the credentials file gets
//! its own explicit copy before the secret is written into it — the Windows counterpart of mode
//! 0700/0600 on unix. Administrators keep their privilege to take ownership; that cannot be
//! taken from them and is not a grant.

use std::io;
use std::path::Path;

use windows_sys::Win32::Foundation::{CloseHandle, LocalFree, HANDLE, HLOCAL};
use windows_sys::Win32::Security::Authorization::{
    ConvertSecurityDescriptorToStringSecurityDescriptorW, ConvertSidToStringSidW,
    ConvertStringSecurityDescriptorToSecurityDescriptorW, GetSecurityInfo, SDDL_REVISION_1,
    SE_FILE_OBJECT,
};
use windows_sys::Win32::Security::{
    GetTokenInformation, SetFileSecurityW, TokenUser, DACL_SECURITY_INFORMATION,
    OWNER_SECURITY_INFORMATION, PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR,
    TOKEN_QUERY, TOKEN_USER,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

use super::{from_wide, wide};

/// What the DACL applies to: a directory's entry is inherited by what is created inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Directory,
    File,
}

/// Replaces the DACL of `path` with one entry: full control for the current user.
pub fn restrict_to_current_user(path: &Path, target: Target) -> io::Result<()> {
    let sddl = owner_only_sddl(&current_user_sid()?, target);
    let sddl = wide(sddl);
    let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `sddl` is NUL-terminated; the system allocates `descriptor` (freed below).
    let ok = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl.as_ptr(),
            SDDL_REVISION_1,
            &mut descriptor,
            std::ptr::null_mut(),
        )
    } != 0;
    if !ok {
        return Err(io::Error::last_os_error());
    }
    let result = set_dacl_from(path, descriptor);
    // SAFETY: `descriptor` was allocated with LocalAlloc by the conversion above.
    unsafe { LocalFree(descriptor as HLOCAL) };
    result
}

/// The SDDL of an owner-only DACL for `sid`: `P` protects it from inheriting the parent's
/// entries; `OICI` makes a directory's entry apply to files and folders created inside it.
pub fn owner_only_sddl(sid: &str, target: Target) -> String {
    match target {
        Target::Directory => format!("D:P(A;OICI;FA;;;{sid})"),
        Target::File => format!("D:P(A;;FA;;;{sid})"),
    }
}

/// Writes the DACL of `descriptor` to `path`. `SetFileSecurityW` rather than
/// `SetNamedSecurityInfoW`: the path is new and empty when this runs, so nothing needs the
/// latter's propagation to existing children, and Wine (where our tests run) implements only
/// the former for files.
fn set_dacl_from(path: &Path, descriptor: PSECURITY_DESCRIPTOR) -> io::Result<()> {
    let name = wide(path.as_os_str());
    // SAFETY: `name` is NUL-terminated and `descriptor` valid; only the DACL is written.
    let ok = unsafe {
        SetFileSecurityW(
            name.as_ptr(),
            DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            descriptor,
        )
    } != 0;
    if ok {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The owner and DACL of the open `file`, as SDDL text (`O:S-1-5-21-…D:P(A;;FA;;;S-1-5-21-…)`).
/// Read from the handle, not the path, so the file judged is the file that will be read.
pub fn security_descriptor_sddl(file: &std::fs::File) -> io::Result<String> {
    use std::os::windows::io::AsRawHandle;
    let which = OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION;
    let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `file` keeps the handle open for the call; the owner and DACL pointers are not
    // requested (null) and point into `descriptor`, which the system allocates (freed below).
    let status = unsafe {
        GetSecurityInfo(
            file.as_raw_handle() as HANDLE,
            SE_FILE_OBJECT,
            which,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut descriptor,
        )
    };
    if status != 0 {
        return Err(io::Error::from_raw_os_error(status as i32));
    }
    let mut text: *mut u16 = std::ptr::null_mut();
    let mut len = 0u32;
    // SAFETY: `descriptor` is valid until freed below; the system allocates `text`.
    let ok = unsafe {
        ConvertSecurityDescriptorToStringSecurityDescriptorW(
            descriptor,
            SDDL_REVISION_1,
            which,
            &mut text,
            &mut len,
        )
    } != 0;
    let result = if ok {
        // SAFETY: `text` holds `len` UTF-16 units (with the NUL) allocated by the system.
        let sddl = unsafe { from_wide(std::slice::from_raw_parts(text, len as usize)) };
        // SAFETY: `text` came from LocalAlloc inside the conversion.
        unsafe { LocalFree(text as HLOCAL) };
        Ok(sddl)
    } else {
        Err(io::Error::last_os_error())
    };
    // SAFETY: `descriptor` came from LocalAlloc inside GetSecurityInfo.
    unsafe { LocalFree(descriptor as HLOCAL) };
    result
}

/// The string SID (`S-1-5-21-…`) of the user this process runs as.
pub fn current_user_sid() -> io::Result<String> {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: the pseudo-handle of this process; writes the token handle, closed below.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let result = token_user_sid(token);
    // SAFETY: closes the token opened above.
    unsafe { CloseHandle(token) };
    result
}

fn token_user_sid(token: HANDLE) -> io::Result<String> {
    let mut needed = 0u32;
    // SAFETY: a size query: no buffer, the call writes the size needed.
    unsafe { GetTokenInformation(token, TokenUser, std::ptr::null_mut(), 0, &mut needed) };
    if needed == 0 || needed > 64 * 1024 {
        return Err(io::Error::last_os_error());
    }
    // u64 elements: TOKEN_USER holds pointers, so keep the buffer pointer-aligned.
    let mut buffer = vec![0u64; (needed as usize).div_ceil(8)];
    // SAFETY: `buffer` holds at least `needed` bytes.
    if unsafe {
        GetTokenInformation(
            token,
            TokenUser,
            buffer.as_mut_ptr().cast(),
            needed,
            &mut needed,
        )
    } == 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call filled `buffer` with a TOKEN_USER whose SID points into `buffer`.
    let user = unsafe { &*(buffer.as_ptr().cast::<TOKEN_USER>()) };
    let mut text: *mut u16 = std::ptr::null_mut();
    // SAFETY: the SID is valid while `buffer` lives; the system allocates `text`.
    if unsafe { ConvertSidToStringSidW(user.User.Sid, &mut text) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `text` is a NUL-terminated string allocated by the system.
    let sid = unsafe {
        let len = (0..).take_while(|&i| *text.add(i) != 0).count();
        from_wide(std::slice::from_raw_parts(text, len))
    };
    // SAFETY: `text` came from LocalAlloc inside ConvertSidToStringSidW.
    unsafe { LocalFree(text as HLOCAL) };
    Ok(sid)
}

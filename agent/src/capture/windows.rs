//! The Windows backend: the foreground window, idle time and lock state of the interactive
//! session this process runs in.
//!
//! # What one sample costs
//!
//! A handful of user32 calls that read window-manager state without talking to the focused
//! application (`GetWindowTextW` on another process's window reads the caption the system
//! keeps; it does not send `WM_GETTEXT`, so a hung application cannot hang the agent):
//! `GetForegroundWindow`, `GetWindowThreadProcessId`, `GetWindowTextW`, `GetLastInputInfo`,
//! `OpenInputDesktop` + `GetUserObjectInformationW` and `SystemParametersInfoW`. The process
//! image path (`OpenProcess` with `PROCESS_QUERY_LIMITED_INFORMATION` +
//! `QueryFullProcessImageNameW`) is looked up only when the foreground window or its process
//! changes, and the version resource of an executable is read once per path (a bounded cache).
//!
//! # What it reports
//!
//! - App: the executable's file name (`OUTLOOK.EXE`, `notepad.exe`), as Task Manager shows it.
//!   Policy regexes on app names should be case-insensitive (`(?i)`). When the process cannot
//!   be opened (a protected process), the window's class name stands in, like `WM_CLASS`.
//! - Product: `ProductName` of the executable's version resource (first translation, then US
//!   English), when there is one; local only (see [`Focus::product`]).
//! - Title: `GetWindowTextW`, at most [`MAX_TITLE_BYTES`] of UTF-8.
//! - Idle: `GetLastInputInfo` (keyboard and mouse of this session) against `GetTickCount`;
//!   wrap-around after 49.7 days is handled by wrapping subtraction.
//! - Locked: the input desktop is not this session's `Default` desktop (the lock screen,
//!   Ctrl+Alt+Del and UAC prompts run on the `Winlogon` desktop, which a user process cannot
//!   open), or a screensaver runs (`SPI_GETSCREENSAVERRUNNING`). A poll, not
//!   `WTSRegisterSessionNotification`: sampling already runs every second or so, and a poll
//!   needs no window or message loop. A disconnected remote session counts as locked too,
//!   which is right: nobody is at it.
//!
//! # Where it cannot run
//!
//! Session 0 (a Windows service) has no interactive desktop: [`WindowsBackend::open`] refuses
//! it with [`CaptureError::Unavailable`], naming `backlight-agent install`. Known limits: a
//! Store (UWP) app's foreground window belongs to `ApplicationFrameHost.exe`, which is what is
//! reported for it; elevated windows are seen (limited query rights suffice) but protected
//! processes fall back to the window class.

use std::collections::HashMap;

use backlight_shared::event::{DesktopSession, SessionKind};
use backlight_shared::now_ms;
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, HWND};
use windows_sys::Win32::Storage::FileSystem::{
    GetFileVersionInfoSizeW, GetFileVersionInfoW, VerQueryValueW,
};
use windows_sys::Win32::System::RemoteDesktop::{
    ProcessIdToSessionId, WTSClientName, WTSClientProtocolType, WTSFreeMemory,
    WTSQuerySessionInformationW, WTS_CURRENT_SERVER_HANDLE, WTS_CURRENT_SESSION, WTS_INFO_CLASS,
};
use windows_sys::Win32::System::StationsAndDesktops::{
    CloseDesktop, GetUserObjectInformationW, OpenInputDesktop, DESKTOP_READOBJECTS, UOI_NAME,
};
use windows_sys::Win32::System::SystemInformation::GetTickCount;
use windows_sys::Win32::System::Threading::{
    GetCurrentProcessId, OpenProcess, QueryFullProcessImageNameW, PROCESS_NAME_WIN32,
    PROCESS_QUERY_LIMITED_INFORMATION,
};
use windows_sys::Win32::UI::Input::KeyboardAndMouse::{GetLastInputInfo, LASTINPUTINFO};
use windows_sys::Win32::UI::WindowsAndMessaging::{
    GetClassNameW, GetForegroundWindow, GetSystemMetrics, GetWindowTextW, GetWindowThreadProcessId,
    IsWindow, SystemParametersInfoW, SM_REMOTESESSION, SPI_GETSCREENSAVERRUNNING,
};

use super::win32::{clean_name, file_name, is_lock_desktop, session_from, utf16_le_text};
use super::{
    truncate_on_char_boundary, CaptureError, DesktopBackend, Focus, Sample, MAX_NAME_BYTES,
    MAX_TITLE_BYTES,
};
use crate::platform::windows::{from_wide, wide};

/// UTF-16 units read of a title: every unit is at least one byte of UTF-8, so this always
/// covers [`MAX_TITLE_BYTES`].
const TITLE_UNITS: usize = MAX_TITLE_BYTES + 1;
/// Longest process image path read (the NT limit for extended paths).
const PATH_UNITS: usize = 32_768;
/// Executables whose version resource is remembered; the cache starts over beyond it.
const MAX_CACHED_PRODUCTS: usize = 64;
/// Largest version resource read: real ones are a few KiB.
const MAX_VERSION_INFO_BYTES: u32 = 1 << 20;
/// Longest remote client name kept (`WTSClientName` is at most 20 characters).
const MAX_CLIENT_NAME_BYTES: usize = 64;

/// The interactive session's desktop, sampled on demand. See the module documentation.
#[derive(Debug)]
pub struct WindowsBackend {
    session_id: u32,
    /// The foreground window and process of the last sample, with what was learnt about them.
    last: Option<(HwndKey, u32, ProcessInfo)>,
    /// `ProductName` by executable path.
    products: HashMap<String, Option<String>>,
}

/// A window handle as a number: handles are process-independent values, compared and stored,
/// never dereferenced.
type HwndKey = u64;

#[derive(Debug, Clone, Default)]
struct ProcessInfo {
    /// The executable's file name, when the process could be opened.
    exe: Option<String>,
    product: Option<String>,
}

impl WindowsBackend {
    /// The backend for this process's session; refuses session 0 (services), which has no
    /// user desktop to see.
    pub fn open() -> Result<WindowsBackend, CaptureError> {
        let mut session_id = 0u32;
        // SAFETY: writes one u32 we own.
        let known = unsafe { ProcessIdToSessionId(GetCurrentProcessId(), &mut session_id) } != 0;
        if known && session_id == 0 {
            return Err(CaptureError::Unavailable(
                "running in session 0 (as a Windows service), which has no user desktop: \
                 activity capture is off. Run the agent in the user's session instead \
                 (`backlight-agent install` starts it at logon)"
                    .into(),
            ));
        }
        Ok(WindowsBackend {
            session_id,
            last: None,
            products: HashMap::new(),
        })
    }

    fn focus(&mut self) -> Option<Focus> {
        // SAFETY: no arguments; returns null when no window is in the foreground.
        let hwnd = unsafe { GetForegroundWindow() };
        if hwnd.is_null() {
            return None;
        }
        let key = hwnd as HwndKey;
        let mut pid = 0u32;
        // SAFETY: `hwnd` came from the system (a stale handle only makes the call fail);
        // writes one u32 we own.
        let thread = unsafe { GetWindowThreadProcessId(hwnd, &mut pid) };
        if thread == 0 {
            return None; // the window is gone
        }
        let title = window_text(hwnd);
        let info = match &self.last {
            Some((k, p, info)) if *k == key && *p == pid => info.clone(),
            _ => {
                let exe_path = process_image(pid);
                let product = exe_path.as_deref().and_then(|path| self.product(path));
                let info = ProcessInfo {
                    exe: exe_path.as_deref().map(file_name),
                    product,
                };
                self.last = Some((key, pid, info.clone()));
                info
            }
        };
        let app = info
            .exe
            .clone()
            .or_else(|| class_name(hwnd))
            .unwrap_or_default();
        Some(Focus {
            app,
            process: info.exe,
            product: info.product,
            title,
            window: key,
        })
    }

    /// `ProductName` of the executable at `path`, cached.
    fn product(&mut self, path: &str) -> Option<String> {
        if let Some(known) = self.products.get(path) {
            return known.clone();
        }
        if self.products.len() >= MAX_CACHED_PRODUCTS {
            self.products.clear();
        }
        let product = product_name(path);
        self.products.insert(path.to_string(), product.clone());
        product
    }
}

impl DesktopBackend for WindowsBackend {
    fn describe(&self) -> String {
        let session = desktop_session();
        let mut text = format!("windows session {}", self.session_id);
        match (session.kind, session.client_name) {
            (SessionKind::Local, _) => text.push_str(" (local)"),
            (kind, Some(client)) => text.push_str(&format!(" ({} from {client})", kind.as_str())),
            (kind, None) => text.push_str(&format!(" ({})", kind.as_str())),
        }
        text
    }

    fn sample(&mut self) -> Result<Sample, CaptureError> {
        let at_ms = now_ms();
        let focus = self.focus();
        Ok(Sample {
            at_ms,
            focus,
            idle_ms: idle_ms(),
            locked: input_desktop_locked() || screensaver_running(),
        })
    }

    fn window_exists(&mut self, window: u64) -> Result<bool, CaptureError> {
        if window == 0 {
            return Ok(false);
        }
        // SAFETY: IsWindow accepts any value and says whether it names a window.
        Ok(unsafe { IsWindow(window as usize as HWND) } != 0)
    }
}

/// What kind of session this process runs in, and the remote client's name.
pub fn desktop_session() -> DesktopSession {
    // SAFETY: no pointers involved.
    let remote_metric = unsafe { GetSystemMetrics(SM_REMOTESESSION) } != 0;
    let protocol = wts_query(WTSClientProtocolType).and_then(|bytes| {
        let pair: [u8; 2] = bytes.get(..2)?.try_into().ok()?;
        Some(u16::from_le_bytes(pair))
    });
    let client_name = wts_query(WTSClientName).and_then(|bytes| {
        let mut name = clean_name(&utf16_le_text(&bytes));
        truncate_on_char_boundary(&mut name, MAX_CLIENT_NAME_BYTES);
        Some(name).filter(|n| !n.is_empty())
    });
    session_from(remote_metric, protocol, client_name)
}

/// One `WTSQuerySessionInformationW` answer for this session, as bytes.
fn wts_query(class: WTS_INFO_CLASS) -> Option<Vec<u8>> {
    let mut buffer: *mut u16 = std::ptr::null_mut();
    let mut bytes = 0u32;
    // SAFETY: the system allocates `buffer` (freed below with WTSFreeMemory) and writes its size.
    let ok = unsafe {
        WTSQuerySessionInformationW(
            WTS_CURRENT_SERVER_HANDLE,
            WTS_CURRENT_SESSION,
            class,
            &mut buffer,
            &mut bytes,
        )
    } != 0;
    if !ok || buffer.is_null() {
        return None;
    }
    // SAFETY: the system says `buffer` holds `bytes` bytes.
    let copy = unsafe { std::slice::from_raw_parts(buffer.cast::<u8>(), bytes as usize) }.to_vec();
    // SAFETY: `buffer` came from WTSQuerySessionInformationW and is freed once.
    unsafe { WTSFreeMemory(buffer.cast()) };
    Some(copy)
}

fn window_text(hwnd: HWND) -> String {
    let mut buffer = vec![0u16; TITLE_UNITS];
    // SAFETY: the buffer holds TITLE_UNITS units and the call writes at most that many,
    // NUL included.
    let n = unsafe { GetWindowTextW(hwnd, buffer.as_mut_ptr(), TITLE_UNITS as i32) };
    let n = usize::try_from(n).unwrap_or(0).min(TITLE_UNITS);
    let mut title = String::from_utf16_lossy(&buffer[..n]);
    truncate_on_char_boundary(&mut title, MAX_TITLE_BYTES);
    title
}

fn class_name(hwnd: HWND) -> Option<String> {
    let mut buffer = [0u16; 257];
    // SAFETY: the buffer holds 257 units (class names are at most 256).
    let n = unsafe { GetClassNameW(hwnd, buffer.as_mut_ptr(), buffer.len() as i32) };
    let n = usize::try_from(n).ok().filter(|&n| n > 0)?;
    let mut name = clean_name(&String::from_utf16_lossy(&buffer[..n.min(buffer.len())]));
    truncate_on_char_boundary(&mut name, MAX_NAME_BYTES);
    Some(name).filter(|n| !n.is_empty())
}

/// The full Win32 path of process `pid`'s executable, when the process can be opened.
fn process_image(pid: u32) -> Option<String> {
    if pid == 0 {
        return None;
    }
    // SAFETY: plain call; a null handle means failure.
    let process: HANDLE = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if process.is_null() {
        return None;
    }
    let mut buffer = vec![0u16; PATH_UNITS];
    let mut len = PATH_UNITS as u32;
    // SAFETY: `buffer` holds `len` units; the call updates `len` to the units written.
    let ok = unsafe {
        QueryFullProcessImageNameW(process, PROCESS_NAME_WIN32, buffer.as_mut_ptr(), &mut len)
    } != 0;
    // SAFETY: `process` is our handle, closed once.
    unsafe { CloseHandle(process) };
    if !ok {
        return None;
    }
    let len = (len as usize).min(buffer.len());
    Some(String::from_utf16_lossy(&buffer[..len]))
}

/// `ProductName` from the version resource of the executable at `path`.
fn product_name(path: &str) -> Option<String> {
    let path = wide(path);
    let mut ignored = 0u32;
    // SAFETY: `path` is NUL-terminated; writes one u32.
    let size = unsafe { GetFileVersionInfoSizeW(path.as_ptr(), &mut ignored) };
    if size == 0 || size > MAX_VERSION_INFO_BYTES {
        return None;
    }
    // u32 elements: the block is read as 16- and 32-bit values, so keep it aligned.
    let mut block = vec![0u32; (size as usize).div_ceil(4)];
    // SAFETY: `block` holds at least `size` bytes.
    let ok = unsafe { GetFileVersionInfoW(path.as_ptr(), 0, size, block.as_mut_ptr().cast()) } != 0;
    if !ok {
        return None;
    }
    let block_bytes = size as usize;
    let mut candidates: Vec<String> = Vec::new();
    if let Some(raw) = query_value(
        &block,
        block_bytes,
        "\\VarFileInfo\\Translation",
        Unit::Bytes,
    ) {
        for pair in raw.chunks_exact(4).take(4) {
            let language = u16::from_le_bytes([pair[0], pair[1]]);
            let codepage = u16::from_le_bytes([pair[2], pair[3]]);
            candidates.push(format!("{language:04x}{codepage:04x}"));
        }
    }
    // US English in Unicode and in Windows-1252: what most resources without a translation
    // table use.
    candidates.extend(["040904b0".to_string(), "040904e4".to_string()]);
    candidates.into_iter().find_map(|table| {
        let raw = query_value(
            &block,
            block_bytes,
            &format!("\\StringFileInfo\\{table}\\ProductName"),
            Unit::Utf16,
        )?;
        let mut name = clean_name(&utf16_le_text(&raw));
        truncate_on_char_boundary(&mut name, MAX_NAME_BYTES);
        Some(name).filter(|n| !n.is_empty())
    })
}

/// How `VerQueryValueW` counts a value's length.
#[derive(Clone, Copy)]
enum Unit {
    /// Binary values (`\VarFileInfo\Translation`).
    Bytes,
    /// String values (`\StringFileInfo\…`): UTF-16 units.
    Utf16,
}

/// The bytes `VerQueryValueW` finds at `sub_block`, checked to lie inside the block.
fn query_value(block: &[u32], block_bytes: usize, sub_block: &str, unit: Unit) -> Option<Vec<u8>> {
    let sub_block = wide(sub_block);
    let mut value: *mut core::ffi::c_void = std::ptr::null_mut();
    let mut len = 0u32;
    // SAFETY: `block` is a version resource from GetFileVersionInfoW; `value` is set to point
    // into it.
    let ok = unsafe {
        VerQueryValueW(
            block.as_ptr().cast(),
            sub_block.as_ptr(),
            &mut value,
            &mut len,
        )
    } != 0;
    if !ok || value.is_null() {
        return None;
    }
    let wants_bytes = match unit {
        Unit::Bytes => len as usize,
        Unit::Utf16 => len as usize * 2,
    };
    let start = block.as_ptr() as usize;
    let offset = (value as usize).checked_sub(start)?;
    let available = block_bytes.checked_sub(offset)?;
    let n = wants_bytes.min(available);
    // SAFETY: `[value, value + n)` lies inside `block` (checked above).
    Some(unsafe { std::slice::from_raw_parts(value.cast::<u8>(), n) }.to_vec())
}

fn idle_ms() -> u64 {
    let mut info = LASTINPUTINFO {
        cbSize: std::mem::size_of::<LASTINPUTINFO>() as u32,
        dwTime: 0,
    };
    // SAFETY: `info` is ours with its size set, as the call requires.
    if unsafe { GetLastInputInfo(&mut info) } == 0 {
        return 0;
    }
    // SAFETY: no arguments.
    let now = unsafe { GetTickCount() };
    u64::from(now.wrapping_sub(info.dwTime))
}

/// Whether the input desktop is something other than this session's `Default` desktop (the
/// lock screen or a secure prompt on `Winlogon`), or cannot be opened at all.
fn input_desktop_locked() -> bool {
    // SAFETY: plain call; null means the input desktop is not ours to open.
    let desktop = unsafe { OpenInputDesktop(0, 0, DESKTOP_READOBJECTS) };
    if desktop.is_null() {
        return true;
    }
    let mut name = [0u16; 64];
    let mut needed = 0u32;
    // SAFETY: `name` holds the byte count we pass; `desktop` is ours, closed once below.
    let ok = unsafe {
        GetUserObjectInformationW(
            desktop,
            UOI_NAME,
            name.as_mut_ptr().cast(),
            std::mem::size_of_val(&name) as u32,
            &mut needed,
        )
    } != 0;
    // SAFETY: closes the handle opened above.
    unsafe { CloseDesktop(desktop) };
    ok && is_lock_desktop(&from_wide(&name))
}

fn screensaver_running() -> bool {
    let mut running: i32 = 0;
    // SAFETY: SPI_GETSCREENSAVERRUNNING writes one BOOL into `running`.
    let ok = unsafe {
        SystemParametersInfoW(
            SPI_GETSCREENSAVERRUNNING,
            0,
            (&mut running as *mut i32).cast(),
            0,
        )
    } != 0;
    ok && running != 0
}

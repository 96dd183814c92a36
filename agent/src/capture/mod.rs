//! Desktop capture: what is in focus, and whether the person is present.
//!
//! A [`DesktopBackend`] answers one question, many times a minute: "what does the desktop look
//! like right now?" ([`Sample`]). Everything else — privacy filtering, work-item rules, merging
//! samples into spans — is platform-independent and lives outside this module.
//!
//! Backends, one per platform, opened by [`open_backend`]:
//! - `x11` (Linux/BSD with an X server): EWMH `_NET_ACTIVE_WINDOW`, `WM_CLASS`, `_NET_WM_PID`
//!   (+ sysinfo for the process name), `_NET_WM_NAME`/`WM_NAME`, MIT-SCREEN-SAVER for idle time
//!   and screensaver state.
//! - `windows` (Windows 10/11, in the user's interactive session): `GetForegroundWindow`, the
//!   process image and its version resource, `GetWindowTextW`, `GetLastInputInfo`, the input
//!   desktop and `SPI_GETSCREENSAVERRUNNING` for lock; the session's remote client
//!   ([`desktop_session`]). Built and tested on Linux with mingw and Wine.
//!
//! macOS (`NSWorkspace`, `CGEventSourceSecondsSinceLastEventType`) has its place behind the same
//! trait but no backend: it needs Apple's SDK, which our build machines do not have, so it could
//! be neither compiled nor tested. On Wayland there is no universal focused-window protocol: the
//! agent says so and keeps running without activity capture (explicit item reports still work).
//!
//! **Privacy invariant:** backends read window metadata and input *idle time* only — never
//! keystrokes, screen contents or the clipboard.

use backlight_shared::event::DesktopSession;
use backlight_shared::UnixMillis;

pub mod win32;
#[cfg(windows)]
pub mod windows;
#[cfg(unix)]
pub mod x11;

/// Longest title kept, in bytes of UTF-8. Titles are metadata, not documents: anything longer
/// is an application stuffing content into its title.
pub const MAX_TITLE_BYTES: usize = 1024;
/// Longest app, process or product name kept, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 256;

/// The focused window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Focus {
    /// The application: `WM_CLASS` class name on X11 (falls back to the process name); the
    /// executable's file name on Windows (e.g. `OUTLOOK.EXE`).
    pub app: String,
    /// The process name, when the window names its process.
    pub process: Option<String>,
    /// The product name from the executable's version resource (Windows), when it has one.
    /// Shown locally (e.g. by `capture_probe`) to help write rules; not sent: product names
    /// are localized and shared by whole suites, so they make a poor key for reports.
    pub product: Option<String>,
    /// The window title (may be empty). Stays on the desktop unless policy says otherwise.
    pub title: String,
    /// An id of the window, stable while it exists (to notice it closing).
    pub window: u64,
}

/// What the desktop looked like at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub at_ms: UnixMillis,
    /// `None` when nothing has focus (e.g. an empty desktop).
    pub focus: Option<Focus>,
    /// Time since the last keyboard or mouse input, in ms.
    pub idle_ms: u64,
    /// The screen is locked or the screensaver is active.
    pub locked: bool,
}

/// Capture is not possible here, or failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// No backend can run in this session (no display, Wayland, unsupported OS). Not fatal: the
    /// agent keeps running and says so in `status`.
    #[error("desktop capture unavailable: {0}")]
    Unavailable(String),
    /// The display went away (X server restarted, session ended). The caller closes open spans
    /// and tries [`open_backend`] again later.
    #[error("lost the display: {0}")]
    Disconnected(String),
}

/// A platform's way of sampling the desktop.
pub trait DesktopBackend: Send {
    /// Names the backend in logs and `status`, e.g. `x11 :0`.
    fn describe(&self) -> String;

    /// The desktop right now. Must be cheap: it runs about once a second on a desk that
    /// should not notice the agent.
    fn sample(&mut self) -> Result<Sample, CaptureError>;

    /// Whether a window seen in an earlier [`Focus`] still exists (for rules that complete an
    /// item when its window closes).
    fn window_exists(&mut self, window: u64) -> Result<bool, CaptureError>;
}

/// Opens the backend of this platform for the current session.
///
/// On unix that is the X11 backend when `$DISPLAY` names a reachable X server (including
/// XWayland). The error says why capture is off ([`CaptureError::Unavailable`]: no display, a
/// Wayland session without XWayland, a Windows service in session 0, an unsupported OS) or that
/// the display may come back ([`CaptureError::Disconnected`]: the X server is not reachable yet;
/// call again later).
pub fn open_backend() -> Result<Box<dyn DesktopBackend>, CaptureError> {
    #[cfg(unix)]
    {
        let display = std::env::var_os("DISPLAY");
        let wayland_display = std::env::var_os("WAYLAND_DISPLAY");
        let display = display.as_deref().map(|d| d.to_string_lossy());
        let wayland_display = wayland_display.as_deref().map(|w| w.to_string_lossy());
        let backend = x11::open_for_session(display.as_deref(), wayland_display.as_deref())?;
        Ok(Box::new(backend))
    }
    #[cfg(windows)]
    {
        Ok(Box::new(windows::WindowsBackend::open()?))
    }
    #[cfg(not(any(unix, windows)))]
    {
        Err(CaptureError::Unavailable(format!(
            "no desktop capture backend for {}: activity capture is off; explicit item \
             reports still work",
            std::env::consts::OS
        )))
    }
}

/// The kind of desktop session this process runs in (local console or a remote session, with
/// the remote client's name), reported in health events as a property of the device. `None`
/// where the platform backend cannot tell (X11 today).
pub fn desktop_session() -> Option<DesktopSession> {
    #[cfg(windows)]
    {
        Some(windows::desktop_session())
    }
    #[cfg(not(windows))]
    {
        None
    }
}

/// Cuts `text` to at most `max` bytes, on a character boundary.
pub(crate) fn truncate_on_char_boundary(text: &mut String, max: usize) {
    if text.len() > max {
        let cut = (0..=max)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(cut);
    }
}

//! Desktop capture: what is in focus, and whether the person is present.
//!
//! A [`DesktopBackend`] answers one question, many times a minute: "what does the desktop look
//! like right now?" ([`Sample`]). Everything else — privacy filtering, work-item rules, merging
//! samples into spans — is platform-independent and lives outside this module.
//!
//! Backends, tried in order by [`open_backend`]; the first that starts wins:
//! - `x11` (Linux/BSD with an X server): EWMH `_NET_ACTIVE_WINDOW`, `WM_CLASS`, `_NET_WM_PID`
//!   (+ sysinfo for the process name), `_NET_WM_NAME`/`WM_NAME`, MIT-SCREEN-SAVER for idle time
//!   and screensaver state.
//!
//! Windows (`GetForegroundWindow`, `GetLastInputInfo`; the collector must run in the user's
//! session, not as a session-0 service) and macOS (`NSWorkspace`, `CGEventSourceSecondsSinceLastEventType`)
//! back-ends are not written yet: they cannot be compiled or tested on our Linux build machines.
//! On Wayland there is no universal focused-window protocol: the agent says so and keeps running
//! without activity capture (explicit item reports still work).
//!
//! **Privacy invariant:** backends read window metadata and input *idle time* only — never
//! keystrokes, screen contents or the clipboard.

use backlight_shared::UnixMillis;

pub mod x11;

/// The focused window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Focus {
    /// The application: `WM_CLASS` class name on X11 (falls back to the process name).
    pub app: String,
    /// The process name, when the window names its process.
    pub process: Option<String>,
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

/// Opens the first backend that works in this session.
///
/// Today that is the X11 backend when `$DISPLAY` names a reachable X server (including
/// XWayland). The error says why capture is off ([`CaptureError::Unavailable`]: no display, a
/// Wayland session without XWayland) or that the display may come back
/// ([`CaptureError::Disconnected`]: the X server is not reachable yet; call again later).
pub fn open_backend() -> Result<Box<dyn DesktopBackend>, CaptureError> {
    let display = std::env::var_os("DISPLAY");
    let wayland_display = std::env::var_os("WAYLAND_DISPLAY");
    let display = display.as_deref().map(|d| d.to_string_lossy());
    let wayland_display = wayland_display.as_deref().map(|w| w.to_string_lossy());
    let backend = x11::open_for_session(display.as_deref(), wayland_display.as_deref())?;
    Ok(Box::new(backend))
}

//! The X11 backend: focused window, idle time and screensaver state from an X server.
//!
//! # What one sample costs
//!
//! Two round trips to the X server when an EWMH window manager runs, because requests are
//! pipelined (sent together, answered together):
//!
//! 1. `GetProperty(root, _NET_ACTIVE_WINDOW)`, `GetInputFocus` and MIT-SCREEN-SAVER
//!    `QueryInfo`;
//! 2. on the focused window: `WM_CLASS`, `_NET_WM_NAME`, `WM_NAME`, `_NET_WM_PID` and
//!    `WM_CLIENT_MACHINE`.
//!
//! Without a window manager, the window from `GetInputFocus` is walked up to the top-level
//! window that carries `WM_CLASS`: one more round trip per level (usually none, since focus is
//! normally set on the client window itself). The process name comes from sysinfo, refreshed for
//! that one pid only, and only when the focused window or its pid changes.
//!
//! # Where it falls back
//!
//! - Focus: `_NET_ACTIVE_WINDOW` (needs an EWMH window manager); when it is absent or `None`,
//!   `GetInputFocus`, walked up to the client window with `WM_CLASS` (and, for a reparenting
//!   window manager without EWMH, one level down from its frame).
//! - App: `WM_CLASS` class, then instance, then the process name, else empty.
//! - Title: `_NET_WM_NAME` (UTF-8), then `WM_NAME` (Latin-1 `STRING`, or UTF-8 when the bytes
//!   are valid UTF-8, as many clients write it).
//! - Process: `_NET_WM_PID`, trusted only when `WM_CLIENT_MACHINE` is absent or names this host
//!   (a window forwarded over `ssh -X` carries a pid of another machine).
//!
//! # Idle and lock
//!
//! Idle time is MIT-SCREEN-SAVER `ms_since_user_input`; "locked" is the screensaver state `On`
//! or `Cycle`. Screen lockers that do not drive the X screensaver (some Wayland-era lockers,
//! `loginctl lock-session` handled outside X) are **not** seen: reading logind's `LockedHint`
//! over D-Bus would be the next step and is not done. A server without MIT-SCREEN-SAVER (rare;
//! Xorg, Xvfb and XWayland all have it) gives idle 0 and never locked, and `describe` says so.
//!
//! Under XWayland only X11 clients are visible, and idle time counts only input delivered to
//! X11 clients: `describe` says so, and the agent should prefer a native backend there once one
//! exists.
//!
//! # Failure modes
//!
//! Any connection error (the server exited, the socket closed) makes this backend return
//! [`CaptureError::Disconnected`] from then on; the caller opens a new backend later, which
//! makes a new connection. X protocol errors on a window (it was destroyed between two
//! requests) are not failures: the window is treated as gone. Property data is bounded (titles
//! to [`MAX_TITLE_BYTES`], cut on a character boundary) and malformed data is ignored, never
//! trusted. Calls block while the server is alive but not answering (a stopped server): run
//! sampling on its own thread.

use backlight_shared::now_ms;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use x11rb::connection::{Connection, RequestConnection};
use x11rb::errors::{ConnectError, ConnectionError, ReplyError};
use x11rb::protocol::screensaver::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{AtomEnum, ConnectionExt as _, GetPropertyReply, Window};
use x11rb::rust_connection::RustConnection;

pub use super::MAX_TITLE_BYTES;
use super::{
    truncate_on_char_boundary, CaptureError, DesktopBackend, Focus, Sample, MAX_NAME_BYTES,
};
/// Longest `WM_CLIENT_MACHINE` read.
const MAX_HOST_BYTES: usize = 256;
/// How far up the window tree the input-focus fallback walks before giving up.
const MAX_WALK_DEPTH: usize = 32;
/// How many children of a frame window the fallback inspects for the client window.
const MAX_FRAME_CHILDREN: usize = 16;
/// Processes the sysinfo table may hold before it is rebuilt, so a long session that focuses
/// many short-lived processes does not grow it without bound.
const MAX_CACHED_PROCESSES: usize = 64;

/// `GetInputFocus` answers `None` (0) or `PointerRoot` (1) when no window has focus.
const FOCUS_NONE: Window = 0;
const FOCUS_POINTER_ROOT: Window = 1;

x11rb::atom_manager! {
    /// Atoms interned once at connect; the predefined ones (`WM_CLASS`, `WM_NAME`, …) come from
    /// [`AtomEnum`].
    Atoms: AtomsCookie {
        _NET_ACTIVE_WINDOW,
        _NET_WM_NAME,
        _NET_WM_PID,
        UTF8_STRING,
    }
}

/// Opens the X11 backend for a session whose environment holds these values of `DISPLAY` and
/// `WAYLAND_DISPLAY` (`None` or empty when unset). Takes them as arguments so tests need not
/// change the process environment.
///
/// - no `DISPLAY`, no Wayland: [`CaptureError::Unavailable`] (no X display);
/// - no `DISPLAY` but Wayland, or Wayland and the X server cannot be reached:
///   [`CaptureError::Unavailable`] (a Wayland session without usable XWayland);
/// - a malformed `DISPLAY` or a server that refuses us: [`CaptureError::Unavailable`];
/// - an X server that cannot be reached (not started yet, restarting):
///   [`CaptureError::Disconnected`], so the caller tries again later.
pub fn open_for_session(
    display: Option<&str>,
    wayland_display: Option<&str>,
) -> Result<X11Backend, CaptureError> {
    let display = display.filter(|d| !d.is_empty());
    let wayland = wayland_display.is_some_and(|w| !w.is_empty());
    let Some(display) = display else {
        return Err(CaptureError::Unavailable(if wayland {
            "Wayland session without XWayland ($DISPLAY unset): there is no universal way to \
             see the focused window on Wayland, so activity capture is off; explicit item \
             reports still work"
                .to_string()
        } else {
            "no X display ($DISPLAY unset): activity capture is off; explicit item reports \
             still work"
                .to_string()
        }));
    };
    match X11Backend::connect(display) {
        Err(CaptureError::Disconnected(why)) if wayland => Err(CaptureError::Unavailable(format!(
            "Wayland session and XWayland is not usable ({why}): activity capture is off; \
             explicit item reports still work"
        ))),
        other => other,
    }
}

/// A connection to one X server, sampled on demand. See the module documentation.
pub struct X11Backend {
    conn: RustConnection,
    display: String,
    root: Window,
    atoms: Atoms,
    /// The server has MIT-SCREEN-SAVER (idle time and screensaver state).
    screensaver: bool,
    /// The server is XWayland (it only sees X11 clients).
    xwayland: bool,
    /// This machine's short host name, to trust `_NET_WM_PID` only for local windows.
    hostname: Option<String>,
    processes: ProcessNames,
    /// Set after the first connection error; every later call reports it.
    lost: Option<String>,
}

impl std::fmt::Debug for X11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X11Backend")
            .field("display", &self.display)
            .field("screensaver", &self.screensaver)
            .field("xwayland", &self.xwayland)
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

impl X11Backend {
    /// Connects to the X server named by `display` (e.g. `:0`), interning the atoms it needs.
    pub fn connect(display: &str) -> Result<Self, CaptureError> {
        let (conn, screen) = RustConnection::connect(Some(display)).map_err(|e| {
            let why = format!("cannot connect to X display {display}: {e}");
            match e {
                // The server is not there (yet): worth retrying later.
                ConnectError::IoError(_) | ConnectError::UnknownError => {
                    CaptureError::Disconnected(why)
                }
                // A typo in $DISPLAY, a refused authorization, a broken server: retrying the
                // same thing will not help.
                _ => CaptureError::Unavailable(why),
            }
        })?;
        let lost = |e: &dyn std::fmt::Display| {
            CaptureError::Disconnected(format!("X display {display}: {e}"))
        };
        let root = conn
            .setup()
            .roots
            .get(screen)
            .map(|s| s.root)
            .ok_or_else(|| {
                CaptureError::Unavailable(format!("X display {display} has no screen {screen}"))
            })?;
        let atoms = Atoms::new(&conn)
            .map_err(|e| lost(&e))?
            .reply()
            .map_err(|e| lost(&e))?;
        let screensaver = conn
            .extension_information(screensaver::X11_EXTENSION_NAME)
            .map_err(|e| lost(&e))?
            .is_some();
        let xwayland = conn
            .extension_information("XWAYLAND")
            .map_err(|e| lost(&e))?
            .is_some();
        if !screensaver {
            let name = display;
            tracing::warn!(
                "X display {name} lacks MIT-SCREEN-SAVER: idle time and screensaver state \
                 are unknown"
            );
        }
        let hostname = hostname::get()
            .ok()
            .map(|h| short_host(&h.to_string_lossy()));
        Ok(Self {
            conn,
            display: display.to_string(),
            root,
            atoms,
            screensaver,
            xwayland,
            hostname,
            processes: ProcessNames::default(),
            lost: None,
        })
    }

    /// Turns a connection error into [`CaptureError::Disconnected`] and remembers it: a
    /// `RustConnection` does not recover, so later calls fail fast with the same reason.
    fn fail(&mut self, e: ConnectionError) -> CaptureError {
        let why = format!("X display {}: {e}", self.display);
        self.lost = Some(why.clone());
        CaptureError::Disconnected(why)
    }

    fn check_alive(&self) -> Result<(), CaptureError> {
        match &self.lost {
            Some(why) => Err(CaptureError::Disconnected(why.clone())),
            None => Ok(()),
        }
    }

    fn sample_inner(&mut self) -> Result<Sample, ConnectionError> {
        let at_ms = now_ms();
        // Round trip 1: everything that does not depend on which window has focus.
        let active = self.conn.get_property(
            false,
            self.root,
            self.atoms._NET_ACTIVE_WINDOW,
            AtomEnum::WINDOW,
            0,
            1,
        )?;
        let input_focus = self.conn.get_input_focus()?;
        let saver = if self.screensaver {
            Some(self.conn.screensaver_query_info(self.root)?)
        } else {
            None
        };
        let active = reply_or_none(active.reply())?;
        let input_focus = reply_or_none(input_focus.reply())?;
        let saver = saver
            .map(|cookie| reply_or_none(cookie.reply()))
            .transpose()?
            .flatten();

        let ewmh_active = active
            .as_ref()
            .and_then(|r| r.value32()?.next())
            .filter(|&w| w != 0);
        let window = match ewmh_active {
            Some(w) => Some(w),
            None => match input_focus {
                Some(f) => self.client_window(f.focus)?,
                None => None,
            },
        };
        let focus = match window {
            Some(w) => self.focus_of(w)?,
            None => None,
        };
        let (idle_ms, locked) = match saver {
            Some(info) => (
                u64::from(info.ms_since_user_input),
                info.state == u8::from(screensaver::State::ON)
                    || info.state == u8::from(screensaver::State::CYCLE),
            ),
            None => (0, false),
        };
        Ok(Sample {
            at_ms,
            focus,
            idle_ms,
            locked,
        })
    }

    /// The fallback without EWMH: from the window holding input focus to the client window
    /// (the one with `WM_CLASS`). Toolkits often focus a child of the client, so walk up.
    fn client_window(&mut self, focus: Window) -> Result<Option<Window>, ConnectionError> {
        if focus == FOCUS_NONE || focus == FOCUS_POINTER_ROOT || focus == self.root {
            return Ok(None);
        }
        let mut window = focus;
        for _ in 0..MAX_WALK_DEPTH {
            let class =
                self.conn
                    .get_property(false, window, AtomEnum::WM_CLASS, AtomEnum::ANY, 0, 0)?;
            let tree = self.conn.query_tree(window)?;
            let class = reply_or_none(class.reply())?;
            let tree = reply_or_none(tree.reply())?;
            if class.is_some_and(|c| c.type_ != u32::from(AtomEnum::NONE)) {
                return Ok(Some(window));
            }
            // The window vanished meanwhile.
            let Some(tree) = tree else { return Ok(None) };
            if tree.parent == self.root || tree.parent == 0 {
                // A top-level window without WM_CLASS: a reparenting window manager's frame.
                // Its client is one of its children.
                return self.client_below(&tree.children);
            }
            window = tree.parent;
        }
        Ok(None)
    }

    fn client_below(&mut self, children: &[Window]) -> Result<Option<Window>, ConnectionError> {
        let mut cookies = Vec::with_capacity(children.len().min(MAX_FRAME_CHILDREN));
        for &child in children.iter().take(MAX_FRAME_CHILDREN) {
            let cookie =
                self.conn
                    .get_property(false, child, AtomEnum::WM_CLASS, AtomEnum::ANY, 0, 0)?;
            cookies.push((child, cookie));
        }
        let mut found = None;
        // Read every reply (even after a match) so none is left pending.
        for (child, cookie) in cookies {
            let has_class = reply_or_none(cookie.reply())?
                .is_some_and(|c| c.type_ != u32::from(AtomEnum::NONE));
            if has_class && found.is_none() {
                found = Some(child);
            }
        }
        Ok(found)
    }

    /// Round trip 2: what the focused window says about itself. `None` when the window no
    /// longer exists.
    fn focus_of(&mut self, window: Window) -> Result<Option<Focus>, ConnectionError> {
        let units = |bytes: usize| u32::try_from(bytes.div_ceil(4)).unwrap_or(u32::MAX);
        let get = |property: u32, length: u32| {
            self.conn
                .get_property(false, window, property, AtomEnum::ANY, 0, length)
        };
        let class = get(AtomEnum::WM_CLASS.into(), units(MAX_NAME_BYTES))?;
        let net_name = get(self.atoms._NET_WM_NAME, units(MAX_TITLE_BYTES))?;
        let name = get(AtomEnum::WM_NAME.into(), units(MAX_TITLE_BYTES))?;
        let pid = get(self.atoms._NET_WM_PID, 1)?;
        let host = get(AtomEnum::WM_CLIENT_MACHINE.into(), units(MAX_HOST_BYTES))?;
        let class = reply_or_none(class.reply())?;
        let net_name = reply_or_none(net_name.reply())?;
        let name = reply_or_none(name.reply())?;
        let pid = reply_or_none(pid.reply())?;
        let host = reply_or_none(host.reply())?;
        if class.is_none() && net_name.is_none() && name.is_none() && pid.is_none() {
            // Every request failed: the window was destroyed between the two round trips.
            return Ok(None);
        }

        let (instance, class) = class
            .as_ref()
            .and_then(text_bytes)
            .map(parse_wm_class)
            .unwrap_or_default();
        let title = net_name
            .as_ref()
            .filter(|r| r.type_ == self.atoms.UTF8_STRING)
            .and_then(text_bytes)
            .map(|b| decode_utf8(b, MAX_TITLE_BYTES))
            .or_else(|| {
                let r = name.as_ref()?;
                let bytes = text_bytes(r)?;
                Some(if r.type_ == u32::from(AtomEnum::STRING) {
                    decode_string(bytes, MAX_TITLE_BYTES)
                } else {
                    // UTF8_STRING, or COMPOUND_TEXT (whose ASCII subset this gets right).
                    decode_utf8(bytes, MAX_TITLE_BYTES)
                })
            })
            .unwrap_or_default();
        let local = match host.as_ref().and_then(text_bytes) {
            None => true,
            Some(bytes) => {
                let host = short_host(&decode_string(bytes, MAX_HOST_BYTES));
                host.is_empty() || self.hostname.as_deref() == Some(host.as_str())
            }
        };
        let pid = pid
            .as_ref()
            .filter(|r| r.type_ == u32::from(AtomEnum::CARDINAL))
            .and_then(|r| r.value32()?.next())
            .filter(|&pid| pid != 0 && local);
        let process = pid.and_then(|pid| self.processes.name(window, pid));

        let app = [class, instance]
            .into_iter()
            .find(|s| !s.is_empty())
            .or_else(|| process.clone())
            .unwrap_or_default();
        Ok(Some(Focus {
            app,
            process,
            product: None,
            title,
            window: u64::from(window),
        }))
    }
}

impl DesktopBackend for X11Backend {
    fn describe(&self) -> String {
        let mut text = format!("x11 {}", self.display);
        if self.xwayland {
            text.push_str(" (XWayland: sees X11 windows and X11 input only)");
        }
        if !self.screensaver {
            text.push_str(" (no MIT-SCREEN-SAVER: idle time unknown)");
        }
        text
    }

    fn sample(&mut self) -> Result<Sample, CaptureError> {
        self.check_alive()?;
        self.sample_inner().map_err(|e| self.fail(e))
    }

    fn window_exists(&mut self, window: u64) -> Result<bool, CaptureError> {
        self.check_alive()?;
        // X ids are 32 bits: anything larger never came from this backend.
        let Ok(window) = Window::try_from(window) else {
            return Ok(false);
        };
        if window == 0 {
            return Ok(false);
        }
        let attributes = self
            .conn
            .get_window_attributes(window)
            .and_then(|cookie| reply_or_none(cookie.reply()));
        attributes.map(|a| a.is_some()).map_err(|e| self.fail(e))
    }
}

/// A reply, or `None` when the server answered with an X error (typically `BadWindow`: the
/// window was destroyed between two requests). Only connection errors are errors.
fn reply_or_none<R>(reply: Result<R, ReplyError>) -> Result<Option<R>, ConnectionError> {
    match reply {
        Ok(r) => Ok(Some(r)),
        Err(ReplyError::X11Error(_)) => Ok(None),
        Err(ReplyError::ConnectionError(e)) => Err(e),
    }
}

/// The bytes of a text property, or `None` when it is absent or not made of 8-bit units.
fn text_bytes(reply: &GetPropertyReply) -> Option<&[u8]> {
    if reply.type_ == u32::from(AtomEnum::NONE) || reply.format != 8 {
        return None;
    }
    Some(&reply.value)
}

/// `WM_CLASS` is two NUL-terminated strings: instance, then class.
fn parse_wm_class(bytes: &[u8]) -> (String, String) {
    let mut parts = bytes.split(|&b| b == 0);
    let instance = parts.next().unwrap_or_default();
    let class = parts.next().unwrap_or_default();
    (
        decode_string(instance, MAX_NAME_BYTES),
        decode_string(class, MAX_NAME_BYTES),
    )
}

/// UTF-8 text, at most `max` bytes. A sequence cut short at the end (the server truncated the
/// property) is dropped rather than shown as a replacement character; other invalid bytes
/// become U+FFFD. Trailing NULs (C clients often include one) are dropped.
fn decode_utf8(bytes: &[u8], max: usize) -> String {
    let bytes = trim_nuls(bytes);
    let bytes = match std::str::from_utf8(bytes) {
        Err(e) if e.error_len().is_none() => &bytes[..e.valid_up_to()],
        _ => bytes,
    };
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    truncate_on_char_boundary(&mut text, max);
    text
}

/// An X `STRING` (ISO Latin-1 by the ICCCM), at most `max` bytes of UTF-8. Many clients put
/// UTF-8 there anyway, so bytes that are valid UTF-8 are read as UTF-8.
fn decode_string(bytes: &[u8], max: usize) -> String {
    let bytes = trim_nuls(bytes);
    let mut text = match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    };
    truncate_on_char_boundary(&mut text, max);
    text
}

fn trim_nuls(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &bytes[..end]
}

/// `host.example.com` and `HOST` name the same machine for our purpose.
fn short_host(host: &str) -> String {
    host.split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Process names by pid, looked up through sysinfo one pid at a time (never a full process
/// scan), and remembered for the current window so steady focus costs nothing.
#[derive(Default)]
struct ProcessNames {
    system: Option<System>,
    /// (window, pid) → name of the last lookup.
    last: Option<(Window, u32, Option<String>)>,
}

impl ProcessNames {
    fn name(&mut self, window: Window, pid: u32) -> Option<String> {
        if let Some((w, p, name)) = &self.last {
            if *w == window && *p == pid {
                return name.clone();
            }
        }
        let needs_new = self
            .system
            .as_ref()
            .is_none_or(|s| s.processes().len() > MAX_CACHED_PROCESSES);
        if needs_new {
            // `System::new` loads nothing; it only fails on platforms sysinfo does not support.
            self.system = System::new().ok();
        }
        let name = self.system.as_mut().and_then(|system| {
            let pid = Pid::from_u32(pid);
            system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                true,
                ProcessRefreshKind::nothing(),
            );
            let name = system.process(pid)?.name().to_string_lossy();
            let mut name = name.into_owned();
            truncate_on_char_boundary(&mut name, MAX_NAME_BYTES);
            Some(name).filter(|n| !n.is_empty())
        });
        self.last = Some((window, pid, name.clone()));
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wm_class_gives_instance_and_class() {
        assert_eq!(
            parse_wm_class(b"navigator\0Firefox\0"),
            ("navigator".to_string(), "Firefox".to_string())
        );
        assert_eq!(
            parse_wm_class(b"only-instance"),
            ("only-instance".to_string(), String::new())
        );
        assert_eq!(parse_wm_class(b""), (String::new(), String::new()));
    }

    #[test]
    fn truncated_utf8_drops_the_partial_character() {
        // "é" is two bytes; the server cut the property after the first.
        assert_eq!(decode_utf8(b"caf\xc3", 1024), "caf");
        assert_eq!(decode_utf8(b"ok\0", 1024), "ok");
        assert_eq!(decode_utf8(b"a\xffb", 1024), "a\u{fffd}b");
    }

    #[test]
    fn titles_are_cut_on_a_character_boundary() {
        let title = "é".repeat(600); // 1200 bytes
        let text = decode_utf8(title.as_bytes(), MAX_TITLE_BYTES);
        assert_eq!(text.len(), MAX_TITLE_BYTES);
        let text = decode_utf8(format!("x{title}").as_bytes(), MAX_TITLE_BYTES);
        assert_eq!(text.len(), MAX_TITLE_BYTES - 1);
        assert!(text.is_char_boundary(text.len()));
    }

    #[test]
    fn latin1_strings_are_decoded_and_utf8_is_accepted() {
        assert_eq!(decode_string(b"caf\xe9", 1024), "café");
        assert_eq!(decode_string("café".as_bytes(), 1024), "café");
        // 1024 Latin-1 bytes become 2048 bytes of UTF-8; the cap is on the result.
        assert_eq!(decode_string(&[0xe9; 1024], 1024).len(), 1024);
    }

    #[test]
    fn host_names_compare_by_short_name() {
        assert_eq!(short_host("Desk-12.corp.example"), "desk-12");
    }

    #[test]
    fn session_without_display_is_unavailable() {
        let err = open_for_session(None, None).unwrap_err();
        assert!(matches!(&err, CaptureError::Unavailable(m) if m.contains("$DISPLAY unset")));
        let err = open_for_session(Some(""), Some("wayland-0")).unwrap_err();
        assert!(matches!(&err, CaptureError::Unavailable(m) if m.starts_with("Wayland session")));
    }
}

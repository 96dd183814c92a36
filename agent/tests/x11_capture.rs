//! The X11 capture backend against a real X server.
//!
//! Every test starts its own `Xvfb` on a free display number (from :90 upward, skipping numbers
//! whose lock file exists, retrying when another process wins the race), so these tests run in
//! parallel with each other and with anything else on the machine. Windows are made by a small
//! x11rb client in this file ([`Desk`]), which also plays the window manager where a test needs
//! one: it sets `_NET_ACTIVE_WINDOW` on the root the way an EWMH window manager does. Input is
//! injected with XTEST. The only package needed is `xvfb`; without it the tests fail (never
//! skip) and say how to install it.

#![cfg(unix)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use backlight_agent::capture::x11::{open_for_session, X11Backend, MAX_TITLE_BYTES};
use backlight_agent::capture::{open_backend, CaptureError, DesktopBackend, Focus};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    AtomEnum, ConnectionExt as _, CreateWindowAux, InputFocus, PropMode, ScreenSaver, Window,
    WindowClass, MOTION_NOTIFY_EVENT,
};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

/// How long an Xvfb may take to accept connections on a busy two-core machine.
const XVFB_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Display numbers handed out in this process; each attempt takes the next one so parallel
/// tests do not all race for :90.
static NEXT_DISPLAY: AtomicU32 = AtomicU32::new(90);

/// A private X server for one test; stopped on drop.
struct Xvfb {
    child: Option<Child>,
    number: u32,
}

impl Xvfb {
    fn start() -> Self {
        for _ in 0..200 {
            let number = NEXT_DISPLAY.fetch_add(1, Ordering::Relaxed);
            if display_in_use(number) {
                continue;
            }
            if let Some(child) = spawn_xvfb(number) {
                return Self {
                    child: Some(child),
                    number,
                };
            }
        }
        panic!("no free X display number found from :90 upward");
    }

    /// Starts a server again on the same number (after [`Xvfb::crash`]).
    fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        let child = spawn_xvfb(self.number).expect("restart Xvfb on the same display");
        self.child = Some(child);
    }

    fn name(&self) -> String {
        format!(":{}", self.number)
    }

    /// Kills the server the way a crash would: no cleanup, no goodbye to clients.
    fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill Xvfb");
            child.wait().expect("reap Xvfb");
        }
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // TERM lets Xvfb remove its lock file and socket; KILL if it does not go.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn display_in_use(number: u32) -> bool {
    Path::new(&format!("/tmp/.X{number}-lock")).exists()
        || Path::new(&format!("/tmp/.X11-unix/X{number}")).exists()
}

/// Starts `Xvfb :number` and waits until it is ours and accepts connections. `None` when the
/// number turned out to be taken (Xvfb exits at once then).
fn spawn_xvfb(number: u32) -> Option<Child> {
    let spawned = Command::new("Xvfb")
        .arg(format!(":{number}"))
        // -noreset: the server must not reset (dropping root properties and screensaver state)
        // when the last client disconnects between two steps of a test.
        .args(["-nolisten", "tcp", "-noreset", "-screen", "0", "640x480x24"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("Xvfb not found: install xvfb (apt-get install xvfb)")
        }
        Err(e) => panic!("cannot start Xvfb: {e}"),
    };
    let deadline = Instant::now() + XVFB_READY_TIMEOUT;
    let lock = format!("/tmp/.X{number}-lock");
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return None; // another server holds this number
        }
        // The lock file names the server's pid: only then is a successful connection to *our*
        // server rather than to one that got there first.
        let ours = std::fs::read_to_string(&lock)
            .map(|pid| pid.trim() == child.id().to_string())
            .unwrap_or(false);
        if ours && RustConnection::connect(Some(&format!(":{number}"))).is_ok() {
            return Some(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("Xvfb :{number} did not accept connections within {XVFB_READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

x11rb::atom_manager! {
    TestAtoms: TestAtomsCookie {
        _NET_ACTIVE_WINDOW,
        _NET_WM_NAME,
        _NET_WM_PID,
        UTF8_STRING,
    }
}

/// The applications (and, when asked, the window manager) on the test display.
struct Desk {
    conn: RustConnection,
    root: Window,
    atoms: TestAtoms,
}

impl Desk {
    fn connect(xvfb: &Xvfb) -> Self {
        let (conn, screen) = RustConnection::connect(Some(&xvfb.name())).expect("connect desk");
        let root = conn.setup().roots[screen].root;
        let atoms = TestAtoms::new(&conn)
            .expect("intern atoms")
            .reply()
            .expect("atoms");
        Self { conn, root, atoms }
    }

    /// A mapped top-level window with `WM_CLASS`, `_NET_WM_NAME`, `WM_NAME` and `_NET_WM_PID`
    /// (this test process).
    fn app_window(&self, instance: &str, class: &str, title: &str) -> Window {
        let window = self.bare_window(self.root);
        self.set_class(window, format!("{instance}\0{class}\0").as_bytes());
        self.set_title(window, title);
        self.set_wm_name(window, title.as_bytes());
        self.conn
            .change_property32(
                PropMode::REPLACE,
                window,
                self.atoms._NET_WM_PID,
                AtomEnum::CARDINAL,
                &[std::process::id()],
            )
            .expect("send")
            .check()
            .expect("set _NET_WM_PID");
        window
    }

    /// A mapped window without any properties.
    fn bare_window(&self, parent: Window) -> Window {
        let window = self.conn.generate_id().expect("window id");
        self.conn
            .create_window(
                0,
                window,
                parent,
                0,
                0,
                100,
                100,
                0,
                WindowClass::INPUT_OUTPUT,
                0,
                &CreateWindowAux::new(),
            )
            .expect("send")
            .check()
            .expect("create window");
        self.conn
            .map_window(window)
            .expect("send")
            .check()
            .expect("map");
        window
    }

    fn set_class(&self, window: Window, raw: &[u8]) {
        self.conn
            .change_property8(
                PropMode::REPLACE,
                window,
                AtomEnum::WM_CLASS,
                AtomEnum::STRING,
                raw,
            )
            .expect("send")
            .check()
            .expect("set WM_CLASS");
    }

    fn set_title(&self, window: Window, title: &str) {
        self.conn
            .change_property8(
                PropMode::REPLACE,
                window,
                self.atoms._NET_WM_NAME,
                self.atoms.UTF8_STRING,
                title.as_bytes(),
            )
            .expect("send")
            .check()
            .expect("set _NET_WM_NAME");
    }

    /// `WM_NAME` as an ICCCM `STRING` (Latin-1 bytes).
    fn set_wm_name(&self, window: Window, raw: &[u8]) {
        self.conn
            .change_property8(
                PropMode::REPLACE,
                window,
                AtomEnum::WM_NAME,
                AtomEnum::STRING,
                raw,
            )
            .expect("send")
            .check()
            .expect("set WM_NAME");
    }

    fn delete_property(&self, window: Window, property: u32) {
        self.conn
            .delete_property(window, property)
            .expect("send")
            .check()
            .expect("delete property");
    }

    /// What an EWMH window manager does when the user picks a window.
    fn activate(&self, window: Window) {
        self.conn
            .change_property32(
                PropMode::REPLACE,
                self.root,
                self.atoms._NET_ACTIVE_WINDOW,
                AtomEnum::WINDOW,
                &[window],
            )
            .expect("send")
            .check()
            .expect("set _NET_ACTIVE_WINDOW");
        self.focus(window);
    }

    /// Keyboard focus only, as happens without a window manager.
    fn focus(&self, window: Window) {
        self.conn
            .set_input_focus(InputFocus::PARENT, window, x11rb::CURRENT_TIME)
            .expect("send")
            .check()
            .expect("set input focus");
    }

    /// A pointer motion through XTEST: real input as far as the server's idle timer goes.
    fn move_pointer(&self, x: i16, y: i16) {
        self.conn
            .xtest_fake_input(
                MOTION_NOTIFY_EVENT,
                0,
                x11rb::CURRENT_TIME,
                self.root,
                x,
                y,
                0,
            )
            .expect("send")
            .check()
            .expect("fake motion");
    }

    fn screensaver(&self, mode: ScreenSaver) {
        self.conn
            .force_screen_saver(mode)
            .expect("send")
            .check()
            .expect("force screensaver");
    }

    fn destroy(&self, window: Window) {
        self.conn
            .destroy_window(window)
            .expect("send")
            .check()
            .expect("destroy window");
    }
}

fn backend(xvfb: &Xvfb) -> X11Backend {
    X11Backend::connect(&xvfb.name()).expect("open the X11 backend")
}

fn focus(backend: &mut X11Backend) -> Focus {
    backend
        .sample()
        .expect("sample")
        .focus
        .expect("a focused window")
}

/// The test binary's process name as the kernel reports it (`comm`, at most 15 bytes).
fn own_process_name() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("read /proc/self/comm")
        .trim()
        .to_string()
}

#[test]
fn reports_the_active_windows_app_title_and_process() {
    let xvfb = Xvfb::start();
    let desk = Desk::connect(&xvfb);
    let window = desk.app_window("navigator", "Firefox", "Invoice 42 – Firefox");
    desk.activate(window);

    let mut backend = backend(&xvfb);
    assert_eq!(backend.describe(), format!("x11 {}", xvfb.name()));
    let focus = focus(&mut backend);
    assert_eq!(focus.app, "Firefox");
    assert_eq!(focus.title, "Invoice 42 – Firefox");
    assert_eq!(focus.window, u64::from(window));
    let process = focus.process.expect("the process name from _NET_WM_PID");
    assert!(
        own_process_name().starts_with(&process) || process.starts_with(&own_process_name()),
        "process {process:?} is not this test ({:?})",
        own_process_name()
    );
}

#[test]
fn a_title_change_is_seen() {
    let xvfb = Xvfb::start();
    let desk = Desk::connect(&xvfb);
    let window = desk.app_window("libreoffice", "libreoffice-calc", "Q3.ods");
    desk.activate(window);
    let mut backend = backend(&xvfb);
    assert_eq!(focus(&mut backend).title, "Q3.ods");

    desk.set_title(window, "Q4.ods — LibreOffice Calc");
    assert_eq!(focus(&mut backend).title, "Q4.ods — LibreOffice Calc");
}

#[test]
fn switching_focus_between_two_windows_is_seen() {
    let xvfb = Xvfb::start();
    let desk = Desk::connect(&xvfb);
    let mail = desk.app_window("mail", "Thunderbird", "Inbox");
    let sheet = desk.app_window("calc", "Calc", "Ledger");
    let mut backend = backend(&xvfb);

    desk.activate(mail);
    assert_eq!(focus(&mut backend).app, "Thunderbird");
    desk.activate(sheet);
    let now = focus(&mut backend);
    assert_eq!((now.app.as_str(), now.title.as_str()), ("Calc", "Ledger"));
    desk.activate(mail);
    assert_eq!(focus(&mut backend).window, u64::from(mail));
}

#[test]
fn without_a_window_manager_input_focus_is_walked_up_to_the_client() {
    let xvfb = Xvfb::start();
    let desk = Desk::connect(&xvfb);
    let mut backend = backend(&xvfb);
    // A fresh server: focus is PointerRoot, nothing is focused.
    assert_eq!(backend.sample().expect("sample").focus, None);

    // A toolkit focuses a child of its top-level window; the child has no WM_CLASS.
    let client = desk.app_window("term", "XTerm", "ignored");
    let child = desk.bare_window(client);
    // Only an ICCCM WM_NAME in Latin-1: "Café" with é = 0xE9.
    desk.delete_property(client, desk.atoms._NET_WM_NAME);
    desk.set_wm_name(client, b"Caf\xe9");
    desk.focus(child);

    let focus = focus(&mut backend);
    assert_eq!(focus.app, "XTerm");
    assert_eq!(focus.title, "Café");
    assert_eq!(focus.window, u64::from(client));
}

#[test]
fn a_reparenting_frame_without_ewmh_leads_to_its_client() {
    let xvfb = Xvfb::start();
    let desk = Desk::connect(&xvfb);
    // A window manager's frame (no WM_CLASS) holding the client, with focus on the frame.
    let frame = desk.bare_window(desk.root);
    let client = desk.bare_window(frame);
    desk.set_class(client, b"evince\0Evince\0");
    desk.focus(frame);

    let mut backend = backend(&xvfb);
    let focus = focus(&mut backend);
    assert_eq!(focus.app, "Evince");
    assert_eq!(focus.window, u64::from(client));
    assert_eq!(focus.title, "");
    assert_eq!(focus.process, None);
}

#[test]
fn idle_time_grows_without_input_and_resets_on_input() {
    let xvfb = Xvfb::start();
    let desk = Desk::connect(&xvfb);
    let mut backend = backend(&xvfb);
    desk.move_pointer(10, 10);

    let before = backend.sample().expect("sample").idle_ms;
    std::thread::sleep(Duration::from_millis(1500));
    let after = backend.sample().expect("sample").idle_ms;
    assert!(
        after >= before + 1000,
        "idle did not grow: {before} ms, then {after} ms"
    );

    desk.move_pointer(200, 150);
    let reset = backend.sample().expect("sample").idle_ms;
    assert!(reset < 1000, "idle not reset by input: {reset} ms");
    assert!(!backend.sample().expect("sample").locked);
}

#[test]
fn an_active_screensaver_reads_as_locked() {
    let xvfb = Xvfb::start();
    let desk = Desk::connect(&xvfb);
    let mut backend = backend(&xvfb);
    assert!(!backend.sample().expect("sample").locked);

    desk.screensaver(ScreenSaver::ACTIVE);
    assert!(backend.sample().expect("sample").locked);

    desk.screensaver(ScreenSaver::RESET);
    assert!(!backend.sample().expect("sample").locked);
}

#[test]
fn window_exists_until_the_window_is_destroyed() {
    let xvfb = Xvfb::start();
    let desk = Desk::connect(&xvfb);
    let window = desk.app_window("a", "A", "a");
    let mut backend = backend(&xvfb);

    assert!(backend.window_exists(u64::from(window)).expect("exists"));
    desk.destroy(window);
    assert!(!backend.window_exists(u64::from(window)).expect("exists"));
    assert!(!backend.window_exists(0).expect("exists"));
    assert!(!backend.window_exists(u64::MAX).expect("exists"));
}

#[test]
fn an_active_window_that_was_destroyed_reads_as_no_focus() {
    let xvfb = Xvfb::start();
    let desk = Desk::connect(&xvfb);
    let window = desk.app_window("a", "A", "a");
    desk.activate(window);
    // A window manager that has not caught up yet: _NET_ACTIVE_WINDOW names a dead window.
    desk.destroy(window);

    let mut backend = backend(&xvfb);
    assert_eq!(backend.sample().expect("sample").focus, None);
}

#[test]
fn long_and_malformed_properties_are_bounded_not_trusted() {
    let xvfb = Xvfb::start();
    let desk = Desk::connect(&xvfb);
    let window = desk.bare_window(desk.root);
    desk.activate(window);
    let mut backend = backend(&xvfb);

    // Nothing set at all: an empty app and title, no process.
    let bare = focus(&mut backend);
    assert_eq!(
        (bare.app.as_str(), bare.title.as_str(), bare.process),
        ("", "", None)
    );

    // 3000 bytes of two-byte characters: cut to at most 1 KiB, on a character boundary.
    let long = "ü".repeat(1500);
    desk.set_title(window, &long);
    let title = focus(&mut backend).title;
    assert!(title.len() <= MAX_TITLE_BYTES && title.len() >= MAX_TITLE_BYTES - 4);
    assert!(long.starts_with(&title));

    // Wrong formats and types: _NET_WM_NAME as 32-bit numbers, _NET_WM_PID as text, WM_CLASS
    // without NULs and with invalid UTF-8. Fall back, never panic.
    desk.conn
        .change_property32(
            PropMode::REPLACE,
            window,
            desk.atoms._NET_WM_NAME,
            desk.atoms.UTF8_STRING,
            &[0xdead_beef, 7],
        )
        .expect("send")
        .check()
        .expect("set odd _NET_WM_NAME");
    desk.set_wm_name(window, b"fallback");
    desk.conn
        .change_property8(
            PropMode::REPLACE,
            window,
            desk.atoms._NET_WM_PID,
            AtomEnum::STRING,
            b"1234",
        )
        .expect("send")
        .check()
        .expect("set odd _NET_WM_PID");
    desk.set_class(window, b"inst\xff");
    let odd = focus(&mut backend);
    assert_eq!(odd.title, "fallback");
    assert_eq!(odd.process, None);
    assert_eq!(odd.app, "inst\u{ff}");
}

#[test]
fn killing_the_x_server_disconnects_and_a_new_backend_reconnects() {
    let mut xvfb = Xvfb::start();
    let mut backend = backend(&xvfb);
    backend.sample().expect("sample before the crash");

    xvfb.crash();
    let err = backend.sample().expect_err("the server is gone");
    assert!(matches!(err, CaptureError::Disconnected(_)), "{err:?}");
    // And it stays disconnected; the caller opens a new backend instead.
    assert!(matches!(
        backend.window_exists(1),
        Err(CaptureError::Disconnected(_))
    ));
    assert!(matches!(
        X11Backend::connect(&xvfb.name()),
        Err(CaptureError::Disconnected(_))
    ));

    xvfb.restart();
    let desk = Desk::connect(&xvfb);
    let window = desk.app_window("after", "After", "restart");
    desk.activate(window);
    let mut backend = X11Backend::connect(&xvfb.name()).expect("reconnect after restart");
    assert_eq!(focus(&mut backend).app, "After");
}

#[test]
fn an_unreachable_display_is_disconnected_unless_this_is_wayland() {
    // A display number nobody serves (checked, and far from the ones the tests start).
    let number = (6000..7000)
        .find(|&n| !display_in_use(n))
        .expect("an unused display number");
    let display = format!(":{number}");

    let err = open_for_session(Some(&display), None).expect_err("no server there");
    assert!(matches!(err, CaptureError::Disconnected(_)), "{err:?}");

    let err = open_for_session(Some(&display), Some("wayland-0")).expect_err("no XWayland");
    match err {
        CaptureError::Unavailable(why) => assert!(why.starts_with("Wayland session"), "{why}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }

    let err = open_for_session(Some("not a display"), None).expect_err("malformed");
    assert!(matches!(err, CaptureError::Unavailable(_)), "{err:?}");
}

/// Runs in a child process of this test binary with `DISPLAY` and `WAYLAND_DISPLAY` removed,
/// so the real environment lookup of `open_backend` is exercised without changing the
/// environment of the other tests.
#[test]
fn display_unset_is_unavailable_with_a_clear_message() {
    const CHILD: &str = "BACKLIGHT_X11_TEST_CHILD";
    const NAME: &str = "display_unset_is_unavailable_with_a_clear_message";
    if std::env::var_os(CHILD).is_some() {
        let err = open_backend().err().expect("no display, no backend");
        match err {
            CaptureError::Unavailable(why) => assert_eq!(
                why,
                "no X display ($DISPLAY unset): activity capture is off; explicit item \
                 reports still work"
            ),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        return;
    }
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args([NAME, "--exact", "--test-threads=1"])
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env(CHILD, "1")
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

//! Stop requests from the Windows session, so `run` ends as cleanly as on SIGTERM.
//!
//! A console program that loads user32 (the capture does) gets no `CTRL_LOGOFF_EVENT` or
//! `CTRL_SHUTDOWN_EVENT`; Windows tells top-level windows instead. So `run` keeps one hidden,
//! never-shown top-level window on a thread of its own, and turns
//!
//! - `WM_ENDSESSION` (logoff, shutdown, restart) into a stop request, then holds the window
//!   procedure — and with it the end of the session — until `run` has committed what it holds
//!   (the open span) or [`END_SESSION_GRACE`] passed;
//! - `WM_CLOSE` (`taskkill /im backlight-agent.exe` without `/f`, an installer closing running
//!   programs) into a stop request.
//!
//! The window has no title bar, no taskbar button and never becomes visible; it is not a
//! message-only window because those do not receive the session-end broadcasts.

use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use windows_sys::Win32::Foundation::{HWND, LPARAM, LRESULT, WPARAM};
use windows_sys::Win32::System::LibraryLoader::GetModuleHandleW;
use windows_sys::Win32::UI::WindowsAndMessaging::{
    CreateWindowExW, DefWindowProcW, DispatchMessageW, GetMessageW, RegisterClassW,
    TranslateMessage, MSG, WM_CLOSE, WM_ENDSESSION, WM_QUERYENDSESSION, WNDCLASSW, WS_OVERLAPPED,
};

use super::wide;

/// How long a session end waits for `run` to commit its open span. Windows shows "this app is
/// preventing sign-out" after about 5 s.
pub const END_SESSION_GRACE: Duration = Duration::from_secs(4);

/// The window class, also what `taskkill` and Spy++ show.
const CLASS_NAME: &str = "BacklightAgentSession";

/// What the window procedure shares with `run`: where stop requests go, and whether `run` is
/// done.
struct Shared {
    requests: Mutex<Option<mpsc::UnboundedSender<&'static str>>>,
    finished: Mutex<bool>,
    finished_changed: Condvar,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| Shared {
        requests: Mutex::new(None),
        finished: Mutex::new(false),
        finished_changed: Condvar::new(),
    })
}

/// Stop requests for one `run`. Dropping it tells a waiting session end that `run` is done.
#[derive(Debug)]
pub struct StopRequests {
    receiver: mpsc::UnboundedReceiver<&'static str>,
}

impl StopRequests {
    /// Starts the hidden window on its own thread.
    pub fn listen() -> std::io::Result<StopRequests> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let shared = shared();
        *shared.requests.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
        *shared.finished.lock().unwrap_or_else(|e| e.into_inner()) = false;
        std::thread::Builder::new()
            .name("session-end".into())
            .spawn(message_loop)?;
        Ok(StopRequests { receiver })
    }

    /// The next stop request, named for the log.
    pub async fn next(&mut self) -> &'static str {
        match self.receiver.recv().await {
            Some(why) => why,
            // The window thread could not create its window: never report a request.
            None => std::future::pending().await,
        }
    }
}

impl Drop for StopRequests {
    fn drop(&mut self) {
        let shared = shared();
        *shared.requests.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *shared.finished.lock().unwrap_or_else(|e| e.into_inner()) = true;
        shared.finished_changed.notify_all();
    }
}

fn request_stop(why: &'static str) {
    if let Some(sender) = shared()
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        let _ = sender.send(why);
    }
}

/// Blocks until `run` is done or the grace period is over.
fn wait_until_finished() {
    let shared = shared();
    let finished = shared.finished.lock().unwrap_or_else(|e| e.into_inner());
    let _ = shared
        .finished_changed
        .wait_timeout_while(finished, END_SESSION_GRACE, |done| !*done);
}

unsafe extern "system" fn window_procedure(
    hwnd: HWND,
    message: u32,
    wparam: WPARAM,
    lparam: LPARAM,
) -> LRESULT {
    match message {
        // Yes, the session may end.
        WM_QUERYENDSESSION => 1,
        WM_ENDSESSION => {
            if wparam != 0 {
                request_stop("the Windows session is ending");
                wait_until_finished();
            }
            0
        }
        WM_CLOSE => {
            request_stop("WM_CLOSE");
            0
        }
        // SAFETY: the arguments are the ones Windows passed in.
        _ => unsafe { DefWindowProcW(hwnd, message, wparam, lparam) },
    }
}

fn message_loop() {
    let class_name = wide(CLASS_NAME);
    // SAFETY: null asks for this executable's module handle.
    let instance = unsafe { GetModuleHandleW(std::ptr::null()) };
    let class = WNDCLASSW {
        style: 0,
        lpfnWndProc: Some(window_procedure),
        cbClsExtra: 0,
        cbWndExtra: 0,
        hInstance: instance,
        hIcon: std::ptr::null_mut(),
        hCursor: std::ptr::null_mut(),
        hbrBackground: std::ptr::null_mut(),
        lpszMenuName: std::ptr::null(),
        lpszClassName: class_name.as_ptr(),
    };
    // SAFETY: `class` and the name it points to live through the call. Registering twice
    // (a second `run` in one process, as in tests) fails harmlessly: the class exists.
    unsafe { RegisterClassW(&class) };
    let title = wide("Backlight agent");
    // SAFETY: a top-level window of the class above, never shown (no WS_VISIBLE).
    let hwnd = unsafe {
        CreateWindowExW(
            0,
            class_name.as_ptr(),
            title.as_ptr(),
            WS_OVERLAPPED,
            0,
            0,
            0,
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            instance,
            std::ptr::null(),
        )
    };
    if hwnd.is_null() {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot create the session window: a logoff may cut off the last span"
        );
        *shared().requests.lock().unwrap_or_else(|e| e.into_inner()) = None;
        return;
    }
    // SAFETY: zeroed MSG is a valid out-parameter.
    let mut message: MSG = unsafe { std::mem::zeroed() };
    // SAFETY: standard message loop on the thread that owns the window; ends with the process.
    while unsafe { GetMessageW(&mut message, std::ptr::null_mut(), 0, 0) } > 0 {
        unsafe {
            TranslateMessage(&message);
            DispatchMessageW(&message);
        }
    }
}

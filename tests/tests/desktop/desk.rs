//! A throwaway X desktop: `Xvfb` on a free display number, windows made with `xmessage`,
//! focus, titles and input driven with `xdotool`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backlight_e2e::harness::xvfb::{regex_escape, xdotool, Xvfb};

/// How long windows may take to appear on a busy machine.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Desk {
    windows: Vec<Child>,
    // Dropped after the windows.
    xvfb: Xvfb,
}

impl Desk {
    /// Starts Xvfb on the first free display number from :120 (other tests use :90 upward).
    pub fn start() -> Desk {
        Desk {
            windows: Vec::new(),
            xvfb: Xvfb::start(120),
        }
    }

    pub fn display(&self) -> &str {
        self.xvfb.display()
    }

    fn xdotool(&self, args: &[&str]) -> Option<String> {
        xdotool(self.display(), args)
    }

    /// Opens a window of app `instance` (class `Xmessage`) titled `title`; returns its id.
    pub fn open(&mut self, instance: &str, title: &str) -> String {
        let child = Command::new("xmessage")
            .args([
                "-name",
                instance,
                "-title",
                title,
                "Backlight end-to-end test window",
            ])
            .env("DISPLAY", self.display())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run xmessage (apt-get install x11-utils): {e}"));
        self.windows.push(child);
        let pattern = format!("^{}$", regex_escape(title));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(found) = self.xdotool(&["search", "--name", &pattern]) {
                if let Some(id) = found.lines().next() {
                    return id.to_string();
                }
            }
            assert!(Instant::now() < deadline, "window {title:?} did not appear");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn focus(&self, window: &str) {
        self.xdotool(&["windowfocus", window])
            .unwrap_or_else(|| panic!("cannot focus window {window}"));
    }

    pub fn retitle(&self, window: &str, title: &str) {
        self.xdotool(&["set_window", "--name", title, window])
            .unwrap_or_else(|| panic!("cannot retitle window {window}"));
    }

    /// Real input: resets the X server's idle timer.
    pub fn touch(&self) {
        self.xdotool(&["mousemove", "--sync", "10", "10"]);
        self.xdotool(&["mousemove", "--sync", "20", "20"]);
    }
}

impl Drop for Desk {
    fn drop(&mut self) {
        for window in &mut self.windows {
            let _ = window.kill();
            let _ = window.wait();
        }
    }
}

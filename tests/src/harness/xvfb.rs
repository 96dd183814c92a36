//! A throwaway X server: `Xvfb` on the first free display number from a given one, stopped
//! when dropped. The desktop tests put windows on it (xmessage, or Wine's Win32 windows).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long Xvfb may take to accept connections on a busy machine.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    /// Starts Xvfb on the first free display number from `first` (skipping numbers whose
    /// socket or lock file exists, and retrying when another process wins the race). Panics,
    /// with the package to install, when Xvfb is missing.
    pub fn start(first: u32) -> Xvfb {
        for number in first..first + 300 {
            if Path::new(&format!("/tmp/.X11-unix/X{number}")).exists()
                || Path::new(&format!("/tmp/.X{number}-lock")).exists()
            {
                continue;
            }
            let mut child = match Command::new("Xvfb")
                .args([
                    &format!(":{number}"),
                    "-screen",
                    "0",
                    "1024x768x24",
                    "-nolisten",
                    "tcp",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            {
                Ok(child) => child,
                Err(e) => panic!("cannot start Xvfb (apt-get install xvfb): {e}"),
            };
            let display = format!(":{number}");
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // taken by someone else meanwhile; try the next number
                }
                if Path::new(&format!("/tmp/.X11-unix/X{number}")).exists()
                    && xdotool(&display, &["getmouselocation"]).is_some()
                {
                    return Xvfb { child, display };
                }
                assert!(Instant::now() < deadline, "Xvfb :{number} did not start");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("no free X display number from :{first}");
    }

    /// The display, e.g. `:120`.
    pub fn display(&self) -> &str {
        &self.display
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `xdotool ARGS` on `display`; its trimmed output on success. Panics, with the package
/// to install, when xdotool is missing.
pub fn xdotool(display: &str, args: &[&str]) -> Option<String> {
    let output = Command::new("xdotool")
        .args(args)
        .env("DISPLAY", display)
        .output()
        .unwrap_or_else(|e| panic!("cannot run xdotool (apt-get install xdotool): {e}"));
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// `text` as a POSIX extended regex matching itself (for `xdotool search --name`).
pub fn regex_escape(text: &str) -> String {
    text.chars()
        .map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                format!("\\{c}")
            } else {
                c.to_string()
            }
        })
        .collect()
}

//! End-to-end tests of desktop capture: a real X server (Xvfb) with real windows (xmessage,
//! driven by xdotool), the real agent with its X11 backend, the real server and ClickHouse.
//!
//! Run with `cargo build --workspace --bins && cargo test -p backlight-e2e --test desktop`.
//! Needs `Xvfb`, `xmessage` and `xdotool` on the PATH (apt-get install xvfb x11-utils xdotool).

mod desk;
mod flow;

use std::process::Stdio;
use std::time::Duration;

use backlight_e2e::harness::bins;
use backlight_e2e::*;

/// `backlight-agent run` on `display`, logging to the agent's log. The harness's `spawn_run`
/// cannot set the environment, and the agent finds its X server through `DISPLAY`.
pub struct DesktopRun {
    child: tokio::process::Child,
}

impl DesktopRun {
    pub fn spawn(agent: &Agent, display: &str) -> DesktopRun {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(agent.log_path())
            .expect("opening the agent log");
        let child = tokio::process::Command::new(bins::agent())
            .arg("--data-dir")
            .arg(agent.data_dir())
            .args([
                "run",
                "--no-browser",
                "--local-api",
                "off",
                "--batch-max-age",
                "200ms",
                "--policy-interval",
                "1s",
                "--health-interval",
                "2s",
            ])
            .env("DISPLAY", display)
            .env_remove("WAYLAND_DISPLAY")
            .env("BACKLIGHT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("starting backlight-agent run");
        DesktopRun { child }
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn terminate(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the agent did not stop within 30 s of SIGTERM")
            .expect("waiting for the agent");
        assert!(status.success(), "the agent exited with {status}");
    }
}

/// `status --json` as loose JSON (the harness's `AgentStatus` predates the desktop fields).
pub async fn status(agent: &Agent) -> serde_json::Value {
    let output = agent.command(&["status", "--json"]).await;
    assert!(output.status.success(), "status failed");
    serde_json::from_slice(&output.stdout).expect("status --json prints JSON")
}

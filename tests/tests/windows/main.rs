//! End-to-end tests of the Windows agent on a real Windows API: the agent cross-compiled for
//! `x86_64-pc-windows-gnu`, run under Wine on Xvfb with openbox, with real Win32 windows,
//! against the real Linux server and a throwaway ClickHouse on loopback.
//!
//! Run with `scripts/test.sh`, or by hand:
//! `cargo build --workspace --bins && cargo build --profile wine-test -p backlight-agent
//! --target x86_64-pc-windows-gnu --bins --example capture_probe && cargo test -p backlight-e2e
//! --test windows`. Needs wine, mingw-w64, openbox, wmctrl, xdotool, Xvfb and msitools (wixl); without
//! them the test fails and says what to install, it never skips.
//!
//! One test function runs the phases in order on one Wine prefix, one desktop and one server
//! (a prefix boot is the slowest part of the setup): the desktop flow (`flow.rs`), then
//! autostart and the launcher, then the MSI (`deploy.rs`).

mod deploy;
mod flow;
mod wine;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use backlight_e2e::harness::process::{print_log_if_panicking, Child};
use backlight_e2e::*;

use wine::Wine;

/// The Windows agent with a data directory of its own, run through Wine.
pub struct WinAgent {
    exe: PathBuf,
    data_dir: Option<PathBuf>,
    log: PathBuf,
}

impl WinAgent {
    /// The staged agent with a fresh data directory under the test's scratch space.
    pub fn new(wine: &Wine, name: &str) -> WinAgent {
        WinAgent {
            exe: wine.bin("backlight-agent.exe"),
            data_dir: Some(wine.scratch(name).join("data")),
            log: wine.scratch(&format!("{name}.log")),
        }
    }

    /// The agent at `exe` (e.g. installed by the MSI) with the default data directory
    /// (`%LOCALAPPDATA%\Backlight\agent`).
    pub fn installed(wine: &Wine, exe: PathBuf, name: &str) -> WinAgent {
        WinAgent {
            exe,
            data_dir: None,
            log: wine.scratch(&format!("{name}.log")),
        }
    }

    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    fn args<'a>(&'a self, dir: &'a str, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = Vec::new();
        if self.data_dir.is_some() {
            all.extend(["--data-dir", dir]);
        }
        all.extend_from_slice(args);
        all
    }

    fn win_dir(&self) -> String {
        self.data_dir
            .as_deref()
            .map(Wine::win_path)
            .unwrap_or_default()
    }

    /// A one-shot command (`enroll`, `status`, `consent`, …).
    pub async fn command(&self, wine: &Wine, args: &[&str]) -> Output {
        let dir = self.win_dir();
        wine.run(&self.exe, &self.args(&dir, args)).await
    }

    /// A command that must succeed; its standard output.
    pub async fn ok(&self, wine: &Wine, args: &[&str]) -> String {
        let output = self.command(wine, args).await;
        assert!(
            output.status.success(),
            "backlight-agent {} failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `status --json`.
    pub async fn status(&self, wine: &Wine) -> serde_json::Value {
        let out = self.ok(wine, &["status", "--json"]).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
    }

    /// `run` for the desktop, with the test's short intervals, in the background.
    pub fn spawn_run(&self, wine: &Wine) -> Child {
        self.spawn_run_with(wine, &["--no-browser"])
    }

    /// [`WinAgent::spawn_run`] that opens the consent page in the default browser, as an
    /// employee's first start does.
    pub fn spawn_run_opening_browser(&self, wine: &Wine) -> Child {
        self.spawn_run_with(wine, &[])
    }

    fn spawn_run_with(&self, wine: &Wine, extra: &[&str]) -> Child {
        let dir = self.win_dir();
        let mut run = vec![
            "run",
            "--local-api",
            "off",
            "--batch-max-age",
            "200ms",
            "--policy-interval",
            "1s",
            "--health-interval",
            "2s",
        ];
        run.extend_from_slice(extra);
        let args = self.args(&dir, &run);
        wine.spawn("backlight-agent.exe", &self.exe, &args, &self.log)
    }

    pub fn log_tail(&self) -> String {
        backlight_e2e::harness::process::log_tail(&self.log, 80)
    }
}

impl Drop for WinAgent {
    fn drop(&mut self) {
        print_log_if_panicking("backlight-agent.exe", &self.log);
    }
}

/// Stops every `backlight-agent.exe` of the prefix the way an administrator or an installer
/// does (`taskkill` without `/f`: WM_CLOSE), and waits for `run` to exit cleanly.
pub async fn stop_gracefully(wine: &Wine, run: &mut Child, agent: &WinAgent) {
    let output = wine
        .system("taskkill", &["/im", "backlight-agent.exe"])
        .await;
    assert!(
        output.status.success(),
        "taskkill: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let status = run
        .wait_timeout(Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("the agent did not stop on WM_CLOSE\n{}", agent.log_tail()));
    assert!(
        status.success(),
        "the agent exited with {status}\n{}",
        agent.log_tail()
    );
    assert!(
        agent.log_tail().contains("WM_CLOSE"),
        "the agent's log names the request it stopped on:\n{}",
        agent.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_agent_under_wine() {
    let mut wine = Wine::start().await;
    let spine = Spine::start("win").await;
    flow::desktop(&mut wine, &spine).await;
    deploy::autostart_and_launcher(&wine, &spine).await;
    deploy::msi(&wine, &spine).await;
}

//! The real `backlight-agent` binary with its own data directory.
//!
//! The command-line contract the tests rely on:
//! `backlight-agent --data-dir DIR enroll --server URL --key KEY`,
//! `backlight-agent --data-dir DIR run --source file:PATH|synthetic|none [--rate N]
//! [--exit-when-drained] [--batch-max-events N] [--batch-max-age 200ms] [--health-interval 60s]`,
//! and `backlight-agent --data-dir DIR status --json`.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::time::Duration;

use serde::Deserialize;
use tempfile::TempDir;
use uuid::Uuid;

use super::bins;
use super::process::{log_tail, print_log_if_panicking, Child};

/// How long `enroll` or `status` may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// What `backlight-agent status --json` prints.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct AgentStatus {
    pub enrolled: bool,
    pub device_id: Option<Uuid>,
    pub tenant_id: Option<String>,
    pub server_url: Option<String>,
    pub spool_depth: u64,
    pub last_seq: u64,
    pub events_dropped: u64,
    pub events_rejected: u64,
    pub last_upload_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// One desktop: a data directory and, at times, a running `backlight-agent run`.
pub struct Agent {
    dir: TempDir,
    run: Option<Child>,
}

impl Default for Agent {
    fn default() -> Self {
        Agent::new()
    }
}

impl Agent {
    pub fn new() -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("backlight-e2e-agent-")
            .tempdir()
            .expect("creating a temporary directory for the agent");
        Agent { dir, run: None }
    }

    /// The agent's `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A path inside the test's scratch space for this agent (e.g. a file source's input).
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Where every `run` of this agent logs (appended, one header line per run).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// Runs a one-shot agent command (`enroll`, `status`, …) and returns its output.
    pub async fn command(&self, args: &[&str]) -> Output {
        let mut command = tokio::process::Command::new(bins::agent());
        command
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .kill_on_drop(true);
        match tokio::time::timeout(COMMAND_TIMEOUT, command.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => panic!("running `backlight-agent {}`: {e}", args.join(" ")),
            Err(_) => panic!(
                "`backlight-agent {}` took more than {COMMAND_TIMEOUT:?}",
                args.join(" ")
            ),
        }
    }

    /// `enroll --server URL --key KEY`, whatever the outcome.
    pub async fn try_enroll(&self, server_url: &str, key: &str) -> Output {
        self.command(&["enroll", "--server", server_url, "--key", key])
            .await
    }

    /// Enrolls; panics with the agent's output if that fails.
    pub async fn enroll(&self, server_url: &str, key: &str) {
        let output = self.try_enroll(server_url, key).await;
        assert!(
            output.status.success(),
            "agent enroll failed: {}",
            describe(&output)
        );
    }

    /// `status --json`, parsed.
    pub async fn status(&self) -> AgentStatus {
        let output = self.command(&["status", "--json"]).await;
        assert!(
            output.status.success(),
            "agent status failed: {}",
            describe(&output)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "`status --json` did not print the expected JSON ({e}): {}",
                describe(&output)
            )
        })
    }

    /// Starts `run <args>` in the background (output appended to the agent's log). Panics if a
    /// run is already going.
    pub fn spawn_run<S: AsRef<str>>(&mut self, args: &[S]) {
        if let Some(run) = &mut self.run {
            assert!(run.try_status().is_some(), "the agent is already running");
        }
        let mut all = vec![
            "--data-dir".to_string(),
            self.data_dir().display().to_string(),
            "run".into(),
        ];
        all.extend(args.iter().map(|a| a.as_ref().to_string()));
        self.run = Some(Child::spawn(
            "backlight-agent",
            &bins::agent(),
            &all,
            &self.log_path(),
        ));
    }

    /// Whether a run is going.
    pub fn is_running(&mut self) -> bool {
        self.run.as_mut().is_some_and(|r| r.try_status().is_none())
    }

    /// SIGKILLs the running agent (no chance to flush or clean up).
    pub async fn kill9(&mut self) -> Option<ExitStatus> {
        match self.run.take() {
            Some(mut run) => Some(run.kill9().await),
            None => None,
        }
    }

    /// SIGTERMs the running agent and waits (bounded) for it to exit.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut run = self.run.take().expect("the agent is not running");
        run.signal(libc::SIGTERM);
        match run.wait_timeout(timeout).await {
            Some(status) => status,
            None => panic!(
                "the agent did not exit within {timeout:?} of SIGTERM\n--- agent log ---\n{}",
                self.log_tail(60)
            ),
        }
    }

    /// Waits for the running agent to exit on its own (e.g. `--exit-when-drained`); panics with
    /// the agent's log if it does not within `timeout`, or exits unsuccessfully.
    pub async fn wait_success(&mut self, timeout: Duration) {
        let mut run = self.run.take().expect("the agent is not running");
        match run.wait_timeout(timeout).await {
            Some(status) if status.success() => {}
            Some(status) => panic!(
                "the agent exited with {status}\n--- agent log ---\n{}",
                self.log_tail(60)
            ),
            None => {
                // Keep it for the log printed on failure, and kill it.
                run.kill9().await;
                panic!(
                    "the agent did not exit within {timeout:?}\n--- agent log ---\n{}",
                    self.log_tail(60)
                )
            }
        }
    }

    /// Runs `run <args>` (which should include `--exit-when-drained`) to completion.
    pub async fn run_until_drained<S: AsRef<str>>(&mut self, args: &[S], timeout: Duration) {
        self.spawn_run(args);
        self.wait_success(timeout).await;
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        print_log_if_panicking("backlight-agent", &self.log_path());
    }
}

/// Exit status, stdout and stderr of a command, for failure messages.
pub fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Writes a file source's input: one line per event.
pub fn write_lines(path: &Path, lines: impl IntoIterator<Item = String>) {
    let mut text = String::new();
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

//! One child process of a test (a server or an agent run) with its output in a log file.
//!
//! Children get `PR_SET_PDEATHSIG = SIGKILL`, so a test executable that dies (or a test thread
//! that ends) never leaves a server or agent behind, and dropping a [`Child`] kills it too.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Command;

/// A running (or finished) child with its stdout and stderr appended to `log`.
pub struct Child {
    name: String,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Child {
    /// Starts `program args…`, stdout and stderr appended to `log` (after a header line naming
    /// the command, so several runs in one log file stay readable).
    pub fn spawn<I, S>(name: &str, program: &Path, args: I, log: &Path) -> Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Child::spawn_with_env(name, program, args, &[], log)
    }

    /// [`Child::spawn`] with extra environment variables.
    pub fn spawn_with_env<I, S>(
        name: &str,
        program: &Path,
        args: I,
        env: &[(String, String)],
        log: &Path,
    ) -> Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        {
            use std::io::Write;
            let shown: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
            let _ = writeln!(
                file,
                "===== {} {} =====",
                program.display(),
                shown.join(" ")
            );
        }
        let stderr = file.try_clone().expect("cloning a log file handle");
        let mut command = Command::new(program);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .env(
                "BACKLIGHT_LOG",
                std::env::var("BACKLIGHT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true);
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({}): {e}", program.display()));
        Child {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The exit status if the child has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("checking on {}: {e}", self.name))
    }

    /// SIGKILL, then reap: when this returns the process is gone and its ports are free.
    pub async fn kill9(&mut self) -> ExitStatus {
        if let Some(status) = self.try_status() {
            return status;
        }
        let _ = self.child.start_kill();
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("reaping {}: {e}", self.name),
            Err(_) => panic!("{} did not exit within 10 s of SIGKILL", self.name),
        }
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) without waiting.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped child.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Waits for the child to exit on its own, at most `timeout`; `None` if it is still running.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            Ok(Err(e)) => panic!("waiting for {}: {e}", self.name),
            Err(_) => None,
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

/// The last `lines` lines of a log file (or a note that it cannot be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Prints a log's tail to stderr (captured by the test runner and shown for failed tests) when
/// the current thread is panicking, i.e. the test is failing.
pub fn print_log_if_panicking(what: &str, path: &Path) {
    if std::thread::panicking() {
        eprintln!(
            "\n----- {what}: last lines of {} -----\n{}\n----- end of {what} log -----",
            path.display(),
            log_tail(path, 150)
        );
    }
}

/// Makes the kernel SIGKILL the child when the thread that spawned it exits (the test's own
/// thread), so nothing outlives a test run.
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe functions.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

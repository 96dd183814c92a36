//! Starting the agent at logon on Windows, silently: `backlight-agent install`/`uninstall`
//! (the per-user Run key) and the launcher the Run key starts (`backlight-agentw.exe`).
//!
//! # Why the Run key
//!
//! Capture must run in the user's interactive session, as the user: a service in session 0
//! cannot see the user's windows. Two mechanisms start a per-user program at logon: a value
//! under `HKCU\Software\Microsoft\Windows\CurrentVersion\Run`, or a scheduled task with a logon
//! trigger. The Run key is chosen because it needs no administrator rights for a per-user
//! install and no Task Scheduler COM API; it starts in every interactive session, RDP and
//! Citrix included; it is visible to the employee in Task Manager's *Startup* tab (part of
//! being transparent about recording); and the MSI's machine-wide counterpart is one value under
//! `HKLM\…\Run`, removed with the package. What a scheduled task offers beyond it — restarts
//! after a crash — the launcher does itself.
//!
//! # Why a launcher
//!
//! `backlight-agent.exe` is a console program: `enroll`, `status`, `consent`, `pause`, `show`
//! and `item` write to the terminal they are run from, read answers from it, and return exit
//! codes scripts rely on. A console program started at logon would open a console window,
//! and a GUI-subsystem program (`windows_subsystem = "windows"`) with `AttachConsole` to fix
//! the CLI is not robust: `cmd.exe` does not wait for GUI programs, so output lands after the
//! next prompt, prompts cannot be answered and exit codes are lost. So the Run key starts
//! `backlight-agentw.exe` (a small GUI-subsystem program, like `javaw`/`pythonw`), which starts
//! `backlight-agent.exe --log-to-file run` with `CREATE_NO_WINDOW` — no window at any time —
//! waits for it, and starts it again after a crash or a failed start (e.g. the server was
//! unreachable for the first enrollment), with a growing delay. A clean exit (logoff,
//! `taskkill`, Ctrl-C) or [`EXIT_ALREADY_RUNNING`] ends the launcher too.

use std::path::Path;
use std::time::Duration;

/// The per-user (HKCU) and machine-wide (HKLM) Run keys.
pub const RUN_KEY: &str = r"Software\Microsoft\Windows\CurrentVersion\Run";
/// The value name under [`RUN_KEY`], the same one the MSI writes under HKLM.
pub const RUN_VALUE: &str = "Backlight Agent";
/// The silent launcher, installed beside `backlight-agent.exe`.
pub const LAUNCHER_EXE: &str = "backlight-agentw.exe";
/// The agent the launcher starts.
pub const AGENT_EXE: &str = "backlight-agent.exe";
/// `run`'s exit status when another `run` already uses the data directory: final, the launcher
/// does not start it again.
pub const EXIT_ALREADY_RUNNING: u8 = 3;

/// First delay before the launcher starts a failed agent again; it doubles up to
/// [`MAX_RESTART_DELAY`].
pub const FIRST_RESTART_DELAY: Duration = Duration::from_secs(5);
/// Longest delay between restarts.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(300);
/// An agent that ran this long before failing is started again after the first delay, not a
/// longer one.
pub const HEALTHY_RUN: Duration = Duration::from_secs(600);

/// How long the launcher waits before starting the agent again after `failures` failures in a
/// row (1 for the first).
pub fn restart_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_RESTART_DELAY
        .saturating_mul(1 << doublings)
        .min(MAX_RESTART_DELAY)
}

/// The command line stored in the Run key: the launcher, with `--data-dir` when one was chosen,
/// then `run`.
pub fn run_command(launcher: &Path, data_dir: Option<&Path>) -> String {
    let mut command = quote(&launcher.display().to_string());
    if let Some(dir) = data_dir {
        command.push_str(" --data-dir ");
        command.push_str(&quote(&dir.display().to_string()));
    }
    command.push_str(" run");
    command
}

/// Quotes one argument for a Windows command line. Paths cannot contain `"`, so only
/// backslashes before the closing quote need doubling (`"C:\dir\"` would escape the quote).
fn quote(argument: &str) -> String {
    let trailing = argument.len() - argument.trim_end_matches('\\').len();
    format!("\"{argument}{}\"", "\\".repeat(trailing))
}

#[cfg(windows)]
pub use self::windows::{install, launcher_main, uninstall, Installed, Uninstalled};

#[cfg(windows)]
mod windows {
    use std::ffi::OsString;
    use std::path::{Path, PathBuf};
    use std::process::{Command, ExitCode, Stdio};
    use std::time::Instant;

    use anyhow::{bail, Context};

    use super::*;
    use crate::platform::windows::registry::{Key, Root};

    /// What `install` did.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Installed {
        /// The user's Run value now holds this command.
        PerUser { command: String },
        /// The MSI already starts the agent for every user; nothing was written.
        MachineWide { command: String },
    }

    /// What `uninstall` did.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Uninstalled {
        /// A per-user Run value existed and was removed.
        pub removed: bool,
        /// The machine-wide (MSI) value, which only uninstalling the MSI removes.
        pub machine_wide: Option<String>,
    }

    /// The launcher beside the running executable.
    fn launcher_path() -> anyhow::Result<PathBuf> {
        let exe = std::env::current_exe().context("cannot find this executable's path")?;
        let launcher = exe.with_file_name(LAUNCHER_EXE);
        if !launcher.is_file() {
            bail!(
                "{} is missing beside {}: it starts the agent without a console window; \
                 reinstall the agent",
                LAUNCHER_EXE,
                exe.display()
            );
        }
        Ok(launcher)
    }

    fn machine_wide() -> anyhow::Result<Option<String>> {
        let Some(key) =
            Key::open(Root::LocalMachine, RUN_KEY, false).context("cannot read HKLM\\...\\Run")?
        else {
            return Ok(None);
        };
        key.get_string(RUN_VALUE)
            .context("cannot read the machine-wide Run value")
    }

    /// Registers the agent to start at this user's every logon (`HKCU\…\Run`), unless the MSI
    /// already starts it for every user. `data_dir`: an explicit `--data-dir` to pass on.
    pub fn install(data_dir: Option<&Path>) -> anyhow::Result<Installed> {
        let launcher = launcher_path()?;
        if let Some(command) = machine_wide()? {
            return Ok(Installed::MachineWide { command });
        }
        let command = run_command(&launcher, data_dir);
        let key = Key::create(Root::CurrentUser, RUN_KEY).context("cannot open HKCU\\...\\Run")?;
        key.set_string(RUN_VALUE, &command)
            .context("cannot write the Run value")?;
        Ok(Installed::PerUser { command })
    }

    /// Removes this user's Run value, and nothing else: the data directory and a running agent
    /// are left alone.
    pub fn uninstall() -> anyhow::Result<Uninstalled> {
        let removed = match Key::open(Root::CurrentUser, RUN_KEY, true)
            .context("cannot open HKCU\\...\\Run")?
        {
            Some(key) => key
                .delete_value(RUN_VALUE)
                .context("cannot delete the Run value")?,
            None => false,
        };
        Ok(Uninstalled {
            removed,
            machine_wide: machine_wide()?,
        })
    }

    /// `backlight-agentw.exe [ARGS…]`: starts `backlight-agent.exe --log-to-file ARGS…`
    /// (`run` when no arguments are given) without a console window, and again after it fails.
    pub fn launcher_main() -> ExitCode {
        let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
        if args.is_empty() {
            args.push("run".into());
        }
        let agent = match std::env::current_exe() {
            Ok(exe) => exe.with_file_name(AGENT_EXE),
            Err(_) => return ExitCode::FAILURE,
        };
        let mut failures = 0u32;
        loop {
            let started = Instant::now();
            let status = spawn_hidden(&agent, &args).and_then(|mut child| child.wait());
            let code = match status {
                Ok(status) => status.code(),
                // Not even started (missing file): retried like a failure, in case an update
                // is replacing it.
                Err(_) => None,
            };
            match code {
                Some(0) => return ExitCode::SUCCESS,
                Some(code) if code == i32::from(EXIT_ALREADY_RUNNING) => return ExitCode::SUCCESS,
                _ => {}
            }
            if started.elapsed() >= HEALTHY_RUN {
                failures = 0;
            }
            failures += 1;
            std::thread::sleep(restart_delay(failures));
        }
    }

    /// `agent --log-to-file ARGS…` with no console window and no standard streams (its logs go
    /// to files in its data directory).
    fn spawn_hidden(agent: &Path, args: &[OsString]) -> std::io::Result<std::process::Child> {
        use std::os::windows::process::CommandExt;
        use windows_sys::Win32::System::Threading::CREATE_NO_WINDOW;
        Command::new(agent)
            .arg("--log-to-file")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .creation_flags(CREATE_NO_WINDOW)
            .spawn()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_delays_grow_to_a_cap() {
        assert_eq!(restart_delay(1), Duration::from_secs(5));
        assert_eq!(restart_delay(2), Duration::from_secs(10));
        assert_eq!(restart_delay(4), Duration::from_secs(40));
        assert_eq!(restart_delay(7), MAX_RESTART_DELAY);
        assert_eq!(restart_delay(u32::MAX), MAX_RESTART_DELAY);
    }

    #[test]
    fn run_commands_quote_paths() {
        let launcher = Path::new(r"C:\Program Files\Backlight\backlight-agentw.exe");
        assert_eq!(
            run_command(launcher, None),
            r#""C:\Program Files\Backlight\backlight-agentw.exe" run"#
        );
        assert_eq!(
            run_command(launcher, Some(Path::new(r"D:\Backlight data\"))),
            r#""C:\Program Files\Backlight\backlight-agentw.exe" --data-dir "D:\Backlight data\\" run"#
        );
    }
}

//! `backlight-agentw.exe`: starts `backlight-agent.exe` at logon without a console window and
//! starts it again after a failure. A GUI-subsystem program, so Windows opens no console for
//! it; see `backlight_agent::autostart` for why the agent itself stays a console program.

#![cfg_attr(windows, windows_subsystem = "windows")]

use std::process::ExitCode;

#[cfg(windows)]
fn main() -> ExitCode {
    backlight_agent::autostart::launcher_main()
}

#[cfg(not(windows))]
fn main() -> ExitCode {
    eprintln!(
        "backlight-agentw is the Windows launcher; elsewhere start `backlight-agent run` \
         (e.g. with deploy/systemd/backlight-agent.service)"
    );
    ExitCode::from(2)
}

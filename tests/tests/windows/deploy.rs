//! Deploying the Windows agent: `install`/`uninstall` (the per-user Run key), the silent
//! launcher (no console, logs in files, starts a failed agent again, ends with the agent), the
//! owner-only DACL of the credentials, and the MSI under Wine's msiexec (per-machine files,
//! autostart for every user, SERVER and ENROLLMENT_KEY enrolling the first run, an uninstall
//! that leaves only the user's data).

use std::path::{Path, PathBuf};
use std::time::Duration;

use backlight_e2e::*;

use super::wine::Wine;
use super::{stop_gracefully, WinAgent};

const HKCU_RUN: &str = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run";
const HKLM_RUN: &str = r"HKLM\Software\Microsoft\Windows\CurrentVersion\Run";
const HKLM_SETTINGS: &str = r"HKLM\SOFTWARE\Backlight\Agent";
const RUN_VALUE: &str = "Backlight Agent";

/// Lines of the agent's daily log files in `data_dir\logs`.
fn log_lines(data_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("logs")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|text| text.lines().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

fn starts(data_dir: &Path) -> usize {
    log_lines(data_dir)
        .iter()
        .filter(|l| l.contains("backlight-agent") && l.contains("starting"))
        .count()
}

pub async fn autostart_and_launcher(wine: &Wine, spine: &Spine) {
    let agent = WinAgent::new(wine, "autostart");
    let data_dir = agent.data_dir().expect("a data directory").to_path_buf();
    let win_dir = Wine::win_path(&data_dir);

    // Not enrolled: nothing to start at logon.
    let refused = agent.command(wine, &["install", "--no-start"]).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not enrolled"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // ---- the launcher, as logon starts it: no console, logs in files, and a failed start
    // (here: not enrolled yet, as when the server was unreachable) is tried again.
    let log = wine.scratch("launcher.log");
    let mut launched = wine.spawn(
        "backlight-agentw.exe",
        &wine.bin("backlight-agentw.exe"),
        &["--data-dir", &win_dir, "run"],
        &log,
    );
    wait_until(secs(60), "the first start to fail", async || {
        log_lines(&data_dir)
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("not enrolled"))
    })
    .await;
    agent
        .ok(
            wine,
            &[
                "enroll",
                "--server",
                &spine.server.url(),
                "--key",
                &spine.key,
            ],
        )
        .await;
    wait_until(
        secs(60),
        "the launcher to start the agent again",
        async || {
            starts(&data_dir) == 1
                && agent.status(wine).await["capture"]
                    .as_str()
                    .is_some_and(|c| c.contains("waiting for consent"))
        },
    )
    .await;
    // A clean stop ends the launcher too.
    let stopped = wine
        .system("taskkill", &["/im", "backlight-agent.exe"])
        .await;
    assert!(stopped.status.success(), "taskkill failed");
    let status = launched
        .wait_timeout(Duration::from_secs(60))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the launcher did not end after a clean stop: {:?}",
                log_lines(&data_dir)
            )
        });
    assert!(status.success(), "the launcher exited with {status}");
    assert!(
        log_lines(&data_dir).iter().any(|l| l.contains("WM_CLOSE")),
        "{:?}",
        log_lines(&data_dir)
    );

    // ---- the credentials are the user's alone: a protected DACL with one entry.
    let credentials = format!("{win_dir}\\credentials.json");
    let dacl = wine
        .run(&wine.bin("dacl.exe"), &["show", &credentials])
        .await;
    let dacl = String::from_utf8_lossy(&dacl.stdout).trim().to_string();
    assert!(
        dacl.starts_with("D:")
            && dacl.contains(";FA;;;S-1-5-21-")
            && !dacl.contains(";WD)")
            && !dacl.contains(";BU)")
            && !dacl.contains(";AU)"),
        "credentials.json is readable by the user only: {dacl}"
    );
    let user = dacl
        .split(";;;")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("the user's SID in the credentials' DACL")
        .to_string();
    let dir_dacl = wine.run(&wine.bin("dacl.exe"), &["show", &win_dir]).await;
    let dir_dacl = String::from_utf8_lossy(&dir_dacl.stdout).trim().to_string();
    assert!(
        dir_dacl.contains("(A;OICI;FA;;;S-1-5-21-") && !dir_dacl.contains(";WD)"),
        "the data directory is the user's alone, inherited by what is created in it: {dir_dacl}"
    );

    // ---- credentials others may read are refused, with the fix in the error; the agent
    // trusts them again once they are the user's alone.
    let opened = wine
        .run(
            &wine.bin("dacl.exe"),
            &["set", &credentials, "D:P(A;;FA;;;WD)"],
        )
        .await;
    assert!(opened.status.success(), "{:?}", opened);
    let refused = agent.command(wine, &["status"]).await;
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && said.contains("not private to this user")
            && said.contains("Everyone (WD)")
            && said.contains("icacls"),
        "status with credentials open to Everyone: {refused:?}"
    );
    let closed = wine
        .run(
            &wine.bin("dacl.exe"),
            &["set", &credentials, &format!("D:P(A;;FA;;;{user})")],
        )
        .await;
    assert!(closed.status.success(), "{:?}", closed);
    agent.ok(wine, &["status"]).await;

    // ---- install: the per-user Run value starts the silent launcher.
    let installed = agent.ok(wine, &["install", "--no-start"]).await;
    assert!(installed.contains("starts at each logon"), "{installed}");
    let command = wine
        .reg_value(HKCU_RUN, RUN_VALUE)
        .await
        .expect("the Run value after install");
    let launcher = Wine::win_path(&wine.bin("backlight-agentw.exe"));
    assert_eq!(
        command,
        format!("\"{launcher}\" --data-dir \"{win_dir}\" run"),
        "the Run value"
    );

    // ---- one agent per data directory: a second `run` says so, with the status that tells
    // the launcher not to try again.
    let mut first = agent.spawn_run(wine);
    wait_until(secs(60), "the first run", async || {
        agent.log_tail().contains("recording")
    })
    .await;
    let second = agent
        .command(wine, &["run", "--no-browser", "--local-api", "off"])
        .await;
    assert_eq!(
        second.status.code(),
        Some(3),
        "a second run on the same directory"
    );
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("already using"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    stop_gracefully(wine, &mut first, &agent).await;

    // ---- uninstall: the Run value goes, the user's data stays.
    let uninstalled = agent.ok(wine, &["uninstall"]).await;
    assert!(uninstalled.contains("no longer starts"), "{uninstalled}");
    assert_eq!(wine.reg_value(HKCU_RUN, RUN_VALUE).await, None);
    assert!(data_dir.join("credentials.json").is_file());
    assert!(data_dir.join("spool.sqlite3").is_file());
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

pub async fn msi(wine: &Wine, spine: &Spine) {
    // ---- build it from the staged executables, as CI does.
    let msi = wine.scratch("backlight-agent.msi");
    let bin_dir = wine.bin("backlight-agent.exe");
    let bin_dir = bin_dir.parent().expect("the staging directory");
    let built = tokio::process::Command::new("bash")
        .arg(repo_root().join("deploy/windows/build-msi.sh"))
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--out")
        .arg(&msi)
        .output()
        .await
        .expect("running build-msi.sh");
    assert!(
        built.status.success(),
        "build-msi.sh failed: {}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );

    // ---- a silent per-machine install with the roll-out's server and key.
    let program_files = wine.prefix().join("drive_c/Program Files/Backlight Agent");
    let server = format!("SERVER={}", spine.server.url());
    let key = format!("ENROLLMENT_KEY={}", spine.key);
    let installed = wine
        .system(
            "msiexec",
            &["/i", &Wine::win_path(&msi), "/qn", &server, &key],
        )
        .await;
    assert!(installed.status.success(), "msiexec /i: {installed:?}");
    for exe in ["backlight-agent.exe", "backlight-agentw.exe"] {
        assert!(program_files.join(exe).is_file(), "{exe} installed");
    }
    assert!(
        !program_files.join("bcryptprimitives.dll").exists(),
        "the test-only shim is not part of the package"
    );
    assert_eq!(
        wine.reg_value(HKLM_RUN, RUN_VALUE).await.as_deref(),
        Some(r#""C:\Program Files\Backlight Agent\backlight-agentw.exe" run"#),
        "every user's logon starts the launcher"
    );
    assert_eq!(
        wine.reg_value(HKLM_SETTINGS, "Server").await,
        Some(spine.server.url())
    );

    // `install` by a user defers to the machine-wide autostart.
    let installed_agent = program_files.join("backlight-agent.exe");
    let agent = WinAgent::installed(wine, installed_agent, "msi-agent");
    let local = agent.ok(wine, &["install", "--no-start"]).await;
    assert!(local.contains("every user"), "{local}");
    assert_eq!(wine.reg_value(HKCU_RUN, RUN_VALUE).await, None);

    // ---- the first run enrolls with the deployed settings, in %LOCALAPPDATA%\Backlight\agent.
    let mut run = agent.spawn_run(wine);
    let device = wait_for(secs(60), "the first run to enroll", async || {
        let status = agent.status(wine).await;
        status["device_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| status.to_string())
    })
    .await;
    let listed = spine.server.device_entry(&spine.tenant, &device).await;
    assert_eq!(listed["os"], "windows", "{listed}");
    let users = wine.prefix().join("drive_c/users");
    let user_data = std::fs::read_dir(&users)
        .expect("the prefix's users")
        .flatten()
        .map(|e| e.path().join("AppData/Local/Backlight/agent"))
        .find(|p| p.join("credentials.json").is_file())
        .unwrap_or_else(|| {
            panic!(
                "no %LOCALAPPDATA%\\Backlight\\agent with credentials under {}",
                users.display()
            )
        });
    stop_gracefully(wine, &mut run, &agent).await;

    // ---- uninstall: nothing of the package is left; the user's own data is.
    let msi_path = Wine::win_path(&msi);
    let removed = wine.system("msiexec", &["/x", &msi_path, "/qn"]).await;
    assert!(removed.status.success(), "msiexec /x: {removed:?}");
    assert!(
        !program_files.exists(),
        "{} is gone",
        program_files.display()
    );
    assert_eq!(wine.reg_value(HKLM_RUN, RUN_VALUE).await, None);
    assert_eq!(wine.reg_value(HKLM_SETTINGS, "Server").await, None);
    assert_eq!(wine.reg_value(HKLM_SETTINGS, "EnrollmentKey").await, None);
    assert!(
        user_data.join("credentials.json").is_file() && user_data.join("spool.sqlite3").is_file(),
        "the user's data stays"
    );
}

//! A throwaway Windows desktop: Wine in its own prefix on Xvfb with openbox, real Win32 windows
//! (Wine's notepad and `tests/windows/test_window.c`, retitled through a file), focus switched
//! with wmctrl, input and idle from xdotool, and the Windows agent's executables.
//!
//! One prefix per test run (`wineboot` takes most of the start-up), everything in it stopped
//! with `wineserver -k` when dropped. The C fixtures are built here with
//! mingw: `ProcessPrng` for Wine 8.0 (installed into the prefix's system32, so executables
//! anywhere — also those the MSI installs — start), the test window program with a version
//! resource, and a DACL printer. None of them is shipped.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use backlight_e2e::harness::process::Child;
use backlight_e2e::harness::xvfb::{regex_escape, xdotool, Xvfb};
use tempfile::TempDir;

/// `wineboot -i` of a fresh prefix: ~20 s on an idle machine, much more on a busy one.
const WINEBOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// A one-shot Windows command (`enroll`, `status`, `reg query`, `msiexec`).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a window may take to appear or change its title.
const WINDOW_TIMEOUT: Duration = Duration::from_secs(30);

/// The C fixtures, compiled into the test so a stale copy can never be used.
const SHIM_C: &str = include_str!("../../windows/processprng_shim.c");
const TEST_WINDOW_C: &str = include_str!("../../windows/test_window.c");
const TEST_WINDOW_RC: &str = include_str!("../../windows/test_window.rc");
const DACL_C: &str = include_str!("../../windows/dacl.c");

/// A real Win32 window of the desktop.
pub struct Window {
    /// The X11 window Wine made for it (for wmctrl and xdotool).
    pub xid: String,
    /// The file its title follows (test window program only).
    title_file: Option<PathBuf>,
}

pub struct Wine {
    // Fields drop in order: the processes before the files they use, the X server last.
    processes: Vec<Child>,
    prefix: PathBuf,
    bin: PathBuf,
    env: Vec<(&'static str, OsString)>,
    openbox: std::process::Child,
    dir: TempDir,
    xvfb: Xvfb,
}

/// Panics with what to install when `program` is not on the PATH: these tests never skip.
fn require(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{program} is missing: the Windows agent tests need it (apt-get install {package}; \
         scripts/test.sh installs it)"
    );
}

/// `target/x86_64-pc-windows-gnu/wine-test/<name>`: the Windows build the tests run, made with
/// the `wine-test` profile (see the root `Cargo.toml`).
pub fn windows_build(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let path = target
        .join("x86_64-pc-windows-gnu")
        .join("wine-test")
        .join(name);
    assert!(
        path.is_file(),
        "{} not found: build the Windows agent first (cargo build --profile wine-test -p \
         backlight-agent --target x86_64-pc-windows-gnu --bins --example capture_probe; \
         scripts/test.sh does)",
        path.display()
    );
    path
}

fn compile(args: &[&OsStr], what: &str) {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?} for {what}: {e}", args[0]));
    assert!(
        output.status.success(),
        "building {what} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Wine {
    /// Starts the desktop and a booted prefix with the fixtures and the agent's executables.
    pub async fn start() -> Wine {
        for (program, package) in [
            ("wine", "wine wine64"),
            ("wineserver", "wine wine64"),
            ("x86_64-w64-mingw32-gcc", "gcc-mingw-w64-x86-64"),
            ("x86_64-w64-mingw32-windres", "binutils-mingw-w64-x86-64"),
            ("openbox", "openbox"),
            ("wmctrl", "wmctrl"),
            ("xdotool", "xdotool"),
        ] {
            require(program, package);
        }
        let xvfb = Xvfb::start(200);
        let openbox = Command::new("openbox")
            .env("DISPLAY", xvfb.display())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start openbox (apt-get install openbox): {e}"));
        let dir = tempfile::Builder::new()
            .prefix("backlight-wine-")
            .tempdir()
            .expect("creating a temporary directory for Wine");
        let prefix = dir.path().join("prefix");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("creating the staging directory");
        let env: Vec<(&'static str, OsString)> = vec![
            ("WINEPREFIX", prefix.clone().into()),
            ("WINEDEBUG", "-all".into()),
            // No Mono or Gecko installers (their dialogs would wait forever).
            ("WINEDLLOVERRIDES", "mscoree,mshtml=".into()),
            ("DISPLAY", xvfb.display().into()),
        ];
        let mut wine = Wine {
            processes: Vec::new(),
            prefix,
            bin,
            env,
            openbox,
            dir,
            xvfb,
        };
        wine.build_fixtures();
        for exe in [
            "backlight-agent.exe",
            "backlight-agentw.exe",
            "examples/capture_probe.exe",
        ] {
            let from = windows_build(exe);
            let to = wine.bin.join(from.file_name().expect("a file name"));
            std::fs::copy(&from, &to)
                .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
        }
        wine.boot().await;
        wine
    }

    fn build_fixtures(&self) {
        let src = self.dir.path().join("src");
        std::fs::create_dir_all(&src).expect("creating the fixture source directory");
        for (name, text) in [
            ("processprng_shim.c", SHIM_C),
            ("test_window.c", TEST_WINDOW_C),
            ("test_window.rc", TEST_WINDOW_RC),
            ("dacl.c", DACL_C),
        ] {
            std::fs::write(src.join(name), text).expect("writing a fixture source");
        }
        let s = |name: &str| src.join(name).into_os_string();
        let b = |name: &str| self.bin.join(name).into_os_string();
        let gcc = OsString::from("x86_64-w64-mingw32-gcc");
        compile(
            &[
                &gcc,
                "-shared".as_ref(),
                "-O2".as_ref(),
                "-o".as_ref(),
                &b("bcryptprimitives.dll"),
                &s("processprng_shim.c"),
                "-ladvapi32".as_ref(),
            ],
            "the ProcessPrng shim",
        );
        compile(
            &[
                "x86_64-w64-mingw32-windres".as_ref(),
                &s("test_window.rc"),
                "-O".as_ref(),
                "coff".as_ref(),
                "-o".as_ref(),
                &s("test_window.res"),
            ],
            "the test window's version resource",
        );
        compile(
            &[
                &gcc,
                "-municode".as_ref(),
                "-mwindows".as_ref(),
                "-O2".as_ref(),
                "-o".as_ref(),
                &b("test_window.exe"),
                &s("test_window.c"),
                &s("test_window.res"),
                "-lshell32".as_ref(),
            ],
            "the test window program",
        );
        compile(
            &[
                &gcc,
                "-municode".as_ref(),
                "-O2".as_ref(),
                "-o".as_ref(),
                &b("dacl.exe"),
                &s("dacl.c"),
                "-ladvapi32".as_ref(),
            ],
            "the DACL reader and writer",
        );
    }

    /// `wineboot -i` and the shim into system32. The wineserver wineboot starts stays up while
    /// the test's windows run.
    async fn boot(&mut self) {
        let started = Instant::now();
        let mut boot = tokio::process::Command::new("wineboot");
        boot.arg("-i")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = tokio::time::timeout(WINEBOOT_TIMEOUT, boot.output())
            .await
            .unwrap_or_else(|_| panic!("wineboot took more than {WINEBOOT_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("cannot run wineboot (apt-get install wine wine64): {e}"));
        assert!(
            output.status.success(),
            "wineboot failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let system32 = self.prefix.join("drive_c/windows/system32");
        std::fs::copy(
            self.bin.join("bcryptprimitives.dll"),
            system32.join("bcryptprimitives.dll"),
        )
        .expect("installing the ProcessPrng shim into the prefix");
        eprintln!("wine: prefix booted in {:?}", started.elapsed());
    }

    pub fn display(&self) -> &str {
        self.xvfb.display()
    }

    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// Where the staged executables are (agent, launcher, fixtures).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// A scratch directory for the test (data directories, title files).
    pub fn scratch(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join("scratch").join(name);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("creating scratch");
        path
    }

    /// A Linux path as Wine sees it (drive Z: is `/`).
    pub fn win_path(path: &Path) -> String {
        format!("Z:{}", path.display()).replace('/', "\\")
    }

    /// `wine EXE ARGS…` in the background, output appended to `log`.
    pub fn spawn(&self, name: &str, exe: &Path, args: &[&str], log: &Path) -> Child {
        let mut all = vec![exe.to_str().expect("a UTF-8 path")];
        all.extend_from_slice(args);
        let env: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().expect("a UTF-8 value").to_owned()))
            .collect();
        Child::spawn_with_env(name, Path::new("wine"), &all, &env, log)
    }

    /// `wine EXE ARGS…` to completion.
    pub async fn run(&self, exe: &Path, args: &[&str]) -> Output {
        let mut command = tokio::process::Command::new("wine");
        command
            .arg(exe)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(COMMAND_TIMEOUT, command.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => panic!("running wine {}: {e}", exe.display()),
            Err(_) => panic!(
                "wine {} {} took more than {COMMAND_TIMEOUT:?}",
                exe.display(),
                args.join(" ")
            ),
        }
    }

    /// A Windows system program (`reg`, `taskkill`, `msiexec`, `notepad`) to completion.
    pub async fn system(&self, program: &str, args: &[&str]) -> Output {
        self.run(Path::new(program), args).await
    }

    /// `reg query KEY /v VALUE`: the value's data, or `None` when the key or value is absent.
    pub async fn reg_value(&self, key: &str, value: &str) -> Option<String> {
        let output = self.system("reg", &["query", key, "/v", value]).await;
        if !output.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.lines().find_map(|line| {
            let line = line.trim();
            let rest = line.strip_prefix(value)?.trim_start();
            let rest = rest.strip_prefix("REG_SZ")?;
            Some(rest.trim().to_string())
        })
    }

    /// Makes a small Linux script the prefix's web browser (Wine's `winebrowser`, which the
    /// `http` association runs, tries the programs under `HKCU\Software\Wine\WineBrowser`
    /// `Browsers`): every URL the default browser is asked to open is appended to the file
    /// returned, one per line.
    pub async fn record_browser(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let opened = self.scratch("browser-opened.txt");
        let script = self.scratch("record-browser.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" >> '{}'\n",
                opened.display()
            ),
        )
        .expect("writing the browser script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("making the browser script executable");
        let script = script.to_str().expect("a UTF-8 path");
        let output = self
            .system(
                "reg",
                &[
                    "add",
                    r"HKCU\Software\Wine\WineBrowser",
                    "/v",
                    "Browsers",
                    "/t",
                    "REG_SZ",
                    "/d",
                    script,
                    "/f",
                ],
            )
            .await;
        assert!(output.status.success(), "reg add WineBrowser: {output:?}");
        opened
    }

    /// Opens the test window program as `exe_name` (a copy, so each app has its own
    /// executable name) titled `title`.
    pub fn open(&mut self, exe_name: &str, title: &str) -> Window {
        let exe = self.bin(exe_name);
        if !exe.exists() {
            std::fs::copy(self.bin("test_window.exe"), &exe).expect("copying the test window");
        }
        let title_file = self.scratch(&format!("title-{}.txt", uuid::Uuid::new_v4().simple()));
        std::fs::write(&title_file, title).expect("writing a title file");
        let log = self.scratch("windows.log");
        let child = self.spawn(exe_name, &exe, &[&Wine::win_path(&title_file)], &log);
        self.processes.push(child);
        Window {
            xid: self.find_window(title),
            title_file: Some(title_file),
        }
    }

    /// Opens Wine's own notepad ("Untitled - Notepad").
    pub fn open_notepad(&mut self) -> Window {
        let log = self.scratch("windows.log");
        let child = self.spawn("notepad", Path::new("notepad"), &[], &log);
        self.processes.push(child);
        Window {
            xid: self.find_window("Untitled - Notepad"),
            title_file: None,
        }
    }

    fn find_window(&self, title: &str) -> String {
        let pattern = format!("^{}$", regex_escape(title));
        let deadline = Instant::now() + WINDOW_TIMEOUT;
        loop {
            if let Some(found) = xdotool(self.display(), &["search", "--name", &pattern]) {
                if let Some(id) = found.lines().next() {
                    return id.to_string();
                }
            }
            assert!(Instant::now() < deadline, "window {title:?} did not appear");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Changes the window's title the way an application does (`SetWindowTextW`), and waits
    /// until the desktop shows it.
    pub fn retitle(&self, window: &Window, title: &str) {
        let file = window
            .title_file
            .as_ref()
            .expect("only test windows can be retitled");
        // Replaced atomically: the window re-reads the file every 100 ms and must never see
        // it half-written (an empty title would end the item's span).
        let next = file.with_extension("next");
        std::fs::write(&next, title).expect("writing a title file");
        std::fs::rename(&next, file).expect("replacing a title file");
        let found = self.find_window(title);
        assert_eq!(found, window.xid, "the retitled window is another one");
    }

    /// Activates the window through the window manager; Wine's foreground window follows.
    pub fn focus(&self, window: &Window) {
        let status = Command::new("wmctrl")
            .args(["-i", "-a", &window.xid])
            .env("DISPLAY", self.display())
            .status()
            .unwrap_or_else(|e| panic!("cannot run wmctrl (apt-get install wmctrl): {e}"));
        assert!(status.success(), "wmctrl could not activate {}", window.xid);
    }

    /// Real input over a Wine window: resets `GetLastInputInfo`.
    pub fn touch(&self, window: &Window) {
        for (x, y) in [("30", "30"), ("60", "50")] {
            xdotool(
                self.display(),
                &["mousemove", "--sync", "--window", &window.xid, x, y],
            );
        }
    }

    /// Starts a screensaver stand-in: `SPI_SETSCREENSAVERRUNNING` is set, as a screensaver
    /// host sets it, until the returned guard is dropped.
    pub fn screensaver(&mut self) -> Screensaver {
        let flag = self.scratch(&format!("screensaver-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&flag, b"running").expect("writing the screensaver flag");
        let log = self.scratch("windows.log");
        let exe = self.bin("test_window.exe");
        let child = self.spawn(
            "screensaver",
            &exe,
            &["--screensaver", &Wine::win_path(&flag)],
            &log,
        );
        self.processes.push(child);
        Screensaver { flag }
    }
}

/// A running screensaver stand-in; dropping it ends the screensaver.
pub struct Screensaver {
    flag: PathBuf,
}

impl Drop for Screensaver {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.flag);
    }
}

impl Drop for Wine {
    fn drop(&mut self) {
        // Ends every Windows process of the prefix, then the wineserver.
        let _ = Command::new("wineserver")
            .arg("-k")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .status();
        let _ = self.openbox.kill();
        let _ = self.openbox.wait();
    }
}

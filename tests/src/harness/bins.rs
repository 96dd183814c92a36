//! Finding the workspace's binaries. Integration tests run from `target/<profile>/deps/`, and
//! Cargo puts the binaries one level up, in `target/<profile>/`.
//!
//! The tests do not build the binaries themselves (a nested `cargo build` would fight the outer
//! one for the build lock); the test script runs `cargo build --workspace --bins` first.

use std::path::PathBuf;

/// The server binary: `BACKLIGHT_E2E_SERVER_BIN` when set (to run the same tests against
/// another build, e.g. the one before a fix), else the one built next to the tests.
pub fn server() -> PathBuf {
    match std::env::var_os("BACKLIGHT_E2E_SERVER_BIN") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "BACKLIGHT_E2E_SERVER_BIN={} is not a file",
                path.display()
            );
            path
        }
        None => find("backlight-server"),
    }
}

/// The agent binary.
pub fn agent() -> PathBuf {
    find("backlight-agent")
}

/// `target/<profile>/<name>`, or a panic saying how to build it.
pub fn find(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| {
            if deps.ends_with("deps") {
                deps.parent()
            } else {
                Some(deps)
            }
        })
        .expect("the test executable lives in target/<profile>/deps")
        .to_path_buf();
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        panic!(
            "{} not found: run `cargo build --workspace --bins` first (the end-to-end tests run the real binaries)",
            path.display()
        );
    }
    path
}

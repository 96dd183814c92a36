//! An embedded, supervised local ClickHouse server.
//!
//! When `backlight-server` is started without `--clickhouse-url` it runs its own
//! `clickhouse-server` child with all of its state under one directory, so a single
//! machine needs nothing but the ClickHouse package installed. The end-to-end test
//! harness uses the same code to start throwaway servers, and to stop and restart them on
//! the *same* ports to simulate outages.
//!
//! Pieces:
//! - [`find_binary`] locates the ClickHouse executable (or explains how to install it).
//! - [`ClickHouseProcess`] is one running child: it writes a ClickHouse 18.16-compatible
//!   `config.xml`/`users.xml` (root element `<yandex>`, which current releases still
//!   accept), listens on 127.0.0.1 only, and is only handed out once `/ping` answers.
//! - **Access:** loopback is not a boundary (every local user reaches it), so the only user,
//!   [`USER`], has a random password, generated once into `dir/password` ([`PASSWORD_FILE`],
//!   mode 0600, the directory 0700); `users.xml` holds only its SHA-256. Whoever runs the
//!   server, `backlight-server admin` or the test harness reads it from there
//!   ([`read_password`]); nobody else can.
//! - [`Supervisor`] keeps a child alive, restarting it on the same ports with exponential
//!   backoff, and publishes the URL in `dir/endpoint` for [`discover_running`] (used by
//!   `backlight-server admin` run next to a live server).
//!
//! Process hygiene: the child gets its own process group, so a Ctrl-C aimed at the server's
//! terminal does not kill ClickHouse before the server has flushed its buffers into it;
//! instead the server stops it explicitly, and `PR_SET_PDEATHSIG` makes the kernel send it
//! SIGTERM if the server dies without doing so. Linux delivers that signal when the
//! *thread* that spawned the child exits, so [`ClickHouseProcess::start`] and
//! [`Supervisor::start`] must run on a long-lived thread: a tokio worker, the thread
//! driving `block_on`, or a test's own thread, never inside `spawn_blocking`.
//!
//! The module is Unix-only (signals, process groups); the death signal is Linux-only.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, SeekFrom};
use std::net::{Ipv4Addr, TcpListener as StdTcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Environment variable naming the ClickHouse binary explicitly; wins over every search.
pub const BINARY_ENV: &str = "BACKLIGHT_CLICKHOUSE_BINARY";

/// File under the state directory holding the URL of the supervised server.
pub const ENDPOINT_FILE: &str = "endpoint";

/// File under the state directory holding the password of [`USER`].
pub const PASSWORD_FILE: &str = "password";

/// The ClickHouse user Backlight connects to its embedded ClickHouse as.
pub const USER: &str = "default";

/// How long a fresh child gets to answer `/ping` (it takes ~0.2 s on a dev machine, but a
/// server with many parts to load after a crash can take much longer).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between readiness probes.
const READY_POLL: Duration = Duration::from_millis(50);
/// Per-probe timeout during startup; a hung accept must not eat the whole budget.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Grace period after SIGTERM before SIGKILL: ClickHouse normally exits in about a second.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// How long to wait for the kernel to reap a SIGKILLed child before reporting it stuck.
const KILL_REAP: Duration = Duration::from_secs(10);
/// Synchronous reap budget in `kill_now`/`Drop`, which cannot await.
const BLOCKING_REAP: Duration = Duration::from_secs(5);
/// A given port that is still busy (e.g. a previous instance still closing) gets this long.
const PORT_FREE_WAIT: Duration = Duration::from_secs(2);
/// Attempts with fresh ports when we picked them ourselves and lost the bind race.
const START_ATTEMPTS: u32 = 3;
/// Restart backoff: starts here, doubles per failure, capped at [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A child that ran at least this long before dying resets the backoff: it was a fresh
/// crash, not a crash loop.
const STABLE_RUN: Duration = Duration::from_secs(60);
/// `discover_running` must answer quickly: it is on the admin CLI's startup path.
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound on an HTTP response we read with the built-in mini client.
const MAX_RESPONSE_BYTES: u64 = 1 << 20;
/// How much of each log's end we read, and how many lines of it we report.
const LOG_TAIL_WINDOW: u64 = 64 * 1024;
const LOG_TAIL_LINES: usize = 40;

const ERROR_LOG: &str = "log/clickhouse-server.err.log";
const SERVER_LOG: &str = "log/clickhouse-server.log";
const STDOUT_LOG: &str = "log/stdout.log";
const STDERR_LOG: &str = "log/stderr.log";

/// Everything that can go wrong starting, stopping or finding the embedded ClickHouse.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No usable ClickHouse binary; the message tells the operator how to get one.
    #[error(
        "clickhouse-server was not found. Install it with `sudo deploy/install-clickhouse.sh` \
         (Debian/Ubuntu: apt-get install clickhouse-server clickhouse-client), set \
         BACKLIGHT_CLICKHOUSE_BINARY, or pass --clickhouse-url ({detail})"
    )]
    BinaryMissing {
        /// What was looked at, e.g. the missing path from the environment variable.
        detail: String,
    },
    /// A filesystem, socket or process operation failed.
    #[error("{context} ({}): {source}", path.display())]
    Io {
        context: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The password file exists but is not usable.
    #[error("the ClickHouse password file {} is unusable: {reason}", path.display())]
    BadPasswordFile { path: PathBuf, reason: String },
    /// The state directory cannot be written into ClickHouse's XML config.
    #[error("ClickHouse state directory {} is not valid UTF-8", path.display())]
    InvalidPath { path: PathBuf },
    /// A port we were told to use is taken by someone else.
    #[error("port {port} on 127.0.0.1 is already in use")]
    PortInUse { port: u16 },
    /// The child died before answering `/ping`.
    #[error("clickhouse-server exited during startup ({status}); end of its logs:\n{log_tail}")]
    ExitedEarly {
        status: ExitStatus,
        log_tail: String,
    },
    /// The child kept running but never answered `/ping`; it has been killed.
    #[error(
        "clickhouse-server did not answer /ping within {waited:?}; end of its logs:\n{log_tail}"
    )]
    NotReady { waited: Duration, log_tail: String },
    /// Even SIGKILL did not make the child exit (e.g. stuck in uninterruptible I/O).
    #[error("clickhouse-server (pid {pid}) did not exit after SIGKILL")]
    Unkillable { pid: u32 },
    /// Another ClickHouse supervised by a Backlight server already serves this directory.
    #[error("an embedded ClickHouse for {} is already running at {url}", dir.display())]
    AlreadyRunning { dir: PathBuf, url: String },
}

fn io_error(context: impl Into<String>, path: &Path) -> impl FnOnce(io::Error) -> EmbeddedError {
    let context = context.into();
    let path = path.to_path_buf();
    move |source| EmbeddedError::Io {
        context,
        path,
        source,
    }
}

/// The two ports a ClickHouse child listens on (both on 127.0.0.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    /// HTTP interface (what Backlight and the `clickhouse` crate use).
    pub http: u16,
    /// Native protocol (for `clickhouse-client` when debugging).
    pub tcp: u16,
}

// ---------------------------------------------------------------------------------------
// Finding the binary
// ---------------------------------------------------------------------------------------

/// Locates the ClickHouse server executable.
///
/// Order: `$BACKLIGHT_CLICKHOUSE_BINARY` (if set, it must exist: a wrong explicit setting
/// fails instead of silently picking another binary), `clickhouse-server` on `PATH`,
/// `/usr/sbin/clickhouse-server`, `/usr/bin/clickhouse-server`, then the single
/// `clickhouse` binary (on `PATH`, `/usr/bin`, `/usr/local/bin`), which is run as
/// `clickhouse server`.
pub fn find_binary() -> Result<PathBuf, EmbeddedError> {
    find_binary_in(std::env::var_os(BINARY_ENV), std::env::var_os("PATH"))
}

/// [`find_binary`] with the environment passed in, so tests need not mutate the process
/// environment (which would race with other tests running in parallel).
fn find_binary_in(
    explicit: Option<OsString>,
    path_var: Option<OsString>,
) -> Result<PathBuf, EmbeddedError> {
    if let Some(explicit) = explicit.filter(|v| !v.is_empty()) {
        let explicit = PathBuf::from(explicit);
        if is_executable(&explicit) {
            return Ok(explicit);
        }
        return Err(EmbeddedError::BinaryMissing {
            detail: format!(
                "{BINARY_ENV}={} is not an executable file",
                explicit.display()
            ),
        });
    }

    let search_path: Vec<PathBuf> = path_var
        .as_deref()
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    let on_path = |name: &str| {
        search_path
            .iter()
            .filter(|d| d.is_absolute())
            .map(|d| d.join(name))
            .find(|candidate| is_executable(candidate))
    };

    let fixed_server = ["/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"];
    let fixed_single = ["/usr/bin/clickhouse", "/usr/local/bin/clickhouse"];
    on_path("clickhouse-server")
        .or_else(|| {
            fixed_server
                .iter()
                .map(PathBuf::from)
                .find(|p| is_executable(p))
        })
        .or_else(|| on_path("clickhouse"))
        .or_else(|| {
            fixed_single
                .iter()
                .map(PathBuf::from)
                .find(|p| is_executable(p))
        })
        .ok_or_else(|| EmbeddedError::BinaryMissing {
            detail: format!(
                "searched PATH, {} and {}",
                fixed_server.join(", "),
                fixed_single.join(", ")
            ),
        })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The single multi-tool binary is named `clickhouse` and needs the `server` subcommand;
/// anything else (`clickhouse-server`, a wrapper script) is run as is.
fn needs_server_subcommand(binary: &Path) -> bool {
    binary.file_name().is_some_and(|n| n == "clickhouse")
}

// ---------------------------------------------------------------------------------------
// One child process
// ---------------------------------------------------------------------------------------

/// Byte offsets into the logs at spawn time, so failures report only this run's lines.
#[derive(Clone, Copy, Debug, Default)]
struct LogMarks {
    error_log: u64,
    stderr: u64,
}

/// One running `clickhouse-server` child with its state under one directory.
///
/// Dropping it SIGKILLs the child (ClickHouse's MergeTree survives that); call
/// [`ClickHouseProcess::stop`] for a clean shutdown.
#[derive(Debug)]
pub struct ClickHouseProcess {
    child: Child,
    pid: u32,
    dir: PathBuf,
    ports: Ports,
    marks: LogMarks,
    password: String,
}

impl ClickHouseProcess {
    /// Starts clickhouse-server with all its state under `dir` (config.xml, users.xml,
    /// data/, tmp/, log/ written by us), listening on 127.0.0.1 only, HTTP and native TCP
    /// on the given ports or free ones; waits (bounded, 30 s) until `GET /ping` answers
    /// "Ok.", failing with the tail of ClickHouse's logs if it exits or never gets ready.
    ///
    /// When `ports` is `None`, free ports are picked and the start is retried (up to three
    /// times, with new ports) if another process grabs one first.
    ///
    /// Must be called from a long-lived thread (see the module docs on `PR_SET_PDEATHSIG`).
    pub async fn start(dir: &Path, ports: Option<Ports>) -> Result<Self, EmbeddedError> {
        let binary = find_binary()?;
        let dir = prepare_dir(dir).await?;
        let password = ensure_password(&dir)?;
        if let Some(ports) = ports {
            return Self::start_once(&binary, &dir, ports, password).await;
        }
        let mut attempt = 1;
        loop {
            let ports = free_ports()?;
            match Self::start_once(&binary, &dir, ports, password.clone()).await {
                Err(e) if attempt < START_ATTEMPTS && is_address_in_use(&e) => {
                    tracing::warn!(
                        attempt,
                        http_port = ports.http,
                        tcp_port = ports.tcp,
                        "a port picked for the embedded ClickHouse was taken meanwhile; retrying with new ports"
                    );
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn start_once(
        binary: &Path,
        dir: &Path,
        ports: Ports,
        password: String,
    ) -> Result<Self, EmbeddedError> {
        // Fail fast and clearly instead of letting ClickHouse die with a bind error, and
        // give a just-killed previous instance a moment to release its sockets.
        wait_port_free(ports.http).await?;
        wait_port_free(ports.tcp).await?;

        let config_path = dir.join("config.xml");
        let users_path = dir.join("users.xml");
        let dir_str = dir.to_str().ok_or_else(|| EmbeddedError::InvalidPath {
            path: dir.to_path_buf(),
        })?;
        write_atomically(&users_path, users_xml(&password).as_bytes()).await?;
        write_atomically(&config_path, config_xml(dir_str, ports).as_bytes()).await?;

        let marks = LogMarks {
            error_log: file_len(&dir.join(ERROR_LOG)).await,
            stderr: file_len(&dir.join(STDERR_LOG)).await,
        };
        let stdout = open_append(&dir.join(STDOUT_LOG)).await?;
        let stderr = open_append(&dir.join(STDERR_LOG)).await?;

        let mut command = Command::new(binary);
        if needs_server_subcommand(binary) {
            command.arg("server");
        }
        command
            .arg(format!("--config-file={}", config_path.display()))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Our own Drop/stop handle the child; tokio's kill-on-drop would race them.
            .kill_on_drop(false)
            // Own process group: terminal Ctrl-C must reach only the server, which then
            // stops ClickHouse after flushing.
            .process_group(0);
        install_parent_death_signal(&mut command);

        let child = command
            .spawn()
            .map_err(io_error("starting clickhouse-server", binary))?;
        let pid = child.id().unwrap_or_default();
        // Wrap immediately so that an error or a cancelled future below kills the child.
        let mut process = ClickHouseProcess {
            child,
            pid,
            dir: dir.to_path_buf(),
            ports,
            marks,
            password,
        };
        process.wait_ready().await?;
        tracing::info!(
            pid,
            url = %process.url(),
            dir = %dir.display(),
            "embedded ClickHouse is ready"
        );
        Ok(process)
    }

    async fn wait_ready(&mut self) -> Result<(), EmbeddedError> {
        let started = Instant::now();
        let url = self.url();
        loop {
            if let Some(status) = self.try_status()? {
                return Err(EmbeddedError::ExitedEarly {
                    status,
                    log_tail: self.log_tail().await,
                });
            }
            if ping(&url, PROBE_TIMEOUT).await {
                // Re-check: the answer must have come from *our* child, not from some other
                // server that won the port while ours was failing to bind.
                if let Some(status) = self.try_status()? {
                    return Err(EmbeddedError::ExitedEarly {
                        status,
                        log_tail: self.log_tail().await,
                    });
                }
                return Ok(());
            }
            let waited = started.elapsed();
            if waited >= READY_TIMEOUT {
                self.kill_now();
                return Err(EmbeddedError::NotReady {
                    waited,
                    log_tail: self.log_tail().await,
                });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    fn try_status(&mut self) -> Result<Option<ExitStatus>, EmbeddedError> {
        self.child
            .try_wait()
            .map_err(io_error("checking on clickhouse-server", &self.dir))
    }

    /// `http://127.0.0.1:<http_port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.http)
    }

    /// The password of [`USER`] (also in `dir/password`).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The ports this child listens on; pass them back to [`ClickHouseProcess::start`] to
    /// restart on the same ones.
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// The state directory (canonical form).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The child's pid while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until the child exits (for whatever reason) and returns its status.
    /// Cancel-safe, so it can sit in a `select!`.
    pub async fn wait(&mut self) -> Result<ExitStatus, EmbeddedError> {
        self.child
            .wait()
            .await
            .map_err(io_error("waiting for clickhouse-server", &self.dir))
    }

    /// Stops the child: SIGTERM, up to 15 s for a clean exit, then SIGKILL. Always reaps.
    pub async fn stop(mut self) -> Result<(), EmbeddedError> {
        if let Some(status) = self.try_status()? {
            tracing::debug!(%status, "embedded ClickHouse had already exited");
            return Ok(());
        }
        // `id()` is Some only while the child is unreaped, so the pid cannot have been
        // recycled for another process.
        if let Some(pid) = self.child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        match tokio::time::timeout(STOP_GRACE, self.wait()).await {
            Ok(Ok(status)) => {
                tracing::debug!(%status, pid = self.pid, "embedded ClickHouse stopped");
                return Ok(());
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => tracing::warn!(
                pid = self.pid,
                "embedded ClickHouse ignored SIGTERM for {STOP_GRACE:?}; sending SIGKILL"
            ),
        }
        // An error here means the child exited between the timeout and now; wait() below
        // tells which.
        let _ = self.child.start_kill();
        match tokio::time::timeout(KILL_REAP, self.wait()).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(EmbeddedError::Unkillable { pid: self.pid }),
        }
    }

    /// SIGKILLs the child immediately (tests use this to simulate a crash) and reaps it
    /// within a few seconds, so that its ports are free when this returns.
    pub fn kill_now(&mut self) {
        match self.child.try_wait() {
            Ok(None) => {}
            // Already reaped, or unknowable: nothing we can safely signal.
            Ok(Some(_)) | Err(_) => return,
        }
        if let Err(e) = self.child.start_kill() {
            tracing::warn!(pid = self.pid, error = %e, "could not SIGKILL embedded ClickHouse");
            return;
        }
        // Blocking is acceptable: SIGKILLed processes die within milliseconds, and callers
        // (tests, Drop) need the ports released before they continue.
        let deadline = Instant::now() + BLOCKING_REAP;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Ok(Some(_)) | Err(_) => return,
            }
        }
        tracing::error!(
            pid = self.pid,
            "embedded ClickHouse did not exit within {BLOCKING_REAP:?} of SIGKILL"
        );
    }

    /// The last lines ClickHouse wrote to its error log and stderr since this child started.
    pub async fn log_tail(&self) -> String {
        let mut out = String::new();
        for (name, offset) in [
            (ERROR_LOG, self.marks.error_log),
            (STDERR_LOG, self.marks.stderr),
        ] {
            let tail = read_tail(&self.dir.join(name), offset).await;
            if !tail.trim().is_empty() {
                let _ = writeln!(out, "--- {} ---", self.dir.join(name).display());
                out.push_str(&tail);
                if !tail.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        if out.is_empty() {
            out = format!(
                "(nothing in the error log or stderr; see {})",
                self.dir.join(SERVER_LOG).display()
            );
        }
        out
    }
}

impl Drop for ClickHouseProcess {
    fn drop(&mut self) {
        // Best effort: tests and crashing callers must never leak a server.
        self.kill_now();
    }
}

/// Sets `PR_SET_PDEATHSIG` in the child so the kernel SIGTERMs it if the spawning thread
/// (and normally thus our process) dies without stopping it.
#[cfg(target_os = "linux")]
fn install_parent_death_signal(command: &mut Command) {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // functions (prctl, getppid) without allocating.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect; then no signal will come.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn install_parent_death_signal(_command: &mut Command) {
    // No equivalent elsewhere; the explicit stop and Drop remain.
}

fn is_address_in_use(error: &EmbeddedError) -> bool {
    match error {
        EmbeddedError::PortInUse { .. } => true,
        EmbeddedError::ExitedEarly { log_tail, .. } => log_tail.contains("Address already in use"),
        _ => false,
    }
}

/// Picks two distinct free ports by binding port 0. Both listeners are held until both are
/// known so the kernel cannot hand out the same port twice; the small window between
/// releasing them and ClickHouse binding is covered by the retry in `start`.
fn free_ports() -> Result<Ports, EmbeddedError> {
    let bind = || {
        StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| Ok((l.local_addr()?.port(), l)))
            .map_err(io_error("finding a free port", Path::new("127.0.0.1:0")))
    };
    let (http, _http_listener) = bind()?;
    let (tcp, _tcp_listener) = bind()?;
    Ok(Ports { http, tcp })
}

/// Returns once `port` can be bound on 127.0.0.1, or fails with `PortInUse` after a short
/// wait. std sets `SO_REUSEADDR` like ClickHouse does, so lingering TIME_WAIT connections
/// do not count as "in use".
async fn wait_port_free(port: u16) -> Result<(), EmbeddedError> {
    let deadline = Instant::now() + PORT_FREE_WAIT;
    loop {
        match StdTcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                if Instant::now() >= deadline {
                    return Err(EmbeddedError::PortInUse { port });
                }
                tokio::time::sleep(READY_POLL).await;
            }
            Err(e) => {
                return Err(io_error(
                    format!("checking that port {port} is free"),
                    Path::new("127.0.0.1"),
                )(e))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

/// Creates the state directory and its subdirectories; returns its absolute path, which
/// ClickHouse needs because it resolves relative paths against its own working directory.
async fn prepare_dir(dir: &Path) -> Result<PathBuf, EmbeddedError> {
    // Owner-only: the data is a record of people's work, and the directory holds the password.
    // This directory is ClickHouse's alone, so it is made private even if it already existed
    // (an older release created it with the default umask).
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .await
        .map_err(io_error("creating the ClickHouse state directory", dir))?;
    let dir = tokio::fs::canonicalize(dir)
        .await
        .map_err(io_error("resolving the ClickHouse state directory", dir))?;
    tokio::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .await
        .map_err(io_error(
            "making the ClickHouse state directory private",
            &dir,
        ))?;
    for sub in ["data", "tmp", "log", "user_files", "format_schemas"] {
        let path = dir.join(sub);
        tokio::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&path)
            .await
            .map_err(io_error("creating a ClickHouse directory", &path))?;
    }
    Ok(dir)
}

/// The password of the embedded ClickHouse under `dir` (canonical), created on first use: 32
/// random bytes in hex, in a new file of mode 0600.
fn ensure_password(dir: &Path) -> Result<String, EmbeddedError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(PASSWORD_FILE);
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path);
    match created {
        Ok(mut file) => {
            let password = hex::encode(rand::random::<[u8; 32]>());
            file.write_all(password.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_error("writing the ClickHouse password", &path))?;
            Ok(password)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_password(dir),
        Err(e) => Err(io_error("creating the ClickHouse password", &path)(e)),
    }
}

/// The password of the embedded ClickHouse under `dir`, from `dir/password`. A file that others
/// may read is made private again (it was so when written) and used.
pub fn read_password(dir: &Path) -> Result<String, EmbeddedError> {
    let path = dir.join(PASSWORD_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(io_error("reading the ClickHouse password", &path))?;
    let mode = std::fs::metadata(&path)
        .map_err(io_error("reading the ClickHouse password", &path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the ClickHouse password file was open to other users; made it 0600 (consider a new password: delete the file and restart)");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_error("making the ClickHouse password private", &path))?;
    }
    let password = text.trim().to_string();
    if password.len() < 32 || !password.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(EmbeddedError::BadPasswordFile {
            path,
            reason:
                "expected at least 32 letters and digits; delete it and restart to make a new one"
                    .into(),
        });
    }
    Ok(password)
}

/// Writes via a temporary file and rename: ClickHouse watches its config files and must
/// never see a half-written one, nor may a reader of `endpoint`. Owner-only (0600): `users.xml`
/// holds the password's hash.
async fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), EmbeddedError> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let _ = tokio::fs::remove_file(&tmp).await;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .await
        .map_err(io_error("writing", &tmp))?;
    file.write_all(contents)
        .await
        .map_err(io_error("writing", &tmp))?;
    file.sync_all().await.map_err(io_error("writing", &tmp))?;
    drop(file);
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(io_error("replacing", path))
}

async fn open_append(path: &Path) -> Result<std::fs::File, EmbeddedError> {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(io_error("opening a ClickHouse output log", path))?;
    Ok(file.into_std().await)
}

async fn file_len(path: &Path) -> u64 {
    tokio::fs::metadata(path)
        .await
        .map(|m| m.len())
        .unwrap_or(0)
}

/// The last [`LOG_TAIL_LINES`] lines of `path` written after byte `offset`. Best effort:
/// this only decorates an error message, so read failures yield a note instead.
async fn read_tail(path: &Path, offset: u64) -> String {
    let read = async {
        let mut file = tokio::fs::File::open(path).await?;
        let len = file.metadata().await?.len();
        // A rotated log is shorter than our mark: everything in it is new.
        let offset = if offset > len { 0 } else { offset };
        let start = offset.max(len.saturating_sub(LOG_TAIL_WINDOW));
        file.seek(SeekFrom::Start(start)).await?;
        let mut bytes = Vec::new();
        file.take(LOG_TAIL_WINDOW).read_to_end(&mut bytes).await?;
        Ok::<_, io::Error>((start > offset, bytes))
    };
    match read.await {
        Ok((truncated, bytes)) => {
            let text = String::from_utf8_lossy(&bytes);
            let mut lines: Vec<&str> = text.lines().collect();
            // The window may start mid-line.
            if truncated && !lines.is_empty() {
                lines.remove(0);
            }
            let skip = lines.len().saturating_sub(LOG_TAIL_LINES);
            lines[skip..].join("\n")
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

/// Escapes text for inclusion in XML element content.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Server config in the 18.16 format (`<yandex>` root; newer releases accept it too).
///
/// Memory is kept modest because ClickHouse shares the machine with the Backlight server:
/// 18.16 defaults to an 8 GiB uncompressed cache with `use_uncompressed_cache=1`, and has
/// no `max_server_memory_usage`, so the caps live in the caches here and in the profile in
/// `users.xml`. No `interserver_http_port`: there is no replication. `timezone` is UTC so
/// date bucketing does not depend on the host's zone. Drop-size limits are off because
/// retention works by dropping whole partitions.
fn config_xml(dir: &str, ports: Ports) -> String {
    let dir = xml_escape(dir.trim_end_matches('/'));
    let Ports { http, tcp } = ports;
    format!(
        r#"<?xml version="1.0"?>
<!-- Written by backlight-server for its embedded ClickHouse; rewritten at every start. -->
<yandex>
  <logger>
    <level>warning</level>
    <log>{dir}/{SERVER_LOG}</log>
    <errorlog>{dir}/{ERROR_LOG}</errorlog>
    <size>10M</size>
    <count>3</count>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <path>{dir}/data/</path>
  <tmp_path>{dir}/tmp/</tmp_path>
  <user_files_path>{dir}/user_files/</user_files_path>
  <format_schema_path>{dir}/format_schemas/</format_schema_path>
  <users_config>{dir}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>134217728</uncompressed_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <max_table_size_to_drop>0</max_table_size_to_drop>
  <max_partition_size_to_drop>0</max_partition_size_to_drop>
</yandex>
"#
    )
}

/// Users config: only [`USER`], with the SHA-256 of `password` (never the password itself),
/// reachable from loopback only (the server also listens on 127.0.0.1 only). 4 GB per query,
/// 6 GB for all queries together.
fn users_xml(password: &str) -> String {
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(password.as_bytes()));
    USERS_XML.replace("{password_sha256_hex}", &hash)
}

const USERS_XML: &str = r#"<?xml version="1.0"?>
<!-- Written by backlight-server for its embedded ClickHouse; rewritten at every start. -->
<yandex>
  <profiles>
    <default>
      <max_memory_usage>4000000000</max_memory_usage>
      <max_memory_usage_for_all_queries>6000000000</max_memory_usage_for_all_queries>
    </default>
  </profiles>
  <users>
    <default>
      <password_sha256_hex>{password_sha256_hex}</password_sha256_hex>
      <networks>
        <ip>127.0.0.1</ip>
        <ip>::1</ip>
      </networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas>
    <default></default>
  </quotas>
</yandex>
"#;

// ---------------------------------------------------------------------------------------
// Minimal HTTP (just enough for /ping; the real client is the `clickhouse` crate)
// ---------------------------------------------------------------------------------------

/// Splits `http://host:port[/...]` into host and port. Only plain HTTP: the embedded
/// server never speaks TLS, and a URL we cannot parse is simply "not running".
fn parse_http_url(url: &str) -> Option<(String, u16)> {
    let rest = url.trim().strip_prefix("http://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        match after {
            "" => (host, 80),
            p => (host, p.strip_prefix(':')?.parse().ok()?),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().ok()?),
            None => (authority, 80),
        }
    };
    if host.is_empty() || port == 0 {
        return None;
    }
    Some((host.to_string(), port))
}

/// Sends one HTTP/1.0 request (the server closes the connection after answering) and
/// returns the status code and body.
async fn http_exchange(
    url: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> io::Result<(u16, Vec<u8>)> {
    let (host, port) = parse_http_url(url).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not an http:// URL: {url}"),
        )
    })?;
    let mut stream = TcpStream::connect((host.as_str(), port)).await?;
    let host_header = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host_header}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut response)
        .await?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "HTTP response without a header end",
            )
        })?;
    let status = std::str::from_utf8(&response[..split])
        .ok()
        .and_then(|head| head.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "HTTP response without a status code",
            )
        })?;
    Ok((status, response[split + 4..].to_vec()))
}

/// True if `url` is a ClickHouse answering `GET /ping` with "Ok." within `timeout`.
pub async fn ping(url: &str, timeout: Duration) -> bool {
    match tokio::time::timeout(timeout, http_exchange(url, "GET", "/ping", b"")).await {
        Ok(Ok((200, body))) => body.trim_ascii() == b"Ok.",
        _ => false,
    }
}

/// For the admin CLI: if `dir/endpoint` exists and that URL answers `/ping` within 2 s,
/// returns it.
pub async fn discover_running(dir: &Path) -> Option<String> {
    let text = tokio::fs::read_to_string(dir.join(ENDPOINT_FILE))
        .await
        .ok()?;
    let url = text.trim();
    parse_http_url(url)?;
    ping(url, DISCOVER_TIMEOUT).await.then(|| url.to_string())
}

// ---------------------------------------------------------------------------------------
// Supervisor
// ---------------------------------------------------------------------------------------

/// State the supervising task shares with the [`Supervisor`] handle.
#[derive(Debug, Default)]
struct SupervisorShared {
    /// Pid of the current child, 0 while none is running.
    pid: AtomicU32,
    running: AtomicBool,
    restarts: AtomicU64,
}

/// Removes `dir/endpoint` when dropped, whichever way the supervising task ends.
struct EndpointFile(PathBuf);

impl Drop for EndpointFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.0.display(), error = %e, "could not remove the ClickHouse endpoint file")
            }
        }
    }
}

/// Keeps an embedded ClickHouse running for the lifetime of the server.
///
/// Dropping the handle without [`Supervisor::shutdown`] still stops the child cleanly in
/// the background, as long as the tokio runtime keeps running.
#[derive(Debug)]
pub struct Supervisor {
    url: String,
    password: String,
    ports: Ports,
    dir: PathBuf,
    shared: Arc<SupervisorShared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Supervisor {
    /// Starts ClickHouse under `dir` and keeps it running: if the child exits unexpectedly
    /// it is restarted on the same ports (so the URL stays valid) with backoff (1 s doubling
    /// to 30 s). Writes `dir/endpoint` containing the URL and removes it on shutdown.
    ///
    /// Must be called from a long-lived thread inside a tokio runtime (see module docs).
    pub async fn start(dir: &Path) -> Result<Supervisor, EmbeddedError> {
        Self::start_with_ports(dir, None).await
    }

    /// [`Supervisor::start`] on fixed ports (e.g. so the URL survives server restarts).
    pub async fn start_with_ports(
        dir: &Path,
        ports: Option<Ports>,
    ) -> Result<Supervisor, EmbeddedError> {
        // Two supervisors on one directory would rewrite each other's config; ClickHouse's
        // own lock on data/status would catch the second server, but with a worse message.
        if let Some(url) = discover_running(dir).await {
            return Err(EmbeddedError::AlreadyRunning {
                dir: dir.to_path_buf(),
                url,
            });
        }
        let child = ClickHouseProcess::start(dir, ports).await?;
        let dir = child.dir().to_path_buf();
        let url = child.url();
        let password = child.password().to_string();
        let ports = child.ports();
        let endpoint_path = dir.join(ENDPOINT_FILE);
        write_atomically(&endpoint_path, format!("{url}\n").as_bytes()).await?;
        let endpoint = EndpointFile(endpoint_path);

        let shared = Arc::new(SupervisorShared::default());
        shared
            .pid
            .store(child.pid().unwrap_or(0), Ordering::Relaxed);
        shared.running.store(true, Ordering::Relaxed);
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let task = tokio::spawn(supervise(
            child,
            dir.clone(),
            endpoint,
            Arc::clone(&shared),
            shutdown_rx,
        ));
        Ok(Supervisor {
            url,
            password,
            ports,
            dir,
            shared,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:<http_port>`; stable across restarts of the child.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The password of [`USER`]; stable across restarts of the child.
    pub fn password(&self) -> &str {
        &self.password
    }

    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// The state directory (canonical form).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a child is currently up (false while it is being restarted).
    pub fn is_running(&self) -> bool {
        self.shared.running.load(Ordering::Relaxed)
    }

    /// Pid of the current child, if one is running.
    pub fn pid(&self) -> Option<u32> {
        match self.shared.pid.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// How many times the child has been restarted successfully.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Relaxed)
    }

    /// Stops the child cleanly (SIGTERM, then SIGKILL after 15 s), stops supervising and
    /// removes `dir/endpoint`.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            // An error means the task already ended; joining below covers that.
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the embedded ClickHouse supervisor task failed");
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Dropping the sender wakes the task, which then stops the child and exits.
        self.shutdown.take();
    }
}

enum Event {
    Shutdown,
    Exited(Result<ExitStatus, EmbeddedError>),
}

/// The supervising loop: wait for the child to exit or for shutdown; on an unexpected
/// exit, restart on the same ports with backoff until it works or shutdown is requested.
async fn supervise(
    mut child: ClickHouseProcess,
    dir: PathBuf,
    endpoint: EndpointFile,
    shared: Arc<SupervisorShared>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let ports = child.ports();
    let mut backoff = INITIAL_BACKOFF;
    loop {
        let started = Instant::now();
        // A closed channel (handle dropped) means shutdown too.
        let event = tokio::select! {
            _ = &mut shutdown => Event::Shutdown,
            status = child.wait() => Event::Exited(status),
        };
        shared.running.store(false, Ordering::Relaxed);
        shared.pid.store(0, Ordering::Relaxed);
        match event {
            Event::Shutdown => {
                // Withdraw the endpoint first: nobody should discover a server on its way down.
                drop(endpoint);
                if let Err(e) = child.stop().await {
                    tracing::error!(error = %e, "stopping the embedded ClickHouse failed");
                }
                return;
            }
            Event::Exited(status) => {
                let status = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                };
                let log_tail = child.log_tail().await;
                tracing::error!(
                    %status,
                    ran_for = ?started.elapsed(),
                    %log_tail,
                    "embedded ClickHouse exited unexpectedly; restarting it"
                );
            }
        }
        if started.elapsed() >= STABLE_RUN {
            backoff = INITIAL_BACKOFF;
        }
        // Reaps (or, after a wait error, kills) the old child before its ports are reused.
        drop(child);

        child = loop {
            tracing::warn!(delay = ?backoff, url = %format!("http://127.0.0.1:{}", ports.http), "restarting embedded ClickHouse");
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            let attempt = tokio::select! {
                _ = &mut shutdown => return,
                attempt = ClickHouseProcess::start(&dir, Some(ports)) => attempt,
            };
            match attempt {
                Ok(new_child) => break new_child,
                Err(e) => tracing::error!(error = %e, "restarting the embedded ClickHouse failed"),
            }
        };
        shared.restarts.fetch_add(1, Ordering::Relaxed);
        shared
            .pid
            .store(child.pid().unwrap_or(0), Ordering::Relaxed);
        shared.running.store(true, Ordering::Relaxed);
        tracing::warn!(pid = ?child.pid(), "embedded ClickHouse restarted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::{ClickHouseConfig, ClickHouseError, QUERY_TIMEOUT};

    /// Starts a child or fails the test with the full error (e.g. the install hint when the
    /// binary is missing): these tests must never silently skip.
    async fn start(dir: &Path, ports: Option<Ports>) -> ClickHouseProcess {
        ClickHouseProcess::start(dir, ports)
            .await
            .unwrap_or_else(|e| panic!("starting ClickHouse failed: {e}"))
    }

    /// Runs `sql` as [`USER`] with the password of the ClickHouse under `dir` (through the
    /// product's own client) and returns the answer, failing the test on an error.
    async fn query_in(dir: &Path, url: &str, sql: &str) -> String {
        let password = read_password(dir).expect("the password file");
        fetch_text(&config(url, Some(password)), sql)
            .await
            .unwrap_or_else(|e| panic!("query {sql:?} failed: {e}"))
    }

    fn config(url: &str, password: Option<String>) -> ClickHouseConfig {
        ClickHouseConfig {
            url: url.to_string(),
            database: "default".into(),
            user: password.is_some().then(|| USER.to_string()),
            password,
            cluster: None,
        }
    }

    async fn fetch_text(config: &ClickHouseConfig, sql: &str) -> Result<String, ClickHouseError> {
        let client = config.client(clickhouse::Compression::None);
        crate::clickhouse::raw::fetch_text(&client, sql, "TSV", QUERY_TIMEOUT).await
    }

    fn process_exists(pid: u32) -> bool {
        let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
        // SAFETY: signal 0 only checks for existence.
        unsafe { libc::kill(pid, 0) == 0 }
    }

    /// Issue 10: the embedded ClickHouse let user `default` in without a password.
    #[tokio::test]
    async fn only_the_password_from_the_private_directory_opens_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ch = start(tmp.path(), None).await;
        let refused = fetch_text(&config(&ch.url(), None), "SELECT 1").await;
        assert!(refused.is_err(), "{refused:?}");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tmp.path().join(PASSWORD_FILE)), 0o600);
        assert_eq!(mode(&tmp.path().join("users.xml")), 0o600);
        assert_eq!(mode(tmp.path()), 0o700);
        let users = std::fs::read_to_string(tmp.path().join("users.xml")).unwrap();
        assert!(
            !users.contains(ch.password()),
            "users.xml holds the hash only"
        );
        assert_eq!(query_in(tmp.path(), &ch.url(), "SELECT 1").await, "1\n");
        // The same password after a restart.
        let (ports, password) = (ch.ports(), ch.password().to_string());
        ch.stop().await.expect("stop");
        let again = start(tmp.path(), Some(ports)).await;
        assert_eq!(again.password(), password);
    }

    #[tokio::test]
    async fn start_ping_select_stop() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ch = start(tmp.path(), None).await;
        let url = ch.url();
        assert_eq!(url, format!("http://127.0.0.1:{}", ch.ports().http));
        assert_ne!(ch.ports().http, ch.ports().tcp);
        assert!(ping(&url, Duration::from_secs(2)).await);
        assert_eq!(query_in(tmp.path(), &url, "SELECT 1").await, "1\n");
        // 18.16 reports UTC as "Etc/UTC"; either way the config's zone is in effect.
        let zone = query_in(tmp.path(), &url, "SELECT timezone()").await;
        assert!(zone.trim().ends_with("UTC"), "server time zone is {zone:?}");
        assert!(tmp.path().join("config.xml").is_file());
        assert!(tmp.path().join("users.xml").is_file());
        assert!(tmp.path().join("data").is_dir());
        let fresh = tmp.path().join("fresh");
        prepare_dir(&fresh).await.expect("prepare");
        let mode = std::fs::metadata(&fresh)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "a new state directory is private");
        let pid = ch.pid().expect("running child has a pid");
        let raw_pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
        // SAFETY: getpgid only reads process state.
        let group = unsafe { libc::getpgid(raw_pid) };
        assert_eq!(
            group, raw_pid,
            "child leads its own process group (no terminal Ctrl-C)"
        );
        ch.stop().await.expect("stop");
        assert!(!process_exists(pid), "child must be reaped after stop");
        assert!(!ping(&url, Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn restart_on_same_ports_keeps_data() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ch = start(tmp.path(), None).await;
        let ports = ch.ports();
        let url = ch.url();
        query_in(
            tmp.path(),
            &url,
            "CREATE TABLE kept (x UInt32) ENGINE = MergeTree ORDER BY x",
        )
        .await;
        query_in(tmp.path(), &url, "INSERT INTO kept VALUES (42)").await;
        ch.stop().await.expect("stop");

        let ch = start(tmp.path(), Some(ports)).await;
        assert_eq!(ch.ports(), ports);
        assert_eq!(ch.url(), url);
        assert_eq!(
            query_in(tmp.path(), &url, "SELECT x FROM kept").await,
            "42\n"
        );
        ch.stop().await.expect("stop");
    }

    #[tokio::test]
    async fn kill_now_frees_ports_for_a_restart() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut ch = start(tmp.path(), None).await;
        let ports = ch.ports();
        let url = ch.url();
        query_in(
            tmp.path(),
            &url,
            "CREATE TABLE crashed (x UInt32) ENGINE = MergeTree ORDER BY x",
        )
        .await;
        query_in(tmp.path(), &url, "INSERT INTO crashed VALUES (7)").await;
        let pid = ch.pid().expect("pid");
        ch.kill_now();
        assert!(!process_exists(pid), "kill_now must kill and reap");
        assert!(!ping(&url, Duration::from_secs(1)).await);
        drop(ch);

        let ch = start(tmp.path(), Some(ports)).await;
        assert_eq!(
            query_in(tmp.path(), &url, "SELECT x FROM crashed").await,
            "7\n"
        );
        ch.stop().await.expect("stop");
    }

    #[tokio::test]
    async fn drop_kills_the_child() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ch = start(tmp.path(), None).await;
        let pid = ch.pid().expect("pid");
        drop(ch);
        assert!(!process_exists(pid), "Drop must kill and reap");
    }

    #[tokio::test]
    async fn busy_port_is_reported() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let holder = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let busy = holder.local_addr().expect("addr").port();
        let free = free_ports().expect("free ports").tcp;
        let err = ClickHouseProcess::start(
            tmp.path(),
            Some(Ports {
                http: busy,
                tcp: free,
            }),
        )
        .await
        .expect_err("port is taken");
        assert!(
            matches!(err, EmbeddedError::PortInUse { port } if port == busy),
            "unexpected error: {err}"
        );
    }

    #[tokio::test]
    async fn second_server_on_same_dir_exits_early_with_log_tail() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let first = start(tmp.path(), None).await;
        let err = ClickHouseProcess::start(tmp.path(), None)
            .await
            .expect_err("data dir is locked by the first server");
        match &err {
            EmbeddedError::ExitedEarly { log_tail, .. } => {
                assert!(
                    log_tail.contains("status"),
                    "log tail lacks the lock error: {log_tail}"
                );
            }
            other => panic!("unexpected error: {other}"),
        }
        // The first server is unaffected.
        assert!(ping(&first.url(), Duration::from_secs(2)).await);
        first.stop().await.expect("stop");
    }

    #[tokio::test]
    async fn supervisor_restarts_a_killed_child() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sup = Supervisor::start(tmp.path())
            .await
            .unwrap_or_else(|e| panic!("starting the supervisor failed: {e}"));
        let url = sup.url();
        let endpoint = std::fs::read_to_string(tmp.path().join(ENDPOINT_FILE)).expect("endpoint");
        assert_eq!(endpoint.trim(), url);
        assert_eq!(
            discover_running(tmp.path()).await.as_deref(),
            Some(url.as_str())
        );
        assert!(matches!(
            Supervisor::start(tmp.path()).await,
            Err(EmbeddedError::AlreadyRunning { .. })
        ));

        let first_pid = sup.pid().expect("child pid");
        let pid = libc::pid_t::try_from(first_pid).expect("pid fits");
        // SAFETY: plain kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let restarted = sup.restarts() >= 1 && sup.pid().is_some_and(|p| p != first_pid);
            if restarted && ping(&url, Duration::from_secs(1)).await {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "ClickHouse was not restarted within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(sup.is_running());
        assert_eq!(sup.url(), url, "restart keeps the URL");
        assert_eq!(query_in(tmp.path(), &url, "SELECT 1").await, "1\n");

        let second_pid = sup.pid().expect("pid");
        sup.shutdown().await;
        assert!(
            !tmp.path().join(ENDPOINT_FILE).exists(),
            "endpoint removed on shutdown"
        );
        assert!(!process_exists(second_pid));
        assert_eq!(discover_running(tmp.path()).await, None);
    }

    #[test]
    fn find_binary_names_install_script_when_env_points_to_missing_file() {
        let err = find_binary_in(
            Some(OsString::from(
                "/nonexistent/backlight-test/clickhouse-server",
            )),
            std::env::var_os("PATH"),
        )
        .expect_err("missing binary");
        let message = err.to_string();
        assert!(matches!(err, EmbeddedError::BinaryMissing { .. }));
        assert!(
            message.contains("sudo deploy/install-clickhouse.sh"),
            "{message}"
        );
        assert!(message.contains("BACKLIGHT_CLICKHOUSE_BINARY"), "{message}");
        assert!(message.contains("--clickhouse-url"), "{message}");
        assert!(
            message.contains("/nonexistent/backlight-test/clickhouse-server"),
            "{message}"
        );
    }

    #[test]
    fn find_binary_without_any_candidate_explains_install() {
        // With an empty PATH only the fixed locations remain; on this project's machines
        // one exists, so only check the error shape when none does.
        match find_binary_in(None, Some(OsString::new())) {
            Ok(path) => assert!(is_executable(&path)),
            Err(e) => assert!(e.to_string().contains("install-clickhouse.sh"), "{e}"),
        }
    }

    #[test]
    fn single_binary_needs_server_subcommand() {
        assert!(needs_server_subcommand(Path::new("/usr/bin/clickhouse")));
        assert!(!needs_server_subcommand(Path::new(
            "/usr/sbin/clickhouse-server"
        )));
    }

    #[test]
    fn parses_http_urls() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:8123"),
            Some(("127.0.0.1".into(), 8123))
        );
        assert_eq!(
            parse_http_url("http://127.0.0.1:8123/\n"),
            Some(("127.0.0.1".into(), 8123))
        );
        assert_eq!(parse_http_url("http://[::1]:9"), Some(("::1".into(), 9)));
        assert_eq!(
            parse_http_url("http://localhost"),
            Some(("localhost".into(), 80))
        );
        assert_eq!(parse_http_url("https://127.0.0.1:8443"), None);
        assert_eq!(parse_http_url("http://127.0.0.1:notaport"), None);
        assert_eq!(parse_http_url("http://127.0.0.1:0"), None);
        assert_eq!(parse_http_url("http://user@host:1"), None);
        assert_eq!(parse_http_url(""), None);
    }

    #[test]
    fn escapes_xml() {
        assert_eq!(xml_escape("/a&b/<c>"), "/a&amp;b/&lt;c&gt;");
        assert!(
            config_xml("/x&y", Ports { http: 1, tcp: 2 }).contains("<path>/x&amp;y/data/</path>")
        );
    }

    #[tokio::test]
    async fn discover_running_ignores_stale_or_garbage_endpoints() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(discover_running(tmp.path()).await, None);
        std::fs::write(tmp.path().join(ENDPOINT_FILE), "garbage").expect("write");
        assert_eq!(discover_running(tmp.path()).await, None);
        // A port nobody listens on: free_ports released it.
        let port = free_ports().expect("ports").http;
        std::fs::write(
            tmp.path().join(ENDPOINT_FILE),
            format!("http://127.0.0.1:{port}\n"),
        )
        .expect("write");
        assert_eq!(discover_running(tmp.path()).await, None);
    }
}

//! The real `backlight-server` binary: serving on a free port against a test's ClickHouse and
//! database, killed and restarted on the same port, and its `admin` command line.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use backlight_shared::api::{EnrollRequest, ENROLL_PATH, INGEST_PATH};
use backlight_shared::batch::Batch;
use tempfile::TempDir;

use super::clickhouse::{ClickHouse, Db};
use super::ingest::{zstd, Device, Posted};
use super::process::{log_tail, print_log_if_panicking, Child};
use super::{bins, free_port, http_client, https_client};

/// How long a server gets to answer `GET /readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `admin` command may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How to run the server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// `--auth-cache-ttl`; `0s` so revocations are immediate.
    pub auth_cache_ttl: String,
    /// `--insert-min-interval` (shortest time between two INSERT starts); the product default
    /// is 20ms.
    pub insert_min_interval: String,
    /// Anything else to pass.
    pub extra_args: Vec<String>,
    /// Storage flags for `serve` and `admin` alike (e.g. `--clickhouse-cluster NAME`).
    pub storage_args: Vec<String>,
    /// How long the server may take to answer `/readyz` (migrations on a cluster take longer).
    pub ready_timeout: Duration,
    /// Environment variables to set, e.g. `BACKLIGHT_MAX_CONNECTIONS` (a build that does not
    /// know a setting ignores it, where it would refuse an unknown flag).
    pub env: Vec<(String, String)>,
    /// Serve HTTPS with this certificate and key; the harness's client then trusts exactly
    /// that certificate.
    pub tls: Option<TlsFiles>,
    /// `--metrics-token`: what [`Server::metrics`] sends.
    pub metrics_token: String,
}

/// The `--metrics-token` test servers run with unless a test says otherwise.
pub const TEST_METRICS_TOKEN: &str = "e2e-metrics-token-0123456789abcdef";

/// `--tls-cert` and `--tls-key` files. The certificate must be self-signed (it is also the one
/// root the harness's HTTPS client trusts), e.g. made by `rcgen` in the test.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// A client with the harness's timeouts that trusts only this certificate.
    pub fn client(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.cert)
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.cert.display()));
        https_client(&pem)
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            auth_cache_ttl: "0s".into(),
            insert_min_interval: "20ms".into(),
            extra_args: Vec::new(),
            storage_args: Vec::new(),
            ready_timeout: READY_TIMEOUT,
            env: Vec::new(),
            tls: None,
            metrics_token: TEST_METRICS_TOKEN.into(),
        }
    }
}

/// A running `backlight-server` of one test. Dropping it kills the process; when the test is
/// failing, the end of the server's log is printed.
pub struct Server {
    child: Option<Child>,
    port: u16,
    db: Db,
    options: ServerOptions,
    dir: TempDir,
    http: reqwest::Client,
}

impl Server {
    /// Starts a server on a free port with a fresh database on `ch`, and waits until it is ready.
    pub async fn start(ch: &ClickHouse) -> Server {
        Server::start_with(ch.fresh_db(), ServerOptions::default()).await
    }

    /// Starts a server against `db` with `options`, and waits until it is ready.
    pub async fn start_with(db: Db, options: ServerOptions) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("backlight-e2e-server-")
            .tempdir()
            .expect("creating a temporary directory for the server");
        let http = match &options.tls {
            Some(tls) => tls.client(),
            None => http_client(),
        };
        let mut server = Server {
            child: None,
            port: free_port(),
            db,
            options,
            dir,
            http,
        };
        server.launch().await;
        server
    }

    /// `http://127.0.0.1:<port>` (`https://` when serving TLS); stays the same across restarts.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.pid())
    }

    /// The server's peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let pid = self.pid().expect("the server is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
    }

    /// The database this server uses.
    pub fn db(&self) -> Db {
        self.db.clone()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_status().is_none())
    }

    /// SIGKILLs the server (a crash); the port is free when this returns.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill9().await;
        }
    }

    /// SIGTERMs the server and waits (bounded) for it to finish open requests and exit.
    pub async fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.signal(libc::SIGTERM);
            if child.wait_timeout(Duration::from_secs(40)).await.is_none() {
                panic!("the server did not exit within 40 s of SIGTERM");
            }
        }
    }

    /// Kills the server if it runs, then starts it again on the same port and waits until it
    /// is ready.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.launch().await;
    }

    async fn launch(&mut self) {
        // A port just released by a killed server can, rarely, still be refused for a moment;
        // a server that exits at start is retried a few times before the test fails.
        for attempt in 1..=5 {
            let args = self.serve_args();
            self.child = Some(Child::spawn_with_env(
                "backlight-server",
                &bins::server(),
                &args,
                &self.options.env,
                &self.log_path(),
            ));
            match self.wait_ready().await {
                Ok(()) => return,
                Err(reason) if attempt < 5 && reason.contains("in use") => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(reason) => panic!(
                    "backlight-server did not get ready: {reason}\n--- server log ---\n{}",
                    self.log_tail(80)
                ),
            }
        }
    }

    fn serve_args(&self) -> Vec<String> {
        let mut args = vec![
            "--listen".to_string(),
            format!("127.0.0.1:{}", self.port),
            "--data-dir".into(),
            self.dir.path().join("data").display().to_string(),
            "--clickhouse-url".into(),
            self.db.url().to_string(),
            "--clickhouse-database".into(),
            self.db.name().to_string(),
            "--auth-cache-ttl".into(),
            self.options.auth_cache_ttl.clone(),
            "--insert-min-interval".into(),
            self.options.insert_min_interval.clone(),
            "--metrics-token".into(),
            self.options.metrics_token.clone(),
        ];
        args.extend(clickhouse_credentials(&self.db));
        if let Some(tls) = &self.options.tls {
            args.push("--tls-cert".into());
            args.push(tls.cert.display().to_string());
            args.push("--tls-key".into());
            args.push(tls.key.display().to_string());
        }
        args.extend(self.options.storage_args.iter().cloned());
        args.extend(self.options.extra_args.iter().cloned());
        args
    }

    /// Waits (bounded) for `GET /readyz` to answer 200; `Err` with a reason if the process
    /// exits or the time runs out.
    pub async fn wait_ready(&mut self) -> Result<(), String> {
        let timeout = self.options.ready_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let url = format!("{}/readyz", self.url());
        loop {
            let child = self.child.as_mut().ok_or("the server is not running")?;
            if let Some(status) = child.try_status() {
                let log = self.log_tail(20);
                return Err(format!(
                    "the server exited ({status}) before it was ready: {log}"
                ));
            }
            let last = match self
                .http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "GET /readyz did not answer 200 within {timeout:?}; last: {last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // ---- admin ---------------------------------------------------------------------------

    /// Runs `backlight-server admin <args>` against this server's database and returns its
    /// stdout; panics with stderr if it fails.
    pub async fn admin(&self, args: &[&str]) -> String {
        admin(&self.db, self.dir.path(), &self.with_storage_args(args)).await
    }

    /// Runs `backlight-server admin <args>` and returns the whole output, failed or not.
    pub async fn try_admin(&self, args: &[&str]) -> Output {
        try_admin(&self.db, self.dir.path(), &self.with_storage_args(args)).await
    }

    /// `args` after the storage flags of the options (they are global, so they may come first).
    fn with_storage_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        self.options
            .storage_args
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
            .collect()
    }

    /// Creates tenant `prefix-<random>` and returns its id.
    pub async fn create_tenant(&self, prefix: &str) -> String {
        let tenant = format!(
            "{prefix}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        self.admin(&["tenant", "create", &tenant]).await;
        tenant
    }

    /// Creates an enrollment key for `tenant` and returns the secret (`ble_…`).
    pub async fn create_enrollment_key(&self, tenant: &str) -> String {
        let key = self
            .admin(&[
                "enrollment-key",
                "create",
                "--tenant",
                tenant,
                "--note",
                "e2e",
            ])
            .await;
        let key = key.trim().to_string();
        assert!(
            key.starts_with("ble_") && !key.contains(char::is_whitespace),
            "`admin enrollment-key create` should print the key alone on stdout, printed {key:?}"
        );
        key
    }

    /// `admin device list --tenant T --json`, parsed.
    pub async fn device_list(&self, tenant: &str) -> Vec<serde_json::Value> {
        let out = self
            .admin(&["device", "list", "--tenant", tenant, "--json"])
            .await;
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("`admin device list --json` printed non-JSON ({e}): {out}"))
    }

    /// The `admin device list --json` entry of one device.
    pub async fn device_entry(&self, tenant: &str, device_id: &str) -> serde_json::Value {
        let list = self.device_list(tenant).await;
        list.iter()
            .find(|d| d["device_id"].as_str() == Some(device_id))
            .cloned()
            .unwrap_or_else(|| {
                panic!("device {device_id} missing from `admin device list`: {list:?}")
            })
    }

    // ---- HTTP ----------------------------------------------------------------------------

    /// `POST /v1/enroll` with `key`.
    pub async fn enroll(&self, key: &str) -> Posted {
        let request = EnrollRequest {
            enrollment_key: key.to_string(),
            hostname: "e2e-desktop".into(),
            agent_version: "0.0.0-e2e".into(),
            os: "linux".into(),
        };
        let response = self
            .http
            .post(format!("{}{ENROLL_PATH}", self.url()))
            .json(&request)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {ENROLL_PATH}: {e}"));
        Posted::read(response).await
    }

    /// Enrolls a device over HTTP with `key`; panics unless the server says 200.
    pub async fn enroll_device(&self, key: &str) -> Device {
        let answer: backlight_shared::api::EnrollResponse = self.enroll(key).await.ok_json();
        Device {
            id: answer.device_id,
            tenant: answer.tenant_id,
            credential: answer.device_credential,
        }
    }

    /// `POST /v1/ingest` with a raw body, an optional `Content-Encoding` and an optional bearer
    /// credential.
    pub async fn post_ingest(
        &self,
        credential: Option<&str>,
        encoding: Option<&str>,
        body: Vec<u8>,
    ) -> Posted {
        self.try_post_ingest(credential, encoding, body)
            .await
            .unwrap_or_else(|e| panic!("POST {INGEST_PATH}: {e}"))
    }

    /// [`Server::post_ingest`] that reports a transport failure instead of panicking.
    pub async fn try_post_ingest(
        &self,
        credential: Option<&str>,
        encoding: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Posted, reqwest::Error> {
        let mut request = self
            .http
            .post(format!("{}{INGEST_PATH}", self.url()))
            .header("content-type", "application/json")
            .body(body);
        if let Some(credential) = credential {
            request = request.bearer_auth(credential);
        }
        if let Some(encoding) = encoding {
            request = request.header("content-encoding", encoding);
        }
        Ok(Posted::read(request.send().await?).await)
    }

    /// Sends `batch` as `device`, zstd-compressed, as an agent would.
    pub async fn send_batch(&self, device: &Device, batch: &Batch) -> Posted {
        let json = serde_json::to_vec(batch).expect("a batch serializes");
        self.post_ingest(Some(&device.credential), Some("zstd"), zstd(&json))
            .await
    }

    /// `GET /metrics` as text, with the metrics token.
    pub async fn metrics(&self) -> String {
        let response = self.get_metrics(Some(&self.options.metrics_token)).await;
        assert!(
            response.status.is_success(),
            "GET /metrics answered {response}"
        );
        response.body
    }

    /// `GET /metrics` with `token` as the bearer (or none), whatever the answer.
    pub async fn get_metrics(&self, token: Option<&str>) -> Posted {
        let mut request = self.http.get(format!("{}/metrics", self.url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Posted::read(
            request
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET /metrics: {e}")),
        )
        .await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        print_log_if_panicking("backlight-server", &self.log_path());
        // The child's own drop SIGKILLs it.
    }
}

/// Runs `backlight-server <args>` (serving, no `admin`), expecting it to stop by itself within
/// `timeout` — a start-up that must fail — and returns its output; panics if it is still
/// running then (it is killed).
pub async fn serve_until_exit(args: &[String], timeout: Duration) -> Output {
    let mut command = tokio::process::Command::new(bins::server());
    command
        .args(args)
        .env("BACKLIGHT_LOG", "info")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(timeout, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("running `backlight-server {}`: {e}", args.join(" ")),
        Err(_) => panic!(
            "`backlight-server {}` was still running after {timeout:?}",
            args.join(" ")
        ),
    }
}

/// `--clickhouse-user`/`--clickhouse-password` for `db` (on the command line: these are
/// throwaway test passwords; production passes them in the environment).
fn clickhouse_credentials(db: &Db) -> Vec<String> {
    match db.password() {
        Some(password) => vec![
            "--clickhouse-user".into(),
            backlight_server::clickhouse::embedded::USER.into(),
            "--clickhouse-password".into(),
            password.into(),
        ],
        None => Vec::new(),
    }
}

/// Runs `backlight-server admin <args>` against `db` and returns stdout; panics on failure.
pub async fn admin(db: &Db, data_dir: &Path, args: &[&str]) -> String {
    let output = try_admin(db, data_dir, args).await;
    if !output.status.success() {
        panic!(
            "`backlight-server admin {}` failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8(output.stdout).expect("admin output is UTF-8")
}

/// Runs `backlight-server admin <args>` against `db`; returns the output whatever the outcome.
pub async fn try_admin(db: &Db, data_dir: &Path, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(bins::server());
    command
        .arg("--data-dir")
        .arg(data_dir.join("admin"))
        .args([
            "--clickhouse-url",
            db.url(),
            "--clickhouse-database",
            db.name(),
        ])
        .args(clickhouse_credentials(db))
        .arg("admin")
        .args(args)
        .kill_on_drop(true);
    match tokio::time::timeout(ADMIN_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("running `backlight-server admin {}`: {e}", args.join(" ")),
        Err(_) => panic!(
            "`backlight-server admin {}` took more than {ADMIN_TIMEOUT:?}",
            args.join(" ")
        ),
    }
}

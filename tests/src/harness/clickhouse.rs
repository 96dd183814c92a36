//! Throwaway ClickHouse servers and a query helper.
//!
//! [`ClickHouse`] wraps the server crate's own [`ClickHouseProcess`] (the code the product uses
//! for its embedded ClickHouse), with state in a temporary directory and free ports. It can be
//! stopped and restarted on the *same* ports with its data kept, which is how outages are
//! simulated. [`Db`] runs SQL against one database through the server's own ClickHouse client
//! (`backlight_server::clickhouse`), so tests assert on what is really stored.

use std::fmt::Display;
use std::time::Duration;

use backlight_server::clickhouse::embedded::{find_binary, ClickHouseProcess, Ports, USER};
use backlight_server::clickhouse::raw::{fetch_raw, fetch_text};
use backlight_server::clickhouse::{ClickHouseConfig, ClickHouseError, QUERY_TIMEOUT};
use clickhouse::{Client, Compression};
use serde::de::DeserializeOwned;
use tempfile::TempDir;

use super::unique_name;

/// A ClickHouse server of one test.
pub struct ClickHouse {
    process: Option<ClickHouseProcess>,
    ports: Ports,
    /// The password of its one user (it lives in the state directory, kept across restarts).
    password: String,
    dir: TempDir,
}

impl ClickHouse {
    /// Starts a fresh ClickHouse on free ports. Panics — with the install hint — when the
    /// binary is missing: these tests are never skipped.
    ///
    /// Must run on the test's own thread (see `ClickHouseProcess::start`).
    pub async fn start() -> ClickHouse {
        if let Err(e) = find_binary() {
            panic!("the end-to-end tests need a real ClickHouse: {e}");
        }
        let dir = tempfile::Builder::new()
            .prefix("backlight-e2e-ch-")
            .tempdir()
            .expect("creating a temporary directory for ClickHouse");
        let process = ClickHouseProcess::start(dir.path(), None)
            .await
            .unwrap_or_else(|e| panic!("starting ClickHouse failed: {e}"));
        ClickHouse {
            ports: process.ports(),
            password: process.password().to_string(),
            process: Some(process),
            dir,
        }
    }

    /// Starts ClickHouse with its state in `dir`, which the caller may have prepared (e.g. a
    /// `config.d/` with more configuration, which ClickHouse merges into ours), on `ports`.
    ///
    /// Must run on the test's own thread (see `ClickHouseProcess::start`).
    pub async fn start_in(dir: TempDir, ports: Ports) -> ClickHouse {
        if let Err(e) = find_binary() {
            panic!("the end-to-end tests need a real ClickHouse: {e}");
        }
        let process = ClickHouseProcess::start(dir.path(), Some(ports))
            .await
            .unwrap_or_else(|e| panic!("starting ClickHouse on {ports:?} failed: {e}"));
        ClickHouse {
            ports,
            password: process.password().to_string(),
            process: Some(process),
            dir,
        }
    }

    /// `http://127.0.0.1:<port>`; stays the same across [`ClickHouse::restart`].
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.http)
    }

    pub fn ports(&self) -> Ports {
        self.ports
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(|p| p.pid())
    }

    /// Stops ClickHouse cleanly (SIGTERM, then SIGKILL after a grace period).
    pub async fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process
                .stop()
                .await
                .unwrap_or_else(|e| panic!("stopping ClickHouse failed: {e}"));
        }
    }

    /// SIGKILLs ClickHouse (a crash); its ports are free when this returns.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill_now();
        }
    }

    /// Starts ClickHouse again on the same ports and directory, data kept. Stops it first if
    /// it is running.
    pub async fn restart(&mut self) {
        self.stop().await;
        let process = ClickHouseProcess::start(self.dir.path(), Some(self.ports))
            .await
            .unwrap_or_else(|e| panic!("restarting ClickHouse on {:?} failed: {e}", self.ports));
        self.process = Some(process);
    }

    /// The password of the user the server and [`Db`] connect as.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A handle on database `name` (which may not exist yet).
    pub fn db(&self, name: &str) -> Db {
        Db::new(self.url(), name.to_string()).with_password(&self.password)
    }

    /// A handle on a database with a fresh, unique name (not created yet: the server's
    /// migrations create it).
    pub fn fresh_db(&self) -> Db {
        self.db(&unique_name("e2e"))
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        if let Some(process) = &self.process {
            if std::thread::panicking() {
                eprintln!(
                    "ClickHouse of the failed test: {} (state in {}, logs in {}/log)",
                    process.url(),
                    self.dir.path().display(),
                    self.dir.path().display()
                );
            }
        }
        // ClickHouseProcess's own Drop SIGKILLs and reaps the child; then the TempDir goes.
        self.process.take();
    }
}

/// SQL against one database of one ClickHouse, through the server's own client
/// (`ClickHouseConfig::client` and [`fetch_text`]): no compression, numbers as numbers in JSON.
#[derive(Clone)]
pub struct Db {
    config: ClickHouseConfig,
    /// ClickHouse settings of every query (URL parameters).
    settings: Vec<(String, String)>,
    timeout: Duration,
    client: Client,
}

/// The product name [`Db`] adds to its User-Agent (`backlight-e2e/0.1.0 clickhouse-rs/…`).
pub const PRODUCT: &str = "backlight-e2e";

/// A query of [`Db`] failed; says which statement and which ClickHouse.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("ClickHouse at {url} failed {sql:?}: {source}")]
    Query {
        url: String,
        sql: String,
        source: ClickHouseError,
    },
    #[error("{sql:?} returned {text:?}, not a number")]
    NotANumber { sql: String, text: String },
}

impl Db {
    pub fn new(url: String, name: String) -> Db {
        Db::with_config(ClickHouseConfig {
            url,
            // Database names are `[a-z0-9_]` (see `unique_name`).
            database: name,
            user: None,
            password: None,
            cluster: None,
        })
    }

    fn with_config(config: ClickHouseConfig) -> Db {
        // UInt64 is quoted in JSON formats by default.
        let settings = vec![("output_format_json_quote_64bit_integers".into(), "0".into())];
        Db {
            client: Db::client(&config, &settings),
            config,
            settings,
            timeout: QUERY_TIMEOUT,
        }
    }

    fn client(config: &ClickHouseConfig, settings: &[(String, String)]) -> Client {
        // The product name in the User-Agent tells the harness's and the load generators'
        // queries from the server's in `system.query_log` (see lookupgen's `--query-log`).
        let client = config
            .client(Compression::None)
            .with_product_info(PRODUCT, env!("CARGO_PKG_VERSION"));
        settings.iter().fold(client, |client, (name, value)| {
            client.with_setting(name.clone(), value.clone())
        })
    }

    fn rebuild(&mut self) {
        self.client = Db::client(&self.config, &self.settings);
    }

    /// This handle with ClickHouse settings sent with every query, e.g.
    /// `load_balancing=in_order` (URL parameters, `&`-joined).
    pub fn with_settings(mut self, settings: &str) -> Db {
        for pair in settings.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            self.settings.push((name.to_string(), value.to_string()));
        }
        self.rebuild();
        self
    }

    /// The same database, reached as user `default` with `password`.
    pub fn with_password(mut self, password: &str) -> Db {
        self.config.user = Some(USER.to_string());
        self.config.password = Some(password.to_string());
        self.rebuild();
        self
    }

    /// The same database, with queries given up after `timeout` (30 s by default).
    pub fn with_timeout(mut self, timeout: Duration) -> Db {
        self.timeout = timeout;
        self
    }

    pub fn url(&self) -> &str {
        &self.config.url
    }

    /// The password of user `default`, if any (what a server on this database needs).
    pub fn password(&self) -> Option<&str> {
        self.config.password.as_deref()
    }

    pub fn name(&self) -> &str {
        &self.config.database
    }

    /// Runs `sql` and returns the body (TSV unless `sql` names its `FORMAT`), or an error with
    /// ClickHouse's message.
    pub async fn try_query(&self, sql: &str) -> Result<String, DbError> {
        fetch_text(&self.client, sql, "TSV", self.timeout)
            .await
            .map_err(|source| self.error(sql, source))
    }

    /// [`Db::try_query`] for a binary answer (e.g. `FORMAT RowBinary`).
    pub async fn try_query_bytes(&self, sql: &str) -> Result<Vec<u8>, DbError> {
        fetch_raw(&self.client, sql, "TSV", self.timeout)
            .await
            .map_err(|source| self.error(sql, source))
    }

    fn error(&self, sql: &str, source: ClickHouseError) -> DbError {
        DbError::Query {
            url: self.config.url.clone(),
            sql: sql.to_string(),
            source,
        }
    }

    /// Runs `sql`, panicking on failure.
    pub async fn query(&self, sql: &str) -> String {
        self.try_query(sql).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Rows of a `FORMAT TSV` answer, split into columns (no escaping: keep values simple).
    pub async fn tsv(&self, sql: &str) -> Vec<Vec<String>> {
        let body = self.query(&format!("{sql} FORMAT TSV")).await;
        body.lines()
            .map(|line| line.split('\t').map(str::to_string).collect())
            .collect()
    }

    /// The single number a query such as `SELECT count() FROM …` returns.
    pub async fn count(&self, sql: &str) -> u64 {
        self.try_count(sql).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Db::count`] that reports failure (e.g. while ClickHouse is down) instead of panicking.
    pub async fn try_count(&self, sql: &str) -> Result<u64, DbError> {
        let body = self.try_query(&format!("{sql} FORMAT TSV")).await?;
        body.trim().parse().map_err(|_| DbError::NotANumber {
            sql: sql.to_string(),
            text: body,
        })
    }

    /// Rows of a `FORMAT JSONEachRow` answer.
    pub async fn rows<T: DeserializeOwned>(&self, sql: &str) -> Vec<T> {
        let body = self.query(&format!("{sql} FORMAT JSONEachRow")).await;
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("row {line:?} of {sql:?} does not parse: {e}"))
            })
            .collect()
    }

    /// `count() FROM events FINAL` for one device: every count a report makes must agree with it.
    pub async fn events_final(&self, device: impl Display) -> u64 {
        self.count(&format!(
            "SELECT count() FROM events FINAL WHERE device_id = '{device}'"
        ))
        .await
    }

    /// Rows of `events` in the whole database, without FINAL (re-sent copies included).
    pub async fn events_raw_total(&self) -> u64 {
        self.count("SELECT count() FROM events").await
    }
}

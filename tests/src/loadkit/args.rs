//! Command-line options every load generator that watches the server and ClickHouse shares.

use std::time::Duration;

use anyhow::Result;

use super::clickhouse::loopback_db;
use crate::Db;

/// What to watch besides the server's answers: the processes (CPU, memory), the server's
/// `/metrics`, and ClickHouse itself.
#[derive(clap::Args, Debug, Clone)]
pub struct Watched {
    /// The backlight-server process (CPU and memory).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The ClickHouse server process (CPU and memory).
    #[arg(long)]
    pub clickhouse_pid: Option<u32>,
    /// ClickHouse HTTP URL (loopback), for what the tool reads from ClickHouse directly.
    #[arg(long)]
    pub clickhouse_url: Option<String>,
    /// Password of ClickHouse's `default` user (the embedded one keeps it in
    /// `DATA_DIR/clickhouse/password`).
    #[arg(long, env = "BACKLIGHT_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    pub clickhouse_password: Option<String>,
    /// ClickHouse database holding Backlight's tables.
    #[arg(long, default_value = "backlight")]
    pub clickhouse_database: String,
    /// The server's `--metrics-token`, to read its /metrics (the server's own figures).
    #[arg(long, env = "BACKLIGHT_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
}

impl Watched {
    /// The database of `--clickhouse-url`, if given, with queries given up after `timeout`.
    pub fn clickhouse(&self, timeout: Duration) -> Result<Option<Db>> {
        self.clickhouse_url
            .as_deref()
            .map(|url| {
                loopback_db(
                    "--clickhouse-url",
                    url,
                    &self.clickhouse_database,
                    self.clickhouse_password.as_deref(),
                    timeout,
                )
            })
            .transpose()
    }
}

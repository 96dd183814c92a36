//! Talking to ClickHouse: where it is (an external URL or an embedded, supervised local server)
//! and how the client is configured so it works on every supported version (18.16 to current).
//!
//! **Architecture invariant:** every `clickhouse::Client` in the server is built by
//! [`ClickHouseConfig::client`]. It turns schema validation off (18.16 rejects the setting the
//! crate sends for it) and is the one place that chooses compression, after a round-trip
//! self-test proved that choice works against the server at hand.

pub mod embedded;

use std::time::Duration;

use clickhouse::{Client, Compression};
use serde::{Deserialize, Serialize};

/// How long any single ClickHouse query may take before we give up and report it unavailable.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where ClickHouse is and how to log in.
#[derive(Clone, Debug)]
pub struct ClickHouseConfig {
    /// `http://host:8123` (or `https://…`).
    pub url: String,
    /// The database holding Backlight's tables; created by the migrations if missing.
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// ClickHouse failed or could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    #[error("ClickHouse query failed: {0}")]
    Query(#[from] clickhouse::error::Error),
    #[error("ClickHouse did not answer within {0:?}")]
    Timeout(Duration),
    #[error("ClickHouse self-test failed: {0}")]
    SelfTest(String),
    /// Too many reads waiting already; turning this one away protects ClickHouse (which
    /// refuses past its own limit, taking ingest and audit writes down with it).
    #[error("too many {0} in progress; retry shortly")]
    Saturated(&'static str),
    #[error("a background ClickHouse task ended unexpectedly: {0}")]
    Interrupted(String),
    /// A read shared by several requests failed (the message of the underlying error).
    #[error("a batched ClickHouse read failed: {0}")]
    BatchFailed(String),
}

impl ClickHouseConfig {
    /// A client for Backlight's database with the given compression.
    pub fn client(&self, compression: Compression) -> Client {
        self.client_without_database(compression)
            .with_database(self.database.clone())
    }

    /// A client not bound to a database (to create it).
    pub fn client_without_database(&self, compression: Compression) -> Client {
        let mut client = Client::default()
            .with_url(self.url.clone())
            .with_compression(compression)
            // 18.16 refuses `describe_include_subcolumns`, which validation sends.
            .with_validation(false);
        if let Some(user) = &self.user {
            client = client.with_user(user.clone());
        }
        if let Some(password) = &self.password {
            client = client.with_password(password.clone());
        }
        client
    }

    /// Finds a compression setting that survives an insert/select round trip against this
    /// server, preferring LZ4. Some old builds were seen answering a compressed query with an
    /// empty 200 body: this makes such a trap fail loudly at start instead of silently later.
    ///
    /// Needs the `self_test` table (created by the migrations).
    pub async fn negotiate_compression(&self) -> Result<Compression, ClickHouseError> {
        let mut last_error = String::new();
        for compression in [Compression::Lz4, Compression::None] {
            match self_test(&self.client(compression)).await {
                Ok(()) => return Ok(compression),
                Err(e) => {
                    tracing::warn!(?compression, error = %e, "ClickHouse round-trip self-test failed");
                    last_error = e.to_string();
                }
            }
        }
        Err(ClickHouseError::SelfTest(last_error))
    }
}

#[derive(clickhouse::Row, Serialize, Deserialize, Debug, PartialEq)]
struct SelfTestRow {
    probe: String,
    at_ms: u64,
}

async fn self_test(client: &Client) -> Result<(), ClickHouseError> {
    let probe = uuid::Uuid::new_v4().to_string();
    let row = SelfTestRow {
        probe: probe.clone(),
        at_ms: backlight_shared::now_ms(),
    };
    with_timeout(async {
        let mut insert = client.insert::<SelfTestRow>("self_test").await?;
        insert.write(&row).await?;
        insert.end().await
    })
    .await?;
    let back: Vec<SelfTestRow> = with_timeout(
        client
            .query("SELECT ?fields FROM self_test WHERE probe = ?")
            .bind(&probe)
            .fetch_all(),
    )
    .await?;
    if back != [row] {
        return Err(ClickHouseError::SelfTest(format!(
            "wrote one row and read back {} rows",
            back.len()
        )));
    }
    Ok(())
}

/// Runs a ClickHouse call with [`QUERY_TIMEOUT`].
pub async fn with_timeout<T>(
    fut: impl std::future::Future<Output = clickhouse::error::Result<T>>,
) -> Result<T, ClickHouseError> {
    match tokio::time::timeout(QUERY_TIMEOUT, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ClickHouseError::Timeout(QUERY_TIMEOUT)),
    }
}

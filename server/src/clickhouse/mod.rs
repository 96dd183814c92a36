//! Talking to ClickHouse: where it is (an external URL or an embedded, supervised local server)
//! and how the client is configured so it works on every supported version (18.16 to current).
//!
//! **Architecture invariant:** every `clickhouse::Client` in the server is built by
//! [`ClickHouseConfig::client`]. It turns schema validation off (18.16 rejects the setting the
//! crate sends for it) and is the one place that chooses compression, after a round-trip
//! self-test proved that choice works against the server at hand. On a cluster it is also the
//! one place that sets how every query and INSERT treats the cluster ([`ClusterConfig`]), so
//! every writer (ingest, registry, audit, rollup) gets the same guarantees. The tools around
//! the server (the `admin` command, the end-to-end harness, the load generators) build their
//! clients here too and send hand-written SQL through [`raw::fetch_text`]: there is no second
//! HTTP client for ClickHouse (only [`embedded`]'s `/ping`, before a client is worth building).

pub mod embedded;
pub mod raw;

use std::fmt;
use std::str::FromStr;
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
    /// `None`: one ClickHouse server. `Some`: the database spans a cluster of `remote_servers`.
    pub cluster: Option<ClusterConfig>,
}

/// A cluster of ClickHouse's `remote_servers` that holds Backlight's database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub name: ClusterName,
    pub insert_quorum: InsertQuorum,
}

/// The name of a cluster in ClickHouse's `remote_servers` configuration. Letters, digits and
/// `_` only: it is written into DDL (`ON CLUSTER name`) and engine arguments as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterName(String);

impl FromStr for ClusterName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 64 {
            return Err(format!(
                "a cluster name has 1 to 64 characters, not {}",
                s.len()
            ));
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
        {
            return Err(format!(
                "cluster name {s:?} has {bad:?}: use the letters, digits and '_' of a name in \
                 ClickHouse's <remote_servers>"
            ));
        }
        Ok(ClusterName(s.to_string()))
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ClusterName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How many replicas of a shard must hold an INSERT's rows before ClickHouse acknowledges it
/// (`insert_quorum`), and so before Backlight answers 200.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertQuorum {
    /// A majority of the replicas of the smallest shard, read from `system.clusters` at start,
    /// where ClickHouse runs quorum INSERTs in parallel (20.10+); none before.
    Auto,
    /// This many replicas; 1 acknowledges once one replica has the rows (no quorum).
    Replicas(u8),
}

impl FromStr for InsertQuorum {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(InsertQuorum::Auto);
        }
        match s.parse::<u8>() {
            Ok(n) if n >= 1 => Ok(InsertQuorum::Replicas(n)),
            _ => Err(format!(
                "insert quorum {s:?}: expected `auto` or a number of replicas from 1 to 255"
            )),
        }
    }
}

/// How long ClickHouse waits for the quorum of an INSERT before failing it (below
/// [`QUERY_TIMEOUT`], so the failure is ClickHouse's clear error, not our timeout).
pub const INSERT_QUORUM_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a node waits for a connection to another node before trying the next replica.
const FAILOVER_CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

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
    /// The database or the cluster does not fit this configuration, or a migration failed.
    #[error("{0}")]
    Schema(String),
    /// A text answer ([`raw::fetch_text`]) that is not UTF-8.
    #[error("ClickHouse's answer is not UTF-8 text: {0}")]
    NotText(std::str::Utf8Error),
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
        for (name, value) in self.cluster_settings() {
            client = client.with_setting(name, value);
        }
        client
    }

    /// The settings every query carries on a cluster (none on a single server):
    ///
    /// - `insert_distributed_sync=1`: an INSERT into a `Distributed` table returns once every
    ///   shard stored its rows, not when they are queued on the node that took it — so a 200
    ///   still means stored (and a dead node holds no acknowledged rows in a queue).
    /// - `insert_quorum=N` (when N ≥ 2): and once N replicas of each shard have them.
    /// - `insert_deduplicate=0`: a retried INSERT is written again (never silently dropped as a
    ///   duplicate block), exactly as on one node; copies collapse by row identity as there.
    /// - `distributed_product_mode=global`: `IN`/`JOIN` subqueries over `Distributed` tables
    ///   run once, on the node that took the query, and their result goes to every shard.
    /// - `load_balancing=in_order`, `prefer_localhost_replica=0`: every server reads and
    ///   writes the first healthy replica of each shard, so all servers see the same rows. A
    ///   replica counts as down when it refuses the connection or has not accepted it within
    ///   `FAILOVER_CONNECT_TIMEOUT` (ClickHouse's 50 ms default sends a busy first replica's
    ///   share to the second, which then answers reads the first cannot yet). ClickHouse's
    ///   own rule stays: a replica more than 300 s behind serves no reads while another can.
    pub fn cluster_settings(&self) -> Vec<(&'static str, String)> {
        let Some(cluster) = &self.cluster else {
            return Vec::new();
        };
        let mut settings = vec![
            ("insert_distributed_sync", "1".to_string()),
            ("insert_deduplicate", "0".to_string()),
            ("distributed_product_mode", "global".to_string()),
            ("load_balancing", "in_order".to_string()),
            ("prefer_localhost_replica", "0".to_string()),
            (
                "connect_timeout_with_failover_ms",
                FAILOVER_CONNECT_TIMEOUT.as_millis().to_string(),
            ),
        ];
        if let InsertQuorum::Replicas(n) = cluster.insert_quorum {
            if n >= 2 {
                settings.push(("insert_quorum", n.to_string()));
                settings.push((
                    "insert_quorum_timeout",
                    INSERT_QUORUM_TIMEOUT.as_millis().to_string(),
                ));
            }
        }
        settings
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
    let written = &row;
    with_write_retry(|| async move {
        let mut insert = client.insert::<SelfTestRow>("self_test").await?;
        insert.write(written).await?;
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

/// How long a write keeps retrying a quorum conflict (see [`with_write_retry`]).
const WRITE_RETRY_BUDGET: Duration = Duration::from_secs(20);

/// Runs a write (an INSERT, built afresh by `attempt` each time) with [`QUERY_TIMEOUT`] per
/// attempt, retrying for a few seconds while ClickHouse refuses it only because another quorum
/// INSERT into the same table and shard is still waiting for its replicas (code 286). Before
/// 20.10 (`insert_quorum_parallel`) ClickHouse runs quorum INSERTs into one table one at a time
/// across the cluster, so two servers writing at once collide. A retry may repeat rows of a
/// shard that had stored them; every table collapses such copies by row identity.
pub async fn with_write_retry<T, F, Fut>(mut attempt: F) -> Result<T, ClickHouseError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = clickhouse::error::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + WRITE_RETRY_BUDGET;
    let mut delay = Duration::from_millis(20);
    loop {
        match with_timeout(attempt()).await {
            Err(ClickHouseError::Query(e))
                if is_quorum_conflict(&e) && tokio::time::Instant::now() + delay < deadline =>
            {
                metrics::counter!("backlight_clickhouse_quorum_conflicts_total").increment(1);
                tracing::debug!(error = %e, ?delay, "another quorum INSERT is under way; retrying");
                let jitter = Duration::from_millis(rand::random::<u64>() % 20);
                tokio::time::sleep(delay + jitter).await;
                delay = (delay * 2).min(Duration::from_millis(250));
            }
            other => return other,
        }
    }
}

/// ClickHouse error 286 (UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE): "Another quorum insert has
/// been already started" or "Quorum for previous write has not been satisfied yet".
fn is_quorum_conflict(error: &clickhouse::error::Error) -> bool {
    let text = error.to_string();
    text.match_indices("Code: 286")
        .any(|(at, m)| !text[at + m.len()..].starts_with(|c: char| c.is_ascii_digit()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_are_safe_to_write_into_ddl() {
        assert_eq!(
            "backlight_2".parse::<ClusterName>().unwrap().as_str(),
            "backlight_2"
        );
        for bad in ["", "a b", "a`b", "a-b", "c;DROP", &"x".repeat(65)] {
            assert!(bad.parse::<ClusterName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn insert_quorum_is_auto_or_a_count() {
        assert_eq!("auto".parse(), Ok(InsertQuorum::Auto));
        assert_eq!("2".parse(), Ok(InsertQuorum::Replicas(2)));
        for bad in ["0", "-1", "majority", "256"] {
            assert!(bad.parse::<InsertQuorum>().is_err(), "{bad:?}");
        }
    }

    fn config(cluster: Option<ClusterConfig>) -> ClickHouseConfig {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "backlight".into(),
            user: None,
            password: None,
            cluster,
        }
    }

    #[test]
    fn only_a_cluster_gets_cluster_settings_and_only_a_real_quorum_is_sent() {
        assert!(config(None).cluster_settings().is_empty());
        let with = |q| {
            config(Some(ClusterConfig {
                name: "c".parse().unwrap(),
                insert_quorum: q,
            }))
            .cluster_settings()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
        };
        let settings = with(InsertQuorum::Replicas(2));
        assert!(settings.contains(&"insert_distributed_sync=1".to_string()));
        assert!(settings.contains(&"insert_quorum=2".to_string()));
        assert!(settings.contains(&"insert_quorum_timeout=20000".to_string()));
        for q in [InsertQuorum::Replicas(1), InsertQuorum::Auto] {
            assert!(
                !with(q).iter().any(|s| s.starts_with("insert_quorum")),
                "{q:?}"
            );
        }
    }

    #[test]
    fn quorum_conflicts_are_told_from_other_errors() {
        let bad = |text: &str| clickhouse::error::Error::BadResponse(text.to_string());
        assert!(is_quorum_conflict(&bad(
            "Code: 286, e.displayText() = DB::Exception: Another quorum insert has been already started"
        )));
        assert!(is_quorum_conflict(&bad(
            "Code: 286. DB::Exception: Quorum for previous write has not been satisfied yet"
        )));
        assert!(!is_quorum_conflict(&bad("Code: 285, e.displayText() = DB::Exception: Number of alive replicas (1) is less than requested quorum (2)")));
        assert!(!is_quorum_conflict(&bad("Code: 2860. something else")));
    }
}

//! Hand-written SQL answered in a format of its choice (`TSV`, `JSONEachRow`, …), for the tools
//! around the server: the end-to-end harness's assertions and the load generators' counters,
//! probes and DDL.
//!
//! It goes through the same `clickhouse::Client` the server uses (built by
//! [`ClickHouseConfig::client`](super::ClickHouseConfig::client)), so there is one HTTP client
//! for ClickHouse in the whole project, with one way to log in and one set of cluster
//! settings. The server itself never sends SQL it did not write: its queries bind values and
//! read typed rows; this is for SQL an operator or a test wrote out in full.

use std::time::Duration;

use clickhouse::Client;

use super::ClickHouseError;

/// Runs `sql` as written (a `?` in it is plain text, not a placeholder) and returns the whole
/// answer in `format`, unless the statement names its own `FORMAT`. Statements without an
/// answer (DDL, `SYSTEM …`, `INSERT … VALUES`) return nothing.
///
/// Gives up after `timeout` with [`ClickHouseError::Timeout`]; ClickHouse's refusal is
/// [`ClickHouseError::Query`] with its message.
pub async fn fetch_raw(
    client: &Client,
    sql: &str,
    format: &str,
    timeout: Duration,
) -> Result<Vec<u8>, ClickHouseError> {
    let answer = async {
        let mut cursor = client.query_raw(sql).fetch_bytes(format)?;
        cursor.collect().await
    };
    match tokio::time::timeout(timeout, answer).await {
        Ok(bytes) => Ok(Vec::from(bytes?)),
        Err(_) => Err(ClickHouseError::Timeout(timeout)),
    }
}

/// [`fetch_raw`] for a text format: the answer as a string.
pub async fn fetch_text(
    client: &Client,
    sql: &str,
    format: &str,
    timeout: Duration,
) -> Result<String, ClickHouseError> {
    let bytes = fetch_raw(client, sql, format, timeout).await?;
    String::from_utf8(bytes).map_err(|e| ClickHouseError::NotText(e.utf8_error()))
}

#[cfg(test)]
mod tests {
    use clickhouse::Compression;

    use super::*;
    use crate::clickhouse::embedded::{ClickHouseProcess, USER};
    use crate::clickhouse::ClickHouseConfig;

    /// Against a real (embedded) ClickHouse: the answer's format, `?` as text, binary answers,
    /// ClickHouse's own error and the timeout.
    #[tokio::test]
    async fn hand_written_sql_as_text_or_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ch = ClickHouseProcess::start(dir.path(), None)
            .await
            .unwrap_or_else(|e| panic!("starting ClickHouse failed: {e}"));
        let client = ClickHouseConfig {
            url: ch.url(),
            database: "default".into(),
            user: Some(USER.into()),
            password: Some(ch.password().into()),
            cluster: None,
        }
        .client(Compression::None);
        let wait = Duration::from_secs(30);
        let text = |sql: &'static str| fetch_text(&client, sql, "TSV", wait);

        assert_eq!(text("SELECT 1, 'a?b'").await.unwrap(), "1\ta?b\n");
        assert_eq!(
            text("SELECT 2 AS n FORMAT JSONEachRow").await.unwrap(),
            "{\"n\":2}\n",
            "the statement's own FORMAT wins"
        );
        assert_eq!(
            text("CREATE TABLE t (x UInt8) ENGINE = Memory")
                .await
                .unwrap(),
            ""
        );
        assert_eq!(
            fetch_raw(&client, "SELECT toUInt16(258)", "RowBinary", wait)
                .await
                .unwrap(),
            [2, 1]
        );
        match text("SELECT * FROM no_such_table").await {
            Err(ClickHouseError::Query(e)) => {
                assert!(e.to_string().contains("no_such_table"), "{e}")
            }
            other => panic!("expected ClickHouse's refusal, got {other:?}"),
        }
        match fetch_raw(&client, "SELECT 0xFF", "RowBinary", wait).await {
            Ok(bytes) => assert_eq!(bytes, [0xFF]),
            Err(e) => panic!("{e}"),
        }
        assert!(matches!(
            fetch_text(&client, "SELECT unhex('FF')", "TSVRaw", wait).await,
            Err(ClickHouseError::NotText(_))
        ));
        assert!(matches!(
            fetch_text(
                &client,
                "SELECT sleep(2)",
                "TSV",
                Duration::from_millis(200)
            )
            .await,
            Err(ClickHouseError::Timeout(_))
        ));
        ch.stop().await.expect("stop");
    }
}

//! Server heartbeats (schema in `deploy/clickhouse/migrations/0012_live_and_webhooks.sql`):
//! which servers are running, so background work that only one of them should do (webhook
//! deliveries per tenant) can be shared out without any server keeping state of its own.

use clickhouse::Client;
use serde::{Deserialize, Serialize};

use crate::clickhouse::{with_timeout, with_write_retry, ClickHouseError};

/// One heartbeat. Field order matches the table (RowBinary).
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub server_id: String,
    pub host: String,
    pub started_ms: u64,
    pub beat_ms: u64,
    /// 0 when the server said goodbye.
    pub serving: u8,
}

pub async fn beat(client: &Client, heartbeat: &Heartbeat) -> Result<(), ClickHouseError> {
    with_write_retry(|| async move {
        let mut insert = client.insert::<Heartbeat>("server_heartbeats").await?;
        insert.write(heartbeat).await?;
        insert.end().await
    })
    .await
}

/// Ids of the servers whose newest heartbeat is at or after `since_ms` and still serving.
pub async fn alive_since(client: &Client, since_ms: u64) -> Result<Vec<String>, ClickHouseError> {
    #[derive(clickhouse::Row, Deserialize)]
    struct Alive {
        server_id: String,
    }
    // The newest beat per server decides (a goodbye is newer than every beat before it).
    let rows: Vec<Alive> = with_timeout(
        client
            .query(
                "SELECT server_id FROM (
                     SELECT server_id, max(beat_ms) AS b, argMax(serving, beat_ms) AS s
                     FROM server_heartbeats WHERE beat_ms >= ? GROUP BY server_id)
                 WHERE s = 1 ORDER BY server_id",
            )
            .bind(since_ms)
            .fetch_all(),
    )
    .await?;
    Ok(rows.into_iter().map(|a| a.server_id).collect())
}

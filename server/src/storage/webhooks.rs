//! Webhooks, their delivery log, what they last announced per item, and how far each tenant's
//! evaluation got (schema in `deploy/clickhouse/migrations/0012_live_and_webhooks.sql`; the
//! design in [`crate::webhooks`]).
//!
//! Every table here is versioned (ReplacingMergeTree): a change inserts a newer row, reads take
//! the newest per key with `argMax`, never relying on merges.

use std::collections::HashMap;

use clickhouse::Client;
use serde::{Deserialize, Serialize};

use crate::clickhouse::{with_timeout, with_write_retry, ClickHouseError};

/// One version of a webhook. Field order matches the table (RowBinary).
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WebhookRow {
    pub tenant_id: String,
    pub webhook_id: String,
    pub url: String,
    /// Event type names (`item.status_changed`, …).
    pub events: Vec<String>,
    pub description: String,
    /// The signing secret, `whsec_…`.
    pub secret: String,
    pub created_ms: u64,
    pub deleted: u8,
    pub updated_ms: u64,
}

/// The state of a delivery in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its first attempt or a retry.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up after the last retry.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Failed,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
    }
}

/// One version of a delivery: its creation, or the outcome of an attempt. Field order matches
/// the table (RowBinary).
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    pub tenant_id: String,
    pub webhook_id: String,
    pub delivery_id: String,
    pub event_type: String,
    pub item_id: String,
    pub created_ms: u64,
    /// Days since 1970-01-01 of `created_ms` (the partition).
    pub created_date: u16,
    /// The JSON body, identical for every attempt.
    pub payload: String,
    /// `pending`, `delivered` or `failed` ([`DeliveryState`]).
    pub state: String,
    pub attempts: u32,
    pub last_attempt_ms: u64,
    /// HTTP status of the last attempt; 0 when none was received.
    pub last_status: u16,
    pub last_error: String,
    /// When the next attempt is due (pending only).
    pub next_attempt_ms: u64,
    /// `attempts * 2`, + 1 in a final state: the newest attempt wins.
    pub version: u64,
}

impl DeliveryRow {
    pub fn state(&self) -> DeliveryState {
        DeliveryState::parse(&self.state).unwrap_or(DeliveryState::Pending)
    }

    /// The version for `attempts` in `state`.
    pub fn version_of(attempts: u32, state: DeliveryState) -> u64 {
        u64::from(attempts) * 2 + u64::from(state != DeliveryState::Pending)
    }
}

/// The day number (days since the epoch) of `ms`, as stored in `Date` columns.
pub fn day_of(ms: u64) -> u16 {
    u16::try_from(ms / 86_400_000).unwrap_or(u16::MAX)
}

/// What webhooks last announced about one item. Field order matches the table (RowBinary).
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ItemStateRow {
    pub tenant_id: String,
    pub item_id: String,
    pub status: String,
    pub sla_state: String,
    pub updated_ms: u64,
}

#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct CursorRow {
    tenant_id: String,
    evaluated_ms: u64,
    updated_ms: u64,
}

async fn insert_rows<T>(client: &Client, table: &str, rows: &[T]) -> Result<(), ClickHouseError>
where
    T: clickhouse::RowOwned + clickhouse::RowWrite,
{
    if rows.is_empty() {
        return Ok(());
    }
    with_write_retry(|| async move {
        let mut insert = client.insert::<T>(table).await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    })
    .await
}

// ---- webhooks ---------------------------------------------------------------------------

pub async fn insert_webhook(client: &Client, row: &WebhookRow) -> Result<(), ClickHouseError> {
    insert_rows(client, "webhooks", std::slice::from_ref(row)).await
}

/// The tenant's webhooks (not deleted), oldest first.
pub async fn webhooks_of(
    client: &Client,
    tenant: &str,
) -> Result<Vec<WebhookRow>, ClickHouseError> {
    // `deleted` is filtered outside the FINAL read: filtering inside could keep an older
    // version whose newer, deleted version was filtered away.
    with_timeout(
        client
            .query(
                "SELECT * FROM (SELECT ?fields FROM webhooks FINAL WHERE tenant_id = ?)
                 WHERE deleted = 0 ORDER BY created_ms, webhook_id",
            )
            .bind(tenant)
            .fetch_all(),
    )
    .await
}

/// The newest version of one webhook of `tenant` (deleted or not).
pub async fn webhook(
    client: &Client,
    tenant: &str,
    webhook_id: &str,
) -> Result<Option<WebhookRow>, ClickHouseError> {
    with_timeout(
        client
            .query("SELECT ?fields FROM webhooks FINAL WHERE tenant_id = ? AND webhook_id = ?")
            .bind(tenant)
            .bind(webhook_id)
            .fetch_optional(),
    )
    .await
}

/// Every webhook of every tenant that is not deleted (what the servers evaluate).
pub async fn active_webhooks(client: &Client) -> Result<Vec<WebhookRow>, ClickHouseError> {
    with_timeout(
        client
            .query("SELECT * FROM (SELECT ?fields FROM webhooks FINAL) WHERE deleted = 0")
            .fetch_all(),
    )
    .await
}

// ---- deliveries -------------------------------------------------------------------------

pub async fn insert_deliveries(
    client: &Client,
    rows: &[DeliveryRow],
) -> Result<(), ClickHouseError> {
    insert_rows(client, "webhook_deliveries", rows).await
}

/// The newest version of each delivery, with `delivered` sticky: once any attempt delivered
/// it, a late row of a slower server cannot make it pending again. The aliases differ from
/// the column names (ClickHouse resolves aliases first).
const NEWEST_DELIVERY: &str =
    "SELECT tenant_id, webhook_id, delivery_id, any(event_type) AS e, any(item_id) AS i,
        any(created_ms) AS c, any(created_date) AS d, argMax(payload, version) AS p,
        if(max(state = 'delivered') = 1, 'delivered', argMax(state, version)) AS st,
        argMax(attempts, version) AS a, argMax(last_attempt_ms, version) AS la,
        argMax(last_status, version) AS ls, argMax(last_error, version) AS le,
        argMax(next_attempt_ms, version) AS n, max(version) AS v
    FROM webhook_deliveries";

/// Pending deliveries of `tenants` due at `now_ms`, created on or after the day of `from_ms`, the
/// most overdue first.
pub async fn due_deliveries(
    client: &Client,
    tenants: &[String],
    from_ms: u64,
    now_ms: u64,
    limit: u64,
) -> Result<Vec<DeliveryRow>, ClickHouseError> {
    if tenants.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "{NEWEST_DELIVERY}
         WHERE tenant_id IN (SELECT arrayJoin(?)) AND created_date >= toDate(toDateTime(intDiv(?, 1000)))
         GROUP BY tenant_id, webhook_id, delivery_id
         HAVING st = 'pending' AND n <= ?
         ORDER BY n LIMIT ?"
    );
    with_timeout(
        client
            .query(&sql)
            .bind(tenants)
            .bind(from_ms)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(),
    )
    .await
}

/// The newest deliveries of one webhook (created on or after the day of `from_ms`), newest first;
/// only those in `state` when given.
pub async fn recent_deliveries(
    client: &Client,
    tenant: &str,
    webhook_id: &str,
    from_ms: u64,
    state: Option<DeliveryState>,
    limit: u64,
) -> Result<Vec<DeliveryRow>, ClickHouseError> {
    let sql = format!(
        "{NEWEST_DELIVERY}
         WHERE tenant_id = ? AND webhook_id = ? AND created_date >= toDate(toDateTime(intDiv(?, 1000)))
         GROUP BY tenant_id, webhook_id, delivery_id
         HAVING ? = '' OR st = ?
         ORDER BY c DESC, delivery_id LIMIT ?"
    );
    let state = state.map_or("", DeliveryState::as_str);
    with_timeout(
        client
            .query(&sql)
            .bind(tenant)
            .bind(webhook_id)
            .bind(from_ms)
            .bind(state)
            .bind(state)
            .bind(limit)
            .fetch_all(),
    )
    .await
}

/// Deliveries of one webhook per state, created on or after the day of `from_ms`.
#[derive(
    clickhouse::Row, Deserialize, Serialize, Debug, Clone, Default, PartialEq, utoipa::ToSchema,
)]
pub struct DeliveryCounts {
    pub pending: u64,
    pub delivered: u64,
    pub failed: u64,
    /// When the last attempt was made (ms; 0: never).
    pub last_attempt_ms: u64,
}

pub async fn delivery_counts(
    client: &Client,
    tenant: &str,
    webhook_id: &str,
    from_ms: u64,
) -> Result<DeliveryCounts, ClickHouseError> {
    let sql = format!(
        "SELECT countIf(st = 'pending'), countIf(st = 'delivered'), countIf(st = 'failed'),
                max(la)
         FROM ({NEWEST_DELIVERY}
               WHERE tenant_id = ? AND webhook_id = ? AND created_date >= toDate(toDateTime(intDiv(?, 1000)))
               GROUP BY tenant_id, webhook_id, delivery_id)"
    );
    with_timeout(
        client
            .query(&sql)
            .bind(tenant)
            .bind(webhook_id)
            .bind(from_ms)
            .fetch_one(),
    )
    .await
}

// ---- announced item states --------------------------------------------------------------

pub async fn item_states(
    client: &Client,
    tenant: &str,
    item_ids: &[String],
) -> Result<HashMap<String, ItemStateRow>, ClickHouseError> {
    if item_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<ItemStateRow> = with_timeout(
        client
            .query(
                "SELECT tenant_id, item_id, argMax(status, updated_ms) AS s,
                        argMax(sla_state, updated_ms) AS l, max(updated_ms) AS u
                 FROM webhook_item_state
                 WHERE tenant_id = ? AND item_id IN (SELECT arrayJoin(?))
                 GROUP BY tenant_id, item_id",
            )
            .bind(tenant)
            .bind(item_ids)
            .fetch_all(),
    )
    .await?;
    Ok(rows.into_iter().map(|r| (r.item_id.clone(), r)).collect())
}

pub async fn insert_item_states(
    client: &Client,
    rows: &[ItemStateRow],
) -> Result<(), ClickHouseError> {
    insert_rows(client, "webhook_item_state", rows).await
}

// ---- evaluation cursors -----------------------------------------------------------------

/// How far `tenant`'s evaluation got (ms), if it ever ran.
pub async fn cursor(client: &Client, tenant: &str) -> Result<Option<u64>, ClickHouseError> {
    #[derive(clickhouse::Row, Deserialize)]
    struct Evaluated {
        evaluated_ms: u64,
    }
    let row: Option<Evaluated> = with_timeout(
        client
            .query(
                "SELECT argMax(evaluated_ms, updated_ms) AS e FROM webhook_cursors
                 WHERE tenant_id = ? GROUP BY tenant_id",
            )
            .bind(tenant)
            .fetch_optional(),
    )
    .await?;
    Ok(row.map(|r| r.evaluated_ms))
}

/// Saves how far each tenant's evaluation got (one INSERT for all).
pub async fn save_cursors(
    client: &Client,
    cursors: &[(String, u64)],
    now_ms: u64,
) -> Result<(), ClickHouseError> {
    let rows: Vec<CursorRow> = cursors
        .iter()
        .map(|(tenant, evaluated_ms)| CursorRow {
            tenant_id: tenant.clone(),
            evaluated_ms: *evaluated_ms,
            updated_ms: now_ms,
        })
        .collect();
    insert_rows(client, "webhook_cursors", &rows).await
}

//! Webhooks, their delivery log, what they last announced per item, and how far each tenant's
//! evaluation got (schema in `deploy/clickhouse/migrations/0012_live_and_webhooks.sql`; the
//! design in [`crate::webhooks`]).
//!
//! Reads hand back [`crate::webhooks::records`]' parsed values; the rows stay private. A row
//! that does not parse is an [`UnreadableRow`] naming its table, key and field: a read of one
//! webhook or of one webhook's deliveries fails with it; the engine's reads over many
//! ([`active_webhooks`], [`due_deliveries`], [`item_states`]) hand each bad row over as its
//! error, so one bad row does not stop every other tenant's deliveries.
//!
//! Every table here is versioned (ReplacingMergeTree): a change inserts a newer row, reads take
//! the newest per key with `argMax`, never relying on merges.

use std::collections::HashMap;

use clickhouse::Client;
use serde::{Deserialize, Serialize};

use reqwest::Url;

use super::{ReadError, UnreadableRow};
use crate::clickhouse::{with_timeout, with_write_retry, ClickHouseError};
use crate::items::{SlaState, Status};
use crate::webhooks::events::{Announced, EventType};
use crate::webhooks::records::{AnnouncedState, Delivery, DeliveryCounts, DeliveryState, Webhook};

/// One version of a webhook. Field order matches the table (RowBinary).
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct WebhookRow {
    tenant_id: String,
    webhook_id: String,
    url: String,
    /// Event type names (`item.status_changed`, …).
    events: Vec<String>,
    description: String,
    secret: String,
    created_ms: u64,
    deleted: u8,
    updated_ms: u64,
}

impl WebhookRow {
    fn new(w: &Webhook) -> WebhookRow {
        WebhookRow {
            tenant_id: w.tenant_id.clone(),
            webhook_id: w.webhook_id.clone(),
            url: w.url.to_string(),
            events: w.events.iter().map(|e| e.as_str().to_string()).collect(),
            description: w.description.clone(),
            secret: w.secret.clone(),
            created_ms: w.created_ms,
            deleted: u8::from(w.deleted),
            updated_ms: w.updated_ms,
        }
    }

    /// Rows are written only from parsed webhooks: one that does not parse was edited by hand
    /// or written by a newer release.
    fn into_webhook(self) -> Result<Webhook, UnreadableRow> {
        let unreadable = |field, value: &str| UnreadableRow {
            table: "webhooks",
            key: format!("{}/{}", self.tenant_id, self.webhook_id),
            field,
            value: value.to_string(),
        };
        let url = Url::parse(&self.url).map_err(|_| unreadable("url", &self.url))?;
        let events = self
            .events
            .iter()
            .map(|e| EventType::parse(e).ok_or_else(|| unreadable("events", e)))
            .collect::<Result<_, _>>()?;
        let deleted = match self.deleted {
            0 => false,
            1 => true,
            other => return Err(unreadable("deleted", &other.to_string())),
        };
        Ok(Webhook {
            tenant_id: self.tenant_id,
            webhook_id: self.webhook_id,
            url,
            events,
            description: self.description,
            secret: self.secret,
            created_ms: self.created_ms,
            deleted,
            updated_ms: self.updated_ms,
        })
    }
}

/// One version of a delivery: its creation, or the outcome of an attempt. Field order matches
/// the table (RowBinary).
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct DeliveryRow {
    tenant_id: String,
    webhook_id: String,
    delivery_id: String,
    event_type: String,
    item_id: String,
    created_ms: u64,
    /// Days since 1970-01-01 of `created_ms` (the partition).
    created_date: u16,
    payload: String,
    /// `pending`, `delivered` or `failed` ([`DeliveryState`]).
    state: String,
    attempts: u32,
    last_attempt_ms: u64,
    last_status: u16,
    last_error: String,
    next_attempt_ms: u64,
    /// `attempts * 2`, + 1 in a final state: the newest attempt wins.
    version: u64,
}

impl DeliveryRow {
    fn new(d: &Delivery) -> DeliveryRow {
        DeliveryRow {
            tenant_id: d.tenant_id.clone(),
            webhook_id: d.webhook_id.clone(),
            delivery_id: d.delivery_id.clone(),
            event_type: d.event_type.as_str().to_string(),
            item_id: d.item_id.clone(),
            created_ms: d.created_ms,
            created_date: day_of(d.created_ms),
            payload: d.payload.clone(),
            state: d.state.as_str().to_string(),
            attempts: d.attempts,
            last_attempt_ms: d.last_attempt_ms,
            last_status: d.last_status,
            last_error: d.last_error.clone(),
            next_attempt_ms: d.next_attempt_ms,
            version: version_of(d.attempts, d.state),
        }
    }

    fn into_delivery(self) -> Result<Delivery, UnreadableRow> {
        let unreadable = |field, value: &str| UnreadableRow {
            table: "webhook_deliveries",
            key: self.delivery_id.clone(),
            field,
            value: value.to_string(),
        };
        let event_type = EventType::parse(&self.event_type)
            .ok_or_else(|| unreadable("event_type", &self.event_type))?;
        let state =
            DeliveryState::parse(&self.state).ok_or_else(|| unreadable("state", &self.state))?;
        Ok(Delivery {
            tenant_id: self.tenant_id,
            webhook_id: self.webhook_id,
            delivery_id: self.delivery_id,
            event_type,
            item_id: self.item_id,
            created_ms: self.created_ms,
            payload: self.payload,
            state,
            attempts: self.attempts,
            last_attempt_ms: self.last_attempt_ms,
            last_status: self.last_status,
            last_error: self.last_error,
            next_attempt_ms: self.next_attempt_ms,
        })
    }
}

/// The version of a delivery with `attempts` in `state`: a later attempt, and a final state
/// over a pending one of the same attempt, wins.
fn version_of(attempts: u32, state: DeliveryState) -> u64 {
    u64::from(attempts) * 2 + u64::from(state != DeliveryState::Pending)
}

/// The day number (days since the epoch) of `ms`, as stored in `Date` columns.
fn day_of(ms: u64) -> u16 {
    u16::try_from(ms / 86_400_000).unwrap_or(u16::MAX)
}

/// What webhooks last announced about one item. Field order matches the table (RowBinary).
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct ItemStateRow {
    tenant_id: String,
    item_id: String,
    status: String,
    sla_state: String,
    updated_ms: u64,
}

impl ItemStateRow {
    fn new(a: &AnnouncedState) -> ItemStateRow {
        ItemStateRow {
            tenant_id: a.tenant_id.clone(),
            item_id: a.item_id.clone(),
            status: a.announced.status.as_str().to_string(),
            sla_state: a.announced.sla_state.as_str().to_string(),
            updated_ms: a.updated_ms,
        }
    }

    fn announced(&self) -> Result<Announced, UnreadableRow> {
        let unreadable = |field, value: &str| UnreadableRow {
            table: "webhook_item_state",
            key: format!("{}/{}", self.tenant_id, self.item_id),
            field,
            value: value.to_string(),
        };
        Ok(Announced {
            status: Status::parse(&self.status)
                .ok_or_else(|| unreadable("status", &self.status))?,
            sla_state: SlaState::parse(&self.sla_state)
                .ok_or_else(|| unreadable("sla_state", &self.sla_state))?,
        })
    }
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

pub async fn insert_webhook(client: &Client, webhook: &Webhook) -> Result<(), ClickHouseError> {
    insert_rows(client, "webhooks", &[WebhookRow::new(webhook)]).await
}

/// The tenant's webhooks (not deleted), oldest first; one unreadable row fails the list (an
/// admin is told which).
pub async fn webhooks_of(client: &Client, tenant: &str) -> Result<Vec<Webhook>, ReadError> {
    // `deleted` is filtered outside the FINAL read: filtering inside could keep an older
    // version whose newer, deleted version was filtered away.
    let rows: Vec<WebhookRow> = with_timeout(
        client
            .query(
                "SELECT * FROM (SELECT ?fields FROM webhooks FINAL WHERE tenant_id = ?)
                 WHERE deleted = 0 ORDER BY created_ms, webhook_id",
            )
            .bind(tenant)
            .fetch_all(),
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(WebhookRow::into_webhook)
        .collect::<Result<_, _>>()?)
}

/// The newest version of one webhook of `tenant` (deleted or not).
pub async fn webhook(
    client: &Client,
    tenant: &str,
    webhook_id: &str,
) -> Result<Option<Webhook>, ReadError> {
    let row: Option<WebhookRow> = with_timeout(
        client
            .query("SELECT ?fields FROM webhooks FINAL WHERE tenant_id = ? AND webhook_id = ?")
            .bind(tenant)
            .bind(webhook_id)
            .fetch_optional(),
    )
    .await?;
    Ok(row.map(WebhookRow::into_webhook).transpose()?)
}

/// Every webhook of every tenant that is not deleted (what the servers evaluate). A row that
/// does not parse comes as its error, for the caller to refuse that webhook alone.
pub async fn active_webhooks(
    client: &Client,
) -> Result<Vec<Result<Webhook, UnreadableRow>>, ClickHouseError> {
    let rows: Vec<WebhookRow> = with_timeout(
        client
            .query("SELECT * FROM (SELECT ?fields FROM webhooks FINAL) WHERE deleted = 0")
            .fetch_all(),
    )
    .await?;
    Ok(rows.into_iter().map(WebhookRow::into_webhook).collect())
}

// ---- deliveries -------------------------------------------------------------------------

pub async fn insert_deliveries(
    client: &Client,
    deliveries: &[Delivery],
) -> Result<(), ClickHouseError> {
    let rows: Vec<DeliveryRow> = deliveries.iter().map(DeliveryRow::new).collect();
    insert_rows(client, "webhook_deliveries", &rows).await
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
/// most overdue first. A row that does not parse comes as its error, for the caller to refuse
/// that delivery alone.
pub async fn due_deliveries(
    client: &Client,
    tenants: &[String],
    from_ms: u64,
    now_ms: u64,
    limit: u64,
) -> Result<Vec<Result<Delivery, UnreadableRow>>, ClickHouseError> {
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
    let rows: Vec<DeliveryRow> = with_timeout(
        client
            .query(&sql)
            .bind(tenants)
            .bind(from_ms)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(),
    )
    .await?;
    Ok(rows.into_iter().map(DeliveryRow::into_delivery).collect())
}

/// The newest deliveries of one webhook (created on or after the day of `from_ms`), newest first;
/// only those in `state` when given. One unreadable row fails the list (an admin is told which).
pub async fn recent_deliveries(
    client: &Client,
    tenant: &str,
    webhook_id: &str,
    from_ms: u64,
    state: Option<DeliveryState>,
    limit: u64,
) -> Result<Vec<Delivery>, ReadError> {
    let sql = format!(
        "{NEWEST_DELIVERY}
         WHERE tenant_id = ? AND webhook_id = ? AND created_date >= toDate(toDateTime(intDiv(?, 1000)))
         GROUP BY tenant_id, webhook_id, delivery_id
         HAVING ? = '' OR st = ?
         ORDER BY c DESC, delivery_id LIMIT ?"
    );
    let state = state.map_or("", DeliveryState::as_str);
    let rows: Vec<DeliveryRow> = with_timeout(
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
    .await?;
    Ok(rows
        .into_iter()
        .map(DeliveryRow::into_delivery)
        .collect::<Result<_, _>>()?)
}

#[derive(clickhouse::Row, Deserialize)]
struct CountsRow {
    pending: u64,
    delivered: u64,
    failed: u64,
    last_attempt_ms: u64,
}

/// Deliveries of one webhook per state, created on or after the day of `from_ms`.
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
    let row: CountsRow = with_timeout(
        client
            .query(&sql)
            .bind(tenant)
            .bind(webhook_id)
            .bind(from_ms)
            .fetch_one(),
    )
    .await?;
    Ok(DeliveryCounts {
        pending: row.pending,
        delivered: row.delivered,
        failed: row.failed,
        last_attempt_ms: row.last_attempt_ms,
    })
}

// ---- announced item states --------------------------------------------------------------

/// What webhooks last announced about each of `item_ids` that they announced anything about.
/// A row that does not parse comes as its error, for the caller to decide about that item.
pub async fn item_states(
    client: &Client,
    tenant: &str,
    item_ids: &[String],
) -> Result<HashMap<String, Result<Announced, UnreadableRow>>, ClickHouseError> {
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
    Ok(rows
        .into_iter()
        .map(|r| (r.item_id.clone(), r.announced()))
        .collect())
}

pub async fn insert_item_states(
    client: &Client,
    states: &[AnnouncedState],
) -> Result<(), ClickHouseError> {
    let rows: Vec<ItemStateRow> = states.iter().map(ItemStateRow::new).collect();
    insert_rows(client, "webhook_item_state", &rows).await
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

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook() -> Webhook {
        Webhook {
            tenant_id: "acme".into(),
            webhook_id: "wh_1".into(),
            url: Url::parse("https://crm.example.com/hook").unwrap(),
            events: vec![EventType::StatusChanged, EventType::SlaBreached],
            description: "CRM".into(),
            secret: "whsec_x".into(),
            created_ms: 1,
            deleted: false,
            updated_ms: 2,
        }
    }

    fn delivery() -> Delivery {
        Delivery {
            tenant_id: "acme".into(),
            webhook_id: "wh_1".into(),
            delivery_id: "dlv_1".into(),
            event_type: EventType::SlaAtRisk,
            item_id: "I".into(),
            created_ms: 86_400_000 * 3 + 5,
            payload: "{}".into(),
            state: DeliveryState::Pending,
            attempts: 2,
            last_attempt_ms: 7,
            last_status: 503,
            last_error: "HTTP 503".into(),
            next_attempt_ms: 9,
        }
    }

    #[test]
    fn rows_round_trip() {
        let w = webhook();
        assert_eq!(WebhookRow::new(&w).into_webhook(), Ok(w));
        let d = delivery();
        let row = DeliveryRow::new(&d);
        assert_eq!((row.created_date, row.version), (3, 4));
        assert_eq!(row.into_delivery(), Ok(d));
        let a = AnnouncedState {
            tenant_id: "acme".into(),
            item_id: "I".into(),
            announced: Announced {
                status: Status::InProgress,
                sla_state: SlaState::AtRisk,
            },
            updated_ms: 3,
        };
        assert_eq!(ItemStateRow::new(&a).announced(), Ok(a.announced));
    }

    #[test]
    fn a_bad_row_is_unreadable_and_names_its_field() {
        let bad = WebhookRow {
            events: vec!["item.status_changed".into(), "item.exploded".into()],
            ..WebhookRow::new(&webhook())
        };
        assert_eq!(
            bad.into_webhook(),
            Err(UnreadableRow {
                table: "webhooks",
                key: "acme/wh_1".into(),
                field: "events",
                value: "item.exploded".into(),
            })
        );
        let bad = WebhookRow {
            url: "not a url".into(),
            ..WebhookRow::new(&webhook())
        };
        assert_eq!(bad.into_webhook().unwrap_err().field, "url");
        let bad = DeliveryRow {
            state: "lost".into(),
            ..DeliveryRow::new(&delivery())
        };
        let e = bad.into_delivery().unwrap_err();
        assert_eq!(
            (e.table, e.key.as_str(), e.field, e.value.as_str()),
            ("webhook_deliveries", "dlv_1", "state", "lost")
        );
        let bad = ItemStateRow {
            tenant_id: "acme".into(),
            item_id: "I".into(),
            status: "in_progress".into(),
            sla_state: "sideways".into(),
            updated_ms: 1,
        };
        assert_eq!(bad.announced().unwrap_err().field, "sla_state");
    }

    #[test]
    fn a_later_attempt_and_a_final_state_win() {
        let pending = version_of(1, DeliveryState::Pending);
        assert!(version_of(1, DeliveryState::Delivered) > pending);
        assert!(version_of(1, DeliveryState::Failed) > pending);
        assert!(version_of(2, DeliveryState::Pending) > version_of(1, DeliveryState::Failed));
        assert_eq!(version_of(0, DeliveryState::Pending), 0);
    }
}

//! Reads and writes for item status (schema in `deploy/clickhouse/migrations/0004_items.sql`
//! and the lookup copies of `0009_…` and `0011_…`).
//!
//! A lookup reads one table by primary key `(tenant_id, item_id)`: `item_lookup`, which holds
//! an item's events and registrations, each packed into one column ([`super::lookup_row`]).
//! No `FINAL`: events are deduplicated in Rust by `(device_id, seq)` ([`crate::items::derive`]),
//! and registrations take the newest version by `updated_ms`. What all lookups of a tenant
//! share (settings, device assignments) comes from a per-tenant cache
//! ([`crate::service::items::context`]).
//!
//! Reads hand back domain values ([`ItemEvent`], [`ItemRegistration`], with "no SLA" as `None`
//! where the table stores `0` and `""`); the rows of `items` and `sla_classes` are private here.
//!
//! The ETA needs handle times of recently completed items, which is a scan over the tenant's
//! item events; [`HandleTimeCache`] keeps one result per tenant for a while and refreshes it in
//! the background, so lookups never wait for that scan except the very first one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use clickhouse::Client;
use serde::{Deserialize, Serialize};

use super::lookup_row::{self, LookupRow};
use super::tenant_cache::TenantCache;
use crate::clickhouse::{with_timeout, with_write_retry, ClickHouseError};
use crate::items::register::SlaClass;
use crate::items::{HandleTimeStats, ItemEvent, ItemRegistration};

/// Most event rows read for one item; beyond that the oldest are not shown (an item with this
/// many events is a runaway rule, not real work).
pub const MAX_EVENTS_PER_ITEM: u64 = 20_000;
/// Completed items whose handle times feed the ETA: completed within this window…
pub const ETA_WINDOW_MS: u64 = 30 * 86_400_000;
/// …counting span time from at most this far back (an item may have started before the window).
pub const ETA_SPAN_LOOKBACK_MS: u64 = 90 * 86_400_000;
/// How long a tenant's handle-time statistics are reused before a background reload.
pub const HANDLE_TIME_CACHE_TTL: Duration = Duration::from_secs(60);
/// Most completed items sampled per tenant for the ETA (the most recently completed).
pub const ETA_MAX_SAMPLES: u64 = 20_000;

/// Settings of the reads by item id: a few granules each, so one thread reads them with less
/// ClickHouse CPU than several (measured: −30 % per item read on 18.16).
const POINT_READ: &str = "SETTINGS max_threads = 1";

/// What was read for one item: domain values, never a row (the row types of this module are
/// private to it).
#[derive(Debug, Clone, Default)]
pub struct ItemRead {
    /// In storage order, not deduplicated (derivation does that).
    pub events: Vec<ItemEvent>,
    /// The newest registration, if the item is registered.
    pub registration: Option<ItemRegistration>,
}

/// One row of `items`: an item's registration as the table stores it (no SLA: `0` and `""`).
/// Field order matches the table (RowBinary).
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct ItemRow {
    tenant_id: String,
    item_id: String,
    queue: String,
    priority: u8,
    sla_due_ms: u64,
    sla_class: String,
    customer_ref: String,
    registered_ms: u64,
    updated_ms: u64,
}

impl ItemRow {
    fn new(tenant: &str, r: &ItemRegistration) -> ItemRow {
        ItemRow {
            tenant_id: tenant.to_string(),
            item_id: r.item_id.clone(),
            queue: r.queue.clone(),
            priority: r.priority,
            sla_due_ms: r.sla_due_ms.unwrap_or(0),
            sla_class: r.sla_class.clone().unwrap_or_default(),
            customer_ref: r.customer_ref.clone(),
            registered_ms: r.registered_ms,
            updated_ms: r.updated_ms,
        }
    }

    /// The registration the row stores (every row is one: the columns' types are the
    /// domain's, "none" aside).
    fn into_registration(self) -> ItemRegistration {
        ItemRegistration {
            item_id: self.item_id,
            queue: self.queue,
            priority: self.priority,
            sla_due_ms: Some(self.sla_due_ms).filter(|&due| due != 0),
            sla_class: Some(self.sla_class).filter(|class| !class.is_empty()),
            customer_ref: self.customer_ref,
            registered_ms: self.registered_ms,
            updated_ms: self.updated_ms,
        }
    }
}

/// One row of `sla_classes`: a version of a tenant's SLA class.
#[derive(clickhouse::Row, Serialize)]
struct SlaClassRow {
    tenant_id: String,
    sla_class: String,
    target_ms: u64,
    updated_ms: u64,
}

/// The events and newest registration of each of `item_ids` that has any, in one read of
/// `item_lookup`.
pub async fn read_items(
    client: &Client,
    tenant: &str,
    item_ids: &[String],
) -> Result<HashMap<String, ItemRead>, ClickHouseError> {
    read_lookup_rows(client, tenant, item_ids, RowKinds::All).await
}

/// The events of several items, by item id.
pub async fn events_of_items(
    client: &Client,
    tenant: &str,
    item_ids: &[String],
) -> Result<HashMap<String, Vec<ItemEvent>>, ClickHouseError> {
    let read = read_items(client, tenant, item_ids).await?;
    Ok(read.into_iter().map(|(id, r)| (id, r.events)).collect())
}

/// The newest registration of each of `item_ids` that is registered.
pub async fn registrations(
    client: &Client,
    tenant: &str,
    item_ids: &[String],
) -> Result<Vec<ItemRegistration>, ClickHouseError> {
    let read = read_lookup_rows(client, tenant, item_ids, RowKinds::Registrations).await?;
    Ok(read.into_values().filter_map(|r| r.registration).collect())
}

/// Which rows of `item_lookup` a read wants.
#[derive(Clone, Copy)]
enum RowKinds {
    All,
    /// Registrations only: a bulk registration needs no events (an item may have thousands).
    Registrations,
}

async fn read_lookup_rows(
    client: &Client,
    tenant: &str,
    item_ids: &[String],
    kinds: RowKinds,
) -> Result<HashMap<String, ItemRead>, ClickHouseError> {
    #[derive(clickhouse::Row, Deserialize)]
    struct Packed {
        item_id: String,
        row: String,
    }
    let mut by_item: HashMap<String, ItemRead> = HashMap::new();
    if item_ids.is_empty() {
        return Ok(by_item);
    }
    let only = match kinds {
        RowKinds::All => "",
        RowKinds::Registrations => "AND startsWith(row, 'r')",
    };
    // `IN (subquery)` uses the primary key; `has(array, item_id)` would scan the tenant.
    let sql = format!(
        "SELECT ?fields FROM item_lookup WHERE tenant_id = ? AND item_id IN (SELECT arrayJoin(?)) {only} LIMIT ? {POINT_READ}"
    );
    let limit = MAX_EVENTS_PER_ITEM * item_ids.len() as u64;
    let rows: Vec<Packed> = with_timeout(
        client
            .query(&sql)
            .bind(tenant)
            .bind(item_ids)
            .bind(limit)
            .fetch_all(),
    )
    .await?;
    for Packed { item_id, row } in rows {
        match lookup_row::parse(&item_id, &row) {
            Ok(LookupRow::Event(event)) => {
                by_item.entry(item_id).or_default().events.push(event);
            }
            Ok(LookupRow::Registration(new)) => {
                let read = by_item.entry(item_id).or_default();
                if read
                    .registration
                    .as_ref()
                    .is_none_or(|old| new.updated_ms >= old.updated_ms)
                {
                    read.registration = Some(new);
                }
            }
            // Not silent, and not fatal: the item's other rows still answer.
            Err(e) => {
                metrics::counter!("backlight_item_lookup_rows_unreadable_total").increment(1);
                tracing::warn!(tenant, item_id, error = %e, "skipped an unreadable item_lookup row");
            }
        }
    }
    Ok(by_item)
}

/// Registered items matching the filters (empty filter: any), newest registration first.
/// Filters apply to each item's newest registration.
pub async fn search_registrations(
    client: &Client,
    tenant: &str,
    customer_ref: &str,
    queue: &str,
    limit: u64,
) -> Result<Vec<ItemRegistration>, ClickHouseError> {
    // The innermost query renames the columns: ClickHouse resolves aliases first, and
    // `argMax(queue, …) AS queue` over the table would refer to itself. The aggregates then
    // carry the row's field names, read by name (`?fields`).
    let sql = "SELECT ?fields FROM (
                   SELECT any(tn) AS tenant_id, item_id, argMax(qu, up) AS queue,
                          argMax(pr, up) AS priority, argMax(du, up) AS sla_due_ms,
                          argMax(cl, up) AS sla_class, argMax(cr, up) AS customer_ref,
                          argMax(rg, up) AS registered_ms, max(up) AS updated_ms
                   FROM (SELECT tenant_id AS tn, item_id, queue AS qu, priority AS pr,
                                sla_due_ms AS du, sla_class AS cl, customer_ref AS cr,
                                registered_ms AS rg, updated_ms AS up
                         FROM items
                         WHERE tenant_id = ? AND item_id IN (
                             SELECT item_id FROM items
                             WHERE tenant_id = ? AND (? = '' OR customer_ref = ?) AND (? = '' OR queue = ?)))
                   GROUP BY item_id
                   HAVING (? = '' OR customer_ref = ?) AND (? = '' OR queue = ?))
               ORDER BY registered_ms DESC, item_id
               LIMIT ?";
    let rows: Vec<ItemRow> = with_timeout(
        client
            .query(sql)
            .bind(tenant)
            .bind(tenant)
            .bind(customer_ref)
            .bind(customer_ref)
            .bind(queue)
            .bind(queue)
            .bind(customer_ref)
            .bind(customer_ref)
            .bind(queue)
            .bind(queue)
            .bind(limit)
            .fetch_all(),
    )
    .await?;
    Ok(rows.into_iter().map(ItemRow::into_registration).collect())
}

/// Items of `tenants` whose SLA state changes by the clock alone in `(after_ms, until_ms]`: they
/// become at risk (20 % of the SLA window left, [`crate::items::sla`]) or breached (past due)
/// then, without any event. The webhook owner evaluates them ([`crate::webhooks`]). Every
/// registration version counts (a candidate too many is harmless: it is evaluated in full).
pub async fn sla_clock_changes(
    client: &Client,
    tenants: &[String],
    after_ms: u64,
    until_ms: u64,
) -> Result<Vec<(String, String)>, ClickHouseError> {
    #[derive(clickhouse::Row, Deserialize)]
    struct Candidate {
        tenant_id: String,
        item_id: String,
    }
    if until_ms <= after_ms || tenants.is_empty() {
        return Ok(Vec::new());
    }
    // At risk from due - window/5 + 1 at the latest; breached from due + 1 (window: registered
    // to due, empty when registered after the due time).
    let sql = "SELECT DISTINCT ?fields FROM items
               WHERE tenant_id IN (SELECT arrayJoin(?)) AND sla_due_ms > 0 AND (
                   (sla_due_ms - intDiv(sla_due_ms - least(registered_ms, sla_due_ms), 5) + 1 > ?
                    AND sla_due_ms - intDiv(sla_due_ms - least(registered_ms, sla_due_ms), 5) + 1 <= ?)
                   OR (sla_due_ms + 1 > ? AND sla_due_ms + 1 <= ?))";
    let rows: Vec<Candidate> = with_timeout(
        client
            .query(sql)
            .bind(tenants)
            .bind(after_ms)
            .bind(until_ms)
            .bind(after_ms)
            .bind(until_ms)
            .fetch_all(),
    )
    .await?;
    Ok(rows.into_iter().map(|c| (c.tenant_id, c.item_id)).collect())
}

/// Writes registrations of `tenant`'s items in one INSERT.
pub async fn insert_registrations(
    client: &Client,
    tenant: &str,
    registrations: &[ItemRegistration],
) -> Result<(), ClickHouseError> {
    let rows: Vec<ItemRow> = registrations
        .iter()
        .map(|r| ItemRow::new(tenant, r))
        .collect();
    let rows = &rows;
    with_write_retry(|| async move {
        let mut insert = client.insert::<ItemRow>("items").await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    })
    .await
}

/// A tenant's SLA classes: name → target (ms).
pub async fn sla_classes(
    client: &Client,
    tenant: &str,
) -> Result<HashMap<String, u64>, ClickHouseError> {
    #[derive(clickhouse::Row, Deserialize)]
    struct Class {
        sla_class: String,
        target_ms: u64,
    }
    // Renamed inside so that `argMax(…) AS target_ms` does not refer to itself.
    let rows: Vec<Class> = with_timeout(
        client
            .query(
                "SELECT ?fields FROM (
                     SELECT sla_class, argMax(t, updated_ms) AS target_ms
                     FROM (SELECT sla_class, target_ms AS t, updated_ms FROM sla_classes WHERE tenant_id = ?)
                     GROUP BY sla_class)
                 ORDER BY sla_class",
            )
            .bind(tenant)
            .fetch_all(),
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|c| (c.sla_class, c.target_ms))
        .collect())
}

/// Writes `tenant`'s classes in one INSERT, as versions stamped `updated_ms`.
pub async fn insert_sla_classes(
    client: &Client,
    tenant: &str,
    classes: &[SlaClass],
    updated_ms: u64,
) -> Result<(), ClickHouseError> {
    let rows: Vec<SlaClassRow> = classes
        .iter()
        .map(|c| SlaClassRow {
            tenant_id: tenant.to_string(),
            sla_class: c.sla_class.clone(),
            target_ms: c.target_ms,
            updated_ms,
        })
        .collect();
    let rows = &rows;
    with_write_retry(|| async move {
        let mut insert = client.insert::<SlaClassRow>("sla_classes").await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    })
    .await
}

/// `(queue, handle_time_ms)` of the tenant's items completed in the [`ETA_WINDOW_MS`] before
/// `now_ms` (queue `""` when unregistered). Handle time counts distinct active spans, the same
/// rule as [`crate::items::derive`]; "completed" means the latest action is `completed`.
pub async fn handle_time_samples(
    client: &Client,
    tenant: &str,
    now_ms: u64,
) -> Result<Vec<(String, u64)>, ClickHouseError> {
    #[derive(clickhouse::Row, Deserialize)]
    struct Sample {
        queue: String,
        handle_ms: u64,
    }
    let spans_from = now_ms.saturating_sub(ETA_SPAN_LOOKBACK_MS);
    let completed_from = now_ms.saturating_sub(ETA_WINDOW_MS);
    let sql = "SELECT ?fields FROM (
                   SELECT item_id,
                          sumIf(end_ms - time_ms, state = 'active') AS handle_ms,
                          argMaxIf(action, time_ms, kind = 'work_item') AS last_action,
                          maxIf(time_ms, action = 'completed') AS completed_ms
                   FROM (SELECT DISTINCT item_id, device_id, seq, kind, state, action, time_ms, end_ms
                         FROM item_lookup
                         WHERE tenant_id = ? AND event_date >= toDate(toDateTime(intDiv(?, 1000)))
                           AND time_ms >= ? AND kind != '')
                   GROUP BY item_id
                   HAVING last_action = 'completed' AND completed_ms >= ?
                   ORDER BY completed_ms DESC
                   LIMIT ?
               ) AS completed ANY LEFT JOIN (
                   SELECT item_id, argMax(queue, updated_ms) AS queue FROM items WHERE tenant_id = ? GROUP BY item_id
               ) AS registered USING item_id";
    let rows: Vec<Sample> = with_timeout(
        client
            .query(sql)
            .bind(tenant)
            .bind(spans_from)
            .bind(spans_from)
            .bind(completed_from)
            .bind(ETA_MAX_SAMPLES)
            .bind(tenant)
            .fetch_all(),
    )
    .await?;
    Ok(rows.into_iter().map(|s| (s.queue, s.handle_ms)).collect())
}

/// Per-tenant [`HandleTimeStats`] for the ETA, reloaded at most every `ttl` (see
/// [`TenantCache`]: only a tenant's first lookup waits for the scan).
pub type HandleTimeCache = TenantCache<HandleTimeStats>;

/// A [`HandleTimeCache`]; `ttl` zero reads ClickHouse on every call (tests).
pub fn handle_time_cache(ttl: Duration) -> HandleTimeCache {
    TenantCache::new(
        "ETA statistics",
        ttl,
        Arc::new(|client, tenant| {
            Box::pin(async move {
                let samples =
                    handle_time_samples(&client, &tenant, backlight_shared::now_ms()).await?;
                Ok(HandleTimeStats::new(samples))
            })
        }),
    )
}

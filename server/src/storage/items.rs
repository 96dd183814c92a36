//! Reads and writes for item status (schema in `deploy/clickhouse/migrations/0004_items.sql`).
//!
//! Every read on the lookup path is a point or prefix read by primary key:
//! `item_events` by `(tenant_id, item_id)`, `items` by `(tenant_id, item_id)`,
//! `device_assignments` by `(tenant_id, device_id ∈ the item's few devices)`. No `FINAL`:
//! event rows are deduplicated in Rust by `(device_id, seq)` ([`crate::items::derive`]), and
//! registrations take the newest version by `updated_ms`.
//!
//! The ETA needs handle times of recently completed items, which is a scan over the tenant's
//! item events; [`HandleTimeCache`] keeps one result per tenant for a while and refreshes it in
//! the background, so lookups never wait for that scan except the very first one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backlight_shared::event::{ActivityState, ItemAction};
use clickhouse::Client;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clickhouse::{with_timeout, ClickHouseError};
use crate::items::{HandleTimeStats, ItemEvent, Occurrence};

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

/// One row of `item_events`, as read for derivation.
#[derive(clickhouse::Row, Deserialize, Debug, Clone)]
struct ItemEventRow {
    item_id: String,
    #[serde(with = "clickhouse::serde::uuid")]
    device_id: Uuid,
    seq: u64,
    /// `Enum8` code: 1 activity_span, 2 work_item.
    kind: i8,
    time_ms: u64,
    end_ms: u64,
    state: i8,
    step: String,
    action: i8,
}

const EVENT_COLUMNS: &str = "item_id, device_id, seq, kind, time_ms, end_ms, state, step, action";

impl ItemEventRow {
    /// The domain event, or `None` for a row the derivation has no use for (unknown codes).
    fn into_event(self) -> Option<(String, ItemEvent)> {
        let what = match self.kind {
            1 => Occurrence::Span {
                end_ms: self.end_ms,
                state: match self.state {
                    1 => ActivityState::Active,
                    2 => ActivityState::Idle,
                    3 => ActivityState::Locked,
                    _ => return None,
                },
            },
            2 => Occurrence::Action(
                *ItemAction::ALL.get(usize::try_from(i16::from(self.action) - 1).ok()?)?,
            ),
            _ => return None,
        };
        let event = ItemEvent {
            device_id: self.device_id,
            seq: self.seq,
            time_ms: self.time_ms,
            what,
            step: self.step,
        };
        Some((self.item_id, event))
    }
}

/// One row of `items`: an item's registration. Field order matches the table (RowBinary).
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ItemRow {
    pub tenant_id: String,
    pub item_id: String,
    pub queue: String,
    pub priority: u8,
    /// 0: no SLA.
    pub sla_due_ms: u64,
    pub sla_class: String,
    pub customer_ref: String,
    pub registered_ms: u64,
    pub updated_ms: u64,
}

#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SlaClassRow {
    pub tenant_id: String,
    pub sla_class: String,
    pub target_ms: u64,
    pub updated_ms: u64,
}

/// Team and person of one device (empty strings when unassigned or unnamed).
#[derive(clickhouse::Row, Deserialize, Debug, Clone, PartialEq)]
pub struct Assignment {
    #[serde(with = "clickhouse::serde::uuid")]
    pub device_id: Uuid,
    pub team: String,
    pub person: String,
}

/// The events of one item, in storage order (not deduplicated: derivation does that).
pub async fn item_events(
    client: &Client,
    tenant: &str,
    item_id: &str,
) -> Result<Vec<ItemEvent>, ClickHouseError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM item_events WHERE tenant_id = ? AND item_id = ? LIMIT ?"
    );
    let rows: Vec<ItemEventRow> = with_timeout(
        client
            .query(&sql)
            .bind(tenant)
            .bind(item_id)
            .bind(MAX_EVENTS_PER_ITEM)
            .fetch_all(),
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(ItemEventRow::into_event)
        .map(|(_, e)| e)
        .collect())
}

/// The events of several items, by item id.
pub async fn events_of_items(
    client: &Client,
    tenant: &str,
    item_ids: &[String],
) -> Result<HashMap<String, Vec<ItemEvent>>, ClickHouseError> {
    let mut by_item: HashMap<String, Vec<ItemEvent>> = HashMap::new();
    if item_ids.is_empty() {
        return Ok(by_item);
    }
    // `IN (subquery)` uses the primary key; `has(array, item_id)` would scan the tenant.
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM item_events WHERE tenant_id = ? AND item_id IN (SELECT arrayJoin(?)) LIMIT ?"
    );
    let limit = MAX_EVENTS_PER_ITEM * item_ids.len() as u64;
    let rows: Vec<ItemEventRow> = with_timeout(
        client
            .query(&sql)
            .bind(tenant)
            .bind(item_ids)
            .bind(limit)
            .fetch_all(),
    )
    .await?;
    for (item_id, event) in rows.into_iter().filter_map(ItemEventRow::into_event) {
        by_item.entry(item_id).or_default().push(event);
    }
    Ok(by_item)
}

/// An item's newest registration.
pub async fn registration(
    client: &Client,
    tenant: &str,
    item_id: &str,
) -> Result<Option<ItemRow>, ClickHouseError> {
    with_timeout(
        client
            .query("SELECT ?fields FROM items WHERE tenant_id = ? AND item_id = ? ORDER BY updated_ms DESC LIMIT 1")
            .bind(tenant)
            .bind(item_id)
            .fetch_optional(),
    )
    .await
}

/// The newest registration of each of `item_ids` that is registered.
pub async fn registrations(
    client: &Client,
    tenant: &str,
    item_ids: &[String],
) -> Result<Vec<ItemRow>, ClickHouseError> {
    if item_ids.is_empty() {
        return Ok(Vec::new());
    }
    with_timeout(
        client
            .query(
                "SELECT ?fields FROM items WHERE tenant_id = ? AND item_id IN (SELECT arrayJoin(?))
                 ORDER BY item_id, updated_ms DESC LIMIT 1 BY item_id",
            )
            .bind(tenant)
            .bind(item_ids)
            .fetch_all(),
    )
    .await
}

/// Registered items matching the filters (empty filter: any), newest registration first.
/// Filters apply to each item's newest registration.
pub async fn search_registrations(
    client: &Client,
    tenant: &str,
    customer_ref: &str,
    queue: &str,
    limit: u64,
) -> Result<Vec<ItemRow>, ClickHouseError> {
    // Aliases differ from column names: ClickHouse resolves aliases first, and
    // `argMax(queue, …) AS queue` would refer to itself.
    let sql = "SELECT any(tenant_id) AS t, item_id, argMax(queue, updated_ms) AS q, argMax(priority, updated_ms) AS p,
                      argMax(sla_due_ms, updated_ms) AS d, argMax(sla_class, updated_ms) AS c,
                      argMax(customer_ref, updated_ms) AS r, argMax(registered_ms, updated_ms) AS g,
                      max(updated_ms) AS u
               FROM items
               WHERE tenant_id = ? AND item_id IN (
                   SELECT item_id FROM items
                   WHERE tenant_id = ? AND (? = '' OR customer_ref = ?) AND (? = '' OR queue = ?))
               GROUP BY item_id
               HAVING (? = '' OR r = ?) AND (? = '' OR q = ?)
               ORDER BY g DESC, item_id
               LIMIT ?";
    with_timeout(
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
    .await
}

/// Writes registrations in one INSERT.
pub async fn insert_registrations(
    client: &Client,
    rows: &[ItemRow],
) -> Result<(), ClickHouseError> {
    with_timeout(async {
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
        name: String,
        target_ms: u64,
    }
    let rows: Vec<Class> = with_timeout(
        client
            .query(
                "SELECT sla_class AS name, argMax(target_ms, updated_ms) AS t FROM sla_classes
                 WHERE tenant_id = ? GROUP BY sla_class ORDER BY sla_class",
            )
            .bind(tenant)
            .fetch_all(),
    )
    .await?;
    Ok(rows.into_iter().map(|c| (c.name, c.target_ms)).collect())
}

pub async fn insert_sla_classes(
    client: &Client,
    rows: &[SlaClassRow],
) -> Result<(), ClickHouseError> {
    with_timeout(async {
        let mut insert = client.insert::<SlaClassRow>("sla_classes").await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    })
    .await
}

/// The current assignment of each of `devices` that is assigned.
pub async fn assignments_of(
    client: &Client,
    tenant: &str,
    devices: &[Uuid],
) -> Result<HashMap<Uuid, Assignment>, ClickHouseError> {
    if devices.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<String> = devices.iter().map(Uuid::to_string).collect();
    let rows: Vec<Assignment> = with_timeout(
        client
            .query(
                "SELECT device_id, argMax(team, updated_ms) AS t, argMax(person, updated_ms) AS p
                 FROM device_assignments
                 WHERE tenant_id = ? AND device_id IN (SELECT toUUID(arrayJoin(?)))
                 GROUP BY device_id",
            )
            .bind(tenant)
            .bind(&ids)
            .fetch_all(),
    )
    .await?;
    Ok(rows.into_iter().map(|a| (a.device_id, a)).collect())
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
    let sql = "SELECT queue, handle_ms FROM (
                   SELECT item_id,
                          sumIf(end_ms - time_ms, state = 'active') AS handle_ms,
                          argMaxIf(action, time_ms, kind = 'work_item') AS last_action,
                          maxIf(time_ms, action = 'completed') AS completed_ms
                   FROM (SELECT DISTINCT item_id, device_id, seq, kind, state, action, time_ms, end_ms
                         FROM item_events
                         WHERE tenant_id = ? AND event_date >= toDate(toDateTime(intDiv(?, 1000)))
                           AND time_ms >= ?)
                   GROUP BY item_id
                   HAVING last_action = 'completed' AND completed_ms >= ?
                   ORDER BY completed_ms DESC
                   LIMIT ?
               ) ANY LEFT JOIN (
                   SELECT item_id, argMax(queue, updated_ms) AS queue FROM items WHERE tenant_id = ? GROUP BY item_id
               ) USING item_id";
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

struct CacheEntry {
    loaded: Instant,
    stats: Arc<HandleTimeStats>,
    refreshing: bool,
}

/// Per-tenant [`HandleTimeStats`], reloaded at most every `ttl`. A stale entry is served while
/// one background task reloads it; only a tenant's first lookup waits for the scan. A cache,
/// not state: every server computes the same from ClickHouse.
#[derive(Clone)]
pub struct HandleTimeCache {
    ttl: Duration,
    entries: Arc<Mutex<HashMap<String, CacheEntry>>>,
    /// One first load at a time: a cold server hit by many lookups runs one scan, not one each.
    cold_loads: Arc<tokio::sync::Mutex<()>>,
}

/// Most tenants cached; beyond it the cache is cleared (simple and bounded).
const MAX_CACHED_TENANTS: usize = 10_000;

impl HandleTimeCache {
    /// `ttl` zero: no caching, every call reads ClickHouse (tests).
    pub fn new(ttl: Duration) -> HandleTimeCache {
        HandleTimeCache {
            ttl,
            entries: Arc::default(),
            cold_loads: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CacheEntry>> {
        // Nothing can be left half-updated by a panic while holding this lock.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn load(client: &Client, tenant: &str) -> Result<Arc<HandleTimeStats>, ClickHouseError> {
        let samples = handle_time_samples(client, tenant, backlight_shared::now_ms()).await?;
        Ok(Arc::new(HandleTimeStats::new(samples)))
    }

    fn store(&self, tenant: &str, stats: Arc<HandleTimeStats>) {
        let mut entries = self.lock();
        if entries.len() >= MAX_CACHED_TENANTS {
            entries.clear();
        }
        entries.insert(
            tenant.to_string(),
            CacheEntry {
                loaded: Instant::now(),
                stats,
                refreshing: false,
            },
        );
    }

    pub async fn get(
        &self,
        client: &Client,
        tenant: &str,
    ) -> Result<Arc<HandleTimeStats>, ClickHouseError> {
        if self.ttl.is_zero() {
            return Self::load(client, tenant).await;
        }
        let stale = {
            let mut entries = self.lock();
            match entries.get_mut(tenant) {
                Some(e) if e.loaded.elapsed() < self.ttl => return Ok(e.stats.clone()),
                Some(e) => {
                    let start_refresh = !e.refreshing;
                    e.refreshing = true;
                    Some((e.stats.clone(), start_refresh))
                }
                None => None,
            }
        };
        match stale {
            Some((stats, start_refresh)) => {
                if start_refresh {
                    let (cache, client, tenant) =
                        (self.clone(), client.clone(), tenant.to_string());
                    tokio::spawn(async move {
                        match Self::load(&client, &tenant).await {
                            Ok(fresh) => cache.store(&tenant, fresh),
                            Err(e) => {
                                tracing::warn!(error = %e, tenant, "refreshing ETA statistics failed; serving the old ones");
                                if let Some(entry) = cache.lock().get_mut(&tenant) {
                                    entry.refreshing = false;
                                }
                            }
                        }
                    });
                }
                Ok(stats)
            }
            None => {
                let _turn = self.cold_loads.lock().await;
                if let Some(entry) = self.lock().get(tenant) {
                    return Ok(entry.stats.clone()); // loaded while this lookup waited its turn
                }
                // Spawned, so a caller that gives up (client timeout) does not throw the
                // finished scan away and leave the next caller to start it again.
                let (cache, client, tenant) = (self.clone(), client.clone(), tenant.to_string());
                let load = tokio::spawn(async move {
                    let stats = Self::load(&client, &tenant).await?;
                    cache.store(&tenant, stats.clone());
                    Ok(stats)
                });
                load.await
                    .map_err(|e| ClickHouseError::Interrupted(e.to_string()))?
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_codes_map_to_the_domain() {
        let row = |kind, state, action| ItemEventRow {
            item_id: "I".into(),
            device_id: Uuid::nil(),
            seq: 1,
            kind,
            time_ms: 10,
            end_ms: 20,
            state,
            step: "s".into(),
            action,
        };
        let (_, span) = row(1, 2, 0).into_event().unwrap();
        assert_eq!(
            span.what,
            Occurrence::Span {
                end_ms: 20,
                state: ActivityState::Idle
            }
        );
        for (i, action) in ItemAction::ALL.iter().enumerate() {
            let (_, e) = row(2, 0, i as i8 + 1).into_event().unwrap();
            assert_eq!(e.what, Occurrence::Action(*action));
        }
        assert!(row(3, 0, 0).into_event().is_none());
        assert!(row(2, 0, 0).into_event().is_none());
        assert!(row(1, 0, 0).into_event().is_none());
    }

    #[test]
    fn enum_codes_match_the_migration() {
        let sql = include_str!("../../../deploy/clickhouse/migrations/0004_items.sql");
        for (i, action) in ItemAction::ALL.iter().enumerate() {
            assert!(sql.contains(&format!("'{}' = {}", action.as_str(), i + 1)));
        }
        for (i, state) in ["active", "idle", "locked"].iter().enumerate() {
            assert!(sql.contains(&format!("'{state}' = {}", i + 1)));
        }
        assert!(sql.contains("'activity_span' = 1, 'work_item' = 2"));
    }
}

//! The item change feed (schema in `deploy/clickhouse/migrations/0012_live_and_webhooks.sql`):
//! which items of a tenant changed, stamped with the `received_ms` of the ingest (or the
//! `updated_ms` of the registration) that changed them.
//!
//! Stamps come from the clock of the server that wrote the row, and a row becomes visible only
//! when its INSERT finishes (up to the group commit's delay after its stamp). So readers never
//! ask "newer than the last stamp I saw": they ask for a window reaching [`OVERLAP_MS`] back and
//! remember which changes they already handled ([`crate::live`], [`crate::webhooks`]).
//!
//! A feed row can be visible a moment before the `item_lookup` row of the same change (each
//! materialized view writes its own part). Each change therefore carries a [`ChangeMark`] that
//! says whether a read of the item includes it; a reader counts a change as handled only when
//! its read did, and otherwise finds it again in the next read of the feed.

use std::collections::HashMap;

use clickhouse::Client;
use serde::Deserialize;
use uuid::Uuid;

use super::items::ItemRead;
use crate::clickhouse::{with_timeout, ClickHouseError};

/// How far back each read of the feed reaches before now. It covers the time between a stamp
/// and its row becoming visible (group commit, INSERT) and the difference between servers'
/// clocks; servers whose clocks differ by more than this can miss each other's changes, so keep
/// them in sync (NTP).
pub const OVERLAP_MS: u64 = 10_000;

/// `what` of a row that is activity spans only; anything else (a work-item action, a
/// registration) can change an item's status or SLA.
const WHAT_SPANS: u8 = 1;

/// One change of an item: its stamp, and what a read must hold to include it — the device's
/// event with this `seq` (the highest of the request's events on the item), or for a
/// registration (nil device) a registration at least this new.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChangeMark {
    pub stamp: u64,
    pub device_id: Uuid,
    pub seq: u64,
}

impl ChangeMark {
    /// Events of `device_id` up to `seq`, stored at `received_ms`.
    pub fn events(received_ms: u64, device_id: Uuid, seq: u64) -> ChangeMark {
        ChangeMark {
            stamp: received_ms,
            device_id,
            seq,
        }
    }

    /// A registration written with `updated_ms`.
    pub fn registration(updated_ms: u64) -> ChangeMark {
        ChangeMark {
            stamp: updated_ms,
            device_id: Uuid::nil(),
            seq: 0,
        }
    }

    /// Whether `read` includes this change.
    pub fn seen_in(&self, read: &ItemRead) -> bool {
        if self.device_id.is_nil() {
            read.registration
                .as_ref()
                .is_some_and(|r| r.updated_ms >= self.stamp)
        } else {
            read.events
                .iter()
                .any(|e| e.device_id == self.device_id && e.seq == self.seq)
        }
    }
}

/// One change read from the feed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeedChange {
    pub mark: ChangeMark,
    /// A work-item action or a registration, not only activity spans.
    pub status_relevant: bool,
}

/// An item that changed in the window read, with each of its changes.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangedItem {
    pub tenant_id: String,
    pub item_id: String,
    pub changes: Vec<FeedChange>,
}

/// Items of `tenants` changed at a stamp after `since_ms`; only those named in `only` when given
/// (the items a server's streams watch; an item named for one tenant may come back for another,
/// callers match pairs). One query for all tenants; it reads the newest granules of each, not
/// their history.
pub async fn changed_since(
    client: &Client,
    tenants: &[String],
    since_ms: u64,
    only: Option<&[String]>,
) -> Result<Vec<ChangedItem>, ClickHouseError> {
    #[derive(clickhouse::Row, Deserialize)]
    struct Row {
        tenant_id: String,
        item_id: String,
        received_ms: u64,
        #[serde(with = "clickhouse::serde::uuid")]
        device_id: Uuid,
        seq: u64,
        what: u8,
    }
    if tenants.is_empty() || only.is_some_and(<[String]>::is_empty) {
        return Ok(Vec::new());
    }
    let filter = if only.is_some() {
        "AND item_id IN (SELECT arrayJoin(?))"
    } else {
        ""
    };
    // `IN (subquery)` on tenant_id uses the primary key (tenant_id, received_ms).
    let sql = format!(
        "SELECT ?fields
         FROM item_changes
         WHERE tenant_id IN (SELECT arrayJoin(?))
           AND change_date >= toDate(toDateTime(intDiv(?, 1000)))
           AND received_ms > ? {filter}"
    );
    let mut query = client
        .query(&sql)
        .bind(tenants)
        .bind(since_ms)
        .bind(since_ms);
    if let Some(items) = only {
        query = query.bind(items);
    }
    let rows: Vec<Row> = with_timeout(query.fetch_all()).await?;
    let mut by_item: HashMap<(String, String), Vec<FeedChange>> = HashMap::new();
    for r in rows {
        by_item
            .entry((r.tenant_id, r.item_id))
            .or_default()
            .push(FeedChange {
                mark: ChangeMark {
                    stamp: r.received_ms,
                    device_id: r.device_id,
                    seq: r.seq,
                },
                status_relevant: r.what != WHAT_SPANS,
            });
    }
    Ok(by_item
        .into_iter()
        .map(|((tenant_id, item_id), changes)| ChangedItem {
            tenant_id,
            item_id,
            changes,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::items::{ItemEvent, ItemRegistration, Occurrence};
    use backlight_shared::event::ItemAction;

    #[test]
    fn a_mark_is_seen_only_in_a_read_that_holds_its_change() {
        let device = Uuid::from_u128(7);
        let event = |seq| ItemEvent {
            device_id: device,
            seq,
            time_ms: 1,
            what: Occurrence::Action(ItemAction::Started),
            step: String::new(),
        };
        let read = ItemRead {
            events: vec![event(1), event(2)],
            registration: Some(ItemRegistration {
                item_id: "I".into(),
                queue: String::new(),
                priority: 0,
                sla_due_ms: None,
                sla_class: None,
                customer_ref: String::new(),
                registered_ms: 5,
                updated_ms: 50,
            }),
        };
        assert!(ChangeMark::events(9, device, 2).seen_in(&read));
        assert!(!ChangeMark::events(9, device, 3).seen_in(&read));
        assert!(!ChangeMark::events(9, Uuid::from_u128(8), 2).seen_in(&read));
        assert!(ChangeMark::registration(50).seen_in(&read));
        assert!(!ChangeMark::registration(51).seen_in(&read));
        assert!(!ChangeMark::registration(1).seen_in(&ItemRead::default()));
    }
}

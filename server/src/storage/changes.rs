//! The item change feed (schema in `deploy/clickhouse/migrations/0012_live_and_webhooks.sql`):
//! which items of a tenant changed, stamped with the `received_ms` of the ingest (or the
//! `updated_ms` of the registration) that changed them.
//!
//! Stamps come from the clock of the server that wrote the row, and a row becomes visible only
//! when its INSERT finishes (up to the group commit's delay after its stamp). So readers never
//! ask "newer than the last stamp I saw": they ask for a window reaching [`OVERLAP_MS`] back and
//! remember which stamps they already handled ([`crate::live`], [`crate::webhooks`]).

use clickhouse::Client;
use serde::Deserialize;

use crate::clickhouse::{with_timeout, ClickHouseError};

/// How far back each read of the feed reaches before now. It covers the time between a stamp
/// and its row becoming visible (group commit, INSERT) and the difference between servers'
/// clocks; servers whose clocks differ by more than this can miss each other's changes, so keep
/// them in sync (NTP).
pub const OVERLAP_MS: u64 = 10_000;

/// `what` of a row that is an activity span; anything else (a work-item action, a
/// registration) can change an item's status or SLA.
const WHAT_SPAN: u8 = 1;

/// One item that changed in the window read, with every stamp it changed at.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangedItem {
    pub tenant_id: String,
    pub item_id: String,
    pub stamps: Vec<u64>,
    /// Whether any of the changes is an action or a registration (not only activity spans).
    pub status_relevant: bool,
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
        stamps: Vec<u64>,
        relevant: u8,
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
        "SELECT tenant_id, item_id, groupUniqArray(received_ms) AS stamps,
                max(what != {WHAT_SPAN}) AS relevant
         FROM item_changes
         WHERE tenant_id IN (SELECT arrayJoin(?))
           AND change_date >= toDate(toDateTime(intDiv(?, 1000)))
           AND received_ms > ? {filter}
         GROUP BY tenant_id, item_id"
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
    Ok(rows
        .into_iter()
        .map(|r| ChangedItem {
            tenant_id: r.tenant_id,
            item_id: r.item_id,
            stamps: r.stamps,
            status_relevant: r.relevant != 0,
        })
        .collect())
}

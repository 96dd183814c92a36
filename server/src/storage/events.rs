//! The `events` table: one row per recorded event (schema in
//! `deploy/clickhouse/migrations/0002_events.sql`).
//!
//! This module turns validated wire events into rows, writes them, and answers the questions
//! the spine needs about them (per-device sequence progress, exactly-once counts).

use backlight_shared::event::{Event, EventBody};
use clickhouse::Client;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clickhouse::{with_timeout, ClickHouseError};

/// One row of `events`. Field order must match the table's column order (RowBinary is
/// positional and validation is off for 18.16).
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct EventRow {
    pub tenant_id: String,
    #[serde(with = "clickhouse::serde::uuid")]
    pub device_id: Uuid,
    pub seq: u64,
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: Uuid,
    /// `Enum8` code: the wire enum's position + 1, as the migration declares them.
    pub kind: i8,
    /// Days since the epoch (ClickHouse `Date`).
    pub event_date: u16,
    pub time_ms: u64,
    pub end_ms: u64,
    pub received_ms: u64,
    pub app: String,
    pub title: Option<String>,
    pub state: i8,
    pub item_id: String,
    pub step: String,
    pub action: i8,
    pub source: i8,
    pub consent_granted: u8,
    pub policy_version: u32,
    pub scope: String,
    pub agent_version: String,
    pub spool_depth: u64,
    pub events_dropped: u64,
    pub events_rejected: u64,
    pub clock_offset_ms: i64,
}

const MS_PER_DAY: u64 = 86_400_000;

impl EventRow {
    /// The row for one event that has passed validation.
    pub fn new(tenant_id: &str, device_id: Uuid, event: &Event, received_ms: u64) -> EventRow {
        let time_ms = event.body.time_ms();
        let mut row = EventRow {
            tenant_id: tenant_id.to_string(),
            device_id,
            seq: event.seq,
            event_id: event.id,
            kind: event.body.kind() as i8 + 1,
            // Validation bounds timestamps to a few hundred days around now, far inside u16 days.
            event_date: u16::try_from(time_ms / MS_PER_DAY).unwrap_or(u16::MAX),
            time_ms,
            end_ms: time_ms,
            received_ms,
            app: String::new(),
            title: None,
            state: 0,
            item_id: String::new(),
            step: String::new(),
            action: 0,
            source: 0,
            consent_granted: 0,
            policy_version: 0,
            scope: String::new(),
            agent_version: String::new(),
            spool_depth: 0,
            events_dropped: 0,
            events_rejected: 0,
            clock_offset_ms: 0,
        };
        match &event.body {
            EventBody::ActivitySpan(span) => {
                row.end_ms = span.end_ms;
                row.app.clone_from(&span.app);
                row.title.clone_from(&span.title);
                row.state = span.state as i8 + 1;
                row.item_id = span.item_id.clone().unwrap_or_default();
                row.step = span.step.clone().unwrap_or_default();
            }
            EventBody::WorkItem(item) => {
                row.item_id.clone_from(&item.item_id);
                row.step = item.step.clone().unwrap_or_default();
                row.action = item.action as i8 + 1;
                row.source = item.source as i8 + 1;
            }
            EventBody::Consent(consent) => {
                row.consent_granted = u8::from(consent.granted);
                row.policy_version = consent.policy_version;
                row.scope.clone_from(&consent.scope);
            }
            EventBody::Health(health) => {
                row.agent_version.clone_from(&health.agent_version);
                row.spool_depth = health.spool_depth;
                row.events_dropped = health.events_dropped;
                row.events_rejected = health.events_rejected;
                row.clock_offset_ms = health.clock_offset_ms;
            }
        }
        row
    }
}

/// Writes the rows of all `chunks` in one INSERT. Returns once ClickHouse has accepted them all.
pub async fn insert(client: &Client, chunks: &[&[EventRow]]) -> Result<(), ClickHouseError> {
    with_timeout(async {
        let mut insert = client.insert::<EventRow>("events").await?;
        for row in chunks.iter().flat_map(|chunk| chunk.iter()) {
            insert.write(row).await?;
        }
        insert.end().await
    })
    .await
}

/// How far a device's events have arrived, for spotting data lost before it reached us.
#[derive(clickhouse::Row, Deserialize, Serialize, Debug, Clone, PartialEq)]
pub struct DeviceProgress {
    pub tenant_id: String,
    #[serde(with = "clickhouse::serde::uuid")]
    pub device_id: Uuid,
    /// Highest sequence number received.
    pub max_seq: u64,
    /// Distinct sequence numbers received (a re-sent event counts once).
    pub received: u64,
    /// Sequence numbers below `max_seq` never received: events lost on the way.
    pub missing: u64,
    /// When the newest event arrived.
    pub last_received_ms: u64,
}

/// Sequence progress of every device (of one tenant when `tenant` is given).
pub async fn device_progress(
    client: &Client,
    tenant: Option<&str>,
) -> Result<Vec<DeviceProgress>, ClickHouseError> {
    // Sequences start at 1, so everything in 1..=max_seq not received is missing.
    let sql = "SELECT tenant_id, device_id, max(seq) AS max_seq, uniqExact(seq) AS received,
                      max_seq - received AS missing, max(received_ms) AS last_received_ms
               FROM events WHERE (? = '' OR tenant_id = ?)
               GROUP BY tenant_id, device_id ORDER BY tenant_id, device_id";
    let tenant = tenant.unwrap_or("");
    with_timeout(client.query(sql).bind(tenant).bind(tenant).fetch_all()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use backlight_shared::event::*;

    #[test]
    fn enum_codes_match_the_migration() {
        let sql = include_str!("../../../deploy/clickhouse/migrations/0002_events.sql");
        for (i, state) in ["active", "idle", "locked"].iter().enumerate() {
            assert!(
                sql.contains(&format!("'{state}' = {}", i + 1)),
                "state {state}"
            );
        }
        for action in ItemAction::ALL {
            assert!(sql.contains(&format!("'{}' = {}", action.as_str(), action as i8 + 1)));
        }
        for (i, source) in ["rule", "app", "manual"].iter().enumerate() {
            assert!(
                sql.contains(&format!("'{source}' = {}", i + 1)),
                "source {source}"
            );
        }
        for kind in EventKind::ALL {
            assert!(sql.contains(&format!("'{}' = {}", kind.as_str(), kind as i8 + 1)));
        }
        assert_eq!(ActivityState::Locked as i8 + 1, 3);
        assert_eq!(ItemSource::Manual as i8 + 1, 3);
    }

    #[test]
    fn span_row_carries_its_fields() {
        let event = Event {
            seq: 9,
            id: Uuid::new_v4(),
            body: EventBody::ActivitySpan(ActivitySpan {
                app: "claims".into(),
                title: None,
                start_ms: 1_700_000_000_000,
                end_ms: 1_700_000_005_000,
                state: ActivityState::Idle,
                item_id: Some("C-1".into()),
                step: None,
            }),
        };
        let row = EventRow::new("acme", Uuid::nil(), &event, 5);
        assert_eq!((row.kind, row.state, row.seq), (1, 2, 9));
        assert_eq!(row.end_ms - row.time_ms, 5_000);
        assert_eq!(row.event_date, 19675);
        assert_eq!(row.item_id, "C-1");
        assert_eq!(row.title, None);
    }
}

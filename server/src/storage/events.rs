//! The `events` table: one row per recorded event (schema in
//! `deploy/clickhouse/migrations/0002_events.sql`).
//!
//! This module turns validated wire events into rows, writes them, and answers the questions
//! the spine needs about them (per-device sequence progress, exactly-once counts).

use backlight_shared::event::{Event, EventBody};
use clickhouse::Client;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clickhouse::{with_timeout, with_write_retry, ClickHouseError};

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
    /// `Enum8` code of the health event's desktop session: 0 when not reported, else the wire
    /// enum's position + 1 (migration 0016).
    pub session: i8,
    /// The remote session's client name (health events).
    pub session_client: String,
}

const MS_PER_DAY: u64 = 86_400_000;

impl EventRow {
    /// The row for one event that has passed validation.
    pub fn new(tenant_id: &str, device_id: Uuid, event: &Event, received_ms: u64) -> EventRow {
        Columns::new(tenant_id, device_id, event, received_ms).to_row()
    }
}

/// The columns of one `events` row, borrowed from a validated event. The one place that maps
/// a wire event to columns, for [`EventRow`] and for the RowBinary of [`EncodedRows`].
struct Columns<'a> {
    tenant_id: &'a str,
    device_id: Uuid,
    seq: u64,
    event_id: Uuid,
    kind: i8,
    event_date: u16,
    time_ms: u64,
    end_ms: u64,
    received_ms: u64,
    app: &'a str,
    title: Option<&'a str>,
    state: i8,
    item_id: &'a str,
    step: &'a str,
    action: i8,
    source: i8,
    consent_granted: u8,
    policy_version: u32,
    scope: &'a str,
    agent_version: &'a str,
    spool_depth: u64,
    events_dropped: u64,
    events_rejected: u64,
    clock_offset_ms: i64,
    session: i8,
    session_client: &'a str,
}

impl<'a> Columns<'a> {
    fn new(tenant_id: &'a str, device_id: Uuid, event: &'a Event, received_ms: u64) -> Self {
        let time_ms = event.body.time_ms();
        let mut row = Columns {
            tenant_id,
            device_id,
            seq: event.seq,
            event_id: event.id,
            kind: event.body.kind() as i8 + 1,
            // Validation bounds timestamps to a few hundred days around now, far inside u16 days.
            event_date: u16::try_from(time_ms / MS_PER_DAY).unwrap_or(u16::MAX),
            time_ms,
            end_ms: time_ms,
            received_ms,
            app: "",
            title: None,
            state: 0,
            item_id: "",
            step: "",
            action: 0,
            source: 0,
            consent_granted: 0,
            policy_version: 0,
            scope: "",
            agent_version: "",
            spool_depth: 0,
            events_dropped: 0,
            events_rejected: 0,
            clock_offset_ms: 0,
            session: 0,
            session_client: "",
        };
        match &event.body {
            EventBody::ActivitySpan(span) => {
                row.end_ms = span.end_ms;
                row.app = &span.app;
                row.title = span.title.as_deref();
                row.state = span.state as i8 + 1;
                row.item_id = span.item_id.as_deref().unwrap_or_default();
                row.step = span.step.as_deref().unwrap_or_default();
            }
            EventBody::WorkItem(item) => {
                row.item_id = &item.item_id;
                row.step = item.step.as_deref().unwrap_or_default();
                row.action = item.action as i8 + 1;
                row.source = item.source as i8 + 1;
            }
            EventBody::Consent(consent) => {
                row.consent_granted = u8::from(consent.granted);
                row.policy_version = consent.policy_version;
                row.scope = &consent.scope;
            }
            EventBody::Health(health) => {
                row.agent_version = &health.agent_version;
                row.spool_depth = health.spool_depth;
                row.events_dropped = health.events_dropped;
                row.events_rejected = health.events_rejected;
                row.clock_offset_ms = health.clock_offset_ms;
                if let Some(session) = &health.session {
                    row.session = session.kind as i8 + 1;
                    row.session_client = session.client_name.as_deref().unwrap_or_default();
                }
            }
        }
        row
    }

    fn to_row(&self) -> EventRow {
        EventRow {
            tenant_id: self.tenant_id.to_string(),
            device_id: self.device_id,
            seq: self.seq,
            event_id: self.event_id,
            kind: self.kind,
            event_date: self.event_date,
            time_ms: self.time_ms,
            end_ms: self.end_ms,
            received_ms: self.received_ms,
            app: self.app.to_string(),
            title: self.title.map(str::to_string),
            state: self.state,
            item_id: self.item_id.to_string(),
            step: self.step.to_string(),
            action: self.action,
            source: self.source,
            consent_granted: self.consent_granted,
            policy_version: self.policy_version,
            scope: self.scope.to_string(),
            agent_version: self.agent_version.to_string(),
            spool_depth: self.spool_depth,
            events_dropped: self.events_dropped,
            events_rejected: self.events_rejected,
            clock_offset_ms: self.clock_offset_ms,
            session: self.session,
            session_client: self.session_client.to_string(),
        }
    }

    /// Bytes of [`Columns::write_row_binary`]: fixed-width columns plus each string's length
    /// prefix and bytes.
    fn row_binary_len(&self) -> usize {
        const FIXED: usize = 16 + 8 + 16 + 1 + 2 + 8 + 8 + 8 // device_id … received_ms
            + 1 // title's null flag
            + 1 + 1 + 1 + 1 + 4 // state, action, source, consent_granted, policy_version
            + 8 + 8 + 8 + 8 // spool_depth … clock_offset_ms
            + 1; // session
        let strings = [
            self.tenant_id,
            self.app,
            self.title.unwrap_or_default(),
            self.item_id,
            self.step,
            self.scope,
            self.agent_version,
            self.session_client,
        ];
        let title_absent = usize::from(self.title.is_none());
        FIXED
            + strings
                .iter()
                .map(|s| varint_len(s.len()) + s.len())
                .sum::<usize>()
            - title_absent * varint_len(0)
    }

    /// The row in ClickHouse's RowBinary format, columns in table order (as [`EventRow`]'s
    /// fields, which [`insert_encoded`] names in its INSERT).
    fn write_row_binary(&self, out: &mut Vec<u8>) {
        string(out, self.tenant_id);
        uuid(out, self.device_id);
        out.extend_from_slice(&self.seq.to_le_bytes());
        uuid(out, self.event_id);
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.extend_from_slice(&self.event_date.to_le_bytes());
        out.extend_from_slice(&self.time_ms.to_le_bytes());
        out.extend_from_slice(&self.end_ms.to_le_bytes());
        out.extend_from_slice(&self.received_ms.to_le_bytes());
        string(out, self.app);
        // Nullable: a 1 byte for NULL, else 0 and the value.
        match self.title {
            Some(title) => {
                out.push(0);
                string(out, title);
            }
            None => out.push(1),
        }
        out.extend_from_slice(&self.state.to_le_bytes());
        string(out, self.item_id);
        string(out, self.step);
        out.extend_from_slice(&self.action.to_le_bytes());
        out.extend_from_slice(&self.source.to_le_bytes());
        out.push(self.consent_granted);
        out.extend_from_slice(&self.policy_version.to_le_bytes());
        string(out, self.scope);
        string(out, self.agent_version);
        out.extend_from_slice(&self.spool_depth.to_le_bytes());
        out.extend_from_slice(&self.events_dropped.to_le_bytes());
        out.extend_from_slice(&self.events_rejected.to_le_bytes());
        out.extend_from_slice(&self.clock_offset_ms.to_le_bytes());
        out.extend_from_slice(&self.session.to_le_bytes());
        string(out, self.session_client);
    }
}

/// RowBinary `String`: LEB128 length, then the bytes.
fn string(out: &mut Vec<u8>, s: &str) {
    let mut n = s.len() as u64;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(s.as_bytes());
}

fn varint_len(n: usize) -> usize {
    let bits = usize::BITS - n.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

/// RowBinary `UUID`: the high 64 bits, then the low 64 bits, each little-endian (what
/// `clickhouse::serde::uuid` writes).
fn uuid(out: &mut Vec<u8>, u: Uuid) {
    let (high, low) = u.as_u64_pair();
    out.extend_from_slice(&high.to_le_bytes());
    out.extend_from_slice(&low.to_le_bytes());
}

/// The rows of one request, already encoded as RowBinary for `events`: what a request holds
/// while it waits for its INSERT. One allocation of exactly the rows' size (≈ 150 bytes per
/// event), where `Vec<EventRow>` took about twice that in fields plus five small heap strings
/// per row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedRows {
    bytes: Vec<u8>,
    rows: usize,
}

impl EncodedRows {
    /// The rows of `events` (validated) from one device of `tenant_id`.
    pub fn encode(
        tenant_id: &str,
        device_id: Uuid,
        events: &[Event],
        received_ms: u64,
    ) -> EncodedRows {
        let columns = || {
            events
                .iter()
                .map(move |event| Columns::new(tenant_id, device_id, event, received_ms))
        };
        let len = columns().map(|c| c.row_binary_len()).sum();
        let mut bytes = Vec::with_capacity(len);
        for row in columns() {
            row.write_row_binary(&mut bytes);
        }
        debug_assert_eq!(
            bytes.len(),
            len,
            "row_binary_len disagrees with the encoding"
        );
        EncodedRows {
            bytes,
            rows: events.len(),
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The RowBinary bytes of all rows.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// `INSERT INTO events(<EventRow's columns>) FORMAT RowBinary`, as the typed insert builds it.
fn insert_encoded_sql() -> String {
    let columns = <EventRow as clickhouse::Row>::COLUMN_NAMES
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(",");
    format!("INSERT INTO events({columns}) FORMAT RowBinary")
}

/// Writes the rows of all `chunks` (see [`EncodedRows`]) in one INSERT, sent in chunks of at
/// most 256 KiB (compressed as the client is configured). Returns once ClickHouse has
/// accepted them all.
pub async fn insert_encoded(
    client: &Client,
    chunks: &[&EncodedRows],
) -> Result<(), ClickHouseError> {
    with_write_retry(|| async move {
        let mut insert = client
            .insert_formatted_with(insert_encoded_sql())
            .buffered();
        for chunk in chunks {
            let mut rest = chunk.as_bytes();
            while !rest.is_empty() {
                let written = insert.write(rest).await?;
                rest = &rest[written..];
            }
        }
        insert.end().await
    })
    .await
}

/// The highest `seq` stored for `device` of `tenant` (0 when none), from `device_seq`
/// (migration 0013), which a view keeps in step with every INSERT into `events`.
pub async fn stored_max_seq(
    client: &Client,
    tenant: &str,
    device: Uuid,
) -> Result<u64, ClickHouseError> {
    let sql = "SELECT max(max_seq) FROM device_seq WHERE tenant_id = ? AND device_id = ?";
    with_timeout(
        client
            .query(sql)
            .bind(tenant)
            .bind(device.to_string())
            .fetch_one::<u64>(),
    )
    .await
}

/// Which of `seqs` are stored for `device` of `tenant` (at most a batch's worth).
pub async fn stored_seqs(
    client: &Client,
    tenant: &str,
    device: Uuid,
    seqs: &[u64],
) -> Result<Vec<u64>, ClickHouseError> {
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    // `IN (subquery)` uses the primary key, as a literal list does; `has(array, seq)` would not.
    // 18.16 wants the same type on both sides of IN (a bound array of small numbers is UInt8).
    let sql = "SELECT DISTINCT seq FROM events WHERE tenant_id = ? AND device_id = ? AND seq IN (SELECT toUInt64(arrayJoin(?)))";
    with_timeout(
        client
            .query(sql)
            .bind(tenant)
            .bind(device.to_string())
            .bind(seqs)
            .fetch_all::<u64>(),
    )
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

/// Sequence gaps over all devices, summed: what `/metrics` shows by default.
#[derive(clickhouse::Row, Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Default)]
pub struct ProgressTotals {
    /// Devices that sent at least one event.
    pub devices: u64,
    /// Devices with at least one sequence number missing.
    pub devices_with_gaps: u64,
    /// Sequence numbers missing over all devices.
    pub missing: u64,
}

/// The sums of [`device_progress`] over every device, and the `limit` devices with the most
/// missing events (only when `limit > 0`): one scan of `events` each.
pub async fn progress_summary(
    client: &Client,
    limit: u64,
) -> Result<(ProgressTotals, Vec<DeviceProgress>), ClickHouseError> {
    let totals = with_timeout(
        client
            .query(
                "SELECT ?fields FROM (
                     SELECT count() AS devices, countIf(gap > 0) AS devices_with_gaps,
                            sum(gap) AS missing
                     FROM (SELECT max(seq) - uniqExact(seq) AS gap
                           FROM events GROUP BY tenant_id, device_id))",
            )
            .fetch_one::<ProgressTotals>(),
    )
    .await?;
    let worst = if limit == 0 || totals.devices_with_gaps == 0 {
        Vec::new()
    } else {
        let sql = "SELECT ?fields FROM (
                       SELECT tenant_id, device_id, max(seq) AS max_seq, uniqExact(seq) AS received,
                              max_seq - received AS missing, max(received_ms) AS last_received_ms
                       FROM events GROUP BY tenant_id, device_id HAVING missing > 0)
                   ORDER BY missing DESC, tenant_id, device_id LIMIT ?";
        with_timeout(client.query(sql).bind(limit).fetch_all()).await?
    };
    Ok((totals, worst))
}

/// Sequence progress of every device (of one tenant when `tenant` is given).
pub async fn device_progress(
    client: &Client,
    tenant: Option<&str>,
) -> Result<Vec<DeviceProgress>, ClickHouseError> {
    // Sequences start at 1, so everything in 1..=max_seq not received is missing.
    let sql = "SELECT ?fields FROM (
                   SELECT tenant_id, device_id, max(seq) AS max_seq, uniqExact(seq) AS received,
                          max_seq - received AS missing, max(received_ms) AS last_received_ms
                   FROM events WHERE (? = '' OR tenant_id = ?)
                   GROUP BY tenant_id, device_id)
               ORDER BY tenant_id, device_id";
    let tenant = tenant.unwrap_or("");
    with_timeout(client.query(sql).bind(tenant).bind(tenant).fetch_all()).await
}

/// The desktop session a device last reported with its health (`local`, `rdp`, `citrix`,
/// `remote`), a property of the device shown by `admin device list`.
#[derive(clickhouse::Row, Deserialize, Serialize, Debug, Clone, PartialEq)]
pub struct DeviceSession {
    #[serde(with = "clickhouse::serde::uuid")]
    pub device_id: Uuid,
    pub session: String,
    /// The remote client's name; empty for a local session.
    pub session_client: String,
}

/// The latest reported session of each device of `tenant` that reported one.
pub async fn device_sessions(
    client: &Client,
    tenant: &str,
) -> Result<Vec<DeviceSession>, ClickHouseError> {
    // argMax by seq: the newest report wins; a re-sent copy carries the same values. The
    // innermost query renames the columns, so that the aggregates can carry the row's field
    // names (read by name, `?fields`) without ClickHouse applying them inside WHERE too.
    let sql = "SELECT ?fields FROM (
                   SELECT device_id, toString(argMax(s, seq)) AS session,
                          argMax(c, seq) AS session_client
                   FROM (SELECT device_id, seq, session AS s, session_client AS c
                         FROM events WHERE tenant_id = ? AND kind = 'health' AND session != '')
                   GROUP BY device_id)
               ORDER BY device_id";
    with_timeout(client.query(sql).bind(tenant).fetch_all()).await
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
        let sessions =
            include_str!("../../../deploy/clickhouse/migrations/0016_health_session.sql");
        for kind in SessionKind::ALL {
            assert!(
                sessions.contains(&format!("'{}' = {}", kind.as_str(), kind as i8 + 1)),
                "session {kind:?}"
            );
        }
        assert_eq!(ActivityState::Locked as i8 + 1, 3);
        assert_eq!(ItemSource::Manual as i8 + 1, 3);
    }

    /// One event of every kind, with every optional field both ways and non-ASCII text.
    pub(crate) fn every_kind() -> Vec<Event> {
        let at = 1_700_000_000_000;
        let event = |seq, body| Event {
            seq,
            id: Uuid::new_v4(),
            body,
        };
        vec![
            event(
                1,
                EventBody::ActivitySpan(ActivitySpan {
                    app: "claims-desk".into(),
                    title: Some("Schaden №42 – Prüfung".into()),
                    start_ms: at,
                    end_ms: at + 5_000,
                    state: ActivityState::Active,
                    item_id: Some("CLM-1".into()),
                    step: Some("assess".into()),
                }),
            ),
            event(
                2,
                EventBody::ActivitySpan(ActivitySpan {
                    app: "x".repeat(200),
                    title: None,
                    start_ms: at + 5_000,
                    end_ms: at + 9_000,
                    state: ActivityState::Locked,
                    item_id: None,
                    step: None,
                }),
            ),
            event(
                3,
                EventBody::WorkItem(WorkItemEvent {
                    item_id: "CLM-1".into(),
                    action: ItemAction::Completed,
                    at_ms: at + 9_000,
                    source: ItemSource::Manual,
                    step: None,
                }),
            ),
            event(
                4,
                EventBody::Consent(ConsentChange {
                    granted: true,
                    policy_version: 7,
                    scope: "activity".into(),
                    at_ms: at + 10_000,
                }),
            ),
            event(
                5,
                EventBody::Health(AgentHealth {
                    agent_version: "1.2.3".into(),
                    spool_depth: 12,
                    events_dropped: 3,
                    events_rejected: 1,
                    clock_offset_ms: -250,
                    at_ms: at + 11_000,
                    session: None,
                }),
            ),
            event(
                6,
                EventBody::Health(AgentHealth {
                    agent_version: "1.2.3".into(),
                    spool_depth: 0,
                    events_dropped: 0,
                    events_rejected: 0,
                    clock_offset_ms: 0,
                    at_ms: at + 12_000,
                    session: Some(DesktopSession {
                        kind: SessionKind::Rdp,
                        client_name: Some("THIN-CLIENT-7ü".into()),
                    }),
                }),
            ),
        ]
    }

    /// RowBinary written field by field from an [`EventRow`], independently of [`Columns`].
    fn reference_row_binary(r: &EventRow, out: &mut Vec<u8>) {
        string(out, &r.tenant_id);
        uuid(out, r.device_id);
        out.extend_from_slice(&r.seq.to_le_bytes());
        uuid(out, r.event_id);
        out.push(r.kind as u8);
        out.extend_from_slice(&r.event_date.to_le_bytes());
        for v in [r.time_ms, r.end_ms, r.received_ms] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        string(out, &r.app);
        match &r.title {
            Some(t) => {
                out.push(0);
                string(out, t);
            }
            None => out.push(1),
        }
        out.push(r.state as u8);
        string(out, &r.item_id);
        string(out, &r.step);
        out.push(r.action as u8);
        out.push(r.source as u8);
        out.push(r.consent_granted);
        out.extend_from_slice(&r.policy_version.to_le_bytes());
        string(out, &r.scope);
        string(out, &r.agent_version);
        for v in [r.spool_depth, r.events_dropped, r.events_rejected] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&r.clock_offset_ms.to_le_bytes());
        out.push(r.session as u8);
        string(out, &r.session_client);
    }

    #[test]
    fn encoded_rows_are_the_event_rows_in_row_binary() {
        let events = every_kind();
        let device = Uuid::new_v4();
        let encoded = EncodedRows::encode("acme", device, &events, 42);
        let mut expected = Vec::new();
        for event in &events {
            reference_row_binary(&EventRow::new("acme", device, event, 42), &mut expected);
        }
        assert_eq!(encoded.rows(), events.len());
        assert_eq!(encoded.as_bytes(), expected.as_slice());
        // Exactly sized: one allocation, no slack.
        assert_eq!(encoded.bytes.capacity(), expected.len());
        assert_eq!(EncodedRows::encode("acme", device, &[], 42).as_bytes(), b"");
    }

    #[test]
    fn varints() {
        for (n, len) in [(0, 1), (127, 1), (128, 2), (16_383, 2), (16_384, 3)] {
            let mut out = Vec::new();
            string(&mut out, &"a".repeat(n));
            assert_eq!(varint_len(n), len, "{n}");
            assert_eq!(out.len(), n + len, "{n}");
        }
    }

    #[test]
    fn insert_names_the_columns_in_row_order() {
        let sql = insert_encoded_sql();
        assert!(
            sql.starts_with("INSERT INTO events(`tenant_id`,`device_id`,`seq`,"),
            "{sql}"
        );
        assert!(
            sql.ends_with(",`clock_offset_ms`,`session`,`session_client`) FORMAT RowBinary"),
            "{sql}"
        );
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

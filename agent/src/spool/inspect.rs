//! Reading the spool from another process (`backlight-agent status`) without disturbing the
//! agent that owns it.

use std::path::Path;

use backlight_shared::event::EventBody;
use backlight_shared::UnixMillis;
use rusqlite::Connection;

use super::schema::{self, from_sql_int, key, to_sql_int};
use super::{worker, Control, Note, SpoolError};

/// How many set-aside events `status` lists.
const RECENT_REJECTED: usize = 10;

/// What `status` shows about the spool.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpoolReport {
    pub depth: u64,
    pub last_seq: u64,
    pub events_dropped: u64,
    pub events_rejected: u64,
    pub lines_skipped: u64,
    pub last_upload_ms: Option<UnixMillis>,
    pub last_error: Option<String>,
    /// The most recently set-aside events, newest first.
    pub recent_rejected: Vec<RejectedEvent>,
    /// Consent and pause.
    pub control: Control,
    /// The cached policy (JSON), the last policy refusal and the capture state.
    pub policy: Option<String>,
    pub policy_error: Option<String>,
    pub capture: Option<String>,
    pub consent_url: Option<String>,
}

/// One event of the local log behind `backlight-agent show`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentEvent {
    pub seq: u64,
    pub recorded_ms: UnixMillis,
    /// Still in the spool, waiting for upload (otherwise the server has it).
    pub waiting: bool,
    pub body: EventBody,
}

/// An event the server refused (or the spool could not read), kept for an operator to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedEvent {
    pub seq: u64,
    pub reason: String,
    pub rejected_ms: UnixMillis,
}

/// Reads the spool at `path` read-only; `None` when there is no spool yet.
pub fn inspect(path: &Path) -> Result<Option<SpoolReport>, SpoolError> {
    if !path.exists() {
        return Ok(None);
    }
    let connection = schema::open_read_only(path)?;
    // A snapshot: all numbers from the same instant, even while the agent writes.
    connection.execute_batch("BEGIN")?;
    let report = read(&connection);
    // Ending a read transaction cannot lose anything; an error here changes no answer.
    let _ = connection.execute_batch("COMMIT");
    report.map(Some)
}

fn read(connection: &Connection) -> Result<SpoolReport, SpoolError> {
    let has_events_table: bool = connection.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events')",
        [],
        |row| row.get(0),
    )?;
    if !has_events_table {
        // Created but never migrated (the agent died during its first start).
        return Ok(SpoolReport::default());
    }
    let depth: i64 = connection.query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))?;
    // A spool from before schema 2 (read by a newer `status` before `run` migrated it) has
    // no desktop state yet; `meta` exists since schema 1.
    let control = worker::control(connection)?;
    let last_upload_ms = match schema::meta_u64(connection, key::LAST_UPLOAD_MS)? {
        0 => None,
        ms => Some(ms),
    };
    let mut recent = connection
        .prepare("SELECT seq, reason, rejected_ms FROM rejected ORDER BY rowid DESC LIMIT ?1")?;
    let recent_rejected = recent
        .query_map([RECENT_REJECTED as i64], |row| {
            Ok(RejectedEvent {
                seq: row.get::<_, Option<i64>>(0)?.map_or(0, from_sql_int),
                reason: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                rejected_ms: row.get::<_, Option<i64>>(2)?.map_or(0, from_sql_int),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SpoolReport {
        depth: from_sql_int(depth),
        last_seq: schema::last_seq(connection)?,
        events_dropped: schema::meta_u64(connection, key::EVENTS_DROPPED)?,
        events_rejected: schema::meta_u64(connection, key::EVENTS_REJECTED)?,
        lines_skipped: schema::meta_u64(connection, key::LINES_SKIPPED)?,
        last_upload_ms,
        last_error: schema::meta_text(connection, key::LAST_ERROR)?,
        recent_rejected,
        control,
        policy: schema::meta_text(connection, Note::Policy.key())?,
        policy_error: schema::meta_text(connection, Note::PolicyError.key())?,
        capture: schema::meta_text(connection, Note::Capture.key())?,
        consent_url: schema::meta_text(connection, Note::ConsentUrl.key())?,
    })
}

/// Events recorded since `since_ms` (oldest first, at most `max`), read-only, from the local log
/// `recent`; `None` when there is no spool yet.
pub fn recent(
    path: &Path,
    since_ms: UnixMillis,
    max: usize,
) -> Result<Option<Vec<RecentEvent>>, SpoolError> {
    if !path.exists() {
        return Ok(None);
    }
    let connection = schema::open_read_only(path)?;
    let has_recent: bool = connection.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'recent')",
        [],
        |row| row.get(0),
    )?;
    if !has_recent {
        return Ok(Some(Vec::new()));
    }
    connection.execute_batch("BEGIN")?;
    let mut select = connection.prepare(
        "SELECT r.seq, r.recorded_ms, r.body, EXISTS (SELECT 1 FROM events e WHERE e.seq = r.seq)
         FROM recent r WHERE r.recorded_ms >= ?1 ORDER BY r.seq LIMIT ?2",
    )?;
    let rows = select
        .query_map([to_sql_int(since_ms), to_sql_int(max as u64)], |row| {
            Ok((
                from_sql_int(row.get(0)?),
                from_sql_int(row.get(1)?),
                row.get::<_, String>(2)?,
                row.get::<_, bool>(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    drop(select);
    let _ = connection.execute_batch("COMMIT");
    // A row we cannot decode (written by a newer agent) is left out rather than failing `show`.
    Ok(Some(
        rows.into_iter()
            .filter_map(|(seq, recorded_ms, body, waiting)| {
                Some(RecentEvent {
                    seq,
                    recorded_ms,
                    waiting,
                    body: serde_json::from_str(&body).ok()?,
                })
            })
            .collect(),
    ))
}

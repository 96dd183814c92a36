//! The thread that owns the spool's read-write connection and runs its commands one at a time.

use std::sync::Arc;

use backlight_shared::event::{ConsentChange, Event, EventBody};
use backlight_shared::{now_ms, UnixMillis};
use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

use super::schema::{self, from_sql_int, key, to_sql_int};
use super::{
    is_urgent, Appended, ConsentGuard, ConsentRecorded, Control, Note, SourceProgress, SpoolConfig,
    SpoolError, SpoolStats, MAX_RECENT, MAX_REJECTED_KEPT, MAX_SEEN_ITEMS, RECENT_KEEP_MS,
};

/// Kinds of event that are desktop data: covered by consent, deleted on revoke.
const CAPTURED_KINDS: &str = "('activity_span', 'work_item')";

type Reply<T> = oneshot::Sender<Result<T, SpoolError>>;

/// Which waiting events a read returns.
#[derive(Debug, Clone, Copy)]
enum Lane {
    All,
    Urgent,
}

/// What callers ask the owner thread to do. Each command runs in its own transaction.
pub(super) enum Command {
    Append {
        bodies: Vec<EventBody>,
        progress: SourceProgress,
        guard: Option<ConsentGuard>,
        reply: Reply<Appended>,
    },
    Oldest {
        max: usize,
        reply: Reply<Vec<Event>>,
    },
    OldestUrgent {
        max: usize,
        reply: Reply<Vec<Event>>,
    },
    /// Nothing beyond what precedes every command: noticing other writers.
    NoticeOtherWriters {
        reply: Reply<()>,
    },
    Stats {
        reply: Reply<SpoolStats>,
    },
    Acknowledge {
        seqs: Vec<u64>,
        at_ms: UnixMillis,
        reply: Reply<u64>,
    },
    Reject {
        seq: u64,
        reason: String,
        reply: Reply<bool>,
    },
    SetLastError {
        message: Option<String>,
        reply: Reply<()>,
    },
    Cursor {
        key: String,
        reply: Reply<Option<String>>,
    },
    SetConsent {
        change: ConsentChange,
        purge: bool,
        reply: Reply<ConsentRecorded>,
    },
    Control {
        reply: Reply<Control>,
    },
    SetPause {
        until_ms: Option<UnixMillis>,
        reply: Reply<()>,
    },
    Note {
        note: Note,
        reply: Reply<Option<String>>,
    },
    SetNote {
        note: Note,
        value: Option<String>,
        reply: Reply<()>,
    },
    SeenItems {
        max: usize,
        reply: Reply<Vec<String>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

pub(super) struct Worker {
    connection: Connection,
    config: SpoolConfig,
    /// Rows in `events`. This thread is the only writer, so it can keep the count instead of
    /// running `COUNT(*)` over up to a million rows at every append.
    depth: u64,
    /// `PRAGMA data_version` when `depth` was last known right: it changes when another
    /// connection (a `backlight-agent item` or `consent` command) commits.
    data_version: i64,
    /// Woken when another process added events, so the uploader need not wait for its recheck.
    appended: Arc<Notify>,
}

impl Worker {
    pub(super) fn new(
        connection: Connection,
        config: SpoolConfig,
        appended: Arc<Notify>,
    ) -> Result<Worker, SpoolError> {
        let depth = count_events(&connection)?;
        let data_version = data_version(&connection)?;
        Ok(Worker {
            connection,
            config,
            depth,
            data_version,
            appended,
        })
    }

    /// Recounts `depth` if another process wrote since we last looked.
    fn notice_other_writers(&mut self) -> Result<(), SpoolError> {
        let version = data_version(&self.connection)?;
        if version != self.data_version {
            self.data_version = version;
            let depth = count_events(&self.connection)?;
            if depth > self.depth {
                self.appended.notify_one();
            }
            self.depth = depth;
        }
        Ok(())
    }

    /// Runs commands until [`Command::Close`] or until every handle is dropped.
    pub(super) fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut close_reply = None;
        while let Some(command) = commands.blocking_recv() {
            if let Err(error) = self.notice_other_writers() {
                tracing::warn!(%error, "cannot check the spool for other writers");
            }
            // A failed `send` means the caller stopped waiting; the work is done regardless.
            match command {
                Command::Append {
                    bodies,
                    progress,
                    guard,
                    reply,
                } => {
                    let _ = reply.send(self.append(bodies, progress, guard));
                }
                Command::Oldest { max, reply } => {
                    let _ = reply.send(self.oldest(max, Lane::All));
                }
                Command::OldestUrgent { max, reply } => {
                    let _ = reply.send(self.oldest(max, Lane::Urgent));
                }
                Command::NoticeOtherWriters { reply } => {
                    // Done before the dispatch; its error was logged there.
                    let _ = reply.send(Ok(()));
                }
                Command::Stats { reply } => {
                    let _ = reply.send(self.stats());
                }
                Command::Acknowledge { seqs, at_ms, reply } => {
                    let _ = reply.send(self.acknowledge(&seqs, at_ms));
                }
                Command::Reject { seq, reason, reply } => {
                    let _ = reply.send(self.reject(seq, &reason, "refused by the server"));
                }
                Command::SetLastError { message, reply } => {
                    let _ = reply.send(self.set_last_error(message));
                }
                Command::Cursor { key, reply } => {
                    let _ = reply.send(schema::meta_text(
                        &self.connection,
                        &format!("{}{key}", key::CURSOR_PREFIX),
                    ));
                }
                Command::SetConsent {
                    change,
                    purge,
                    reply,
                } => {
                    let _ = reply.send(self.set_consent(change, purge));
                }
                Command::Control { reply } => {
                    let _ = reply.send(control(&self.connection));
                }
                Command::SetPause { until_ms, reply } => {
                    let result = match until_ms {
                        Some(until) => schema::set_meta(
                            &self.connection,
                            key::PAUSE_UNTIL_MS,
                            to_sql_int(until),
                        ),
                        None => delete_meta(&self.connection, key::PAUSE_UNTIL_MS),
                    };
                    let _ = reply.send(result);
                }
                Command::Note { note, reply } => {
                    let _ = reply.send(schema::meta_text(&self.connection, note.key()));
                }
                Command::SetNote { note, value, reply } => {
                    let result = match value {
                        Some(value) => schema::set_meta(&self.connection, note.key(), value),
                        None => delete_meta(&self.connection, note.key()),
                    };
                    let _ = reply.send(result);
                }
                Command::SeenItems { max, reply } => {
                    let _ = reply.send(self.seen_items(max));
                }
                Command::Close { reply } => {
                    close_reply = Some(reply);
                    break;
                }
            }
        }
        // Closing the last connection checkpoints the WAL into the main file.
        if let Err((_, error)) = self.connection.close() {
            tracing::warn!(%error, "closing the spool database failed; SQLite will recover it at next open");
        }
        if let Some(reply) = close_reply {
            let _ = reply.send(());
        }
    }

    fn append(
        &mut self,
        bodies: Vec<EventBody>,
        progress: SourceProgress,
        guard: Option<ConsentGuard>,
    ) -> Result<Appended, SpoolError> {
        // IMMEDIATE takes the write lock up front instead of upgrading mid-transaction.
        let tx = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        let mut discarded = 0u64;
        let consented = match &guard {
            None => true,
            Some(guard) => consent_covers(&tx, guard.policy_version)?,
        };
        let mut seqs: Option<(u64, u64)> = None;
        let mut inserted = 0u64;
        for body in &bodies {
            let captured = matches!(body, EventBody::ActivitySpan(_) | EventBody::WorkItem(_));
            if captured && !consented {
                discarded += 1;
                continue;
            }
            let seq = insert_event(&tx, body, now)?;
            inserted += 1;
            seqs = Some((seqs.map_or(seq, |(first, _)| first), seq));
        }
        if let Some(cursor) = &progress.cursor {
            schema::set_meta(
                &tx,
                &format!("{}{}", key::CURSOR_PREFIX, cursor.key),
                &cursor.value,
            )?;
        }
        if progress.lines_skipped > 0 {
            schema::add_to_counter(&tx, key::LINES_SKIPPED, progress.lines_skipped)?;
        }
        if let Some(guard) = guard
            .as_ref()
            .filter(|g| consented && !g.seen_items.is_empty())
        {
            remember_items(&tx, &guard.seen_items, now)?;
        }
        if let Some((_, last)) = seqs {
            trim_recent(&tx, last, now)?;
        }
        let depth = self.depth + inserted;
        let excess = depth.saturating_sub(self.config.max_events);
        let mut dropped = 0;
        if excess > 0 {
            dropped = tx.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?1)",
                [to_sql_int(excess)],
            )? as u64;
            schema::add_to_counter(&tx, key::EVENTS_DROPPED, dropped)?;
        }
        tx.commit()?;
        // Only now, with the transaction durable, does the in-memory count follow.
        self.depth = depth - dropped;
        if dropped > 0 {
            tracing::warn!(
                dropped,
                max_events = self.config.max_events,
                "spool full: dropped the oldest events (the server has been unreachable too long?)"
            );
        }
        if discarded > 0 {
            tracing::info!(
                discarded,
                "not recording desktop data: consent is not (or no longer) given"
            );
        }
        Ok(Appended {
            seqs,
            dropped,
            discarded,
        })
    }

    fn set_consent(
        &mut self,
        change: ConsentChange,
        purge: bool,
    ) -> Result<ConsentRecorded, SpoolError> {
        let tx = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        let mut purged = 0u64;
        if purge {
            tx.execute(
                &format!(
                    "DELETE FROM recent WHERE seq IN (SELECT seq FROM events
                       WHERE json_extract(body, '$.kind') IN {CAPTURED_KINDS})"
                ),
                [],
            )?;
            purged = tx.execute(
                &format!(
                    "DELETE FROM events WHERE json_extract(body, '$.kind') IN {CAPTURED_KINDS}"
                ),
                [],
            )? as u64;
            tx.execute("DELETE FROM seen_items", [])?;
        }
        schema::set_meta(&tx, key::CONSENT, serde_json::to_string(&change)?)?;
        let seq = insert_event(&tx, &EventBody::Consent(change), now)?;
        trim_recent(&tx, seq, now)?;
        tx.commit()?;
        self.depth = (self.depth + 1).saturating_sub(purged);
        Ok(ConsentRecorded { seq, purged })
    }

    fn seen_items(&self, max: usize) -> Result<Vec<String>, SpoolError> {
        let mut select = self
            .connection
            .prepare_cached("SELECT item_id FROM seen_items ORDER BY last_seen_ms DESC LIMIT ?1")?;
        let items = select
            .query_map([to_sql_int(max as u64)], |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(items)
    }

    fn oldest(&mut self, max: usize, lane: Lane) -> Result<Vec<Event>, SpoolError> {
        let mut events = Vec::with_capacity(max.min(1024));
        let mut unreadable = Vec::new();
        {
            let mut select = self.connection.prepare_cached(match lane {
                Lane::All => "SELECT seq, id, body FROM events ORDER BY seq LIMIT ?1",
                // `urgent = 1` exactly as in the partial index's WHERE, so SQLite uses it.
                Lane::Urgent => {
                    "SELECT seq, id, body FROM events WHERE urgent = 1 ORDER BY seq LIMIT ?1"
                }
            })?;
            let mut rows = select.query([to_sql_int(max as u64)])?;
            while let Some(row) = rows.next()? {
                let seq = from_sql_int(row.get(0)?);
                let id: Option<String> = row.get(1)?;
                let body: String = row.get(2)?;
                match decode(id.as_deref(), &body) {
                    Ok((id, body)) => events.push(Event { seq, id, body }),
                    Err(reason) => unreadable.push((seq, reason)),
                }
            }
        }
        // A row we cannot read would otherwise sit at the head of the queue forever.
        for (seq, reason) in unreadable {
            tracing::error!(seq, %reason, "unreadable event in the spool; setting it aside");
            self.reject(seq, &reason, "unreadable in the spool")?;
        }
        Ok(events)
    }

    fn stats(&self) -> Result<SpoolStats, SpoolError> {
        let oldest_created_ms: Option<Option<i64>> =
            rusqlite::OptionalExtension::optional(self.connection.query_row(
                "SELECT created_ms FROM events ORDER BY seq LIMIT 1",
                [],
                |row| row.get(0),
            ))?;
        let urgent: i64 = self.connection.query_row(
            "SELECT COUNT(*) FROM events WHERE urgent = 1",
            [],
            |row| row.get(0),
        )?;
        Ok(SpoolStats {
            depth: self.depth,
            urgent: from_sql_int(urgent),
            oldest_created_ms: oldest_created_ms.flatten().map(from_sql_int),
            last_seq: schema::last_seq(&self.connection)?,
            events_dropped: schema::meta_u64(&self.connection, key::EVENTS_DROPPED)?,
            events_rejected: schema::meta_u64(&self.connection, key::EVENTS_REJECTED)?,
        })
    }

    fn acknowledge(&mut self, seqs: &[u64], at_ms: UnixMillis) -> Result<u64, SpoolError> {
        let tx = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut deleted = 0u64;
        {
            let mut delete = tx.prepare_cached("DELETE FROM events WHERE seq = ?1")?;
            for &seq in seqs {
                deleted += delete.execute([to_sql_int(seq)])? as u64;
            }
        }
        schema::set_meta(&tx, key::LAST_UPLOAD_MS, to_sql_int(at_ms))?;
        tx.execute("DELETE FROM meta WHERE key = ?1", [key::LAST_ERROR])?;
        tx.commit()?;
        self.depth = self.depth.saturating_sub(deleted);
        Ok(deleted)
    }

    /// Moves one event to `rejected`, counts it, and trims `rejected` to its bound.
    fn reject(&mut self, seq: u64, reason: &str, why: &str) -> Result<bool, SpoolError> {
        let tx = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let moved = tx.execute(
            "INSERT INTO rejected(seq, id, body, reason, rejected_ms)
             SELECT seq, id, body, ?2, ?3 FROM events WHERE seq = ?1",
            params![
                to_sql_int(seq),
                format!("{why}: {reason}"),
                to_sql_int(now_ms())
            ],
        )?;
        if moved > 0 {
            tx.execute("DELETE FROM events WHERE seq = ?1", [to_sql_int(seq)])?;
            schema::add_to_counter(&tx, key::EVENTS_REJECTED, 1)?;
            tx.execute(
                "DELETE FROM rejected WHERE rowid NOT IN
                   (SELECT rowid FROM rejected ORDER BY rowid DESC LIMIT ?1)",
                [to_sql_int(MAX_REJECTED_KEPT)],
            )?;
        }
        tx.commit()?;
        if moved > 0 {
            self.depth = self.depth.saturating_sub(1);
        }
        Ok(moved > 0)
    }

    fn set_last_error(&mut self, message: Option<String>) -> Result<(), SpoolError> {
        match message {
            Some(message) => schema::set_meta(&self.connection, key::LAST_ERROR, message)?,
            None => {
                self.connection
                    .execute("DELETE FROM meta WHERE key = ?1", [key::LAST_ERROR])?;
            }
        }
        Ok(())
    }
}

/// Inserts one event (and its copy in the local log); returns its `seq`.
fn insert_event(
    tx: &rusqlite::Transaction<'_>,
    body: &EventBody,
    now: UnixMillis,
) -> Result<u64, SpoolError> {
    let json = serde_json::to_string(body)?;
    tx.prepare_cached("INSERT INTO events(id, body, created_ms, urgent) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![
            Uuid::new_v4().to_string(),
            json,
            to_sql_int(now),
            is_urgent(body)
        ])?;
    let seq = tx.last_insert_rowid();
    tx.prepare_cached("INSERT INTO recent(seq, kind, body, recorded_ms) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![seq, body.kind().as_str(), json, to_sql_int(now)])?;
    Ok(from_sql_int(seq))
}

/// Keeps `recent` within its age and size bounds. Seqs only grow, so "the last
/// [`MAX_RECENT`] seqs" bounds the row count with one indexed range delete.
fn trim_recent(tx: &Connection, last_seq: u64, now: UnixMillis) -> Result<(), SpoolError> {
    tx.prepare_cached("DELETE FROM recent WHERE recorded_ms < ?1")?
        .execute([to_sql_int(now.saturating_sub(RECENT_KEEP_MS))])?;
    if last_seq > MAX_RECENT {
        tx.prepare_cached("DELETE FROM recent WHERE seq <= ?1")?
            .execute([to_sql_int(last_seq - MAX_RECENT)])?;
    }
    Ok(())
}

/// Remembers work items as seen, keeping the [`MAX_SEEN_ITEMS`] most recent.
fn remember_items(tx: &Connection, items: &[String], now: UnixMillis) -> Result<(), SpoolError> {
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO seen_items(item_id, last_seen_ms) VALUES (?1, ?2)
             ON CONFLICT(item_id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms",
        )?;
        for item in items {
            upsert.execute(params![item, to_sql_int(now)])?;
        }
    }
    tx.prepare_cached(
        "DELETE FROM seen_items WHERE item_id IN
           (SELECT item_id FROM seen_items ORDER BY last_seen_ms DESC LIMIT -1 OFFSET ?1)",
    )?
    .execute([to_sql_int(MAX_SEEN_ITEMS)])?;
    Ok(())
}

/// Whether the stored consent is granted for policy `version` or a later one.
fn consent_covers(connection: &Connection, version: u32) -> Result<bool, SpoolError> {
    Ok(stored_consent(connection)?.is_some_and(|c| c.granted && c.policy_version >= version))
}

/// The stored consent answer. An unreadable value (hand-edited file) counts as no answer:
/// the safe reading for consent.
pub(super) fn stored_consent(connection: &Connection) -> Result<Option<ConsentChange>, SpoolError> {
    Ok(schema::meta_text(connection, key::CONSENT)?
        .and_then(|json| serde_json::from_str(&json).ok()))
}

/// Consent and pause as stored.
pub(super) fn control(connection: &Connection) -> Result<Control, SpoolError> {
    let pause_until_ms = match schema::meta_u64(connection, key::PAUSE_UNTIL_MS)? {
        0 => None,
        until => Some(until),
    };
    Ok(Control {
        consent: stored_consent(connection)?,
        pause_until_ms,
    })
}

fn delete_meta(connection: &Connection, key: &str) -> Result<(), SpoolError> {
    connection.execute("DELETE FROM meta WHERE key = ?1", [key])?;
    Ok(())
}

fn count_events(connection: &Connection) -> Result<u64, SpoolError> {
    let depth: i64 = connection.query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))?;
    Ok(from_sql_int(depth))
}

fn data_version(connection: &Connection) -> Result<i64, SpoolError> {
    Ok(connection.pragma_query_value(None, "data_version", |row| row.get(0))?)
}

/// Decodes a stored row back into an event's id and body.
fn decode(id: Option<&str>, body: &str) -> Result<(Uuid, EventBody), String> {
    let id = id
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| "missing or malformed event id".to_string())?;
    let body = serde_json::from_str(body).map_err(|e| format!("malformed body: {e}"))?;
    Ok((id, body))
}

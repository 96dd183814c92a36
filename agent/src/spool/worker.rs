//! The thread that owns the spool's read-write connection and runs its commands one at a time.

use backlight_shared::event::{Event, EventBody};
use backlight_shared::{now_ms, UnixMillis};
use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::schema::{self, from_sql_int, key, to_sql_int};
use super::{Appended, SourceProgress, SpoolConfig, SpoolError, SpoolStats, MAX_REJECTED_KEPT};

type Reply<T> = oneshot::Sender<Result<T, SpoolError>>;

/// What callers ask the owner thread to do. Each command runs in its own transaction.
pub(super) enum Command {
    Append {
        bodies: Vec<EventBody>,
        progress: SourceProgress,
        reply: Reply<Appended>,
    },
    Oldest {
        max: usize,
        reply: Reply<Vec<Event>>,
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
}

impl Worker {
    pub(super) fn new(connection: Connection, config: SpoolConfig) -> Result<Worker, SpoolError> {
        let depth: i64 =
            connection.query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))?;
        Ok(Worker {
            connection,
            config,
            depth: from_sql_int(depth),
        })
    }

    /// Runs commands until [`Command::Close`] or until every handle is dropped.
    pub(super) fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut close_reply = None;
        while let Some(command) = commands.blocking_recv() {
            // A failed `send` means the caller stopped waiting; the work is done regardless.
            match command {
                Command::Append {
                    bodies,
                    progress,
                    reply,
                } => {
                    let _ = reply.send(self.append(bodies, progress));
                }
                Command::Oldest { max, reply } => {
                    let _ = reply.send(self.oldest(max));
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
    ) -> Result<Appended, SpoolError> {
        // IMMEDIATE takes the write lock up front instead of upgrading mid-transaction.
        let tx = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let created_ms = to_sql_int(now_ms());
        let mut seqs: Option<(u64, u64)> = None;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO events(id, body, created_ms) VALUES (?1, ?2, ?3)")?;
            for body in &bodies {
                let json = serde_json::to_string(body)?;
                insert.execute(params![Uuid::new_v4().to_string(), json, created_ms])?;
                let seq = from_sql_int(tx.last_insert_rowid());
                seqs = Some((seqs.map_or(seq, |(first, _)| first), seq));
            }
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
        let depth = self.depth + bodies.len() as u64;
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
        Ok(Appended { seqs, dropped })
    }

    fn oldest(&mut self, max: usize) -> Result<Vec<Event>, SpoolError> {
        let mut events = Vec::with_capacity(max.min(1024));
        let mut unreadable = Vec::new();
        {
            let mut select = self
                .connection
                .prepare_cached("SELECT seq, id, body FROM events ORDER BY seq LIMIT ?1")?;
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
        Ok(SpoolStats {
            depth: self.depth,
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

/// Decodes a stored row back into an event's id and body.
fn decode(id: Option<&str>, body: &str) -> Result<(Uuid, EventBody), String> {
    let id = id
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| "missing or malformed event id".to_string())?;
    let body = serde_json::from_str(body).map_err(|e| format!("malformed body: {e}"))?;
    Ok((id, body))
}

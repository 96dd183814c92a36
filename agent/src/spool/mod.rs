//! The spool: a durable, bounded queue of recorded events in SQLite.
//!
//! # Design note
//!
//! The spool is the agent's only memory. The machine may lose power, the agent may be killed,
//! the server may be unreachable for weeks; the spool is what makes all of that survivable. Its
//! invariants:
//!
//! 1. **An event is recorded when, and only when, the transaction inserting it commits.** The
//!    database runs in WAL mode with `synchronous=FULL`, so a commit survives power loss (it costs
//!    about 0.2 ms per commit, nothing at desktop event rates). Nothing reports an event as
//!    recorded before [`Spool::append`] has returned `Ok`.
//! 2. **`seq` is strictly increasing and never reused**, across deletes, restarts and crashes.
//!    It is SQLite's `INTEGER PRIMARY KEY AUTOINCREMENT`, whose high-water mark lives in
//!    `sqlite_sequence` and is updated in the inserting transaction. It is the protocol's
//!    device-local sequence number, so the server's de-duplication depends on it.
//! 3. **Events leave the `events` table in exactly three ways, each accounted for:** deleted
//!    after the server acknowledged exactly those seqs ([`Spool::acknowledge`]); moved to the
//!    `rejected` table when the server refused them as invalid, counted in `events_rejected`
//!    ([`Spool::reject`]); or dropped, oldest first, when the spool is full, counted in
//!    `events_dropped`. The counters are cumulative and reported in every health event.
//! 4. **A source's cursor is committed in the same transaction as the events it produced**
//!    ([`SourceProgress`]), so after a crash a source resumes exactly where its last committed
//!    events end: every input line is recorded once.
//! 5. **Bounded.** At most `max_events` rows in `events` (the bound is enforced inside the
//!    inserting transaction), at most [`MAX_REJECTED_KEPT`] rows in `rejected`, reads are
//!    `LIMIT`ed, and the command channel to the owner thread is bounded.
//! 6. **One owner.** A dedicated thread owns the read-write [`rusqlite::Connection`] and runs
//!    commands one at a time (the ActivityWatch `aw-datastore` pattern), so transactions never
//!    interleave and the async runtime never blocks on disk. Callers hold a cheap [`Clone`]
//!    handle. A caller that stops waiting does not cancel a command: a commit in progress
//!    finishes.
//! 7. **Readable while running.** `backlight-agent status` opens the database read-only
//!    ([`inspect()`]); WAL lets it read while the owner writes.
//!
//! The schema is versioned with `PRAGMA user_version`; a spool written by a newer agent is
//! refused rather than misread.

mod inspect;
mod schema;
mod worker;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

use backlight_shared::event::{Event, EventBody};
use backlight_shared::UnixMillis;
use tokio::sync::{mpsc, oneshot, Notify};

pub use inspect::{inspect, RejectedEvent, SpoolReport};
use worker::{Command, Worker};

/// Most rows kept in the `rejected` table; older ones are deleted (they stay counted in
/// `events_rejected`). A server that refuses everything must not fill the disk.
pub const MAX_REJECTED_KEPT: u64 = 10_000;

/// Commands waiting for the owner thread. Callers wait for room, which pushes back on a
/// source that produces faster than the disk commits.
const CHANNEL_CAPACITY: usize = 64;

/// The spool could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the spool at {path} was written by a newer agent (schema {found}, this agent knows up to {supported}); upgrade the agent")]
    NewerSchema {
        path: String,
        found: i64,
        supported: i64,
    },
    #[error("cannot encode an event for the spool: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("cannot start the spool thread: {0}")]
    Thread(std::io::Error),
    #[error("the spool is closed")]
    Closed,
}

/// Sizes and limits of a spool.
#[derive(Debug, Clone, Copy)]
pub struct SpoolConfig {
    /// Most events kept; beyond it the oldest are dropped and counted.
    pub max_events: u64,
}

/// A source's position in its input, stored in `meta` under `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub key: String,
    pub value: String,
}

/// What a source consumed along with the events it produced; committed atomically with them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceProgress {
    /// The source's new position, if it has one.
    pub cursor: Option<Cursor>,
    /// Input lines skipped as malformed or invalid.
    pub lines_skipped: u64,
}

/// The result of a committed [`Spool::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Appended {
    /// Sequence numbers given to the appended events, `None` when there were none.
    pub seqs: Option<(u64, u64)>,
    /// Events dropped (oldest first) to keep the spool within its bound.
    pub dropped: u64,
}

/// A snapshot of the spool's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Events waiting for upload.
    pub depth: u64,
    /// When the oldest waiting event was recorded.
    pub oldest_created_ms: Option<UnixMillis>,
    /// The highest `seq` ever assigned (0 when none).
    pub last_seq: u64,
    /// Cumulative events dropped because the spool was full.
    pub events_dropped: u64,
    /// Cumulative events the server refused as invalid.
    pub events_rejected: u64,
}

/// A handle on the spool. Cheap to clone; every clone talks to the same owner thread.
#[derive(Clone)]
pub struct Spool {
    commands: mpsc::Sender<Command>,
    appended: Arc<Notify>,
}

impl Spool {
    /// Opens (creating if needed) the spool database at `path` and starts its owner thread.
    /// Errors opening or migrating the database are returned here, before any thread starts.
    pub fn open(path: &Path, config: SpoolConfig) -> Result<Spool, SpoolError> {
        let connection = schema::open_read_write(path)?;
        let worker = Worker::new(connection, config)?;
        let (commands, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        std::thread::Builder::new()
            .name("spool".into())
            .spawn(move || worker.run(receiver))
            .map_err(SpoolError::Thread)?;
        Ok(Spool {
            commands,
            appended: Arc::new(Notify::new()),
        })
    }

    /// Records `bodies` (giving each a `seq` and a random id) and the source's `progress`, in
    /// one transaction. When this returns `Ok`, the events are durable.
    pub async fn append(
        &self,
        bodies: Vec<EventBody>,
        progress: SourceProgress,
    ) -> Result<Appended, SpoolError> {
        let has_events = !bodies.is_empty();
        let appended = self
            .call(|reply| Command::Append {
                bodies,
                progress,
                reply,
            })
            .await?;
        if has_events {
            self.appended.notify_one();
        }
        Ok(appended)
    }

    /// Up to `max` of the oldest waiting events, in `seq` order. Rows that can no longer be
    /// decoded are moved to `rejected` rather than blocking the queue forever.
    pub async fn oldest(&self, max: usize) -> Result<Vec<Event>, SpoolError> {
        self.call(|reply| Command::Oldest { max, reply }).await
    }

    /// The spool's counters.
    pub async fn stats(&self) -> Result<SpoolStats, SpoolError> {
        self.call(|reply| Command::Stats { reply }).await
    }

    /// Deletes exactly `seqs` after the server acknowledged them, records the upload time and
    /// clears the last error. Returns how many rows were deleted.
    pub async fn acknowledge(&self, seqs: Vec<u64>, at_ms: UnixMillis) -> Result<u64, SpoolError> {
        self.call(|reply| Command::Acknowledge { seqs, at_ms, reply })
            .await
    }

    /// Moves event `seq` to the `rejected` table with the server's `reason`. Returns whether
    /// the event was still waiting.
    pub async fn reject(&self, seq: u64, reason: String) -> Result<bool, SpoolError> {
        self.call(|reply| Command::Reject { seq, reason, reply })
            .await
    }

    /// Records the last upload problem (`None` clears it), for `status`.
    pub async fn set_last_error(&self, message: Option<String>) -> Result<(), SpoolError> {
        self.call(|reply| Command::SetLastError { message, reply })
            .await
    }

    /// The value stored for a source cursor.
    pub async fn cursor(&self, key: String) -> Result<Option<String>, SpoolError> {
        self.call(|reply| Command::Cursor { key, reply }).await
    }

    /// Woken after every append that added events, so the uploader need not poll.
    pub fn appended(&self) -> Arc<Notify> {
        Arc::clone(&self.appended)
    }

    /// Lets the owner thread finish the command it is running, closes the database and stops
    /// the thread. Commands sent afterwards through other handles fail with
    /// [`SpoolError::Closed`].
    pub async fn close(self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Close { reply }).await.is_ok() {
            // An error only means the thread already stopped.
            let _ = done.await;
        }
    }

    async fn call<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, SpoolError>>) -> Command,
    ) -> Result<T, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }
}

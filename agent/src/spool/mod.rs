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
//! 8. **Consent is checked where events are committed.** Desktop data (activity spans and work
//!    items) appended with a [`ConsentGuard`] is kept only if the stored consent
//!    covers it, checked inside the inserting transaction; so a `consent revoke` from another
//!    process can never be followed by capture data recorded before the agent noticed it.
//!    Revoking ([`Spool::set_consent`] with `purge`) deletes the unsent spans and work items in
//!    the same transaction that records the consent event.
//! 9. **Other writers are noticed.** The short-lived commands (`consent`, `pause`, `item`) open
//!    their own connection and write while `run` is running; the owner thread notices through
//!    `PRAGMA data_version` (at its next command, or at once when the command wakes it, see
//!    [`Spool::notice_other_writers`] and `crate::wake`), recounts its depth and wakes the
//!    uploader.
//! 10. **The desktop's own memory is bounded too:** `recent` (the transparency log behind
//!     `backlight-agent show`) keeps [`RECENT_KEEP_MS`] and at most [`MAX_RECENT`] events;
//!     `seen_items` keeps the [`MAX_SEEN_ITEMS`] most recently seen work items.
//! 11. **Urgent events can be read ahead of the queue without changing it.** Work-item events
//!     ([`is_urgent`]) are marked when committed, so [`Spool::oldest_urgent`] finds the waiting
//!     ones among any backlog. Reading them first changes only the order of uploads: each
//!     event keeps the `seq` it was committed with, and leaves the spool only as invariant 3
//!     says, so the server's exactly-once identity `(device, seq)` is untouched.
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

use backlight_shared::event::{ConsentChange, Event, EventBody};
use backlight_shared::UnixMillis;
use tokio::sync::{mpsc, oneshot, Notify};

pub use inspect::{inspect, recent, RecentEvent, RejectedEvent, SpoolReport};
use worker::{Command, Worker};

/// Most rows kept in the `rejected` table; older ones are deleted (they stay counted in
/// `events_rejected`). A server that refuses everything must not fill the disk.
pub const MAX_REJECTED_KEPT: u64 = 10_000;

/// How long `recent` keeps an event after it was recorded (uploaded or not).
pub const RECENT_KEEP_MS: u64 = 7 * 24 * 3600 * 1000;
/// Most events kept in `recent`, whatever their age.
pub const MAX_RECENT: u64 = 100_000;
/// Most work items remembered as seen.
pub const MAX_SEEN_ITEMS: u64 = 10_000;

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

impl Default for SpoolConfig {
    /// The `run` command's default bound, also used by the short-lived commands.
    fn default() -> Self {
        SpoolConfig {
            max_events: 1_000_000,
        }
    }
}

/// Small values the agent keeps between runs in `meta`, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// The last valid policy from the server, JSON `{"etag": …, "policy": …}`.
    Policy,
    /// Why the last policy from the server was refused; cleared by the next good one.
    PolicyError,
    /// What desktop capture is doing (`capturing`, `waiting for consent`, `unavailable: …`).
    Capture,
    /// Where the running agent's consent page can be reached, while it is asking.
    ConsentUrl,
}

impl Note {
    fn key(self) -> &'static str {
        match self {
            Note::Policy => "policy",
            Note::PolicyError => "policy_error",
            Note::Capture => "capture",
            Note::ConsentUrl => "consent_url",
        }
    }
}

/// The state the running agent polls to decide whether it may capture.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Control {
    /// The employee's latest answer, `None` before the first.
    pub consent: Option<ConsentChange>,
    /// Capture is paused for private time until this instant.
    pub pause_until_ms: Option<UnixMillis>,
}

/// What recording a consent answer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsentRecorded {
    /// The sequence number of the consent event.
    pub seq: u64,
    /// Unsent activity spans and work items deleted (on revoke).
    pub purged: u64,
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

/// The condition desktop data is appended under ([`Spool::append_guarded`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsentGuard {
    /// Activity spans and work items are kept only if the stored consent is granted for at
    /// least this policy version; otherwise they are discarded (and counted in
    /// [`Appended::discarded`]). Health and consent events are always kept.
    pub policy_version: u32,
    /// Work items seen for the first time (remembered in `seen_items` when the data is kept).
    pub seen_items: Vec<String>,
}

/// The result of a committed [`Spool::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Appended {
    /// Sequence numbers given to the appended events, `None` when there were none.
    pub seqs: Option<(u64, u64)>,
    /// Events dropped (oldest first) to keep the spool within its bound.
    pub dropped: u64,
    /// Events refused by the consent guard (never recorded).
    pub discarded: u64,
}

/// Whether an event travels at once instead of waiting for its batch: a work item changes
/// what a contact-center agent tells a caller, so it must reach the server within a second
/// (and first, after an outage). Activity spans, health and consent events are the bulk and
/// wait for their batch.
pub fn is_urgent(body: &EventBody) -> bool {
    matches!(body, EventBody::WorkItem(_))
}

/// A snapshot of the spool's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Events waiting for upload.
    pub depth: u64,
    /// Of those, urgent ones ([`is_urgent`]).
    pub urgent: u64,
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
        let appended = Arc::new(Notify::new());
        let worker = Worker::new(connection, config, Arc::clone(&appended))?;
        let (commands, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        std::thread::Builder::new()
            .name("spool".into())
            .spawn(move || worker.run(receiver))
            .map_err(SpoolError::Thread)?;
        Ok(Spool { commands, appended })
    }

    /// Records `bodies` (giving each a `seq` and a random id) and the source's `progress`, in
    /// one transaction. When this returns `Ok`, the events are durable.
    pub async fn append(
        &self,
        bodies: Vec<EventBody>,
        progress: SourceProgress,
    ) -> Result<Appended, SpoolError> {
        self.append_with(bodies, progress, None).await
    }

    /// Like [`Spool::append`], for desktop data: activity spans and work items are kept only if
    /// the stored consent covers `guard.policy_version`, checked in the inserting transaction.
    pub async fn append_guarded(
        &self,
        bodies: Vec<EventBody>,
        progress: SourceProgress,
        guard: ConsentGuard,
    ) -> Result<Appended, SpoolError> {
        self.append_with(bodies, progress, Some(guard)).await
    }

    async fn append_with(
        &self,
        bodies: Vec<EventBody>,
        progress: SourceProgress,
        guard: Option<ConsentGuard>,
    ) -> Result<Appended, SpoolError> {
        let appended = self
            .call(|reply| Command::Append {
                bodies,
                progress,
                guard,
                reply,
            })
            .await?;
        if appended.seqs.is_some() {
            self.appended.notify_one();
        }
        Ok(appended)
    }

    /// Up to `max` of the oldest waiting events, in `seq` order. Rows that can no longer be
    /// decoded are moved to `rejected` rather than blocking the queue forever.
    pub async fn oldest(&self, max: usize) -> Result<Vec<Event>, SpoolError> {
        self.call(|reply| Command::Oldest { max, reply }).await
    }

    /// Up to `max` of the oldest waiting urgent events ([`is_urgent`]), in `seq` order.
    pub async fn oldest_urgent(&self, max: usize) -> Result<Vec<Event>, SpoolError> {
        self.call(|reply| Command::OldestUrgent { max, reply })
            .await
    }

    /// Looks for events committed by another process (the `item` command) now, instead of at
    /// the next command, and wakes the uploader if there are new ones.
    pub async fn notice_other_writers(&self) -> Result<(), SpoolError> {
        self.call(|reply| Command::NoticeOtherWriters { reply })
            .await
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

    /// Records a consent answer: the [`EventBody::Consent`] event and the stored state, in one
    /// transaction. With `purge` (a revocation), unsent activity spans and work items, their
    /// copies in the local log and the remembered items are deleted in the same transaction.
    pub async fn set_consent(
        &self,
        change: ConsentChange,
        purge: bool,
    ) -> Result<ConsentRecorded, SpoolError> {
        let recorded = self
            .call(|reply| Command::SetConsent {
                change,
                purge,
                reply,
            })
            .await?;
        self.appended.notify_one();
        Ok(recorded)
    }

    /// Consent and pause, as stored. Cheap; the running agent asks every second. Also how the
    /// owner thread notices writes by other processes.
    pub async fn control(&self) -> Result<Control, SpoolError> {
        self.call(|reply| Command::Control { reply }).await
    }

    /// Pauses capture until `until_ms`, or ends a pause (`None`).
    pub async fn set_pause(&self, until_ms: Option<UnixMillis>) -> Result<(), SpoolError> {
        self.call(|reply| Command::SetPause { until_ms, reply })
            .await
    }

    /// A stored [`Note`].
    pub async fn note(&self, note: Note) -> Result<Option<String>, SpoolError> {
        self.call(|reply| Command::Note { note, reply }).await
    }

    /// Stores (or with `None` removes) a [`Note`].
    pub async fn set_note(&self, note: Note, value: Option<String>) -> Result<(), SpoolError> {
        self.call(|reply| Command::SetNote { note, value, reply })
            .await
    }

    /// The most recently seen work items, newest first, at most `max`.
    pub async fn seen_items(&self, max: usize) -> Result<Vec<String>, SpoolError> {
        self.call(|reply| Command::SeenItems { max, reply }).await
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

//! The spool's schema, its migrations, connection settings, and the `meta` table's keys.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::SpoolError;

/// The schema this agent writes. Bump it with a migration step in [`migrate`].
pub(super) const SCHEMA_VERSION: i64 = 3;

/// How long a writing connection (the agent's owner thread, or a short-lived `item`, `consent`
/// or `pause` command) waits for another one's write lock before failing. Transactions are
/// short, but each commit waits for an fsync, and on a disk busy with other work one has been
/// seen to take 9 s: the running agent then waited 5 s for an `item` command's commit, gave up
/// with "database is locked" and stopped. Waiting is always better than failing here.
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long `status` (read-only; WAL lets it read while others write) waits for a lock.
const READER_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Keys of the `meta` table.
pub(super) mod key {
    pub const EVENTS_DROPPED: &str = "events_dropped";
    pub const EVENTS_REJECTED: &str = "events_rejected";
    pub const LINES_SKIPPED: &str = "lines_skipped";
    pub const LAST_UPLOAD_MS: &str = "last_upload_ms";
    pub const LAST_ERROR: &str = "last_error";
    /// Source cursors are stored under this prefix plus the source's own key.
    pub const CURSOR_PREFIX: &str = "cursor:";
    /// The employee's latest consent answer, a JSON [`ConsentChange`](backlight_shared::event::ConsentChange).
    pub const CONSENT: &str = "consent";
    /// End of a private-time pause (`backlight-agent pause`), in ms since the epoch.
    pub const PAUSE_UNTIL_MS: &str = "pause_until_ms";
}

const SCHEMA_V1: &str = "
    CREATE TABLE events (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        id         TEXT,
        body       TEXT NOT NULL,
        created_ms INTEGER
    );
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value
    );
    CREATE TABLE rejected (
        seq         INTEGER,
        id          TEXT,
        body        TEXT,
        reason      TEXT,
        rejected_ms INTEGER
    );
    CREATE INDEX rejected_by_time ON rejected(rejected_ms);
";

#[cfg(test)]
pub(super) const SCHEMA_V1_FOR_TESTS: &str = SCHEMA_V1;

/// Version 2: the desktop's local memory. `recent` is the transparency log behind
/// `backlight-agent show` (a copy of every recorded event, kept for days after upload, bounded);
/// `seen_items` lets rules tell a first `started` from a `resumed` across restarts (bounded).
const SCHEMA_V2: &str = "
    CREATE TABLE recent (
        seq         INTEGER PRIMARY KEY,
        kind        TEXT NOT NULL,
        body        TEXT NOT NULL,
        recorded_ms INTEGER NOT NULL
    );
    CREATE INDEX recent_by_time ON recent(recorded_ms);
    CREATE TABLE seen_items (
        item_id      TEXT PRIMARY KEY,
        last_seen_ms INTEGER NOT NULL
    );
    CREATE INDEX seen_items_by_time ON seen_items(last_seen_ms);
";

/// Version 3: events that travel at once (work items, see [`super::is_urgent`]) are marked, and
/// a partial index lists just them, so the uploader finds the waiting ones among a week's
/// backlog of activity spans without scanning it.
const SCHEMA_V3: &str = "
    ALTER TABLE events ADD COLUMN urgent INTEGER NOT NULL DEFAULT 0;
    UPDATE events SET urgent = 1 WHERE json_extract(body, '$.kind') = 'work_item';
    CREATE INDEX events_urgent ON events(seq) WHERE urgent = 1;
";

/// Opens the spool for the owner thread: creates it if needed, sets durability pragmas and
/// migrates the schema.
pub(super) fn open_read_write(path: &Path) -> Result<Connection, SpoolError> {
    let mut connection = Connection::open(path)?;
    restrict_to_owner(path);
    connection.busy_timeout(WRITER_BUSY_TIMEOUT)?;
    // WAL lets `status` read while we write, and a commit is one sequential append.
    let mode: String = retry_while_busy(|| {
        connection.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
    })?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(%mode, "the spool database refused WAL mode; status may block while the agent writes");
    }
    // FULL: fsync the WAL at every commit, so a committed event survives power loss. NORMAL
    // would lose the last commits, which the source has already moved past.
    connection.pragma_update(None, "synchronous", "FULL")?;
    migrate(&mut connection, path)?;
    Ok(connection)
}

/// Runs `f` again while SQLite answers "database is locked". Switching a new database to WAL
/// can fail at once, without waiting for the busy timeout,
/// when another process is doing the same at that instant — `run` and `consent grant` started
/// together, say. The other process finishes within milliseconds.
fn retry_while_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let mut attempts = 0;
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && attempts < 100 =>
            {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The spool is a record of someone's work: readable by its owner only, even when an
/// administrator chose a shared data directory. SQLite creates the `-wal` and `-shm` files with
/// the database file's permissions, so they follow.
fn restrict_to_owner(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(error) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(path = %path.display(), %error, "cannot make the spool private to its owner");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Opens the spool read-only, for `status` while the agent may be running.
pub(super) fn open_read_only(path: &Path) -> Result<Connection, SpoolError> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(READER_BUSY_TIMEOUT)?;
    check_version(&connection, path)?;
    Ok(connection)
}

fn check_version(connection: &Connection, path: &Path) -> Result<i64, SpoolError> {
    let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(SpoolError::NewerSchema {
            path: path.display().to_string(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(version)
}

fn migrate(connection: &mut Connection, path: &Path) -> Result<(), SpoolError> {
    if check_version(connection, path)? == SCHEMA_VERSION {
        return Ok(());
    }
    // Each step runs in its own IMMEDIATE transaction together with the version bump, and reads
    // the version again inside it: two processes opening a new spool at once (`run` and
    // `consent grant`, say) then take turns instead of both creating the tables. A crash leaves
    // the schema at a known version.
    for (step, sql) in [(1, SCHEMA_V1), (2, SCHEMA_V2), (3, SCHEMA_V3)] {
        let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if check_version(&tx, path)? < step {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", step)?;
        }
        tx.commit()?;
    }
    Ok(())
}

/// A counter from `meta`, 0 when absent. A non-integer value (a damaged or hand-edited file)
/// reads as 0 rather than stopping the agent.
pub(super) fn meta_u64(connection: &Connection, key: &str) -> Result<u64, SpoolError> {
    let value: Option<Value> = connection
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
            row.get(0)
        })
        .optional()?;
    Ok(match value {
        Some(Value::Integer(n)) => u64::try_from(n).unwrap_or(0),
        _ => 0,
    })
}

/// A text value from `meta`, `None` when absent or not text.
pub(super) fn meta_text(connection: &Connection, key: &str) -> Result<Option<String>, SpoolError> {
    let value: Option<Value> = connection
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
            row.get(0)
        })
        .optional()?;
    Ok(match value {
        Some(Value::Text(text)) => Some(text),
        _ => None,
    })
}

/// Adds `amount` to a counter in `meta`.
pub(super) fn add_to_counter(
    connection: &Connection,
    key: &str,
    amount: u64,
) -> Result<(), SpoolError> {
    connection.execute(
        "INSERT INTO meta(key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = COALESCE(CAST(value AS INTEGER), 0) + excluded.value",
        params![key, to_sql_int(amount)],
    )?;
    Ok(())
}

/// Sets a `meta` value.
pub(super) fn set_meta(
    connection: &Connection,
    key: &str,
    value: impl rusqlite::ToSql,
) -> Result<(), SpoolError> {
    connection.execute(
        "INSERT INTO meta(key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// The highest `seq` ever assigned, from AUTOINCREMENT's own bookkeeping.
pub(super) fn last_seq(connection: &Connection) -> Result<u64, SpoolError> {
    let seq: Option<i64> = connection
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    Ok(seq.map_or(0, from_sql_int))
}

/// SQLite integers are signed; every number the spool stores is far below `i64::MAX`.
pub(super) fn to_sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The reverse of [`to_sql_int`]; a negative value (never written by us) reads as 0.
pub(super) fn from_sql_int(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Regression: `run` and `consent grant` opening a new spool at the same moment both saw
    // version 0 and both tried to create the tables ("table events already exists").
    #[test]
    fn two_processes_creating_the_spool_at_once_both_succeed() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("spool.db");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let openers: Vec<_> = (0..2)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        open_read_write(&path).map(|_| ())
                    })
                })
                .collect();
            for opener in openers {
                let result = opener.join().unwrap();
                assert!(result.is_ok(), "round {round}: {result:?}");
            }
        }
    }
}

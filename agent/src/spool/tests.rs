//! Tests of the spool's invariants (see the design note in `mod.rs`).

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use backlight_shared::event::{EventBody, ItemAction, ItemSource, WorkItemEvent};

use super::*;

const NOW: u64 = 1_800_000_000_000;

fn item(n: u64) -> EventBody {
    EventBody::WorkItem(WorkItemEvent {
        item_id: format!("CLM-{n}"),
        action: ItemAction::Started,
        step: None,
        at_ms: NOW,
        source: ItemSource::App,
    })
}

fn items(range: std::ops::Range<u64>) -> Vec<EventBody> {
    range.map(item).collect()
}

fn open(path: &Path, max_events: u64) -> Spool {
    Spool::open(path, SpoolConfig { max_events }).unwrap()
}

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("spool.sqlite3")
}

async fn seqs(spool: &Spool) -> Vec<u64> {
    spool
        .oldest(usize::MAX >> 1)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

fn cursor(value: &str) -> SourceProgress {
    SourceProgress {
        cursor: Some(Cursor {
            key: "file:/in.jsonl".into(),
            value: value.into(),
        }),
        lines_skipped: 0,
    }
}

#[tokio::test]
async fn seq_is_never_reused_after_delete_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(&db(&dir), 100);
    let appended = spool
        .append(items(0..3), SourceProgress::default())
        .await
        .unwrap();
    assert_eq!(appended.seqs, Some((1, 3)));
    // Deleting the highest row is what makes plain rowids come back; AUTOINCREMENT must not.
    assert_eq!(spool.acknowledge(vec![3], NOW).await.unwrap(), 1);
    assert_eq!(spool.acknowledge(vec![1, 2], NOW).await.unwrap(), 2);
    spool.close().await;

    let spool = open(&db(&dir), 100);
    let appended = spool
        .append(items(3..4), SourceProgress::default())
        .await
        .unwrap();
    assert_eq!(appended.seqs, Some((4, 4)));
    let stats = spool.stats().await.unwrap();
    assert_eq!((stats.depth, stats.last_seq), (1, 4));
    spool.close().await;
}

#[cfg(unix)]
#[tokio::test]
async fn the_spool_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let spool = open(&db(&dir), 10);
    spool
        .append(items(0..1), SourceProgress::default())
        .await
        .unwrap();
    for file in ["spool.sqlite3", "spool.sqlite3-wal"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    spool.close().await;
}

#[tokio::test]
async fn acknowledge_deletes_exactly_the_given_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(&db(&dir), 100);
    spool
        .append(items(0..5), SourceProgress::default())
        .await
        .unwrap();
    assert_eq!(spool.acknowledge(vec![2, 4, 99], NOW).await.unwrap(), 2);
    assert_eq!(seqs(&spool).await, [1, 3, 5]);
    assert_eq!(spool.stats().await.unwrap().depth, 3);
    let report = inspect(&db(&dir)).unwrap().unwrap();
    assert_eq!(report.last_upload_ms, Some(NOW));
    spool.close().await;
}

#[tokio::test]
async fn bound_drops_the_oldest_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(&db(&dir), 5);
    assert_eq!(
        spool
            .append(items(0..3), SourceProgress::default())
            .await
            .unwrap()
            .dropped,
        0
    );
    let appended = spool
        .append(items(3..7), SourceProgress::default())
        .await
        .unwrap();
    assert_eq!(appended.dropped, 2);
    assert_eq!(seqs(&spool).await, [3, 4, 5, 6, 7]);
    // One append larger than the whole bound keeps its newest events only.
    let appended = spool
        .append(items(7..14), SourceProgress::default())
        .await
        .unwrap();
    assert_eq!(appended.dropped, 7);
    assert_eq!(seqs(&spool).await, [10, 11, 12, 13, 14]);
    let stats = spool.stats().await.unwrap();
    assert_eq!((stats.depth, stats.events_dropped), (5, 9));
    spool.close().await;

    // The counter is durable, and the bound holds against rows left by an earlier run.
    let spool = open(&db(&dir), 3);
    let appended = spool
        .append(items(14..15), SourceProgress::default())
        .await
        .unwrap();
    assert_eq!(appended.dropped, 3);
    let stats = spool.stats().await.unwrap();
    assert_eq!((stats.depth, stats.events_dropped), (3, 12));
    spool.close().await;
}

#[tokio::test]
async fn file_cursor_is_committed_atomically_with_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(&db(&dir), 100);
    spool.append(items(0..2), cursor("100")).await.unwrap();
    assert_eq!(
        spool
            .cursor("file:/in.jsonl".into())
            .await
            .unwrap()
            .as_deref(),
        Some("100")
    );

    // Make the second insert of the next append fail, as a full disk would.
    let raw = rusqlite::Connection::open(db(&dir)).unwrap();
    raw.execute_batch(
        "CREATE TRIGGER fail_boom BEFORE INSERT ON events WHEN NEW.body LIKE '%CLM-boom%'
         BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
    )
    .unwrap();
    drop(raw);
    let mut bodies = items(2..3);
    bodies.push(EventBody::WorkItem(WorkItemEvent {
        item_id: "CLM-boom".into(),
        action: ItemAction::Started,
        step: None,
        at_ms: NOW,
        source: ItemSource::App,
    }));
    assert!(spool.append(bodies, cursor("200")).await.is_err());

    // Neither the first event of the failed append nor its cursor is there.
    assert_eq!(seqs(&spool).await, [1, 2]);
    assert_eq!(
        spool
            .cursor("file:/in.jsonl".into())
            .await
            .unwrap()
            .as_deref(),
        Some("100")
    );
    let stats = spool.stats().await.unwrap();
    assert_eq!((stats.depth, stats.last_seq), (2, 2));
    spool.close().await;

    // And the same holds for a fresh process reading the file.
    let spool = open(&db(&dir), 100);
    assert_eq!(
        spool
            .cursor("file:/in.jsonl".into())
            .await
            .unwrap()
            .as_deref(),
        Some("100")
    );
    assert_eq!(seqs(&spool).await, [1, 2]);
    spool.close().await;
}

#[tokio::test]
async fn rejected_events_are_kept_aside_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(&db(&dir), 100);
    spool
        .append(items(0..3), SourceProgress::default())
        .await
        .unwrap();
    assert!(spool.reject(2, "item_id: too long".into()).await.unwrap());
    assert!(
        !spool.reject(2, "again".into()).await.unwrap(),
        "already set aside"
    );
    assert_eq!(seqs(&spool).await, [1, 3]);
    let stats = spool.stats().await.unwrap();
    assert_eq!((stats.depth, stats.events_rejected), (2, 1));
    let report = inspect(&db(&dir)).unwrap().unwrap();
    assert_eq!(report.recent_rejected.len(), 1);
    assert_eq!(report.recent_rejected[0].seq, 2);
    assert!(report.recent_rejected[0]
        .reason
        .contains("item_id: too long"));
    spool.close().await;
}

#[tokio::test]
async fn unreadable_rows_are_set_aside_instead_of_blocking_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(&db(&dir), 100);
    spool
        .append(items(0..1), SourceProgress::default())
        .await
        .unwrap();
    let raw = rusqlite::Connection::open(db(&dir)).unwrap();
    raw.execute(
        "INSERT INTO events(id, body, created_ms) VALUES ('x', '{not json', 0)",
        [],
    )
    .unwrap();
    drop(raw);
    spool.close().await;

    let spool = open(&db(&dir), 100);
    spool
        .append(items(1..2), SourceProgress::default())
        .await
        .unwrap();
    assert_eq!(seqs(&spool).await, [1, 3]);
    let stats = spool.stats().await.unwrap();
    assert_eq!((stats.depth, stats.events_rejected), (2, 1));
    spool.close().await;
}

#[tokio::test]
async fn status_reads_while_the_spool_is_open() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(inspect(&db(&dir)).unwrap(), None);
    let spool = open(&db(&dir), 100);
    spool
        .append(items(0..4), SourceProgress::default())
        .await
        .unwrap();
    spool
        .set_last_error(Some("server down".into()))
        .await
        .unwrap();
    let report = inspect(&db(&dir)).unwrap().unwrap();
    assert_eq!((report.depth, report.last_seq), (4, 4));
    assert_eq!(report.last_error.as_deref(), Some("server down"));
    assert_eq!(report.last_upload_ms, None);
    spool.close().await;
}

#[tokio::test]
async fn a_spool_from_a_newer_agent_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    open(&db(&dir), 10).close().await;
    let raw = rusqlite::Connection::open(db(&dir)).unwrap();
    raw.pragma_update(None, "user_version", 99).unwrap();
    drop(raw);
    assert!(matches!(
        Spool::open(&db(&dir), SpoolConfig { max_events: 10 }),
        Err(SpoolError::NewerSchema { found: 99, .. })
    ));
    assert!(inspect(&db(&dir)).is_err());
}

#[tokio::test]
async fn a_closed_spool_answers_closed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(&db(&dir), 10);
    let other = spool.clone();
    spool.close().await;
    assert!(matches!(other.stats().await, Err(SpoolError::Closed)));
}

/// Set by the crash test for its child process.
const CRASH_DIR_ENV: &str = "BACKLIGHT_TEST_SPOOL_CRASH_DIR";

/// The child half of the crash test: commits, then dies without closing anything.
#[tokio::test]
#[ignore = "run only as the child process of reopen_after_a_crash_keeps_everything_committed"]
async fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    let path = PathBuf::from(dir).join("spool.sqlite3");
    let spool = open(&path, 1_000);
    for batch in 0..10 {
        let value = ((batch + 1) * 10).to_string();
        spool
            .append(items(batch * 10..batch * 10 + 10), cursor(&value))
            .await
            .unwrap();
    }
    // No close, no checkpoint: the commits live only in the WAL, as after a power cut.
    std::process::abort();
}

#[tokio::test]
async fn reopen_after_a_crash_keeps_everything_committed() {
    let dir = tempfile::tempdir().unwrap();
    let status = Process::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "spool::tests::crash_child",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CRASH_DIR_ENV, dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must have crashed: {status}");
    let wal = dir.path().join("spool.sqlite3-wal");
    assert!(wal.exists(), "the commits should still be in the WAL");

    // Another process sees all of it, read-only, before any recovery by a writer...
    let report = inspect(&db(&dir)).unwrap().unwrap();
    assert_eq!((report.depth, report.last_seq), (100, 100));

    // ...and the agent resumes: everything is there, the cursor matches, seqs continue.
    let spool = open(&db(&dir), 1_000);
    assert_eq!(seqs(&spool).await, (1..=100).collect::<Vec<_>>());
    assert_eq!(
        spool
            .cursor("file:/in.jsonl".into())
            .await
            .unwrap()
            .as_deref(),
        Some("100")
    );
    let appended = spool
        .append(items(0..1), SourceProgress::default())
        .await
        .unwrap();
    assert_eq!(appended.seqs, Some((101, 101)));
    spool.close().await;
}

fn span(n: u64) -> EventBody {
    EventBody::ActivitySpan(backlight_shared::event::ActivitySpan {
        app: format!("app-{n}"),
        title: None,
        start_ms: NOW,
        end_ms: NOW + 1,
        state: backlight_shared::event::ActivityState::Active,
        item_id: None,
        step: None,
    })
}

fn consent(granted: bool, version: u32) -> backlight_shared::event::ConsentChange {
    backlight_shared::event::ConsentChange {
        granted,
        policy_version: version,
        scope: "activity,items".into(),
        at_ms: NOW,
    }
}

fn guard(version: u32, seen: &[&str]) -> ConsentGuard {
    ConsentGuard {
        policy_version: version,
        seen_items: seen.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test]
async fn the_consent_guard_keeps_desktop_data_out_without_consent() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(&db(&dir), 100);
    let appended = spool
        .append_guarded(
            vec![span(1), item(1)],
            SourceProgress::default(),
            guard(1, &["CLM-1"]),
        )
        .await
        .unwrap();
    assert_eq!((appended.seqs, appended.discarded), (None, 2));
    assert!(spool.seen_items(10).await.unwrap().is_empty());

    spool.set_consent(consent(true, 1), false).await.unwrap();
    let appended = spool
        .append_guarded(
            vec![span(2)],
            SourceProgress::default(),
            guard(1, &["CLM-1"]),
        )
        .await
        .unwrap();
    assert_eq!((appended.seqs, appended.discarded), (Some((2, 2)), 0));
    assert_eq!(spool.seen_items(10).await.unwrap(), ["CLM-1"]);
    // Data captured under a newer notice needs consent to that one.
    let appended = spool
        .append_guarded(vec![span(3)], SourceProgress::default(), guard(2, &[]))
        .await
        .unwrap();
    assert_eq!(appended.discarded, 1);
    spool.close().await;
}

#[tokio::test]
async fn revoking_purges_unsent_desktop_data_but_keeps_consent_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(&db(&dir), 100);
    spool.set_consent(consent(true, 1), false).await.unwrap();
    spool
        .append_guarded(
            vec![span(1), item(1), span(2)],
            SourceProgress::default(),
            guard(1, &["CLM-1"]),
        )
        .await
        .unwrap();
    let health = crate::health::report(
        &spool.stats().await.unwrap(),
        &crate::health::ClockOffset::default(),
    );
    spool
        .append(vec![health], SourceProgress::default())
        .await
        .unwrap();
    let recorded = spool.set_consent(consent(false, 1), true).await.unwrap();
    assert_eq!(recorded.purged, 3);
    let kinds: Vec<_> = spool
        .oldest(100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.body.kind().as_str())
        .collect();
    assert_eq!(kinds, ["consent", "health", "consent"]);
    assert_eq!(spool.stats().await.unwrap().depth, 3);
    assert!(spool.seen_items(10).await.unwrap().is_empty());
    let control = spool.control().await.unwrap();
    assert_eq!(control.consent.map(|c| c.granted), Some(false));
    spool.close().await;
    // The purged events are gone from the local log too.
    let recent = super::recent(&db(&dir), 0, 100).unwrap().unwrap();
    assert!(recent
        .iter()
        .all(|e| !matches!(e.body, EventBody::ActivitySpan(_) | EventBody::WorkItem(_))));
}

#[tokio::test]
async fn the_local_log_keeps_uploaded_events_and_marks_waiting_ones() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(&db(&dir), 100);
    spool
        .append(items(0..3), SourceProgress::default())
        .await
        .unwrap();
    spool.acknowledge(vec![1, 2], NOW).await.unwrap();
    spool.close().await;
    let recent = super::recent(&db(&dir), 0, 100).unwrap().unwrap();
    let waiting: Vec<_> = recent.iter().map(|e| (e.seq, e.waiting)).collect();
    assert_eq!(waiting, [(1, false), (2, false), (3, true)]);
}

#[tokio::test]
async fn writes_by_another_process_are_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let agent = open(&db(&dir), 100);
    assert_eq!(agent.stats().await.unwrap().depth, 0);
    let command = open(&db(&dir), 100);
    command
        .append(items(0..2), SourceProgress::default())
        .await
        .unwrap();
    command.set_pause(Some(NOW)).await.unwrap();
    command.close().await;
    assert_eq!(agent.stats().await.unwrap().depth, 2);
    assert_eq!(agent.control().await.unwrap().pause_until_ms, Some(NOW));
    agent.close().await;
}

#[test]
fn a_version_1_spool_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(super::schema::SCHEMA_V1_FOR_TESTS).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        c.execute(
            "INSERT INTO events(id, body, created_ms) VALUES ('x', '{}', 1)",
            [],
        )
        .unwrap();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let spool = open(&path, 100);
        assert_eq!(spool.stats().await.unwrap().depth, 1);
        assert!(spool.seen_items(1).await.unwrap().is_empty());
        spool.close().await;
    });
}

#[tokio::test]
async fn work_items_are_counted_and_read_ahead_of_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(&db(&dir), 100);
    spool
        .append(
            vec![span(1), item(2), span(3), span(4), item(5)],
            SourceProgress::default(),
        )
        .await
        .unwrap();
    assert_eq!(spool.stats().await.unwrap().urgent, 2);
    let urgent: Vec<u64> = spool
        .oldest_urgent(10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(urgent, [2, 5]);
    assert_eq!(spool.oldest_urgent(1).await.unwrap().len(), 1);
    spool.acknowledge(urgent, NOW).await.unwrap();
    let stats = spool.stats().await.unwrap();
    assert_eq!((stats.depth, stats.urgent), (3, 0));
    assert_eq!(seqs(&spool).await, [1, 3, 4], "the rest keeps its order");
    spool.close().await;
}

#[test]
fn work_items_waiting_in_an_older_spool_become_urgent_when_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(super::schema::SCHEMA_V1_FOR_TESTS).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        for body in [span(1), item(2)] {
            c.execute(
                "INSERT INTO events(id, body, created_ms) VALUES (?1, ?2, 1)",
                [
                    uuid::Uuid::new_v4().to_string(),
                    serde_json::to_string(&body).unwrap(),
                ],
            )
            .unwrap();
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let spool = open(&path, 100);
        let stats = spool.stats().await.unwrap();
        assert_eq!((stats.depth, stats.urgent), (2, 1));
        assert_eq!(spool.oldest_urgent(10).await.unwrap()[0].seq, 2);
        spool.close().await;
    });
}

//! End-to-end tests of the spine: agent → server → ClickHouse, with the real binaries and a
//! real ClickHouse per test. One test binary made of modules (link time); helpers live in the
//! `backlight-e2e` library.
//!
//! Run with `cargo build --workspace --bins && cargo test -p backlight-e2e`.

mod agent_crashes;
mod bad_inputs;
mod dedup;
mod enrollment;
mod gaps;
mod happy_path;
mod hostile;
mod hostile_access;
mod https;
mod live;
mod outages;
mod realtime;
mod webhooks;

use backlight_e2e::*;

/// `n` events with sequence numbers `first..first+n`, work items and spans alternating, all
/// within the last minute.
pub fn events(first: u64, n: u64) -> Vec<Event> {
    let now = now_ms();
    (first..first + n)
        .map(|seq| {
            let at = now - 60_000 + seq;
            if seq % 2 == 0 {
                work_item(seq, &format!("CLM-{seq}"), ItemAction::Started, at)
            } else {
                activity_span(seq, "claims-desk", at, at + 500)
            }
        })
        .collect()
}

/// An enrolled agent with a file source of `n` events written for it.
pub struct FileAgent {
    pub agent: Agent,
    pub lines: Vec<FileEvent>,
    /// `file:<path>` for `--source`.
    pub source: String,
}

impl FileAgent {
    pub async fn enroll(spine: &Spine, n: usize) -> FileAgent {
        let agent = Agent::new();
        agent.enroll(&spine.server.url(), &spine.key).await;
        let lines = events_file_lines(n);
        let path = agent.scratch("events.jsonl");
        write_lines(&path, lines.iter().map(|e| e.line.clone()));
        FileAgent {
            agent,
            lines,
            source: format!("file:{}", path.display()),
        }
    }

    /// `run` arguments: this file source plus `extra`.
    pub fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["--source".to_string(), self.source.clone()];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    pub async fn device_id(&self) -> uuid::Uuid {
        self.agent
            .status()
            .await
            .device_id
            .expect("an enrolled agent has a device id")
    }
}

/// The rows of `device` under FINAL: every sequence number `1..=last_seq` exactly once.
pub async fn assert_every_seq_once(db: &Db, device: uuid::Uuid, last_seq: u64) {
    let d = device;
    let final_count = db
        .count(&format!(
            "SELECT count() FROM events FINAL WHERE device_id = '{d}'"
        ))
        .await;
    let distinct = db
        .count(&format!(
            "SELECT uniqExact(seq) FROM events WHERE device_id = '{d}'"
        ))
        .await;
    let max = db
        .count(&format!(
            "SELECT max(seq) FROM events WHERE device_id = '{d}'"
        ))
        .await;
    let min = db
        .count(&format!(
            "SELECT min(seq) FROM events WHERE device_id = '{d}'"
        ))
        .await;
    let raw = db
        .count(&format!(
            "SELECT count() FROM events WHERE device_id = '{d}'"
        ))
        .await;
    println!("device {d}: last_seq {last_seq}; FINAL {final_count}, distinct seqs {distinct}, raw rows {raw}");
    assert_eq!(
        (final_count, distinct, min, max),
        (last_seq, last_seq, 1, last_seq),
        "(count FINAL, uniqExact(seq), min(seq), max(seq)) must be (L, L, 1, L) for L = the agent's last_seq"
    );
}

/// Every line of the file source is stored exactly once (under FINAL), with its fields, and
/// nothing else but health reports.
pub async fn assert_file_stored_once(db: &Db, device: uuid::Uuid, lines: &[FileEvent]) {
    let rows = db
        .tsv(&format!(
            "SELECT kind, item_id, time_ms, action, app, isNull(title), count() AS copies
             FROM events FINAL WHERE device_id = '{device}' AND kind != 'health'
             GROUP BY kind, item_id, time_ms, action, app, isNull(title) ORDER BY time_ms"
        ))
        .await;
    let stored: std::collections::BTreeSet<String> = rows.iter().map(|r| r.join("\t")).collect();
    let expected: std::collections::BTreeSet<String> = lines
        .iter()
        .map(|e| {
            format!(
                "{}\t{}\t{}\t{}\t{}\t1\t1",
                e.kind, e.item_id, e.time_ms, e.action, e.app
            )
        })
        .collect();
    let missing: Vec<_> = expected.difference(&stored).take(10).collect();
    let unexpected: Vec<_> = stored.difference(&expected).take(10).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty() && rows.len() == lines.len(),
        "file events stored != file lines ({} stored groups, {} lines); columns: kind, item_id, time_ms, action, app, title IS NULL, copies\nmissing (first 10): {missing:#?}\nunexpected (first 10): {unexpected:#?}",
        rows.len(),
        lines.len()
    );
}

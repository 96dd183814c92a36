//! An agent fed from a file of events, and the checks that every one of its events is stored
//! exactly once: what the end-to-end and cluster tests assert after uploads, outages and kills.

use std::time::Duration;

use super::agent::{write_lines, Agent};
use super::clickhouse::Db;
use super::ingest::{events_file_lines, FileEvent};

/// An enrolled agent with a file source of `n` events written for it.
pub struct FileAgent {
    pub agent: Agent,
    pub lines: Vec<FileEvent>,
    /// `file:<path>` for `--source`.
    pub source: String,
}

impl FileAgent {
    /// Enrolls a new agent at `server_url` with enrollment key `key`, and writes `n` events
    /// for its file source.
    pub async fn enroll(server_url: &str, key: &str, n: usize) -> FileAgent {
        let agent = Agent::new();
        agent.enroll(server_url, key).await;
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

    /// Waits (at most `timeout`) for the running agent to exit drained, then checks that it
    /// lost, dropped and refused nothing and that `db` holds every one of its events exactly
    /// once. Returns its device.
    pub async fn assert_drained_once(&mut self, db: &Db, timeout: Duration) -> uuid::Uuid {
        self.agent.wait_success(timeout).await;
        let status = self.agent.status().await;
        assert_eq!(
            (
                status.spool_depth,
                status.events_dropped,
                status.events_rejected
            ),
            (0, 0, 0),
            "{status:?}"
        );
        let device = status.device_id.expect("an enrolled agent has a device id");
        assert_every_seq_once(db, device, status.last_seq).await;
        assert_file_stored_once(db, device, &self.lines).await;
        device
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

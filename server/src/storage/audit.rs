//! The audit log: who looked at which item, ran which search or report, and when
//! (schema in `deploy/clickhouse/migrations/0005_audit.sql`).
//!
//! Any handler that shows data records an [`AuditEntry`] with [`AuditLog::record`] *before* it
//! answers. Entries are written in batches by one background task (an INSERT per lookup would
//! cap lookups near 700/s and flood ClickHouse with parts):
//!
//! - The task writes what is pending every [`FLUSH_INTERVAL`] (sooner when [`FLUSH_ROWS`] are
//!   waiting).
//! - A failed write is logged as an error and retried with backoff; entries stay pending, they
//!   are never dropped.
//! - **Fail closed:** when writes have been failing for [`FAIL_CLOSED_AFTER`], or
//!   [`MAX_PENDING`] entries are waiting, `record` refuses and the caller answers 503: no data
//!   is shown that could not be audited.
//! - When the last [`AuditLog`] handle is dropped (server shutdown), the task writes what is
//!   left before it stops; [`AuditLog::flush`] writes immediately.
//!
//! The only loss window is a hard crash of the server process: at most one flush interval of
//! entries.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use backlight_shared::now_ms;
use clickhouse::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::clickhouse::{with_timeout, with_write_retry, ClickHouseError};

/// How often pending entries are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(250);
/// Pending entries that trigger a write before the interval is over.
pub const FLUSH_ROWS: usize = 5_000;
/// Most entries written by one INSERT.
pub const MAX_BATCH: usize = 50_000;
/// Most entries held while ClickHouse refuses them; beyond it `record` refuses.
pub const MAX_PENDING: usize = 200_000;
/// How long writes may keep failing before `record` refuses.
pub const FAIL_CLOSED_AFTER: Duration = Duration::from_secs(10);
/// Longest wait between retries of a failed write.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// What happened, to be recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub tenant_id: String,
    pub key_id: String,
    pub key_name: String,
    pub role: String,
    /// e.g. `item_lookup`, `item_search`, `item_timeline`, `item_stream`, `item_register`, `report`.
    pub action: String,
    /// The item id, or the query (search parameters, report name and parameters).
    pub target: String,
    /// `ok`, `not_found`, `error`: what the caller was shown.
    pub outcome: String,
}

/// One row of `audit_log`. Field order matches the table (RowBinary is positional).
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub tenant_id: String,
    pub at_ms: u64,
    /// Days since the epoch.
    pub event_date: u16,
    #[serde(with = "clickhouse::serde::uuid")]
    pub entry_id: Uuid,
    pub key_id: String,
    pub key_name: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
}

impl AuditRow {
    fn new(entry: AuditEntry, at_ms: u64) -> AuditRow {
        AuditRow {
            tenant_id: entry.tenant_id,
            at_ms,
            event_date: u16::try_from(at_ms / 86_400_000).unwrap_or(u16::MAX),
            entry_id: Uuid::new_v4(),
            key_id: entry.key_id,
            key_name: entry.key_name,
            role: entry.role,
            action: entry.action,
            target: entry.target,
            outcome: entry.outcome,
        }
    }
}

/// The audit could not take the entry; the caller must not show the data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log cannot be written ({pending} entries pending, failing for {failing_for:?}); retry later")]
    Unavailable {
        pending: usize,
        failing_for: Duration,
    },
}

#[derive(Default)]
struct Pending {
    rows: VecDeque<AuditRow>,
    /// When the current run of failed writes began.
    failing_since: Option<Instant>,
}

struct Shared {
    client: Client,
    pending: Mutex<Pending>,
    wake: Notify,
    started: std::sync::Once,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Every critical section leaves `Pending` consistent; keep going after a panic.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes up to [`MAX_BATCH`] pending rows. On failure they go back to the front.
    async fn write_batch(&self) -> Result<usize, ClickHouseError> {
        let batch: Vec<AuditRow> = {
            let mut pending = self.lock();
            let n = pending.rows.len().min(MAX_BATCH);
            pending.rows.drain(..n).collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        let (client, rows) = (&self.client, &batch);
        let result = with_write_retry(|| async move {
            let mut insert = client.insert::<AuditRow>("audit_log").await?;
            for row in rows {
                insert.write(row).await?;
            }
            insert.end().await
        })
        .await;
        let mut pending = self.lock();
        match result {
            Ok(()) => {
                pending.failing_since = None;
                metrics::counter!("backlight_audit_rows_written_total")
                    .increment(batch.len() as u64);
                Ok(batch.len())
            }
            Err(e) => {
                pending.failing_since.get_or_insert_with(Instant::now);
                for row in batch.into_iter().rev() {
                    pending.rows.push_front(row);
                }
                metrics::counter!("backlight_audit_write_failures_total").increment(1);
                tracing::error!(error = %e, pending = pending.rows.len(), "writing the audit log failed; will retry");
                Err(e)
            }
        }
    }

    /// Writes what is pending, in batches of at most [`MAX_BATCH`] (or until a write fails).
    ///
    /// Stops after a batch smaller than [`MAX_BATCH`]: entries recorded meanwhile wait for the
    /// next flush. Writing until nothing is pending would, under steady lookups, send INSERT
    /// after INSERT as fast as ClickHouse answers (measured: 30-60 small INSERTs a second at
    /// 1,000 lookups/s, and ClickHouse merging their parts all the time).
    async fn drain(&self) -> Result<(), ClickHouseError> {
        while self.write_batch().await? == MAX_BATCH {}
        Ok(())
    }
}

/// Handle to the audit log. Cheap to clone; the writer task starts on the first `record`.
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
    /// Held only by handles: the writer stops (after a last write) when every handle is gone.
    alive: Arc<()>,
}

impl AuditLog {
    pub fn new(client: Client) -> AuditLog {
        AuditLog {
            shared: Arc::new(Shared {
                client,
                pending: Mutex::default(),
                wake: Notify::new(),
                started: std::sync::Once::new(),
            }),
            alive: Arc::new(()),
        }
    }

    /// Queues an entry for writing. Refuses (fail closed) when the log cannot be written; the
    /// caller must then not show the data it was about to show.
    pub fn record(&self, entry: AuditEntry) -> Result<(), AuditError> {
        self.shared.started.call_once(|| {
            tokio::spawn(run(self.shared.clone(), Arc::downgrade(&self.alive)));
        });
        let mut pending = self.shared.lock();
        let failing_for = pending
            .failing_since
            .map_or(Duration::ZERO, |t| t.elapsed());
        if pending.rows.len() >= MAX_PENDING || failing_for >= FAIL_CLOSED_AFTER {
            metrics::counter!("backlight_audit_refused_total").increment(1);
            let error = AuditError::Unavailable {
                pending: pending.rows.len(),
                failing_for,
            };
            tracing::error!(%error, action = entry.action, "refusing a call that cannot be audited");
            return Err(error);
        }
        pending.rows.push_back(AuditRow::new(entry, now_ms()));
        if pending.rows.len() >= FLUSH_ROWS {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Writes every entry pending now (entries recorded while it writes may wait for the
    /// next flush).
    pub async fn flush(&self) -> Result<(), ClickHouseError> {
        self.shared.drain().await
    }

    /// Entries waiting to be written.
    pub fn pending(&self) -> usize {
        self.shared.lock().rows.len()
    }
}

/// The writer task.
async fn run(shared: Arc<Shared>, alive: Weak<()>) {
    let mut retry_delay = FLUSH_INTERVAL;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(retry_delay) => {}
            _ = shared.wake.notified() => {}
        }
        let handles_gone = alive.upgrade().is_none();
        match shared.drain().await {
            Ok(()) => retry_delay = FLUSH_INTERVAL,
            Err(_) => retry_delay = (retry_delay * 2).min(MAX_RETRY_DELAY),
        }
        if handles_gone {
            let left = shared.lock().rows.len();
            if left > 0 {
                tracing::error!(left, "audit entries could not be written before shutdown");
            }
            return;
        }
    }
}

/// Audit rows of a tenant, newest first (for tests and investigations).
pub async fn recent(
    client: &Client,
    tenant: &str,
    limit: u64,
) -> Result<Vec<AuditRow>, ClickHouseError> {
    with_timeout(
        client
            .query("SELECT ?fields FROM audit_log WHERE tenant_id = ? ORDER BY at_ms DESC LIMIT ?")
            .bind(tenant)
            .bind(limit)
            .fetch_all(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> AuditEntry {
        AuditEntry {
            tenant_id: "acme".into(),
            key_id: "k".into(),
            key_name: "desk".into(),
            role: "cc_agent".into(),
            action: "item_lookup".into(),
            target: format!("CLM-{i}"),
            outcome: "ok".into(),
        }
    }

    #[tokio::test]
    async fn unwritable_log_keeps_entries_and_then_refuses() {
        // Nothing listens on port 1: every write fails.
        let log = AuditLog::new(
            Client::default()
                .with_url("http://127.0.0.1:1")
                .with_validation(false),
        );
        let mut refused = None;
        for i in 0..MAX_PENDING + MAX_BATCH + 1 {
            if let Err(e) = log.record(entry(i)) {
                refused = Some((i, e));
                break;
            }
        }
        let (accepted, error) = refused.expect("the log never refused");
        assert!(
            accepted >= MAX_PENDING - MAX_BATCH,
            "refused too early, after {accepted}"
        );
        assert!(matches!(error, AuditError::Unavailable { .. }));
        assert!(log.flush().await.is_err());
        assert!(
            log.pending() >= MAX_PENDING - MAX_BATCH,
            "entries were dropped: {}",
            log.pending()
        );
    }

    /// Under a steady stream of entries the writer still writes about once per
    /// [`FLUSH_INTERVAL`], not INSERT after INSERT. The fake ClickHouse takes 20 ms per INSERT;
    /// writing until nothing is pending would send ~50 in a second.
    #[tokio::test]
    async fn steady_entries_are_written_once_per_interval() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        let inserts = Arc::new(AtomicUsize::new(0));
        let counted = inserts.clone();
        let fake = axum::Router::new().fallback(move || {
            let counted = counted.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                counted.fetch_add(1, Ordering::Relaxed);
                ""
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, fake).await });
        let log = AuditLog::new(Client::default().with_url(url).with_validation(false));

        let started = Instant::now();
        let mut i = 0;
        while started.elapsed() < Duration::from_secs(1) {
            log.record(entry(i)).unwrap();
            i += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let n = inserts.load(Ordering::Relaxed);
        assert!(
            (1..=8).contains(&n),
            "{n} INSERTs for {i} entries in 1 s; expected about 4 (one per 250 ms)"
        );
        log.flush().await.unwrap();
        assert_eq!(log.pending(), 0, "flush writes what is pending");
    }
}

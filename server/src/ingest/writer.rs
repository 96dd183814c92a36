//! Group commit into ClickHouse.
//!
//! ClickHouse wants few, large INSERTs (about one per second per table is its comfort zone;
//! one INSERT per small request caps out near a thousand a second). Agents send many small
//! batches. So requests hand their rows to one collector task, which gathers rows for at most
//! `max_delay` (or until `max_rows`), writes them with one INSERT, and then answers every
//! request that contributed. A request is acknowledged only after its rows are in ClickHouse.
//!
//! Memory is bounded by a budget of rows in flight: a request that cannot get its share within
//! `admission_timeout` is turned away with 503 (the agent keeps its data and retries later).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clickhouse::Client;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::storage::events::{self, EventRow};

/// Tuning of the group commit.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Longest a row waits for companions before its INSERT is sent. Half a second keeps
    /// ClickHouse at a few large INSERTs a second (small ones cost it up to 8x in merges).
    pub max_delay: Duration,
    /// Most rows in one INSERT.
    pub max_rows: usize,
    /// Most rows held in memory (queued or being inserted) across all requests.
    pub max_rows_in_flight: usize,
    /// INSERTs running at once.
    pub max_concurrent_inserts: usize,
    /// How long a request may wait for room in the budget before it is turned away.
    pub admission_timeout: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_delay: Duration::from_millis(500),
            max_rows: 100_000,
            max_rows_in_flight: 300_000,
            max_concurrent_inserts: 2,
            admission_timeout: Duration::from_secs(2),
        }
    }
}

/// Why rows were not written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("the server is at its ingest capacity; retry later")]
    Overloaded,
    #[error("ClickHouse did not accept the rows: {0}")]
    Unavailable(String),
    #[error("the server is shutting down")]
    Closed,
}

struct Pending {
    rows: Vec<EventRow>,
    done: oneshot::Sender<Result<(), WriteError>>,
    _budget: OwnedSemaphorePermit,
}

/// Cheap handle to the collector task.
#[derive(Clone)]
pub struct IngestWriter {
    queue: mpsc::Sender<Pending>,
    budget: Arc<Semaphore>,
    admission_timeout: Duration,
}

impl IngestWriter {
    /// Starts the collector task. It stops when every handle is dropped, after writing what it
    /// already holds.
    pub fn spawn(client: Client, config: WriterConfig) -> IngestWriter {
        let (queue, rx) = mpsc::channel(4_096);
        let budget = Arc::new(Semaphore::new(config.max_rows_in_flight));
        let admission_timeout = config.admission_timeout;
        tokio::spawn(collect(client, config, rx));
        IngestWriter {
            queue,
            budget,
            admission_timeout,
        }
    }

    /// Writes `rows`, returning once ClickHouse has accepted them.
    pub async fn write(&self, rows: Vec<EventRow>) -> Result<(), WriteError> {
        let wanted = u32::try_from(rows.len()).map_err(|_| WriteError::Overloaded)?;
        let budget = tokio::time::timeout(
            self.admission_timeout,
            self.budget.clone().acquire_many_owned(wanted),
        )
        .await
        .map_err(|_| WriteError::Overloaded)?
        .map_err(|_| WriteError::Closed)?;
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                rows,
                done,
                _budget: budget,
            })
            .await
            .map_err(|_| WriteError::Closed)?;
        answer.await.unwrap_or(Err(WriteError::Closed))
    }
}

async fn collect(client: Client, config: WriterConfig, mut rx: mpsc::Receiver<Pending>) {
    let inserts = Arc::new(Semaphore::new(config.max_concurrent_inserts.max(1)));
    while let Some(first) = rx.recv().await {
        let deadline = tokio::time::Instant::now() + config.max_delay;
        let mut rows = first.rows.len();
        let mut group = vec![first];
        while rows < config.max_rows {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(p) => { rows += p.rows.len(); group.push(p); }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let Ok(slot) = inserts.clone().acquire_owned().await else {
            break;
        };
        let client = client.clone();
        tokio::spawn(async move {
            let result = insert_group(&client, &group, rows).await;
            for pending in group {
                // The request may have gone away (client hung up); its rows are written anyway.
                let _ = pending.done.send(result.clone());
            }
            drop(slot);
        });
    }
    // Wait for INSERTs still running before the task ends.
    let _ = inserts
        .acquire_many(config.max_concurrent_inserts.max(1) as u32)
        .await;
}

async fn insert_group(client: &Client, group: &[Pending], rows: usize) -> Result<(), WriteError> {
    let started = Instant::now();
    let chunks: Vec<&[EventRow]> = group.iter().map(|p| p.rows.as_slice()).collect();
    let result = events::insert(client, &chunks).await;
    let elapsed = started.elapsed();
    metrics::histogram!("backlight_clickhouse_insert_seconds").record(elapsed.as_secs_f64());
    metrics::histogram!("backlight_clickhouse_insert_rows").record(rows as f64);
    match result {
        Ok(()) => {
            metrics::counter!("backlight_rows_written_total").increment(rows as u64);
            tracing::debug!(rows, requests = group.len(), ?elapsed, "inserted");
            Ok(())
        }
        Err(e) => {
            metrics::counter!("backlight_clickhouse_insert_failures_total").increment(1);
            tracing::warn!(rows, requests = group.len(), error = %e, "INSERT into ClickHouse failed");
            Err(WriteError::Unavailable(e.to_string()))
        }
    }
}

//! Group commit into ClickHouse.
//!
//! ClickHouse wants few, large INSERTs (about one per second per table is its comfort zone;
//! one INSERT per small request caps out near a thousand a second). Agents send many small
//! batches. So requests hand their rows to one collector task, which gathers rows for at most
//! `max_delay` (or until `max_rows`), writes them with one INSERT, and then answers every
//! request that contributed. A request is acknowledged only after its rows are in ClickHouse.
//!
//! Requests hand over their rows already encoded as RowBinary ([`EncodedRows`]: one compact
//! buffer per request, about half the memory of the same rows as structs with strings), and the
//! INSERT streams those bytes. Memory is bounded by a budget of encoded bytes in flight. A
//! request reserves its estimated share *before* it reads its body ([`IngestWriter::reserve`]),
//! so requests waiting for room hold no rows; once its rows are encoded the reservation is
//! trued up to their real size. A request that cannot get its share within
//! `admission_timeout` is turned away with 503 (the agent keeps its data and retries later).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clickhouse::Client;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::storage::events::{self, EncodedRows};

/// Tuning of the group commit.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Longest a row waits for companions before its INSERT is sent. Half a second keeps
    /// ClickHouse at a few large INSERTs a second (small ones cost it up to 8x in merges).
    pub max_delay: Duration,
    /// Most rows in one INSERT.
    pub max_rows: usize,
    /// Most bytes of encoded rows held in memory (queued or being inserted) across all
    /// requests. A request larger than the whole budget takes all of it.
    pub max_bytes_in_flight: usize,
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
            // ≈ 300k rows of ≈ 150 bytes: two full INSERTs and a group being gathered, or
            // 1,500 requests of 200 events.
            max_bytes_in_flight: 48 * 1024 * 1024,
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
    rows: EncodedRows,
    done: oneshot::Sender<Result<(), WriteError>>,
    _budget: OwnedSemaphorePermit,
}

/// Room in the group commit's budget, held by one request from before it reads its body until
/// its rows are in ClickHouse (or it gives up). Dropping it gives the room back.
#[derive(Debug)]
pub struct Reservation {
    permit: OwnedSemaphorePermit,
}

impl Reservation {
    /// Bytes reserved.
    pub fn bytes(&self) -> usize {
        self.permit.num_permits()
    }
}

/// Cheap handle to the collector task.
#[derive(Clone)]
pub struct IngestWriter {
    queue: mpsc::Sender<Pending>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    admission_timeout: Duration,
}

impl IngestWriter {
    /// Starts the collector task. It stops when every handle is dropped, after writing what it
    /// already holds.
    pub fn spawn(client: Client, config: WriterConfig) -> IngestWriter {
        let (queue, rx) = mpsc::channel(4_096);
        let budget_bytes = config.max_bytes_in_flight.clamp(1, u32::MAX as usize);
        let budget = Arc::new(Semaphore::new(budget_bytes));
        let admission_timeout = config.admission_timeout;
        tokio::spawn(collect(client, config, rx));
        IngestWriter {
            queue,
            budget,
            budget_bytes,
            admission_timeout,
        }
    }

    /// Reserves room for about `bytes` of encoded rows, waiting at most `admission_timeout`
    /// ([`WriteError::Overloaded`] then). Capped at the whole budget, so even the largest batch
    /// gets in eventually.
    pub async fn reserve(&self, bytes: usize) -> Result<Reservation, WriteError> {
        Ok(Reservation {
            permit: self.acquire(bytes).await?,
        })
    }

    async fn acquire(&self, bytes: usize) -> Result<OwnedSemaphorePermit, WriteError> {
        let wanted =
            u32::try_from(bytes.clamp(1, self.budget_bytes)).map_err(|_| WriteError::Overloaded)?;
        tokio::time::timeout(
            self.admission_timeout,
            self.budget.clone().acquire_many_owned(wanted),
        )
        .await
        .map_err(|_| WriteError::Overloaded)?
        .map_err(|_| WriteError::Closed)
    }

    /// Writes `rows`, returning once ClickHouse has accepted them.
    pub async fn write(&self, rows: EncodedRows) -> Result<(), WriteError> {
        let reservation = self.reserve(rows.as_bytes().len()).await?;
        self.write_reserved(reservation, rows).await
    }

    /// Writes `rows` under `reservation`, returning once ClickHouse has accepted them. The
    /// reservation first becomes the rows' real size: the surplus is given back at once, a
    /// shortfall is waited for like [`IngestWriter::reserve`].
    pub async fn write_reserved(
        &self,
        mut reservation: Reservation,
        rows: EncodedRows,
    ) -> Result<(), WriteError> {
        let needed = rows.as_bytes().len().clamp(1, self.budget_bytes);
        let held = reservation.bytes();
        if needed < held {
            drop(reservation.permit.split(held - needed));
        } else if needed > held {
            let more = self.acquire(needed - held).await?;
            reservation.permit.merge(more);
        }
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                rows,
                done,
                _budget: reservation.permit,
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
        let mut rows = first.rows.rows();
        let mut group = vec![first];
        while rows < config.max_rows {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(p) => { rows += p.rows.rows(); group.push(p); }
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
    let chunks: Vec<&EncodedRows> = group.iter().map(|p| &p.rows).collect();
    let result = events::insert_encoded(client, &chunks).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(budget: usize) -> IngestWriter {
        // Nothing is written in these tests: the client never connects.
        IngestWriter::spawn(
            Client::default().with_url("http://127.0.0.1:9"),
            WriterConfig {
                max_bytes_in_flight: budget,
                admission_timeout: Duration::from_millis(50),
                ..WriterConfig::default()
            },
        )
    }

    #[tokio::test]
    async fn reservations_share_the_budget_and_give_it_back() {
        let writer = writer(1_000);
        let first = writer.reserve(600).await.unwrap();
        assert_eq!(first.bytes(), 600);
        assert!(matches!(
            writer.reserve(600).await,
            Err(WriteError::Overloaded)
        ));
        let second = writer.reserve(400).await.unwrap();
        drop(first);
        drop(second);
        // More than the whole budget takes all of it rather than never getting in.
        let all = writer.reserve(5_000).await.unwrap();
        assert_eq!(all.bytes(), 1_000);
        assert!(matches!(
            writer.reserve(1).await,
            Err(WriteError::Overloaded)
        ));
        drop(all);
        assert_eq!(writer.reserve(0).await.unwrap().bytes(), 1);
    }
}

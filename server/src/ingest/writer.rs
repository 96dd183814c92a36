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
//! No tenant may hold more than `tenant_share` of the budget ([`Budget`]): past it, its
//! requests are turned away with 429 while the other tenants keep the rest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clickhouse::Client;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::budget::{Budget, BudgetError, Held};
use crate::storage::events::{self, EncodedRows};

/// The share of the group commit's budget one tenant may hold, by default.
pub const DEFAULT_TENANT_SHARE: f64 = 0.75;

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
    /// The fraction of `max_bytes_in_flight` one tenant may hold.
    pub tenant_share: f64,
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
            tenant_share: DEFAULT_TENANT_SHARE,
        }
    }
}

/// Why rows were not written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("the server is at its ingest capacity; retry later")]
    Overloaded,
    /// The tenant holds its share of the budget; the other tenants' requests go on.
    #[error("this tenant's batches fill its share of the server's ingest capacity; retry shortly")]
    OverShare,
    #[error("ClickHouse did not accept the rows: {0}")]
    Unavailable(String),
    #[error("the server is shutting down")]
    Closed,
}

struct Pending {
    rows: EncodedRows,
    done: oneshot::Sender<Result<(), WriteError>>,
    _budget: Held,
}

/// Room in the group commit's budget, held by one request of one tenant from before it
/// decodes its body until its rows are in ClickHouse (or it gives up). Dropping it gives the
/// room back.
#[derive(Debug)]
pub struct Reservation {
    held: Held,
    tenant: String,
}

impl Reservation {
    /// Bytes reserved.
    pub fn bytes(&self) -> usize {
        self.held.bytes()
    }
}

/// Cheap handle to the collector task.
#[derive(Clone)]
pub struct IngestWriter {
    queue: mpsc::Sender<Pending>,
    budget: Budget,
    admission_timeout: Duration,
}

impl IngestWriter {
    /// Starts the collector task. It stops when every handle is dropped, after writing what it
    /// already holds.
    pub fn spawn(client: Client, config: WriterConfig) -> IngestWriter {
        let (queue, rx) = mpsc::channel(4_096);
        let budget = Budget::new(
            "group commit budget",
            config.max_bytes_in_flight,
            config.tenant_share,
        );
        let admission_timeout = config.admission_timeout;
        tokio::spawn(collect(client, config, rx));
        IngestWriter {
            queue,
            budget,
            admission_timeout,
        }
    }

    /// The budget of encoded bytes in flight (for its figures).
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Reserves room for about `bytes` of `tenant`'s encoded rows, waiting at most
    /// `admission_timeout` ([`WriteError::Overloaded`] then; [`WriteError::OverShare`] at once
    /// when the tenant holds its share). Capped at the tenant's share, so even the largest
    /// batch gets in eventually.
    pub async fn reserve(&self, tenant: &str, bytes: usize) -> Result<Reservation, WriteError> {
        Ok(Reservation {
            held: self.acquire(tenant, bytes).await?,
            tenant: tenant.to_string(),
        })
    }

    async fn acquire(&self, tenant: &str, bytes: usize) -> Result<Held, WriteError> {
        self.budget
            .acquire(tenant, bytes, self.admission_timeout)
            .await
            .map_err(|e| match e {
                BudgetError::OverShare(_) => WriteError::OverShare,
                BudgetError::Full(_) => WriteError::Overloaded,
                BudgetError::Closed => WriteError::Closed,
            })
    }

    /// Writes `tenant`'s `rows`, returning once ClickHouse has accepted them.
    pub async fn write(&self, tenant: &str, rows: EncodedRows) -> Result<(), WriteError> {
        let reservation = self.reserve(tenant, rows.as_bytes().len()).await?;
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
        let needed = rows.as_bytes().len().clamp(1, self.budget.tenant_max());
        let held = reservation.bytes();
        if needed < held {
            reservation.held.shrink_to(needed);
        } else if needed > held {
            let more = self.acquire(&reservation.tenant, needed - held).await?;
            reservation.held.merge(more);
        }
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                rows,
                done,
                _budget: reservation.held,
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
        let first = writer.reserve("a", 600).await.unwrap();
        assert_eq!(first.bytes(), 600);
        assert!(matches!(
            writer.reserve("b", 600).await,
            Err(WriteError::Overloaded)
        ));
        let second = writer.reserve("b", 250).await.unwrap();
        drop(first);
        drop(second);
        // More than a tenant's share takes all of it rather than never getting in, and the
        // other tenants keep the rest.
        let all = writer.reserve("a", 5_000).await.unwrap();
        assert_eq!(all.bytes(), 750);
        assert!(matches!(
            writer.reserve("a", 1).await,
            Err(WriteError::OverShare)
        ));
        let other = writer.reserve("b", 250).await.unwrap();
        assert!(matches!(
            writer.reserve("c", 1).await,
            Err(WriteError::Overloaded)
        ));
        drop((all, other));
        assert_eq!(writer.reserve("a", 0).await.unwrap().bytes(), 1);
    }
}

//! Group commit into ClickHouse, by natural batching.
//!
//! ClickHouse wants few, large INSERTs: each one writes a new part in every table it reaches
//! (`events` and the three tables its materialized views fill), and every part is merged again
//! later. Agents send many small batches. So requests hand their rows to one collector task,
//! which writes whatever is waiting with one INSERT and answers every request that contributed
//! once ClickHouse has accepted it. A request is acknowledged only after its rows are in
//! ClickHouse.
//!
//! **No fixed wait.** When no INSERT is in flight, waiting rows are sent at once: a lone batch
//! is acknowledged in one INSERT's time. Rows that arrive while an INSERT is in flight wait for
//! it and go together in the next one, so INSERTs grow with the load by themselves (a thousand
//! agents make INSERTs of tens of thousands of rows) and an agent draining a week's backlog is
//! never held back by a timer.
//!
//! **Bounded parts.** At most one INSERT is in flight, and two INSERTs start at least
//! `min_insert_interval` apart. So ClickHouse gets at most `1 / min_insert_interval` INSERTs a
//! second (50 with the default 20 ms), each making one new part per table and partition it
//! touches: `events` and `report_day_rows` are partitioned by month, `item_lookup` by year,
//! `item_changes` by day and `device_seq` not at all, so a batch of current events makes 5
//! parts (fewer when no event names an item), ≤ 250 new parts a second in all and ≤ 50 per
//! table; a backlog spanning a month boundary makes up to 2 more. When
//! INSERTs take longer than the interval (heavy load), the rate falls below the bound and each
//! INSERT carries more rows.
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

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use clickhouse::Client;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::budget::{Budget, BudgetError, Held};
use crate::storage::events::{self, EncodedRows};

/// The share of the group commit's budget one tenant may hold, by default.
pub const DEFAULT_TENANT_SHARE: f64 = 0.75;

/// Tuning of the group commit.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Shortest time between the starts of two INSERTs: the bound on new ClickHouse parts per
    /// second (see the module documentation). Not a wait for companions: an INSERT starts at
    /// once when the previous one started longer ago than this.
    pub min_insert_interval: Duration,
    /// Most rows in one INSERT.
    pub max_rows: usize,
    /// Most bytes of encoded rows held in memory (queued or being inserted) across all
    /// requests. A request larger than the whole budget takes all of it.
    pub max_bytes_in_flight: usize,
    /// How long a request may wait for room in the budget before it is turned away.
    pub admission_timeout: Duration,
    /// The fraction of `max_bytes_in_flight` one tenant may hold.
    pub tenant_share: f64,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            min_insert_interval: DEFAULT_MIN_INSERT_INTERVAL,
            max_rows: 100_000,
            // ≈ 300k rows of ≈ 150 bytes: a full INSERT and the next group being gathered, or
            // 1,500 requests of 200 events.
            max_bytes_in_flight: 48 * 1024 * 1024,
            admission_timeout: Duration::from_secs(2),
            tenant_share: DEFAULT_TENANT_SHARE,
        }
    }
}

/// The default of [`WriterConfig::min_insert_interval`]: at most 50 INSERTs a second. A single
/// agent uploading 200-event batches back to back then gets ≈ 10,000 events/s, and ClickHouse
/// at most ≈ 50 new parts per table a second — the rate its own asynchronous inserts reach at
/// their shortest flush interval.
pub const DEFAULT_MIN_INSERT_INTERVAL: Duration = Duration::from_millis(20);

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
    ///
    /// `Ok` means committed: whatever announces new rows (live status streams, webhooks) does
    /// so after this returns, never before.
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

/// The collector: starts an INSERT of everything waiting whenever none is in flight and the
/// interval since the last start has passed; gathers what arrives meanwhile.
async fn collect(client: Client, config: WriterConfig, mut rx: mpsc::Receiver<Pending>) {
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    let mut in_flight: JoinSet<()> = JoinSet::new();
    let mut last_start: Option<tokio::time::Instant> = None;
    let mut open = true;
    loop {
        // Everything already handed over joins the next INSERT.
        while open {
            match rx.try_recv() {
                Ok(pending) => waiting.push_back(pending),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        let mut not_before = None;
        if !waiting.is_empty() && in_flight.is_empty() {
            let now = tokio::time::Instant::now();
            match last_start.map(|at| at + config.min_insert_interval) {
                Some(earliest) if earliest > now => not_before = Some(earliest),
                _ => {
                    last_start = Some(now);
                    let (group, rows) = take_group(&mut waiting, config.max_rows);
                    let client = client.clone();
                    in_flight.spawn(async move {
                        let result = insert_group(&client, &group, rows).await;
                        for pending in group {
                            // The request may have gone away (client hung up); its rows are
                            // written anyway.
                            let _ = pending.done.send(result.clone());
                        }
                    });
                    continue;
                }
            }
        }
        if !open && waiting.is_empty() && in_flight.is_empty() {
            return;
        }
        tokio::select! {
            received = rx.recv(), if open => match received {
                Some(pending) => waiting.push_back(pending),
                None => open = false,
            },
            Some(_) = in_flight.join_next() => {}
            _ = tokio::time::sleep_until(not_before.unwrap_or_else(tokio::time::Instant::now)),
                if not_before.is_some() => {}
        }
    }
}

/// The oldest waiting requests, up to `max_rows` rows (at least one request).
fn take_group(waiting: &mut VecDeque<Pending>, max_rows: usize) -> (Vec<Pending>, usize) {
    let mut group = Vec::new();
    let mut rows = 0;
    while let Some(next) = waiting.front() {
        if !group.is_empty() && rows + next.rows.rows() > max_rows {
            break;
        }
        rows += next.rows.rows();
        group.extend(waiting.pop_front());
    }
    (group, rows)
}

async fn insert_group(client: &Client, group: &[Pending], rows: usize) -> Result<(), WriteError> {
    let started = Instant::now();
    let chunks: Vec<&EncodedRows> = group.iter().map(|p| &p.rows).collect();
    let result = events::insert_encoded(client, &chunks).await;
    let elapsed = started.elapsed();
    metrics::histogram!("backlight_clickhouse_insert_seconds").record(elapsed.as_secs_f64());
    metrics::histogram!("backlight_clickhouse_insert_rows").record(rows as f64);
    metrics::histogram!("backlight_clickhouse_insert_requests").record(group.len() as f64);
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
    use std::sync::{Arc, Mutex};

    use backlight_shared::event::{Event, EventBody, ItemAction, ItemSource, WorkItemEvent};
    use uuid::Uuid;

    use super::*;

    /// A stand-in for ClickHouse's HTTP interface that takes `delay` to accept each INSERT and
    /// records when each one started and ended.
    struct FakeClickHouse {
        delay: Duration,
        inserts: Mutex<Vec<(Instant, Instant)>>,
        in_flight: Mutex<(usize, usize)>,
    }

    impl FakeClickHouse {
        async fn start(delay: Duration) -> (Arc<FakeClickHouse>, Client) {
            let fake = Arc::new(FakeClickHouse {
                delay,
                inserts: Mutex::default(),
                in_flight: Mutex::default(),
            });
            let state = Arc::clone(&fake);
            let app = axum::Router::new().fallback(move |_body: axum::body::Bytes| {
                let fake = Arc::clone(&state);
                async move {
                    let started = Instant::now();
                    {
                        let mut in_flight = fake.in_flight.lock().unwrap();
                        in_flight.0 += 1;
                        in_flight.1 = in_flight.1.max(in_flight.0);
                    }
                    tokio::time::sleep(fake.delay).await;
                    fake.in_flight.lock().unwrap().0 -= 1;
                    fake.inserts.lock().unwrap().push((started, Instant::now()));
                    ""
                }
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await });
            (fake, Client::default().with_url(url))
        }

        fn inserts(&self) -> Vec<(Instant, Instant)> {
            self.inserts.lock().unwrap().clone()
        }

        fn most_in_flight(&self) -> usize {
            self.in_flight.lock().unwrap().1
        }
    }

    fn rows(n: usize) -> EncodedRows {
        let events: Vec<Event> = (1..=n as u64)
            .map(|seq| Event {
                seq,
                id: Uuid::new_v4(),
                body: EventBody::WorkItem(WorkItemEvent {
                    item_id: format!("CLM-{seq}"),
                    action: ItemAction::Started,
                    step: None,
                    at_ms: 1_800_000_000_000,
                    source: ItemSource::App,
                }),
            })
            .collect();
        EncodedRows::encode("acme", Uuid::new_v4(), &events, 1_800_000_000_000)
    }

    fn config(min_insert_interval: Duration) -> WriterConfig {
        WriterConfig {
            min_insert_interval,
            ..WriterConfig::default()
        }
    }

    // The old group commit held every batch for 500 ms even with ClickHouse idle.
    #[tokio::test]
    async fn a_lone_batch_is_acknowledged_in_one_inserts_time() {
        let (fake, client) = FakeClickHouse::start(Duration::from_millis(20)).await;
        let writer = IngestWriter::spawn(client, WriterConfig::default());
        let started = Instant::now();
        writer.write("acme", rows(200)).await.unwrap();
        let took = started.elapsed();
        assert_eq!(fake.inserts().len(), 1);
        assert!(
            took < Duration::from_millis(300),
            "acknowledged after {took:?}"
        );
    }

    #[tokio::test]
    async fn batches_arriving_during_an_insert_share_the_next_one() {
        let (fake, client) = FakeClickHouse::start(Duration::from_millis(300)).await;
        let writer = IngestWriter::spawn(client, config(Duration::ZERO));
        let first = tokio::spawn({
            let writer = writer.clone();
            async move { writer.write("acme", rows(10)).await }
        });
        while fake.in_flight.lock().unwrap().0 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let later: Vec<_> = (0..3)
            .map(|_| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.write("acme", rows(10)).await })
            })
            .collect();
        first.await.unwrap().unwrap();
        for write in later {
            write.await.unwrap().unwrap();
        }
        assert_eq!(
            fake.inserts().len(),
            2,
            "one INSERT, then one for the three"
        );
        assert_eq!(fake.most_in_flight(), 1);
    }

    #[tokio::test]
    async fn inserts_start_at_least_the_interval_apart() {
        let interval = Duration::from_millis(100);
        let (fake, client) = FakeClickHouse::start(Duration::ZERO).await;
        let writer = IngestWriter::spawn(client, config(interval));
        // One client sending back to back, as an agent draining its backlog does.
        for _ in 0..6 {
            writer.write("acme", rows(5)).await.unwrap();
        }
        let starts: Vec<Instant> = fake.inserts().iter().map(|(start, _)| *start).collect();
        assert_eq!(starts.len(), 6);
        for pair in starts.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap >= interval - Duration::from_millis(5), "{gap:?}");
        }
        assert_eq!(fake.most_in_flight(), 1);
    }

    #[tokio::test]
    async fn a_failed_insert_fails_every_request_in_it() {
        let writer = writer(1_000_000);
        let outcomes =
            futures_util::future::join_all((0..3).map(|_| writer.write("acme", rows(3)))).await;
        for outcome in outcomes {
            assert!(
                matches!(outcome, Err(WriteError::Unavailable(_))),
                "{outcome:?}"
            );
        }
    }

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

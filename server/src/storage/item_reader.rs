//! Item lookups read ClickHouse in batches: concurrent lookups share their queries.
//!
//! Each query costs ClickHouse a few milliseconds of fixed CPU (parsing, planning, threads)
//! whatever it reads; a lookup's own data is a few granules. So under load the queries, not the
//! data, are the cost. [`ItemReader`] runs at most `in_flight` batches at a time; lookups that
//! arrive while all are busy wait in a bounded queue, and the next free slot takes all of them
//! (up to [`MAX_BATCH`]) as one `item_id IN (…)` read of `item_lookup` ([`read_items`]).
//!
//! No timer: an idle server answers a lone lookup at once (a batch of one), and batches grow
//! only as far as lookups pile up, the same group-commit idea as ingest
//! ([`crate::ingest::writer`]). A full queue answers [`ClickHouseError::Saturated`] (503 with
//! Retry-After) instead of growing memory.

use std::collections::HashMap;
use std::sync::Arc;

use clickhouse::Client;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::items::{read_items, ItemRead};
use crate::clickhouse::ClickHouseError;

/// Most lookups read by one batch.
pub const MAX_BATCH: usize = 64;
/// Most lookups waiting for a batch; beyond it lookups are turned away.
pub const MAX_WAITING: usize = 4_096;

struct Request {
    tenant: String,
    item_id: String,
    reply: oneshot::Sender<Result<ItemRead, ClickHouseError>>,
}

/// See the module documentation. Cheap to clone; the batching task ends when the last clone is
/// dropped.
#[derive(Clone)]
pub struct ItemReader {
    queue: mpsc::Sender<Request>,
}

impl ItemReader {
    /// Starts the batching task; at most `in_flight` batches read ClickHouse at a time.
    pub fn spawn(client: Client, in_flight: usize) -> ItemReader {
        let (queue, requests) = mpsc::channel(MAX_WAITING);
        tokio::spawn(dispatch(
            client,
            requests,
            Arc::new(Semaphore::new(in_flight)),
        ));
        ItemReader { queue }
    }

    /// The events and newest registration of one item of `tenant`.
    pub async fn read(&self, tenant: &str, item_id: &str) -> Result<ItemRead, ClickHouseError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            tenant: tenant.to_string(),
            item_id: item_id.to_string(),
            reply,
        };
        self.queue.try_send(request).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ClickHouseError::Saturated("item lookups"),
            mpsc::error::TrySendError::Closed(_) => {
                ClickHouseError::Interrupted("the item reader has stopped".into())
            }
        })?;
        answer
            .await
            .map_err(|_| ClickHouseError::Interrupted("an item read batch was dropped".into()))?
    }
}

async fn dispatch(client: Client, mut requests: mpsc::Receiver<Request>, slots: Arc<Semaphore>) {
    loop {
        // Wait for a free slot first: while every slot is busy, lookups gather in the queue
        // and the next batch takes them all.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = requests.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        metrics::histogram!("backlight_item_read_batch_size").record(batch.len() as f64);
        let client = client.clone();
        tokio::spawn(async move {
            answer_batch(&client, batch).await;
            drop(slot);
        });
    }
}

/// Reads every item of `batch` (one query per tenant in it) and answers each request.
async fn answer_batch(client: &Client, batch: Vec<Request>) {
    let mut by_tenant: HashMap<String, Vec<Request>> = HashMap::new();
    for request in batch {
        by_tenant
            .entry(request.tenant.clone())
            .or_default()
            .push(request);
    }
    let reads = by_tenant
        .into_iter()
        .map(|(tenant, requests)| answer_tenant(client, tenant, requests));
    futures_util::future::join_all(reads).await;
}

async fn answer_tenant(client: &Client, tenant: String, requests: Vec<Request>) {
    let mut ids: Vec<String> = requests.iter().map(|r| r.item_id.clone()).collect();
    ids.sort_unstable();
    ids.dedup();
    match read_items(client, &tenant, &ids).await {
        Ok(mut reads) => {
            let mut asked: HashMap<String, usize> = HashMap::new();
            for r in &requests {
                *asked.entry(r.item_id.clone()).or_default() += 1;
            }
            for request in requests {
                // The last asker of an item takes the read; earlier ones (the same item looked
                // up twice in one batch) get copies.
                let left = asked.get_mut(request.item_id.as_str()).map(|n| {
                    *n -= 1;
                    *n
                });
                let read = if left == Some(0) {
                    reads.remove(&request.item_id)
                } else {
                    reads.get(&request.item_id).cloned()
                };
                // A receiver gone (the caller gave up) is not an error of the batch.
                let _ = request.reply.send(Ok(read.unwrap_or_default()));
            }
        }
        Err(e) => {
            let message = e.to_string();
            for request in requests {
                let _ = request
                    .reply
                    .send(Err(ClickHouseError::BatchFailed(message.clone())));
            }
        }
    }
}

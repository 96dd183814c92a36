//! The uploader: sends the spool's oldest events to the server and deletes them only once the
//! server has acknowledged them.
//!
//! # Rules
//!
//! - **Oldest first**, in batches of at most `batch_max_events` (and within the protocol's
//!   [`backlight_shared::batch::limits`]), sent when at least `batch_max_events` are
//!   waiting or the oldest has waited `batch_max_age`, or at once when draining before exit.
//! - **Work items at once, and first.** An urgent event ([`crate::spool::is_urgent`]: a
//!   work-item change) makes the batch due now: when everything waiting fits in one batch it
//!   all goes, oldest first, so the server still receives a device's events without gaps.
//!   When more is waiting (a backlog after an outage), the urgent events go alone, ahead of
//!   the backlog, and the backlog follows oldest first. Only the order of uploads changes:
//!   every event keeps its `seq` and is deleted only after its own acknowledgement, so the
//!   server's exactly-once identity holds (its gap count shows the not-yet-sent backlog until
//!   the backlog arrives).
//! - **Acknowledge, then delete.** Exactly the sent seqs are deleted, after a `200` carrying an
//!   [`IngestResponse`](backlight_shared::api::IngestResponse) whose `max_seq` matches the
//!   batch. A resend after a lost answer is harmless: the server counts an identity once.
//! - **Every other answer keeps the data** ([`response::Verdict`] says what each one means):
//!   429/5xx/network errors back off exponentially with full jitter (1 s doubling to 5 min)
//!   and honour `Retry-After`; 401/403 retry every 5 minutes; 413 halves the batch; a 400/422
//!   naming `events[i]` sets that one event aside in `rejected` and goes on; any other 400/422
//!   backs off with the server's message in `last_error`.
//! - The server's `Date` header gives the clock offset reported in health events.

mod backoff;
mod encode;
mod response;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backlight_shared::api::INGEST_PATH;
use backlight_shared::batch::limits;
use backlight_shared::now_ms;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::Url;
use tokio::sync::watch;
use uuid::Uuid;

pub use backoff::Backoff;
use encode::{encode, EncodeError};
pub use response::{parse_retry_after, Verdict};

use crate::credentials::Credentials;
use crate::health::ClockOffset;
use crate::http::{endpoint_with, error_chain, InvalidServerUrl};
use crate::spool::{is_urgent, Spool, SpoolError};

/// `last_error` while the server refuses the device credential.
pub const UNAUTHORIZED_MESSAGE: &str = "server refused the device credential (revoked?)";

/// How often the uploader looks at an empty spool even without being woken: a safety net, as
/// appends always wake it.
const IDLE_RECHECK: Duration = Duration::from_secs(60);

/// How the uploader batches and retries.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    /// Most events per batch (clamped to the protocol's limit).
    pub batch_max_events: usize,
    /// Longest an event waits for a batch to fill.
    pub batch_max_age: Duration,
    /// First backoff ceiling after a failure.
    pub backoff_base: Duration,
    /// Highest backoff ceiling.
    pub backoff_max: Duration,
    /// Wait between attempts while the server refuses the credential.
    pub auth_retry: Duration,
}

impl UploadConfig {
    /// The production retry schedule with the given batching.
    pub fn new(batch_max_events: usize, batch_max_age: Duration) -> UploadConfig {
        UploadConfig {
            batch_max_events,
            batch_max_age,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            auth_retry: Duration::from_secs(300),
        }
    }
}

/// What one [`Uploader::step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing is waiting.
    Empty,
    /// Events wait, but no batch is due for this long.
    NotDue(Duration),
    /// The server stored this many events; they are deleted.
    Delivered { events: usize },
    /// The server refused event `seq` as invalid; it was moved to `rejected`.
    Rejected { seq: u64 },
    /// The batch was too large; batches are now at most `limit` events.
    Shrunk { limit: usize },
    /// Nothing was delivered; the next attempt is due after this long.
    Retry { after: Duration },
}

/// Why [`Uploader::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Shutdown was requested.
    Stopped,
    /// Draining was requested and the spool is empty.
    Drained,
}

/// Uploads the spool's events for one enrolled device.
pub struct Uploader {
    http: reqwest::Client,
    url: Url,
    credential: String,
    device_id: Uuid,
    spool: Spool,
    config: UploadConfig,
    /// Current largest batch: `batch_max_events`, or less after a 413.
    batch_limit: usize,
    backoff: Backoff,
    clock: Arc<ClockOffset>,
}

impl Uploader {
    pub fn new(
        http: reqwest::Client,
        credentials: &Credentials,
        spool: Spool,
        config: UploadConfig,
        clock: Arc<ClockOffset>,
    ) -> Result<Uploader, InvalidServerUrl> {
        let url = endpoint_with(
            &credentials.server_url,
            INGEST_PATH,
            credentials.plain_http(),
        )?;
        let batch_limit = config
            .batch_max_events
            .clamp(1, limits::MAX_EVENTS_PER_BATCH);
        Ok(Uploader {
            http,
            url,
            credential: credentials.device_credential.clone(),
            device_id: credentials.device_id,
            spool,
            backoff: Backoff::new(config.backoff_base, config.backoff_max),
            config,
            batch_limit,
            clock,
        })
    }

    /// The largest batch the uploader currently builds.
    pub fn batch_limit(&self) -> usize {
        self.batch_limit
    }

    /// Uploads until shutdown, or until the spool is empty once `drain` is set.
    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        mut drain: watch::Receiver<bool>,
    ) -> Result<Finished, SpoolError> {
        let appended = self.spool.appended();
        // Set when the drain sender is gone, so a closed channel cannot wake us in a loop.
        let mut drain_closed = false;
        loop {
            if *shutdown.borrow() {
                return Ok(Finished::Stopped);
            }
            let draining = *drain.borrow();
            // A step may be abandoned midway on shutdown: the spool still finishes a commit it
            // started, and unacknowledged events simply stay for the next run.
            let step = tokio::select! {
                step = self.step(draining) => step?,
                _ = shutdown.changed() => return Ok(Finished::Stopped),
            };
            let (wait, wake_on_append) = match step {
                Step::Empty if draining => return Ok(Finished::Drained),
                Step::Empty => (IDLE_RECHECK, true),
                Step::NotDue(wait) => (wait, true),
                Step::Delivered { .. } | Step::Rejected { .. } | Step::Shrunk { .. } => continue,
                // New events must not cut a backoff short.
                Step::Retry { after } => (after, false),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = appended.notified(), if wake_on_append => {}
                changed = drain.changed(), if !draining && !drain_closed => {
                    drain_closed = changed.is_err();
                }
                _ = shutdown.changed() => return Ok(Finished::Stopped),
            }
        }
    }

    /// Makes at most one upload attempt and says what happened. Only spool failures are
    /// errors; everything the network or the server does is a [`Step`].
    pub async fn step(&mut self, flush: bool) -> Result<Step, SpoolError> {
        let stats = self.spool.stats().await?;
        if stats.depth == 0 {
            return Ok(Step::Empty);
        }
        let full = stats.depth >= self.config.batch_max_events as u64;
        if !flush && !full && stats.urgent == 0 {
            if let Some(created) = stats.oldest_created_ms {
                let waited = Duration::from_millis(now_ms().saturating_sub(created));
                if waited < self.config.batch_max_age {
                    return Ok(Step::NotDue(self.config.batch_max_age - waited));
                }
            }
        }
        let mut events = self.spool.oldest(self.batch_limit).await?;
        let urgent_in_batch = events.iter().filter(|e| is_urgent(&e.body)).count() as u64;
        if urgent_in_batch < stats.urgent {
            // Urgent events wait behind a backlog: they go first, on their own.
            events = self.spool.oldest_urgent(self.batch_limit).await?;
        }
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            // Only unreadable rows were at the head; they have been set aside.
            return Ok(Step::NotDue(Duration::ZERO));
        };
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        let (first_seq, last_seq) = (first.seq, last.seq);
        let count = events.len();
        let body = match encode(self.device_id, events) {
            Ok(body) => body,
            Err(EncodeError::TooLarge { .. }) if count > 1 => return Ok(self.shrink(count)),
            Err(error) => {
                return self
                    .fail(format!("cannot build a batch: {error}"), None)
                    .await
            }
        };

        let sent = self
            .http
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_ENCODING, "zstd")
            .bearer_auth(&self.credential)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                return self
                    .fail(
                        format!("cannot reach the server: {}", error_chain(&error)),
                        None,
                    )
                    .await
            }
        };
        if let Some(offset) = response::clock_offset_ms(&response, SystemTime::now()) {
            self.clock.set(offset);
        }

        match response::classify(response).await {
            Verdict::Accepted(answer) if answer.max_seq == last_seq => {
                let deleted = self.spool.acknowledge(seqs, now_ms()).await?;
                self.backoff.reset();
                tracing::debug!(events = count, first_seq, last_seq, deleted, "batch delivered");
                Ok(Step::Delivered { events: count })
            }
            Verdict::Accepted(answer) => {
                let message = format!(
                    "the server acknowledged up to seq {} but the batch ended at {last_seq}; keeping the events",
                    answer.max_seq
                );
                self.fail(message, None).await
            }
            Verdict::Unauthorized { message } => {
                tracing::warn!(%message, retry_in = ?self.config.auth_retry, "{UNAUTHORIZED_MESSAGE}");
                self.spool
                    .set_last_error(Some(UNAUTHORIZED_MESSAGE.into()))
                    .await?;
                Ok(Step::Retry {
                    after: self.config.auth_retry,
                })
            }
            Verdict::TooLarge if count > 1 => Ok(self.shrink(count)),
            Verdict::TooLarge => {
                self.fail(
                    "the server refuses even a single event as too large (HTTP 413); check its body size limit".into(),
                    None,
                )
                .await
            }
            Verdict::InvalidEvent { index, message } if index < count => {
                let seq = seqs[index];
                tracing::warn!(seq, %message, "the server refused an event as invalid; setting it aside");
                self.spool.reject(seq, message).await?;
                Ok(Step::Rejected { seq })
            }
            Verdict::InvalidEvent { message, .. }
            | Verdict::Invalid { message }
            | Verdict::Unexpected { message } => {
                self.fail(format!("the server refused the batch: {message}"), None)
                    .await
            }
            Verdict::Unavailable {
                retry_after,
                message,
            } => {
                self.fail(format!("the server is unavailable: {message}"), retry_after)
                    .await
            }
        }
    }

    /// Halves the batch after it proved too large, never below one event.
    fn shrink(&mut self, sent: usize) -> Step {
        self.batch_limit = (sent / 2).max(1);
        tracing::warn!(
            limit = self.batch_limit,
            "the batch was too large for the server; sending smaller batches"
        );
        Step::Shrunk {
            limit: self.batch_limit,
        }
    }

    /// Records a failed attempt and schedules the next one, keeping every event.
    async fn fail(
        &mut self,
        message: String,
        retry_after: Option<Duration>,
    ) -> Result<Step, SpoolError> {
        let after = match retry_after {
            Some(after) => {
                self.backoff.count_failure();
                after
            }
            None => self.backoff.next_delay(),
        };
        tracing::warn!(retry_in = ?after, "upload failed: {message}");
        self.spool.set_last_error(Some(message)).await?;
        Ok(Step::Retry { after })
    }
}

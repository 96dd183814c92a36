//! Outbound webhooks: a tenant admin registers a URL and the events wanted
//! ([`events::EventType`]); Backlight POSTs a signed JSON body there when an item's status
//! changes or its SLA becomes at risk or breached — also when only the clock moved. User
//! documentation: `docs/webhooks.md`.
//!
//! ## Who delivers what
//!
//! Servers are stateless and there may be several, with no locks in ClickHouse. Each tenant
//! with webhooks has one *owner* among the running servers: rendezvous hashing of the tenant
//! over the servers whose heartbeat (in ClickHouse, every 5 s) is fresh ([`owner`]). Only the
//! owner evaluates and delivers the tenant's webhooks, so work is not duplicated; when a
//! server stops (it says goodbye) or dies (its heartbeat expires after 15 s), its tenants move
//! to the others, which continue from what ClickHouse holds:
//!
//! 1. **Evaluation** ([`engine`], every second): the owner reads the change feed
//!    ([`crate::storage::changes`]) for its tenants, and every few seconds the items whose SLA
//!    crosses a threshold by the clock alone; reads those items through the batched lookup
//!    path; and compares each with what webhooks last announced about it
//!    (`webhook_item_state`). Each difference becomes a *delivery* per subscribed webhook,
//!    written to the delivery log (`webhook_deliveries`) **before** the new announced state is
//!    written: a crash in between makes the next owner write the same deliveries again, never
//!    lose one. How far it got (`webhook_cursors`) is saved every 10 s; a new owner continues
//!    from there, re-reading a short overlap that the announced states make harmless.
//! 2. **Delivery ids** are derived from what is announced (webhook, item, event, the new
//!    state and the time of the change), so two servers announcing the same change — the
//!    brief overlap of two owners while servers come and go, or a repeat after a crash — write
//!    the same delivery (the log keeps one) and the receiver can drop the second copy.
//! 3. **Attempts** ([`deliver`]): at most 16 at once per server, 10 s each, no redirects, no
//!    proxy, signed ([`signature`]); targets checked against the operator's policy at
//!    registration and at every connection ([`target`]). A failure is retried after the base
//!    delay (`--webhook-retry-base`, 10 s) doubling up to an hour, for up to 20 attempts or
//!    24 h; then the delivery is `failed`. Each outcome is a new row in the log; the owner
//!    scans the log for due retries every 5 s, so retries survive restarts and owner changes.
//!
//! At least once: a delivery is attempted until a 2xx answer is stored; if the server dies
//! between the answer and storing it, the next owner sends it again (same id).
//!
//! Bounded: the send queue holds 10,000 deliveries (beyond that they wait in ClickHouse for
//! the retry scan), payloads at most 64 KiB, error texts 500 bytes, 20 webhooks per tenant.
//!
//! What the tables hold is read and written as [`records`] (a webhook with its parsed URL and
//! events, a delivery with its typed event and state). A stored row that does not parse is
//! never trusted nor dropped unseen: the engine leaves that webhook or delivery out and logs
//! and counts it (`backlight_unreadable_rows_total`) at every read until it is repaired,
//! while every other one goes on; the admin API answers 500 naming the record.

pub mod deliver;
mod engine;
pub mod events;
pub mod owner;
pub mod records;
pub mod registration;
pub mod signature;
pub mod target;

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::http::AppState;
use target::TargetPolicy;

/// How the webhook engine runs.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where deliveries may go.
    pub policy: TargetPolicy,
    /// The first retry delay; it doubles per attempt up to an hour.
    pub retry_base: Duration,
    /// How often owned tenants are evaluated.
    pub tick: Duration,
    /// How often the SLA clock is checked for items becoming at risk or breached.
    pub sla_sweep: Duration,
    /// This server's host name, shown in the heartbeats.
    pub host: String,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            policy: TargetPolicy::strict(),
            retry_base: Duration::from_secs(10),
            tick: Duration::from_secs(1),
            sla_sweep: Duration::from_secs(5),
            host: String::new(),
        }
    }
}

/// The running engine of one server.
pub struct WebhookEngine {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl WebhookEngine {
    /// Starts heartbeats, evaluation and delivery.
    pub fn spawn(app: AppState, config: WebhookConfig) -> Result<WebhookEngine, reqwest::Error> {
        let deliverer = deliver::Deliverer::new(config.policy.clone())?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(engine::run(app, config, deliverer, stopped));
        Ok(WebhookEngine { stop, task })
    }

    /// Stops: no new attempts, running ones finish (10 s at most), their outcomes are stored,
    /// and the server leaves the membership so its tenants move at once.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .is_err()
        {
            tracing::warn!("webhook deliveries did not stop within 20 s");
        }
    }
}

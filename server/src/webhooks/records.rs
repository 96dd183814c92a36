//! What the webhook tables hold, as parsed values: a webhook, one version of a delivery, what
//! was last announced about an item. `storage::webhooks` reads and writes them; its rows stay
//! private to it.

use reqwest::Url;
use serde::{Deserialize, Serialize};

use super::events::{Announced, EventType};

/// One version of a registered webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub tenant_id: String,
    pub webhook_id: String,
    /// Checked against the operator's policy at registration and again at every connection.
    pub url: Url,
    /// What it subscribes to.
    pub events: Vec<EventType>,
    pub description: String,
    /// The signing secret, `whsec_…`.
    pub secret: String,
    pub created_ms: u64,
    pub deleted: bool,
    pub updated_ms: u64,
}

impl Webhook {
    pub fn subscribes(&self, event: EventType) -> bool {
        self.events.contains(&event)
    }
}

/// The state of a delivery in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its first attempt or a retry.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up after the last retry.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Failed,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
    }
}

/// One version of a delivery: its creation, or the outcome of an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub tenant_id: String,
    pub webhook_id: String,
    pub delivery_id: String,
    pub event_type: EventType,
    pub item_id: String,
    pub created_ms: u64,
    /// The JSON body, identical for every attempt.
    pub payload: String,
    pub state: DeliveryState,
    pub attempts: u32,
    /// When the last attempt was made; 0 before the first.
    pub last_attempt_ms: u64,
    /// HTTP status of the last attempt; 0 when none was received.
    pub last_status: u16,
    /// Empty when the last attempt succeeded or none was made.
    pub last_error: String,
    /// When the next attempt is due (pending only).
    pub next_attempt_ms: u64,
}

/// What webhooks announced about one item, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct AnnouncedState {
    pub tenant_id: String,
    pub item_id: String,
    pub announced: Announced,
    pub updated_ms: u64,
}

/// Deliveries of one webhook per state, created on or after a given day.
#[derive(Serialize, Debug, Clone, Default, PartialEq, utoipa::ToSchema)]
pub struct DeliveryCounts {
    pub pending: u64,
    pub delivered: u64,
    pub failed: u64,
    /// When the last attempt was made (ms; 0: never).
    pub last_attempt_ms: u64,
}

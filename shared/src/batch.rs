//! How events travel: a batch from one device, and the limits on it.
//!
//! A batch is JSON, sent as the body of `POST /v1/ingest`, compressed with zstd or gzip and
//! declared by `Content-Encoding`. The limits below are part of the protocol: the server refuses
//! anything beyond them with an error naming the field, and the agent never builds a batch that
//! breaks them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::Event;

/// A batch of events from one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Must equal [`crate::PROTOCOL_VERSION`].
    pub protocol: u16,
    /// The device that recorded the events; must be the device the credential belongs to.
    pub device_id: Uuid,
    /// Events in ascending `seq` order, no `seq` twice; at most
    /// [`limits::MAX_EVENTS_PER_BATCH`], refused while parsing beyond that.
    #[serde(deserialize_with = "crate::event::bounded_events")]
    pub events: Vec<Event>,
}

/// Limits on what the server accepts. The agent builds batches well inside them.
pub mod limits {
    /// Most events in one batch.
    pub const MAX_EVENTS_PER_BATCH: usize = 5_000;
    /// Largest request body as sent (compressed), in bytes.
    pub const MAX_COMPRESSED_BODY_BYTES: usize = 4 * 1024 * 1024;
    /// Largest request body after decompression, in bytes. Checked while decompressing, so a
    /// compression bomb costs the server at most this much memory.
    pub const MAX_DECOMPRESSED_BODY_BYTES: usize = 16 * 1024 * 1024;
    /// Longest application name, in bytes.
    pub const MAX_APP_LEN: usize = 256;
    /// Longest window title (or title hash), in bytes.
    pub const MAX_TITLE_LEN: usize = 1_024;
    /// Longest work item id, in bytes.
    pub const MAX_ITEM_ID_LEN: usize = 128;
    /// Longest work item step, in bytes.
    pub const MAX_STEP_LEN: usize = 128;
    /// Longest consent scope or agent version, in bytes.
    pub const MAX_SHORT_TEXT_LEN: usize = 128;
    /// How far in the past an event may be: 400 days covers an agent that was offline for a year.
    pub const MAX_EVENT_AGE_MS: u64 = 400 * 24 * 3600 * 1000;
    /// How far ahead of the server's clock an event may be. A device can only report what has
    /// happened: this is room for desktop clocks a little ahead (Windows domains keep them
    /// within 5 minutes), not for claims about the future such as an item completed tomorrow.
    pub const MAX_EVENT_FUTURE_MS: u64 = 10 * 60 * 1000;
    /// Longest activity span. The agent closes spans at every change of state and at least every
    /// 15 minutes; longer claims of work time are refused.
    pub const MAX_SPAN_MS: u64 = 3600 * 1000;
    /// Highest sequence number: 2^53 − 1, the largest integer every JSON reader (JavaScript
    /// included) holds exactly. A device recording a million events a day reaches it in
    /// 24 billion years.
    pub const MAX_SEQ: u64 = (1 << 53) - 1;
}

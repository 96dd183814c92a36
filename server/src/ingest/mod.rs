//! The ingest path: from an HTTP body to rows acknowledged by ClickHouse.
//!
//! - [`accept`]: one batch through the path, in order (the handler in `http/ingest.rs` only
//!   authenticates, reads headers and renders the outcome).
//! - [`devices`]: each device's fair share (requests at once, per second, decoded bytes per
//!   second); over it, 429 with `Retry-After`.
//! - [`body`]: reading a body within size, time (minimum rate) and a shared memory budget.
//! - [`budget`]: a byte budget of which no tenant may hold more than its share.
//! - [`decoder`] + [`decode`]: decompression and JSON on the blocking pool, a bounded number at
//!   once; `decode` itself is pure (bytes + header in, batch or error out).
//! - [`first_copy`]: an event already stored is never written again (the first copy wins).
//! - [`writer`]: group commit — many requests' rows go into one INSERT, and each request is
//!   answered only after that INSERT succeeded.
//!
//! **Architecture invariant:** a 200 from `/v1/ingest` means ClickHouse accepted every row of
//! the batch (or holds it from an earlier copy). Rows wait in this process's memory only while
//! their request is still open, so a crash loses nothing the agent has not kept.

pub mod accept;
pub mod body;
pub mod budget;
pub mod decode;
pub mod decoder;
pub mod devices;
pub mod first_copy;
pub mod writer;

use std::time::Duration;

use clickhouse::Client;

use backlight_shared::batch::limits;

/// The limits of the ingest path that are not the group commit's ([`writer::WriterConfig`]).
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    pub device: devices::DeviceLimits,
    /// Bytes of request bodies read and waiting to be decoded, all requests together.
    pub body_budget: usize,
    /// The fraction of the body budget (and of the group commit's) one tenant may hold.
    pub tenant_share: f64,
    /// Longest pause within a body, and the allowance on top of its minimum rate.
    pub body_idle: Duration,
    /// Slowest average rate of a body, bytes per second.
    pub min_body_rate: u64,
    /// Bodies decoded at once.
    pub decode_threads: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            device: devices::DeviceLimits::default(),
            body_budget: 32 * 1024 * 1024,
            tenant_share: writer::DEFAULT_TENANT_SHARE,
            body_idle: Duration::from_secs(10),
            min_body_rate: 16 * 1024,
            decode_threads: decoder::default_threads(),
        }
    }
}

/// Everything the ingest handler shares between requests, except the group commit. Cheap to
/// clone.
#[derive(Clone)]
pub struct IngestControls {
    pub limits: IngestLimits,
    pub devices: devices::DeviceShares,
    pub bodies: budget::Budget,
    pub body_limits: body::BodyLimits,
    pub decoder: decoder::Decoder,
    pub first_copy: first_copy::FirstCopy,
}

impl IngestControls {
    /// `client` reads the devices' stored progress, remembered for `progress_ttl`.
    pub fn new(limits: IngestLimits, client: Client, progress_ttl: Duration) -> IngestControls {
        IngestControls {
            devices: devices::DeviceShares::new(limits.device),
            bodies: budget::Budget::new("body budget", limits.body_budget, limits.tenant_share),
            body_limits: body::BodyLimits {
                max: limits::MAX_COMPRESSED_BODY_BYTES,
                idle: limits.body_idle,
                min_rate: limits.min_body_rate,
            },
            decoder: decoder::Decoder::new(limits.decode_threads),
            first_copy: first_copy::FirstCopy::new(client, progress_ttl),
            limits,
        }
    }
}

//! Turns events into an ingest request body: a [`Batch`] as JSON, zstd-compressed.

use std::io;

use backlight_shared::batch::{limits, Batch};
use backlight_shared::event::Event;
use backlight_shared::PROTOCOL_VERSION;
use uuid::Uuid;

/// zstd level 3: the library's default, a good ratio at a few hundred MB/s.
const ZSTD_LEVEL: i32 = 3;

/// A batch could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("the batch is {json_bytes} bytes of JSON ({compressed_bytes} compressed), beyond the protocol's limits")]
    TooLarge {
        json_bytes: usize,
        compressed_bytes: usize,
    },
    #[error("cannot encode the batch as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot compress the batch: {0}")]
    Compress(#[from] io::Error),
}

/// The compressed body for `events` from `device_id`, within the protocol's size limits.
pub fn encode(device_id: Uuid, events: Vec<Event>) -> Result<Vec<u8>, EncodeError> {
    let batch = Batch {
        protocol: PROTOCOL_VERSION,
        device_id,
        events,
    };
    let json = serde_json::to_vec(&batch)?;
    if json.len() > limits::MAX_DECOMPRESSED_BODY_BYTES {
        return Err(EncodeError::TooLarge {
            json_bytes: json.len(),
            compressed_bytes: 0,
        });
    }
    let compressed = zstd::bulk::compress(&json, ZSTD_LEVEL)?;
    if compressed.len() > limits::MAX_COMPRESSED_BODY_BYTES {
        return Err(EncodeError::TooLarge {
            json_bytes: json.len(),
            compressed_bytes: compressed.len(),
        });
    }
    Ok(compressed)
}

//! Where bodies are decoded: on the blocking pool, a bounded number at a time.
//!
//! Decompressing and parsing is the CPU-heavy part of ingest (up to 16 MiB of JSON for one
//! body). On the async workers it would stall every other request, `/healthz` included; on
//! the blocking pool without a bound, a burst of large bodies would each hold up to 16 MiB
//! at once. So every body waits for one of `threads` turns (a FIFO semaphore) and is decoded
//! on the blocking pool. Memory of one decode: the body as sent, its decompressed JSON (at most
//! [`limits::MAX_DECOMPRESSED_BODY_BYTES`]) and the parsed batch (events are read without
//! buffering, see `backlight_shared::event`).
//!
//! Between decompression and parsing, `admit` sees the decompressed size, so a device's
//! decoded-bytes share is charged before the expensive parse.

use std::sync::Arc;

use axum::body::Bytes;
use backlight_shared::batch::{limits, Batch};
use tokio::sync::Semaphore;

use super::decode::{decompress, parse_batch, DecodeError, Encoding};

/// Why a body did not become a batch.
#[derive(Debug)]
pub enum DecodeFailure<E> {
    /// The body is not a batch.
    Invalid(DecodeError),
    /// `admit` refused the decompressed body.
    Refused(E),
    /// The decoder is gone (shutdown) or its task failed.
    Unavailable,
}

/// See the module documentation. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Decoder {
    turns: Arc<Semaphore>,
    threads: usize,
}

impl Decoder {
    /// At most `threads` bodies decoded at once (at least 1).
    pub fn new(threads: usize) -> Decoder {
        let threads = threads.max(1);
        Decoder {
            turns: Arc::new(Semaphore::new(threads)),
            threads,
        }
    }

    /// Decodes per the machine's cores (at least two).
    pub fn for_this_machine() -> Decoder {
        Decoder::new(default_threads())
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Decodes `body` (sent with `Content-Encoding: content_encoding`), asking `admit` with the
    /// decompressed size before parsing.
    pub async fn decode<E, F>(
        &self,
        content_encoding: Option<String>,
        body: Bytes,
        admit: F,
    ) -> Result<Batch, DecodeFailure<E>>
    where
        E: Send + 'static,
        F: FnOnce(usize) -> Result<(), E> + Send + 'static,
    {
        let encoding =
            Encoding::from_header(content_encoding.as_deref()).map_err(DecodeFailure::Invalid)?;
        let _turn = self
            .turns
            .acquire()
            .await
            .map_err(|_| DecodeFailure::Unavailable)?;
        tokio::task::spawn_blocking(move || {
            let json = decompress(&body, encoding, limits::MAX_DECOMPRESSED_BODY_BYTES)
                .map_err(DecodeFailure::Invalid)?;
            drop(body);
            admit(json.len()).map_err(DecodeFailure::Refused)?;
            parse_batch(&json).map_err(DecodeFailure::Invalid)
        })
        .await
        .unwrap_or(Err(DecodeFailure::Unavailable))
    }
}

/// The machine's cores, at least two.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn decodes_and_asks_before_parsing() {
        let decoder = Decoder::new(1);
        let json =
            br#"{"protocol":1,"device_id":"6f1d2c3e-0000-4000-8000-000000000001","events":[]}"#;
        let body = Bytes::from(zstd::encode_all(&json[..], 3).unwrap());
        let batch = decoder
            .decode(Some("zstd".into()), body.clone(), |n| {
                assert_eq!(n, json.len());
                Ok::<_, ()>(())
            })
            .await
            .unwrap();
        assert!(batch.events.is_empty());
        let refused = decoder
            .decode(Some("zstd".into()), body, |_| Err("over"))
            .await;
        assert!(matches!(refused, Err(DecodeFailure::Refused("over"))));
        let invalid = decoder
            .decode(Some("br".into()), Bytes::new(), |_| Ok::<_, ()>(()))
            .await;
        assert!(matches!(
            invalid,
            Err(DecodeFailure::Invalid(DecodeError::UnsupportedEncoding(_)))
        ));
    }
}

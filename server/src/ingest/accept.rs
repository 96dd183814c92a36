//! One batch through the ingest path: from an authenticated device's body to rows ClickHouse
//! accepted.
//!
//! Order of checks, cheapest first: declared size, the device's fair share (requests at once
//! and per second), then the body (read within a minimum rate, its bytes counted as they
//! arrive), room in the group commit, decoding on the blocking pool (the device's decoded bytes
//! per second checked before parsing), device ownership, protocol rules, and what of the batch
//! is stored already. Only a batch that passes all of them is written, and [`Ingest::accept`]
//! returns only after ClickHouse accepted every row.

use std::time::Duration;

use backlight_shared::api::IngestResponse;
use backlight_shared::batch::limits;
use backlight_shared::validate::{validate_batch, ValidationError};
use bytes::Bytes;
use http_body::Body as HttpBody;
use uuid::Uuid;

use super::body::{self, BodyError};
use super::decode::DecodeError;
use super::decoder::DecodeFailure;
use super::devices::OverShare;
use super::writer::{IngestWriter, WriteError};
use super::IngestControls;
use crate::clickhouse::ClickHouseError;
use crate::live::LiveHub;
use crate::service::Clock;
use crate::storage::changes::ChangeMark;
use crate::storage::events::EncodedRows;

/// Estimated bytes of RowBinary per byte of a compressed body, for the room a request reserves
/// before decoding it (zstd-3 JSON from agents measures ≈ 3.4; a plain JSON body ≈ 0.75, so 1).
/// Trued up to the real size once the rows are encoded.
const ROWS_PER_COMPRESSED_BYTE: usize = 4;

/// Longest a request turned away before reading its body spends reading (and discarding) it,
/// so the client gets the answer instead of a reset connection.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the ingest path works with. Borrowed, so building one per request costs nothing.
#[derive(Clone, Copy)]
pub struct Ingest<'a> {
    pub controls: &'a IngestControls,
    pub writer: &'a IngestWriter,
    /// Told which watched items a stored batch changed.
    pub live: &'a LiveHub,
    pub clock: Clock,
}

/// A batch as it arrives, from a device whose credential was checked; `B` is the body as a
/// stream of bytes (the server's HTTP body, or bytes in a test).
pub struct Upload<B> {
    pub device_id: Uuid,
    pub tenant: String,
    /// `Content-Length`, when the client sent one.
    pub declared: Option<usize>,
    /// `Content-Encoding`, when the client sent one.
    pub encoding: Option<String>,
    pub body: B,
}

/// Why a batch was not stored. Nothing of it was.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    /// The device is over its fair share (requests, or decoded bytes per second).
    #[error("this device sends more {} than its share", .0.what)]
    OverShare(OverShare),
    #[error(transparent)]
    Body(BodyError),
    #[error(transparent)]
    Decode(DecodeError),
    #[error("the decoder is not available")]
    DecoderUnavailable,
    #[error("batch is for device {batch}, but the credential belongs to device {credential}")]
    DeviceMismatch { batch: Uuid, credential: Uuid },
    #[error(transparent)]
    Invalid(ValidationError),
    #[error(transparent)]
    Write(WriteError),
    #[error(transparent)]
    Storage(#[from] ClickHouseError),
}

impl Ingest<'_> {
    /// Checks, decodes and stores one batch; the answer says how many events it had and its
    /// highest `seq` (events stored before count as accepted: the first copy wins).
    pub async fn accept<B>(self, upload: Upload<B>) -> Result<IngestResponse, IngestError>
    where
        B: HttpBody<Data = Bytes> + Unpin,
        B::Error: std::error::Error + 'static,
    {
        let Upload {
            device_id,
            tenant,
            declared,
            encoding,
            body,
        } = upload;
        let tenant = tenant.as_str();
        if declared.is_some_and(|n| n > limits::MAX_COMPRESSED_BODY_BYTES) {
            return Err(IngestError::TooLarge(limits::MAX_COMPRESSED_BODY_BYTES));
        }
        let controls = self.controls;
        // The device's share first, before its body costs anything.
        let turn = match controls.devices.enter(device_id) {
            Ok(turn) => turn,
            Err(over) => {
                drain(body).await;
                return Err(IngestError::OverShare(over));
            }
        };
        // The body: only what has arrived counts against memory, and it must keep arriving.
        let (bytes, body_held) = body::read(
            body,
            declared,
            &controls.body_limits,
            &controls.bodies,
            tenant,
        )
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(limit) => IngestError::TooLarge(limit),
            e => IngestError::Body(e),
        })?;
        // Room in the group commit before decoding, so that a request that has to wait holds
        // only its body as sent.
        let per_byte = if encoding.is_some() {
            ROWS_PER_COMPRESSED_BYTE
        } else {
            1
        };
        let reservation = self
            .writer
            .reserve(tenant, bytes.len().saturating_mul(per_byte))
            .await
            .map_err(IngestError::Write)?;
        let devices = controls.devices.clone();
        let batch = controls
            .decoder
            .decode(encoding, bytes, move |json_bytes| {
                devices.charge_decoded(device_id, json_bytes)
            })
            .await
            .map_err(|e| match e {
                DecodeFailure::Invalid(e) => IngestError::Decode(e),
                DecodeFailure::Refused(over) => IngestError::OverShare(over),
                DecodeFailure::Unavailable => IngestError::DecoderUnavailable,
            })?;
        drop(body_held);

        if batch.device_id != device_id {
            return Err(IngestError::DeviceMismatch {
                batch: batch.device_id,
                credential: device_id,
            });
        }
        let received_ms = (self.clock)();
        validate_batch(&batch, received_ms).map_err(IngestError::Invalid)?;

        let response = IngestResponse {
            accepted: batch.events.len(),
            max_seq: batch.events.last().map_or(0, |e| e.seq),
        };
        metrics::histogram!("backlight_ingest_batch_events").record(batch.events.len() as f64);

        // From reading what is stored to committing, this device's requests take turns: the
        // first copy of a seq wins (see `ingest::first_copy`).
        let mut batch = batch;
        let _in_order = turn.in_order().await;
        let first_copy = &controls.first_copy;
        let stored_max = first_copy.stored_max(tenant, device_id).await?;
        let reaching_back: Vec<u64> = batch
            .events
            .iter()
            .take_while(|e| e.seq <= stored_max)
            .map(|e| e.seq)
            .collect();
        if !reaching_back.is_empty() {
            let stored = first_copy
                .stored_among(tenant, device_id, &reaching_back)
                .await?;
            batch.events.retain(|e| !stored.contains(&e.seq));
            metrics::counter!("backlight_ingest_events_already_stored_total")
                .increment(stored.len() as u64);
        }
        if batch.events.is_empty() {
            return Ok(response);
        }
        // The items open streams on this server watch, told once the rows are stored.
        let watched = self.live.watched_in(tenant, &batch.events);
        // Encode the rows and let the parsed batch go before waiting on ClickHouse: a thousand
        // requests in flight each hold only their rows' RowBinary (≈ 30 KB for 200 events).
        let rows = EncodedRows::encode(tenant, batch.device_id, &batch.events, received_ms);
        drop(batch);
        self.writer
            .write_reserved(reservation, rows)
            .await
            .map_err(IngestError::Write)?;
        first_copy.stored(tenant, device_id, response.max_seq);
        self.live.changed(
            tenant,
            watched
                .into_iter()
                .map(|(item, seq)| (item, ChangeMark::events(received_ms, device_id, seq))),
        );
        Ok(response)
    }
}

/// Reads and discards a body we will not use (at most the body cap, for at most
/// [`DRAIN_TIMEOUT`]): closing a connection with unread data resets it, and the client would
/// lose the answer.
async fn drain<B: HttpBody<Data = Bytes> + Unpin>(body: B) {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut left = limits::MAX_COMPRESSED_BODY_BYTES;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(Ok(frame)) = body.frame().await {
            let len = frame.data_ref().map_or(0, |d| d.len());
            match left.checked_sub(len) {
                Some(rest) => left = rest,
                None => break,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::writer::WriterConfig;
    use crate::ingest::IngestLimits;
    use crate::live::LiveConfig;
    use crate::storage::item_reader::ItemReader;
    use crate::storage::registry::Registry;
    use backlight_shared::batch::Batch;
    use http_body_util::Full;

    /// The path over a ClickHouse that is not there: what these tests check is decided before
    /// anything is read or written.
    struct Parts {
        controls: IngestControls,
        writer: IngestWriter,
        live: LiveHub,
    }

    fn parts() -> Parts {
        let client = clickhouse::Client::default().with_url("http://127.0.0.1:9");
        let reader = ItemReader::spawn(client.clone(), 1);
        Parts {
            controls: IngestControls::new(
                IngestLimits::default(),
                client.clone(),
                Duration::from_secs(1),
            ),
            writer: IngestWriter::spawn(client.clone(), WriterConfig::default()),
            live: LiveHub::spawn(
                LiveConfig::default(),
                client.clone(),
                reader,
                Registry::new(client),
            ),
        }
    }

    fn ingest(p: &Parts) -> Ingest<'_> {
        Ingest {
            controls: &p.controls,
            writer: &p.writer,
            live: &p.live,
            clock: || 1_000_000,
        }
    }

    fn upload(device_id: Uuid, declared: Option<usize>, body: Vec<u8>) -> Upload<Full<Bytes>> {
        Upload {
            device_id,
            tenant: "acme".into(),
            declared,
            encoding: None,
            body: Full::new(Bytes::from(body)),
        }
    }

    #[tokio::test]
    async fn a_batch_for_another_device_is_refused_naming_both() {
        let p = parts();
        let (credential, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let batch = Batch {
            protocol: backlight_shared::PROTOCOL_VERSION,
            device_id: other,
            events: Vec::new(),
        };
        let body = serde_json::to_vec(&batch).unwrap();
        let error = ingest(&p)
            .accept(upload(credential, Some(body.len()), body))
            .await
            .unwrap_err();
        assert!(
            matches!(error, IngestError::DeviceMismatch { batch, credential: c } if batch == other && c == credential),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_body_declared_over_the_cap_is_refused_before_it_is_read() {
        let p = parts();
        let error = ingest(&p)
            .accept(upload(
                Uuid::from_u128(1),
                Some(limits::MAX_COMPRESSED_BODY_BYTES + 1),
                Vec::new(),
            ))
            .await
            .unwrap_err();
        assert!(
            matches!(error, IngestError::TooLarge(n) if n == limits::MAX_COMPRESSED_BODY_BYTES),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn malformed_json_is_a_decode_error() {
        let p = parts();
        let error = ingest(&p)
            .accept(upload(Uuid::from_u128(1), None, b"{not json".to_vec()))
            .await
            .unwrap_err();
        assert!(matches!(error, IngestError::Decode(_)), "{error:?}");
    }
}

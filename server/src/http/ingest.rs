//! `POST /v1/ingest`: an authenticated batch from one device.
//!
//! Order of checks, cheapest first: credential, declared size, room in the group commit (before
//! the body is read, so waiting requests hold no rows), encoding and decompressed size, JSON
//! shape, device ownership, protocol rules. Only a batch that passes all of them is written, and
//! the answer is 200 only after ClickHouse accepted every row.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use backlight_shared::api::IngestResponse;
use backlight_shared::batch::{limits, Batch};
use backlight_shared::now_ms;
use backlight_shared::validate::validate_batch;

use super::error::ApiError;
use super::AppState;
use crate::auth::AuthError;
use crate::ingest::decode::{decode_body, DecodeError};
use crate::ingest::writer::WriteError;
use crate::storage::events::EncodedRows;

/// Bodies above this size are decoded on the blocking pool so they do not stall other requests.
const DECODE_INLINE_MAX: usize = 256 * 1024;

/// Large bodies decoded at once (on the blocking pool). Each decode holds up to 4 MiB as sent,
/// 16 MiB decompressed and the parsed batch; the pool has hundreds of threads, so without this
/// a burst of large uploads could hold that many times over. Small bodies are decoded inline,
/// which the runtime's worker threads bound already.
static LARGE_DECODES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Estimated bytes of RowBinary per byte of a compressed body, for the room a request reserves
/// before reading it (zstd-3 JSON from agents measures ≈ 3.4; a plain JSON body ≈ 0.75, so 1).
/// Trued up to the real size once the rows are encoded.
const ROWS_PER_COMPRESSED_BYTE: usize = 4;

/// Longest a request turned away before reading its body spends reading (and discarding) it,
/// so the client gets the 503 instead of a reset connection.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Upload a batch of events.
///
/// Authenticated with the device credential (`bld_…`). The body is a JSON `Batch`, sent as
/// is or compressed (`Content-Encoding: zstd` or `gzip`); at most 4 MiB as sent and 16 MiB
/// decompressed. A 200 means ClickHouse accepted every event of the batch.
#[utoipa::path(
    post,
    path = backlight_shared::api::INGEST_PATH,
    tag = "agent",
    operation_id = "ingest",
    security(("device" = [])),
    params(
        ("Content-Encoding" = Option<String>, Header, description = "`zstd`, `gzip`, or absent for plain JSON"),
    ),
    request_body(content = Batch, content_type = "application/json", description = "A batch of events from one device, optionally compressed (see `Content-Encoding`)"),
    responses(
        (status = 200, description = "Every event is stored", body = backlight_shared::api::IngestResponse),
        (status = 400, description = "Corrupt compression or malformed JSON (`bad_request`)", body = backlight_shared::api::ErrorBody),
        (status = 401, description = "Missing, malformed or unknown device credential (`unauthorized`)", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "Device revoked (`device_revoked`) or batch for another device (`device_mismatch`)", body = backlight_shared::api::ErrorBody),
        (status = 413, description = "Body too large before or after decompression (`too_large`)", body = backlight_shared::api::ErrorBody),
        (status = 415, description = "Unsupported `Content-Encoding` (`unsupported_encoding`)", body = backlight_shared::api::ErrorBody),
        (status = 422, description = "A field breaks the protocol (`invalid_field`, `field` is its JSON path)", body = backlight_shared::api::ErrorBody),
        (status = 503, description = "Group commit full or ClickHouse unavailable (`unavailable`); nothing was stored, retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestResponse>, ApiError> {
    let result = ingest_inner(&state, &headers, body).await;
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        Err(_) => "refused",
    };
    metrics::counter!("backlight_ingest_batches_total", "outcome" => outcome).increment(1);
    result
}

async fn ingest_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Json<IngestResponse>, ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let device = state
        .devices
        .authenticate(authorization)
        .await
        .map_err(|e| match e {
            AuthError::Revoked => ApiError::forbidden(
                "device_revoked",
                "this device was revoked by an administrator",
            ),
            other => other.into(),
        })?;

    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "body larger than {} bytes",
                limits::MAX_COMPRESSED_BODY_BYTES
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limits::MAX_COMPRESSED_BODY_BYTES) {
        return Err(too_large());
    }
    // Room in the group commit first: a request that has to wait holds no rows, not even its
    // body (which stays in the socket meanwhile).
    let per_byte = if headers.contains_key(header::CONTENT_ENCODING) {
        ROWS_PER_COMPRESSED_BYTE
    } else {
        1
    };
    let estimate = declared.unwrap_or(limits::MAX_COMPRESSED_BODY_BYTES) * per_byte;
    let reservation = match state.writer.reserve(estimate).await {
        Ok(reservation) => reservation,
        Err(e) => {
            drain(body).await;
            return Err(write_error(e));
        }
    };
    let batch = {
        let bytes = axum::body::to_bytes(body, limits::MAX_COMPRESSED_BODY_BYTES)
            .await
            .map_err(|_| too_large())?;
        let encoding = headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("(not ASCII)").to_string());
        if bytes.len() <= DECODE_INLINE_MAX {
            decode_body(encoding.as_deref(), &bytes)
        } else {
            let _turn = LARGE_DECODES
                .acquire()
                .await
                .map_err(|_| ApiError::unavailable("decoder closed"))?;
            tokio::task::spawn_blocking(move || decode_body(encoding.as_deref(), &bytes))
                .await
                .map_err(|_| ApiError::unavailable("decoder failed"))?
        }
        .map_err(decode_error)?
        // The body is dropped here: a request waiting for ClickHouse holds only its rows.
    };

    if batch.device_id != device.device_id {
        return Err(ApiError::forbidden(
            "device_mismatch",
            format!(
                "batch is for device {}, but the credential belongs to device {}",
                batch.device_id, device.device_id
            ),
        )
        .with_field("device_id"));
    }
    let received_ms = now_ms();
    validate_batch(&batch, received_ms)
        .map_err(|e| ApiError::invalid_field(e.field.clone(), e.to_string()))?;

    let response = IngestResponse {
        accepted: batch.events.len(),
        max_seq: batch.events.last().map_or(0, |e| e.seq),
    };
    metrics::histogram!("backlight_ingest_batch_events").record(batch.events.len() as f64);
    // Encode the rows and let the parsed batch go before waiting on ClickHouse: a thousand
    // requests in flight each hold only their rows' RowBinary (≈ 30 KB for 200 events).
    let rows = EncodedRows::encode(
        &device.tenant_id,
        batch.device_id,
        &batch.events,
        received_ms,
    );
    drop(batch);
    state
        .writer
        .write_reserved(reservation, rows)
        .await
        .map_err(write_error)?;
    Ok(Json(response))
}

fn write_error(e: WriteError) -> ApiError {
    match e {
        WriteError::Overloaded | WriteError::Unavailable(_) | WriteError::Closed => {
            ApiError::unavailable(e.to_string())
        }
    }
}

/// Reads and discards a body we will not use (at most the body cap, for at most
/// [`DRAIN_TIMEOUT`]): closing a connection with unread data resets it, and the client would
/// lose the answer.
async fn drain(body: Body) {
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

fn decode_error(e: DecodeError) -> ApiError {
    match e {
        DecodeError::UnsupportedEncoding(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            e.to_string(),
        ),
        DecodeError::TooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
        }
        DecodeError::Corrupt(..) => ApiError::bad_request(e.to_string()),
        DecodeError::Json {
            field: Some(field),
            message,
        } => ApiError::invalid_field(field, message),
        DecodeError::Json {
            field: None,
            message,
        } => ApiError::bad_request(message),
    }
}

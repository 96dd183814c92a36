//! `POST /v1/ingest`: an authenticated batch from one device.
//!
//! Order of checks, cheapest first: credential, declared size, encoding and decompressed size,
//! JSON shape, device ownership, protocol rules. Only a batch that passes all of them is written,
//! and the answer is 200 only after ClickHouse accepted every row.

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
use crate::storage::events::EventRow;

/// Bodies above this size are decoded on the blocking pool so they do not stall other requests.
const DECODE_INLINE_MAX: usize = 256 * 1024;

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
    // Build the rows and let the parsed batch go before waiting on ClickHouse: with a thousand
    // requests in flight, holding body, batch and rows at once tripled the server's memory.
    let rows = rows(&device.tenant_id, batch, received_ms);
    state.writer.write(rows).await.map_err(|e| match e {
        WriteError::Overloaded | WriteError::Unavailable(_) | WriteError::Closed => {
            ApiError::unavailable(e.to_string())
        }
    })?;
    Ok(Json(response))
}

fn rows(tenant_id: &str, batch: Batch, received_ms: u64) -> Vec<EventRow> {
    batch
        .events
        .iter()
        .map(|event| EventRow::new(tenant_id, batch.device_id, event, received_ms))
        .collect()
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

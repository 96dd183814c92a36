//! `POST /v1/ingest`: an authenticated batch from one device.
//!
//! Order of checks, cheapest first: credential, declared size, the device's fair share
//! (requests at once and per second), then the body (read within a minimum rate, its bytes
//! counted as they arrive), room in the group commit, decoding on the blocking pool (the
//! device's decoded bytes per second checked before parsing), device ownership, protocol rules,
//! and what of the batch is stored already. Only a batch that passes all of them is written,
//! and the answer is 200 only after ClickHouse accepted every row.
//!
//! A client over its own share gets 429 with `Retry-After`; 503 means the server as a whole is
//! short (group commit full, ClickHouse down), never that someone else is misbehaving.

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
use crate::ingest::body::{self, BodyError};
use crate::ingest::budget::BudgetError;
use crate::ingest::decode::DecodeError;
use crate::ingest::decoder::DecodeFailure;
use crate::ingest::devices::OverShare;
use crate::ingest::writer::WriteError;
use crate::storage::changes::ChangeMark;
use crate::storage::events::EncodedRows;

/// Estimated bytes of RowBinary per byte of a compressed body, for the room a request reserves
/// before decoding it (zstd-3 JSON from agents measures ≈ 3.4; a plain JSON body ≈ 0.75, so 1).
/// Trued up to the real size once the rows are encoded.
const ROWS_PER_COMPRESSED_BYTE: usize = 4;

/// How long a refusal with 429 waits before it is sent (at most its `Retry-After`).
const OVER_SHARE_PAUSE: Duration = Duration::from_secs(1);

/// Longest a request turned away before reading its body spends reading (and discarding) it,
/// so the client gets the answer instead of a reset connection.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Upload a batch of events.
///
/// Authenticated with the device credential (`bld_…`). The body is a JSON `Batch`, sent as
/// is or compressed (`Content-Encoding: zstd` or `gzip`); at most 4 MiB as sent and 16 MiB
/// decompressed. A 200 means ClickHouse holds every event of the batch (events whose `seq` was
/// stored before are not written again: the first copy wins).
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
        (status = 408, description = "The body stopped arriving or came slower than the minimum rate (`request_timeout`)", body = backlight_shared::api::ErrorBody),
        (status = 429, description = "This device (or its tenant) is over its fair share (`rate_limited`); nothing was stored, retry after `Retry-After`", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 503, description = "Group commit full or ClickHouse unavailable (`unavailable`); nothing was stored, retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestResponse>, ApiError> {
    let result = ingest_inner(&state, &headers, body).await;
    if let Err(e) = &result {
        if e.status == StatusCode::TOO_MANY_REQUESTS {
            // A client over its share that ignores Retry-After would otherwise turn refusals
            // into a flood of its own (thousands a second from a closed loop): each refusal
            // holds its connection a moment, which costs a sleeping task.
            let wait = Duration::from_secs(e.retry_after.unwrap_or(1).into());
            tokio::time::sleep(wait.min(OVER_SHARE_PAUSE)).await;
        }
    }
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        Err(e) if e.status == StatusCode::TOO_MANY_REQUESTS => "over_share",
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
    let tenant = device.tenant_id.as_str();

    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limits::MAX_COMPRESSED_BODY_BYTES) {
        return Err(too_large(limits::MAX_COMPRESSED_BODY_BYTES));
    }
    let controls = &state.ingest;
    // The device's share first, before its body costs anything.
    let turn = match controls.devices.enter(device.device_id) {
        Ok(turn) => turn,
        Err(over) => {
            drain(body).await;
            return Err(over_share(over));
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
    .map_err(body_error)?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("(not ASCII)").to_string());
    // Room in the group commit before decoding, so that a request that has to wait holds only
    // its body as sent.
    let per_byte = if encoding.is_some() {
        ROWS_PER_COMPRESSED_BYTE
    } else {
        1
    };
    let reservation = state
        .writer
        .reserve(tenant, bytes.len().saturating_mul(per_byte))
        .await
        .map_err(write_error)?;
    let devices = controls.devices.clone();
    let device_id = device.device_id;
    let batch = controls
        .decoder
        .decode(encoding, bytes, move |json_bytes| {
            devices.charge_decoded(device_id, json_bytes)
        })
        .await
        .map_err(|e| match e {
            DecodeFailure::Invalid(e) => decode_error(e),
            DecodeFailure::Refused(over) => over_share(over),
            DecodeFailure::Unavailable => ApiError::unavailable("the decoder is not available"),
        })?;
    drop(body_held);

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

    // From reading what is stored to committing, this device's requests take turns: the first
    // copy of a seq wins (see `ingest::first_copy`).
    let mut batch = batch;
    let _in_order = turn.in_order().await;
    let first_copy = &controls.first_copy;
    let stored_max = first_copy.stored_max(tenant, device.device_id).await?;
    let reaching_back: Vec<u64> = batch
        .events
        .iter()
        .take_while(|e| e.seq <= stored_max)
        .map(|e| e.seq)
        .collect();
    if !reaching_back.is_empty() {
        let stored = first_copy
            .stored_among(tenant, device.device_id, &reaching_back)
            .await?;
        batch.events.retain(|e| !stored.contains(&e.seq));
        metrics::counter!("backlight_ingest_events_already_stored_total")
            .increment(stored.len() as u64);
    }
    if batch.events.is_empty() {
        return Ok(Json(response));
    }
    // The items open streams on this server watch, told once the rows are stored.
    let watched = state.live.watched_in(&device.tenant_id, &batch.events);
    // Encode the rows and let the parsed batch go before waiting on ClickHouse: a thousand
    // requests in flight each hold only their rows' RowBinary (≈ 30 KB for 200 events).
    let rows = EncodedRows::encode(tenant, batch.device_id, &batch.events, received_ms);
    drop(batch);
    state
        .writer
        .write_reserved(reservation, rows)
        .await
        .map_err(write_error)?;
    controls
        .first_copy
        .stored(tenant, device.device_id, response.max_seq);
    state.live.changed(
        &device.tenant_id,
        watched
            .into_iter()
            .map(|(item, seq)| (item, ChangeMark::events(received_ms, device.device_id, seq))),
    );
    Ok(Json(response))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("body larger than {limit} bytes"),
    )
}

fn over_share(over: OverShare) -> ApiError {
    metrics::counter!("backlight_ingest_over_share_total", "limit" => over.what).increment(1);
    ApiError::over_share(
        format!(
            "this device sends more {} than its share; retry after {} s",
            over.what,
            over.retry_after_secs()
        ),
        over.retry_after_secs(),
    )
}

fn body_error(e: BodyError) -> ApiError {
    match e {
        BodyError::TooLarge(limit) => too_large(limit),
        BodyError::Stalled(_) | BodyError::TooSlow(..) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            e.to_string(),
        ),
        BodyError::Budget(BudgetError::OverShare(_)) => {
            metrics::counter!("backlight_ingest_over_share_total", "limit" => "tenant body budget")
                .increment(1);
            ApiError::over_share(
                "this tenant's uploads fill its share of the server's memory for bodies; retry shortly",
                1,
            )
        }
        BodyError::Budget(e) => ApiError::unavailable(e.to_string()),
        BodyError::Broken(_) => ApiError::bad_request(e.to_string()),
    }
}

fn write_error(e: WriteError) -> ApiError {
    match e {
        WriteError::OverShare => {
            metrics::counter!("backlight_ingest_over_share_total", "limit" => "tenant commit budget")
                .increment(1);
            ApiError::over_share(e.to_string(), 1)
        }
        WriteError::Overloaded | WriteError::Closed => ApiError::unavailable(e.to_string()),
        // ClickHouse's own words stay in the log.
        WriteError::Unavailable(_) => ApiError::storage_unavailable(&e),
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

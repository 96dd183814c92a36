//! `POST /v1/ingest`: an authenticated batch from one device.
//!
//! The handler checks the device credential, reads the headers, and hands the body to
//! [`crate::ingest::accept`], which checks, decodes and stores the batch (its module docs give
//! the order of checks); then it renders the outcome.
//!
//! A client over its own share gets 429 with `Retry-After`; 503 means the server as a whole is
//! short (group commit full, ClickHouse down), never that someone else is misbehaving.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use backlight_shared::api::IngestResponse;
use backlight_shared::batch::Batch;

use super::error::ApiError;
use super::AppState;
use crate::auth::AuthError;
use crate::ingest::accept::{IngestError, Upload};
use crate::ingest::body::BodyError;
use crate::ingest::budget::BudgetError;
use crate::ingest::decode::DecodeError;
use crate::ingest::devices::OverShare;
use crate::ingest::writer::WriteError;

/// How long a refusal with 429 waits before it is sent (at most its `Retry-After`).
const OVER_SHARE_PAUSE: Duration = Duration::from_secs(1);

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
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("(not ASCII)").to_string());
    let upload = Upload {
        device_id: device.device_id,
        tenant: device.tenant_id,
        declared,
        encoding,
        body,
    };
    let response = state
        .ingestion()
        .accept(upload)
        .await
        .map_err(ingest_error)?;
    Ok(Json(response))
}

fn ingest_error(e: IngestError) -> ApiError {
    match e {
        IngestError::TooLarge(limit) => too_large(limit),
        IngestError::OverShare(over) => over_share(over),
        IngestError::Body(e) => body_error(e),
        IngestError::Decode(e) => decode_error(e),
        IngestError::DecoderUnavailable => ApiError::unavailable(e.to_string()),
        IngestError::DeviceMismatch { .. } => {
            ApiError::forbidden("device_mismatch", e.to_string()).with_field("device_id")
        }
        IngestError::Invalid(e) => ApiError::invalid_field(e.field.clone(), e.to_string()),
        IngestError::Write(e) => write_error(e),
        IngestError::Storage(e) => e.into(),
    }
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

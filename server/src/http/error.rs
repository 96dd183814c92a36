//! The one error type of the HTTP layer: every failure answers with a JSON [`ErrorBody`] and
//! the right status, so clients never have to parse plain-text rejections.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use backlight_shared::api::ErrorBody;

use crate::clickhouse::ClickHouseError;

/// Seconds a client should wait before retrying when ClickHouse is unavailable.
pub const RETRY_AFTER_SECS: u32 = 5;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: code.to_string(),
                message: message.into(),
                field: None,
            },
            retry_after: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.body.field = Some(field.into());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).with_field(field)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The caller is over its share of this server (see [`super::access_limits`]): retry after
    /// `retry_after` seconds. Other callers are not affected.
    pub fn rate_limited(message: impl Into<String>, retry_after: u32) -> ApiError {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }

    /// ClickHouse (or our capacity) is temporarily short: retry later, nothing was stored.
    /// `message` is shown to the client: never put a dependency's error text in it (see
    /// [`ApiError::storage_unavailable`]).
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(RETRY_AFTER_SECS),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    /// The caller is over its fair share (device, key or tenant): 429, retry after
    /// `retry_after_secs`. Nobody else is affected.
    pub fn over_share(message: impl Into<String>, retry_after_secs: u32) -> ApiError {
        ApiError {
            retry_after: Some(retry_after_secs.max(1)),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }

    /// 503 for a failure of ClickHouse (or another dependency) whose text must not reach the
    /// client: it can name tables, hosts, users and queries. The text is logged with a fresh
    /// error id, and the client gets only that id to quote.
    pub fn storage_unavailable(error: &dyn std::fmt::Display) -> ApiError {
        let error_id = uuid::Uuid::new_v4();
        tracing::warn!(%error_id, %error, "storage unavailable");
        ApiError::unavailable(format!(
            "storage unavailable, retry later (error id {error_id})"
        ))
    }
}

impl From<ClickHouseError> for ApiError {
    fn from(e: ClickHouseError) -> Self {
        match e {
            // Our own words about our own limits: safe and useful to show.
            ClickHouseError::Saturated(_) => {
                tracing::debug!(error = %e, "reads saturated");
                ApiError::unavailable(e.to_string())
            }
            e => ApiError::storage_unavailable(&e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The JSON error for a route that does not exist (instead of axum's empty 404).
pub async fn fallback() -> ApiError {
    ApiError::not_found("no such endpoint")
}

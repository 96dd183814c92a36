//! A JSON extractor whose rejections use the API's error format and name the bad field.

use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest JSON body accepted by the small (non-ingest) endpoints.
const MAX_JSON_BODY: usize = 1024 * 1024;

pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ));
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_JSON_BODY)
            .await
            .map_err(|_| {
                ApiError::new(
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("body larger than {MAX_JSON_BODY} bytes"),
                )
            })?;
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let path = e.path().to_string();
            let error = ApiError::invalid_field(
                path.clone(),
                format!("invalid JSON at {path}: {}", e.inner()),
            );
            if e.inner().is_syntax() || e.inner().is_eof() {
                ApiError {
                    status: axum::http::StatusCode::BAD_REQUEST,
                    ..error
                }
            } else {
                error
            }
        })?;
        Ok(JsonBody(value))
    }
}

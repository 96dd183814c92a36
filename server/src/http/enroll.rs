//! `POST /v1/enroll`: an agent trades an enrollment key for its own device credential.

use axum::extract::State;
use axum::Json;
use backlight_shared::api::{EnrollRequest, EnrollResponse};
use backlight_shared::batch::limits;
use backlight_shared::credential::{SecretKind, Token};

use super::error::ApiError;
use super::json::JsonBody;
use super::AppState;
use crate::service::registry::EnrollmentError;
use crate::storage::registry::NewDevice;

/// Trade an enrollment key for a device credential.
///
/// Called once by an agent. No `Authorization` header: the enrollment key (`ble_…`) travels in
/// the body. The device credential (`bld_…`) in the answer is shown only this once.
#[utoipa::path(
    post,
    path = backlight_shared::api::ENROLL_PATH,
    tag = "agent",
    operation_id = "enroll",
    request_body = backlight_shared::api::EnrollRequest,
    responses(
        (status = 200, description = "Enrolled", body = backlight_shared::api::EnrollResponse),
        (status = 400, description = "Malformed JSON (`bad_request`)", body = backlight_shared::api::ErrorBody),
        (status = 401, description = "Malformed or unknown enrollment key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "Enrollment key expired, revoked or used up (`enrollment_key_unusable`)", body = backlight_shared::api::ErrorBody),
        (status = 429, description = "Too many enrollment attempts on this server, or with this key (`rate_limited`); retry after `Retry-After`", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 413, description = "Body larger than 1 MiB", body = backlight_shared::api::ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`", body = backlight_shared::api::ErrorBody),
        (status = 422, description = "A field is invalid (`invalid_field`, `field` names it)", body = backlight_shared::api::ErrorBody),
        (status = 503, description = "ClickHouse unavailable; retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn enroll(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<EnrollRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    // Anyone can call this, and even an unknown key costs a ClickHouse read: first the
    // server's share for all attempts together.
    state.enroll_limits.attempt()?;
    for (field, value) in [
        ("hostname", &request.hostname),
        ("agent_version", &request.agent_version),
        ("os", &request.os),
    ] {
        if value.len() > limits::MAX_SHORT_TEXT_LEN || value.chars().any(char::is_control) {
            return Err(ApiError::invalid_field(
                field,
                format!(
                    "{field} must be at most {} printable bytes",
                    limits::MAX_SHORT_TEXT_LEN
                ),
            ));
        }
    }
    let token =
        Token::parse_kind(&request.enrollment_key, SecretKind::Enrollment).map_err(|e| {
            ApiError::unauthorized(format!("invalid enrollment key: {e}"))
                .with_field("enrollment_key")
        })?;
    let registry = state.registry();
    let key = registry
        .enrollment_key(&token)
        .await
        .map_err(enrollment_error)?;
    state.enroll_limits.key(&key.key_id)?;
    let enrolled = registry
        .enroll(
            &key,
            NewDevice {
                hostname: &request.hostname,
                os: &request.os,
                agent_version: &request.agent_version,
            },
        )
        .await
        .map_err(enrollment_error)?;
    Ok(Json(EnrollResponse {
        device_id: enrolled.device_id,
        tenant_id: enrolled.tenant_id,
        device_credential: enrolled.credential.to_string(),
    }))
}

fn enrollment_error(e: EnrollmentError) -> ApiError {
    match e {
        EnrollmentError::UnknownKey => {
            ApiError::unauthorized(e.to_string()).with_field("enrollment_key")
        }
        EnrollmentError::Unusable(reason) => {
            ApiError::forbidden("enrollment_key_unusable", reason).with_field("enrollment_key")
        }
        EnrollmentError::Unconfirmed(_) => ApiError::unavailable(e.to_string()),
        EnrollmentError::Storage(e) => e.into(),
    }
}

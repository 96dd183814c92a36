//! The tenant policy over HTTP: agents fetch it (`GET /v1/agent/policy`, with ETag so an
//! unchanged policy costs a 304), admins read and replace it (`GET`/`PUT /v1/admin/policy`).

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use backlight_shared::policy::{Policy, POLICY_PATH};

use super::access_limits::Work;
use super::audit;
use super::error::ApiError;
use super::json::JsonBody;
use super::AppState;
use crate::auth::{ApiCaller, AuthError};
use crate::storage::policies::{PolicyError, StoredPolicy};
use crate::tenancy::{Role, TenantId};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(POLICY_PATH, get(agent_policy))
        .route("/v1/admin/policy", get(admin_policy).put(save_policy))
}

fn with_etag(stored: StoredPolicy) -> Response {
    let mut response = Json(stored.policy).into_response();
    if let Ok(etag) = HeaderValue::from_str(&stored.etag) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// `GET /v1/agent/policy`: the policy of the calling device's tenant.
#[utoipa::path(
    get,
    path = POLICY_PATH,
    tag = "agent",
    operation_id = "agent_policy",
    description = "The policy of the calling device's tenant. Authenticated with the device credential (`bld_…`); an unchanged policy costs a 304.",
    security(("device" = [])),
    params(
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` of the policy the agent has"),
    ),
    responses(
        (status = 200, description = "The current policy", body = Policy, headers(("ETag" = String, description = "Version of the policy; send it back as `If-None-Match`"))),
        (status = 304, description = "Unchanged since `If-None-Match`", headers(("ETag" = String, description = "Version of the policy; send it back as `If-None-Match`"))),
        (status = 401, description = "Missing, malformed or unknown device credential", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "Device revoked (`revoked`)", body = backlight_shared::api::ErrorBody),
        (status = 503, description = "ClickHouse unavailable; retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn agent_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let device = state.devices.authenticate(authorization).await?;
    let tenant: TenantId = device
        .tenant_id
        .parse()
        .map_err(|_| ApiError::from(AuthError::Unknown))?;
    let stored = state.registry().policy(&tenant).await?;
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == stored.etag));
    if unchanged {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(etag) = HeaderValue::from_str(&stored.etag) {
            response.headers_mut().insert(header::ETAG, etag);
        }
        return Ok(response);
    }
    Ok(with_etag(stored))
}

/// `GET /v1/admin/policy`: the caller's tenant's current policy.
#[utoipa::path(
    get,
    path = "/v1/admin/policy",
    tag = "admin",
    operation_id = "admin_policy",
    description = "The caller's tenant's current policy. Required role: `admin`.",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The current policy", body = Policy, headers(("ETag" = String, description = "Version of the policy; send it back as `If-None-Match`"))),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or not `admin` (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 503, description = "ClickHouse unavailable; retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn admin_policy(
    State(state): State<AppState>,
    caller: ApiCaller,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    Ok(with_etag(state.registry().policy(&caller.tenant).await?))
}

/// `PUT /v1/admin/policy`: validates and saves a new policy; agents pick it up on their next
/// poll without a restart.
#[utoipa::path(
    put,
    path = "/v1/admin/policy",
    tag = "admin",
    operation_id = "save_policy",
    description = "Validates and saves a new policy for the caller's tenant; agents pick it up on their next poll. A changed notice, or a policy that records more than the current one (titles sent instead of dropped, a private-window or denied-app pattern removed, a new or changed item rule), needs a higher `version`, so every employee is asked again. Required role: `admin`. Recorded in the audit log (`policy_save`, with what changed) and in the policy history.",
    security(("api_key" = [])),
    request_body = Policy,
    responses(
        (status = 200, description = "Saved; the policy as stored", body = Policy, headers(("ETag" = String, description = "Version of the policy; send it back as `If-None-Match`"))),
        (status = 400, description = "Malformed JSON", body = backlight_shared::api::ErrorBody),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or not `admin` (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = backlight_shared::api::ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`", body = backlight_shared::api::ErrorBody),
        (status = 422, description = "Invalid policy, e.g. a bad regex, or a wider policy without a new version (`invalid_field`, `field` names it)", body = backlight_shared::api::ErrorBody),
        (status = 429, description = "This API key is over its share of the server (`rate_limited`); retry after `Retry-After`", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 503, description = "ClickHouse or the audit log unavailable; nothing was saved, retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn save_policy(
    State(state): State<AppState>,
    caller: ApiCaller,
    JsonBody(policy): JsonBody<Policy>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let _turn = state.query_share.enter(&caller.key_id, Work::Write)?;
    let registry = state.registry();
    let change = registry
        .prepare_policy(&caller.tenant, policy)
        .await
        .map_err(policy_error)?;
    // Audited before it takes effect: a change that cannot be audited is not made.
    let summary = change.summary();
    audit::record(&state, &caller, "policy_save", &summary, "ok")?;
    let saved_by = format!("api-key:{} ({})", caller.key_id, caller.key_name);
    match registry.save_policy(&change, &saved_by).await {
        Ok(stored) => Ok(with_etag(stored)),
        Err(e) => {
            // The audit says `ok` already; record that it did not happen after all.
            let _ = audit::record(&state, &caller, "policy_save", &summary, "error");
            Err(policy_error(e))
        }
    }
}

fn policy_error(e: PolicyError) -> ApiError {
    match e {
        PolicyError::Invalid(e) => ApiError::invalid_field(e.field.clone(), e.to_string()),
        PolicyError::ClickHouse(e) => e.into(),
    }
}

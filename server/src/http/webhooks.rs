//! The webhook admin API: register, list, inspect and delete a tenant's webhooks, and see their
//! deliveries. User documentation: `docs/webhooks.md`; the delivery machinery is in
//! [`crate::webhooks`].
//!
//! | route | roles | what |
//! |---|---|---|
//! | `POST /v1/admin/webhooks` | admin | register (the signing secret is in this answer only) |
//! | `GET /v1/admin/webhooks` | admin | the tenant's webhooks |
//! | `GET /v1/admin/webhooks/{id}` | admin | one webhook and its delivery counts |
//! | `DELETE /v1/admin/webhooks/{id}` | admin | stop delivering to it |
//! | `GET /v1/admin/webhooks/{id}/deliveries` | admin | the newest deliveries: state, attempts, last error, next retry |

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use backlight_shared::now_ms;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::json::JsonBody;
use super::AppState;
use crate::auth::ApiCaller;
use crate::storage::audit::AuditEntry;
use crate::storage::retention::DailyTable;
use crate::storage::webhooks as store;
use crate::storage::ReadError;
use crate::tenancy::Role;
use crate::webhooks::records::{Delivery, DeliveryCounts, DeliveryState, Webhook};
use crate::webhooks::registration::{self, CreateError, CreateWebhook};

/// Most deliveries one listing returns, and the default.
pub const MAX_DELIVERIES_LIMIT: u64 = 500;
pub const DEFAULT_DELIVERIES_LIMIT: u64 = 50;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/webhooks", get(list).post(create))
        .route("/v1/admin/webhooks/{id}", get(show).delete(delete))
        .route("/v1/admin/webhooks/{id}/deliveries", get(deliveries))
}

/// A webhook as admins see it (never its secret, except once at creation).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookDoc {
    pub webhook_id: String,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub created_ms: u64,
    /// Deliveries of the last 30 days by state (only when one webhook is shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<DeliveryCounts>,
}

impl WebhookDoc {
    fn of(row: &Webhook) -> WebhookDoc {
        WebhookDoc {
            webhook_id: row.webhook_id.clone(),
            url: row.url.to_string(),
            events: row.events.iter().map(|e| e.as_str().to_string()).collect(),
            description: row.description.clone(),
            created_ms: row.created_ms,
            deliveries: None,
        }
    }
}

/// The answer to a registration: the webhook and its signing secret, shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: WebhookDoc,
    /// `whsec_…`: the HMAC-SHA256 key of the `Backlight-Signature` header. Store it now; it is
    /// not shown again.
    pub secret: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookDoc>,
}

/// One delivery as the log shows it now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryDoc {
    /// Also in the body (`id`) and the `Backlight-Delivery` header.
    pub delivery_id: String,
    pub event: String,
    pub item_id: String,
    pub created_ms: u64,
    pub state: DeliveryState,
    pub attempts: u32,
    pub last_attempt_ms: Option<u64>,
    /// The HTTP status of the last answer (`null`: none received, e.g. refused or timed out).
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// When the next attempt is due (pending deliveries only).
    pub next_attempt_ms: Option<u64>,
}

impl DeliveryDoc {
    fn of(row: Delivery) -> DeliveryDoc {
        let state = row.state;
        DeliveryDoc {
            state,
            attempts: row.attempts,
            last_attempt_ms: Some(row.last_attempt_ms).filter(|&t| t != 0),
            last_status: Some(row.last_status).filter(|&s| s != 0),
            last_error: Some(row.last_error).filter(|e| !e.is_empty()),
            next_attempt_ms: Some(row.next_attempt_ms)
                .filter(|&t| t != 0 && state == DeliveryState::Pending),
            delivery_id: row.delivery_id,
            event: row.event_type.as_str().to_string(),
            item_id: row.item_id,
            created_ms: row.created_ms,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryDoc>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeliveryParams {
    /// `pending`, `delivered` or `failed`.
    state: Option<String>,
    /// Most deliveries to return: 1-500, default 50.
    limit: Option<u64>,
}

fn record(app: &AppState, caller: &ApiCaller, action: &str, target: &str) -> Result<(), ApiError> {
    app.audit
        .record(AuditEntry::by(caller, action, target, "ok"))
        .map_err(|e| ApiError::unavailable(e.to_string()))
}

fn webhook_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path.map_err(|e| ApiError::invalid_field("webhook_id", e.body_text()))?;
    let well_formed =
        id.len() <= 64 && id.starts_with("wh_") && id[3..].bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return Err(ApiError::invalid_field(
            "webhook_id",
            "not a webhook id (wh_…)",
        ));
    }
    Ok(id)
}

fn no_such_webhook() -> ApiError {
    ApiError::not_found("no such webhook")
}

/// The current, not deleted webhook `id` of the caller's tenant.
async fn current(app: &AppState, caller: &ApiCaller, id: &str) -> Result<Webhook, ApiError> {
    store::webhook(app.store.client(), caller.tenant.as_str(), id)
        .await
        .map_err(read_error)?
        .filter(|w| !w.deleted)
        .ok_or_else(no_such_webhook)
}

/// A stored webhook or delivery that does not parse is Backlight's fault, not the caller's:
/// logged and counted, and the admin is told which record it is (our own data, never
/// ClickHouse's text).
fn read_error(e: ReadError) -> ApiError {
    match e {
        ReadError::ClickHouse(e) => e.into(),
        ReadError::Unreadable(e) => {
            e.report_refused("a webhook record");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "unreadable_record",
                e.to_string(),
            )
        }
    }
}

/// The oldest instant whose day the delivery log still keeps.
fn oldest_kept_ms() -> u64 {
    now_ms().saturating_sub(DailyTable::WebhookDeliveries.keep_days() * 86_400_000)
}

#[utoipa::path(
    post,
    path = "/v1/admin/webhooks",
    tag = "admin",
    operation_id = "create_webhook",
    description = "Registers a webhook for the caller's tenant: Backlight POSTs a signed JSON body to `url` for each event named in `events` (`item.status_changed`, `item.sla_at_risk`, `item.sla_breached`). The answer holds the signing secret, shown this once. `https` only, to public addresses, unless the server operator allowed the host. At most 20 per tenant. Required role: `admin`. Recorded in the audit log. See `docs/webhooks.md`.",
    security(("api_key" = [])),
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "Registered; deliveries start within about 5 s", body = CreatedWebhook),
        (status = 400, description = "Malformed JSON", body = backlight_shared::api::ErrorBody),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or not `admin` (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 409, description = "The tenant has 20 webhooks already (`too_many_webhooks`)", body = backlight_shared::api::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = backlight_shared::api::ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`", body = backlight_shared::api::ErrorBody),
        (status = 422, description = "Invalid URL (not https, not a public address, credentials in it), unknown event, or description too long (`invalid_field`, `field` names it)", body = backlight_shared::api::ErrorBody),
        (status = 500, description = "A stored webhook or delivery record does not parse (`unreadable_record`, naming the record); other webhooks are unaffected", body = backlight_shared::api::ErrorBody),
        (status = 503, description = "ClickHouse or the audit log unavailable; nothing was registered, retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn create(
    State(app): State<AppState>,
    caller: ApiCaller,
    JsonBody(request): JsonBody<CreateWebhook>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    registration::validate(&request, &app.webhook_targets).map_err(create_error)?;
    record(&app, &caller, "webhook_create", &request.url)?;
    let row = registration::create(
        app.store.client(),
        &caller.tenant,
        &request,
        &app.webhook_targets,
    )
    .await
    .map_err(create_error)?;
    tracing::info!(tenant = %caller.tenant, webhook_id = %row.webhook_id, url = %row.url, by = %caller.key_id, "webhook registered");
    let created = CreatedWebhook {
        webhook: WebhookDoc::of(&row),
        secret: row.secret,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

fn create_error(e: CreateError) -> ApiError {
    match e {
        CreateError::Invalid { field, message } => ApiError::invalid_field(field, message),
        CreateError::TooMany => {
            ApiError::new(StatusCode::CONFLICT, "too_many_webhooks", e.to_string())
        }
        CreateError::ClickHouse(e) => e.into(),
        CreateError::Unreadable(e) => read_error(e.into()),
    }
}

#[utoipa::path(
    get,
    path = "/v1/admin/webhooks",
    tag = "admin",
    operation_id = "list_webhooks",
    description = "The caller's tenant's webhooks, oldest first (never their secrets). Required role: `admin`.",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The webhooks", body = WebhookList),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or not `admin` (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 500, description = "A stored webhook or delivery record does not parse (`unreadable_record`, naming the record); other webhooks are unaffected", body = backlight_shared::api::ErrorBody),
        (status = 503, description = "ClickHouse unavailable; retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn list(
    State(app): State<AppState>,
    caller: ApiCaller,
) -> Result<Json<WebhookList>, ApiError> {
    caller.require(&[Role::Admin])?;
    let rows = store::webhooks_of(app.store.client(), caller.tenant.as_str())
        .await
        .map_err(read_error)?;
    Ok(Json(WebhookList {
        webhooks: rows.iter().map(WebhookDoc::of).collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/admin/webhooks/{id}",
    tag = "admin",
    operation_id = "get_webhook",
    description = "One webhook of the caller's tenant with its deliveries of the last 30 days counted by state. Required role: `admin`.",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The webhook id (`wh_…`)")),
    responses(
        (status = 200, description = "The webhook", body = WebhookDoc),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or not `admin` (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 404, description = "No such webhook (in the caller's tenant)", body = backlight_shared::api::ErrorBody),
        (status = 422, description = "Malformed webhook id (`invalid_field`)", body = backlight_shared::api::ErrorBody),
        (status = 500, description = "A stored webhook or delivery record does not parse (`unreadable_record`, naming the record); other webhooks are unaffected", body = backlight_shared::api::ErrorBody),
        (status = 503, description = "ClickHouse unavailable; retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn show(
    State(app): State<AppState>,
    caller: ApiCaller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<WebhookDoc>, ApiError> {
    caller.require(&[Role::Admin])?;
    let id = webhook_id(path)?;
    let row = current(&app, &caller, &id).await?;
    let counts = store::delivery_counts(
        app.store.client(),
        caller.tenant.as_str(),
        &id,
        oldest_kept_ms(),
    )
    .await?;
    Ok(Json(WebhookDoc {
        deliveries: Some(counts),
        ..WebhookDoc::of(&row)
    }))
}

#[utoipa::path(
    delete,
    path = "/v1/admin/webhooks/{id}",
    tag = "admin",
    operation_id = "delete_webhook",
    description = "Deletes a webhook: nothing more is delivered to it (attempts already running finish; pending deliveries are given up). Its delivery log stays visible for 30 days through the log itself, not this API. Required role: `admin`. Recorded in the audit log.",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The webhook id (`wh_…`)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or not `admin` (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 404, description = "No such webhook (in the caller's tenant)", body = backlight_shared::api::ErrorBody),
        (status = 422, description = "Malformed webhook id (`invalid_field`)", body = backlight_shared::api::ErrorBody),
        (status = 500, description = "A stored webhook or delivery record does not parse (`unreadable_record`, naming the record); other webhooks are unaffected", body = backlight_shared::api::ErrorBody),
        (status = 503, description = "ClickHouse or the audit log unavailable; nothing was deleted, retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn delete(
    State(app): State<AppState>,
    caller: ApiCaller,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    caller.require(&[Role::Admin])?;
    let id = webhook_id(path)?;
    current(&app, &caller, &id).await?;
    record(&app, &caller, "webhook_delete", &id)?;
    if !registration::delete(app.store.client(), &caller.tenant, &id)
        .await
        .map_err(read_error)?
    {
        return Err(no_such_webhook());
    }
    tracing::info!(tenant = %caller.tenant, webhook_id = %id, by = %caller.key_id, "webhook deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/admin/webhooks/{id}/deliveries",
    tag = "admin",
    operation_id = "webhook_deliveries",
    description = "The newest deliveries of a webhook (kept 30 days), newest first: state (`pending`, `delivered`, `failed` = given up), attempts, the last answer or error, and when the next attempt is due. Required role: `admin`.",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The webhook id (`wh_…`)"), DeliveryParams),
    responses(
        (status = 200, description = "The deliveries", body = DeliveryList),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or not `admin` (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 404, description = "No such webhook (in the caller's tenant)", body = backlight_shared::api::ErrorBody),
        (status = 422, description = "Unknown or invalid parameter (`invalid_query`, `invalid_field`)", body = backlight_shared::api::ErrorBody),
        (status = 500, description = "A stored webhook or delivery record does not parse (`unreadable_record`, naming the record); other webhooks are unaffected", body = backlight_shared::api::ErrorBody),
        (status = 503, description = "ClickHouse unavailable; retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn deliveries(
    State(app): State<AppState>,
    caller: ApiCaller,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<DeliveryParams>, QueryRejection>,
) -> Result<Json<DeliveryList>, ApiError> {
    caller.require(&[Role::Admin])?;
    let id = webhook_id(path)?;
    let Query(params) = params.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            e.body_text(),
        )
    })?;
    let state = match params.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(DeliveryState::parse(s).ok_or_else(|| {
            ApiError::invalid_field("state", "state must be pending, delivered or failed")
        })?),
    };
    let limit = params.limit.unwrap_or(DEFAULT_DELIVERIES_LIMIT);
    if !(1..=MAX_DELIVERIES_LIMIT).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            format!("limit must be 1-{MAX_DELIVERIES_LIMIT}"),
        ));
    }
    current(&app, &caller, &id).await?;
    let rows = store::recent_deliveries(
        app.store.client(),
        caller.tenant.as_str(),
        &id,
        oldest_kept_ms(),
        state,
        limit,
    )
    .await
    .map_err(read_error)?;
    Ok(Json(DeliveryList {
        deliveries: rows.into_iter().map(DeliveryDoc::of).collect(),
    }))
}

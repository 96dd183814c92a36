//! The items API: item status for contact-center agents, registration for back-office systems.
//! User documentation: `docs/status-api.md`.
//!
//! | route | roles | what |
//! |---|---|---|
//! | `GET /v1/items/{id}` | cc_agent, wfm, admin | status document |
//! | `GET /v1/items/{id}/timeline` | cc_agent, wfm, admin | every event (spans only for wfm/admin) |
//! | `GET /v1/items/{id}/events` | cc_agent, wfm, admin | SSE: the status document whenever it changes ([`super::item_stream`]) |
//! | `GET /v1/items?customer_ref=&queue=&status=&sla_state=&limit=` | cc_agent, wfm, admin | search |
//! | `POST /v1/items` | admin | register up to 1,000 items |
//! | `GET`/`PUT /v1/sla-classes` | admin (GET: wfm too) | named SLA targets |
//!
//! **Architecture invariant:** the tenant comes from the API key only, and an item of another
//! tenant answers exactly like an unknown one (404, same body). Every read of item data is
//! recorded in the audit log before the answer leaves; if it cannot be recorded the caller gets
//! 503 and no data (see [`crate::storage::audit`]).
//!
//! **Privacy invariant:** a contact-center agent reads where an item stands, never how a person
//! works: the documents a role gets are decided by [`crate::service::items`] (see its
//! `documents` and `visibility` modules), from the caller's role and the tenant's
//! `show_person_names`; this module only passes the role on.
//!
//! The handlers parse, authorize, take their share of the key's query capacity, record the
//! call in the audit log ([`super::audit`]) and render; [`crate::service::items::Items`] does
//! the work.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::access_limits::Work;
use super::audit::{self, audited};
use super::error::ApiError;
use super::json::JsonBody;
use super::AppState;
use crate::auth::ApiCaller;
use crate::items::register::{self, PutSlaClasses, RegisterItems};
use crate::items::{SlaState, Status};
use crate::service::items::{
    ItemDoc, ItemsError, SearchDoc, SearchFilter, Timeline, DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT,
};
use crate::tenancy::Role;

/// Roles that may read item status.
pub const READERS: [Role; 3] = [Role::CcAgent, Role::Wfm, Role::Admin];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/items", get(search).post(register_items))
        .route("/v1/items/{id}", get(lookup))
        .route("/v1/items/{id}/timeline", get(timeline))
        .route(
            "/v1/sla-classes",
            get(list_sla_classes).put(put_sla_classes),
        )
}

fn items_error(e: ItemsError) -> ApiError {
    match e {
        ItemsError::Invalid(e) => ApiError::invalid_field(e.field, e.message),
        ItemsError::Storage(e) => e.into(),
    }
}

pub(super) fn item_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path.map_err(|e| ApiError::invalid_field("item_id", e.body_text()))?;
    register::check_lookup_id(&id).map_err(|m| ApiError::invalid_field("item_id", m))?;
    Ok(id)
}

#[utoipa::path(
    get,
    path = "/v1/items/{id}",
    tag = "items",
    operation_id = "get_item",
    description = "The status document of one item: status, step, handler, times, SLA, ETA and recent history. Required role: `cc_agent`, `wfm` or `admin`. Recorded in the audit log. An item of another tenant answers exactly like an unknown one.",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The item's business identifier (claim, order, case number)")),
    responses(
        (status = 200, description = "The status document: `CcStatusDoc` for cc_agent (no per-person figures), `StatusDoc` for wfm and admin", body = ItemDoc),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or its role may not call this (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 404, description = "No such item (in the caller's tenant)", body = backlight_shared::api::ErrorBody),
        (status = 422, description = "Invalid item id (`invalid_field`)", body = backlight_shared::api::ErrorBody),
        (status = 429, description = "This API key is over its share of the server (`rate_limited`); retry after `Retry-After`", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 503, description = "ClickHouse or the audit log unavailable; no data was shown, retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn lookup(
    State(app): State<AppState>,
    caller: ApiCaller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ItemDoc>, ApiError> {
    caller.require(&READERS)?;
    let _turn = app.query_share.enter(&caller.key_id, Work::Lookup)?;
    let id = item_id(path)?;
    let doc = audited(
        &app,
        &caller,
        "item_lookup",
        &id,
        app.items().lookup(&caller.tenant, caller.role, &id),
    )
    .await?;
    Ok(Json(doc))
}

#[utoipa::path(
    get,
    path = "/v1/items/{id}/timeline",
    tag = "items",
    operation_id = "item_timeline",
    description = "Every recorded event of one item, oldest first. Activity spans and people are included only for `wfm` and `admin`; `cc_agent` sees actions and teams. Required role: `cc_agent`, `wfm` or `admin`. Recorded in the audit log.",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The item's business identifier (claim, order, case number)")),
    responses(
        (status = 200, description = "The timeline: `CcTimelineDoc` (actions and teams only) for cc_agent, `TimelineDoc` for wfm and admin", body = Timeline),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or its role may not call this (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 404, description = "No such item (in the caller's tenant)", body = backlight_shared::api::ErrorBody),
        (status = 422, description = "Invalid item id (`invalid_field`)", body = backlight_shared::api::ErrorBody),
        (status = 429, description = "This API key is over its share of the server (`rate_limited`); retry after `Retry-After`", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 503, description = "ClickHouse or the audit log unavailable; no data was shown, retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn timeline(
    State(app): State<AppState>,
    caller: ApiCaller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Timeline>, ApiError> {
    caller.require(&READERS)?;
    let _turn = app.query_share.enter(&caller.key_id, Work::Lookup)?;
    let id = item_id(path)?;
    let read = app.items().timeline(&caller.tenant, caller.role, &id);
    let doc = audited(&app, &caller, "item_timeline", &id, read).await?;
    Ok(Json(doc))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SearchParams {
    /// Exact customer reference.
    customer_ref: Option<String>,
    /// Exact queue name.
    queue: Option<String>,
    /// `waiting`, `in_progress`, `paused` or `completed`.
    status: Option<String>,
    /// `on_track`, `at_risk`, `breached` or `none`.
    sla_state: Option<String>,
    /// Most items to return: 1-200, default 50.
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/v1/items",
    tag = "items",
    operation_id = "search_items",
    description = "Registered items matching all given filters, as status documents without history (`CcStatusDoc` for cc_agent, `StatusDoc` for wfm and admin). Required role: `cc_agent`, `wfm` or `admin`. Recorded in the audit log.",
    security(("api_key" = [])),
    params(SearchParams),
    responses(
        (status = 200, description = "The matching items", body = SearchDoc),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or its role may not call this (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 422, description = "Unknown or invalid parameter (`invalid_query`, `invalid_field`)", body = backlight_shared::api::ErrorBody),
        (status = 429, description = "This API key is over its share of the server (`rate_limited`); retry after `Retry-After`", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 503, description = "ClickHouse or the audit log unavailable; no data was shown, retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn search(
    State(app): State<AppState>,
    caller: ApiCaller,
    RawQuery(raw): RawQuery,
    params: Result<Query<SearchParams>, QueryRejection>,
) -> Result<Json<SearchDoc>, ApiError> {
    caller.require(&READERS)?;
    let _turn = app.query_share.enter(&caller.key_id, Work::Search)?;
    let Query(params) = params.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            e.body_text(),
        )
    })?;
    let status = match params.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::invalid_field(
                "status",
                "status must be waiting, in_progress, paused or completed",
            )
        })?),
    };
    let sla_state = match params.sla_state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(SlaState::parse(s).ok_or_else(|| {
            ApiError::invalid_field(
                "sla_state",
                "sla_state must be on_track, at_risk, breached or none",
            )
        })?),
    };
    let limit = params.limit.unwrap_or(DEFAULT_SEARCH_LIMIT);
    if !(1..=MAX_SEARCH_LIMIT).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            format!("limit must be 1-{MAX_SEARCH_LIMIT}"),
        ));
    }
    let customer_ref = params.customer_ref.unwrap_or_default();
    let queue = params.queue.unwrap_or_default();
    for (field, value, max) in [
        (
            "customer_ref",
            &customer_ref,
            register::MAX_CUSTOMER_REF_LEN,
        ),
        ("queue", &queue, register::MAX_QUEUE_LEN),
    ] {
        if value.len() > max || value.chars().any(char::is_control) {
            return Err(ApiError::invalid_field(
                field,
                format!("{field} must be at most {max} bytes without control characters"),
            ));
        }
    }
    let target = raw.unwrap_or_default();
    let filter = SearchFilter {
        customer_ref,
        queue,
        status,
        sla_state,
        limit,
    };
    let read = async {
        let _turn = app.item_reads.enter().await?;
        let doc = app
            .items()
            .search(&caller.tenant, caller.role, &filter)
            .await?;
        Ok(Some(doc))
    };
    let doc = audited(&app, &caller, "item_search", &target, read).await?;
    Ok(Json(doc))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Registered {
    registered: usize,
}

#[utoipa::path(
    post,
    path = "/v1/items",
    tag = "items",
    operation_id = "register_items",
    description = "Registers (or re-registers; the newest wins) up to 1,000 items with queue, priority, customer reference and SLA. Required role: `admin`. Recorded in the audit log.",
    security(("api_key" = [])),
    request_body = RegisterItems,
    responses(
        (status = 200, description = "Registered", body = Registered),
        (status = 400, description = "Malformed JSON", body = backlight_shared::api::ErrorBody),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or its role may not call this (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = backlight_shared::api::ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`", body = backlight_shared::api::ErrorBody),
        (status = 422, description = "An item is invalid (`invalid_field`, `field` names it)", body = backlight_shared::api::ErrorBody),
        (status = 429, description = "This API key is over its share of the server (`rate_limited`); retry after `Retry-After`", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 503, description = "ClickHouse or the audit log unavailable; no data was shown, retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn register_items(
    State(app): State<AppState>,
    caller: ApiCaller,
    JsonBody(request): JsonBody<RegisterItems>,
) -> Result<Json<Registered>, ApiError> {
    caller.require(&[Role::Admin])?;
    let _turn = app.query_share.enter(&caller.key_id, Work::Write)?;
    let items = app.items();
    let registration = items
        .prepare_registration(&caller.tenant, request)
        .await
        .map_err(items_error)?;
    let registered = registration.items();
    let first = registered.first().map_or("", |r| r.item_id.as_str());
    let target = format!("{} items, first {first}", registered.len());
    audit::record(&app, &caller, "item_register", &target, "ok")?;
    items.register(&registration).await?;
    Ok(Json(Registered {
        registered: registration.items().len(),
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct SlaClassesDoc {
    classes: Vec<register::SlaClass>,
}

#[utoipa::path(
    get,
    path = "/v1/sla-classes",
    tag = "items",
    operation_id = "list_sla_classes",
    description = "The tenant's named SLA targets. Required role: `wfm` or `admin`.",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The SLA classes, by name", body = SlaClassesDoc),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or its role may not call this (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 503, description = "ClickHouse unavailable; retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn list_sla_classes(
    State(app): State<AppState>,
    caller: ApiCaller,
) -> Result<Json<SlaClassesDoc>, ApiError> {
    caller.require(&[Role::Wfm, Role::Admin])?;
    let classes = app.items().sla_classes(&caller.tenant).await?;
    Ok(Json(SlaClassesDoc { classes }))
}

#[utoipa::path(
    put,
    path = "/v1/sla-classes",
    tag = "items",
    operation_id = "put_sla_classes",
    description = "Creates or updates named SLA targets. Required role: `admin`. Recorded in the audit log.",
    security(("api_key" = [])),
    request_body = PutSlaClasses,
    responses(
        (status = 200, description = "The classes as saved", body = SlaClassesDoc),
        (status = 400, description = "Malformed JSON", body = backlight_shared::api::ErrorBody),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, or its role may not call this (`wrong_role`)", body = backlight_shared::api::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = backlight_shared::api::ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`", body = backlight_shared::api::ErrorBody),
        (status = 422, description = "A class is invalid (`invalid_field`, `field` names it)", body = backlight_shared::api::ErrorBody),
        (status = 429, description = "This API key is over its share of the server (`rate_limited`); retry after `Retry-After`", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 503, description = "ClickHouse or the audit log unavailable; no data was shown, retry later", body = backlight_shared::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn put_sla_classes(
    State(app): State<AppState>,
    caller: ApiCaller,
    JsonBody(request): JsonBody<PutSlaClasses>,
) -> Result<Json<SlaClassesDoc>, ApiError> {
    caller.require(&[Role::Admin])?;
    let _turn = app.query_share.enter(&caller.key_id, Work::Write)?;
    let items = app.items();
    let classes = items
        .prepare_sla_classes(&caller.tenant, request)
        .map_err(items_error)?;
    audit::record(
        &app,
        &caller,
        "sla_classes_put",
        &format!("{} classes", classes.len()),
        "ok",
    )?;
    let classes = items.save_sla_classes(classes).await?;
    Ok(Json(SlaClassesDoc { classes }))
}

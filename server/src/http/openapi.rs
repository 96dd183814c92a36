//! `GET /openapi.json`: the OpenAPI 3.1 document of the whole HTTP API, generated from the code.
//! User documentation: `docs/api.md`.
//!
//! Every handler carries a `#[utoipa::path]` annotation (method, path, parameters, bodies,
//! every status it answers with, security, the roles it requires) and every body type derives
//! `utoipa::ToSchema` (the wire types in `backlight-shared` behind its `openapi` feature).
//! [`ApiDoc`] lists the annotated handlers; the document is built once and served as is.
//!
//! Two routes are documented by stubs in this file instead of on their handlers: `GET /` (the
//! same handler as `/lookup`, and a handler can carry one annotation only) and
//! `GET /v1/reports/performance` (its handler's module belongs to the reports work; its path
//! comes from the handler module's own constant).
//!
//! **Drift:** `server/tests/openapi.rs` fails when a route registered in `src/http/` is missing
//! from the document or the document lists a route the router does not serve, when the report
//! schema here stops matching the real `Report`, or when the document is not valid OpenAPI.

use std::sync::LazyLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The API description: every route, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Backlight API",
        description = "Enrollment and ingest for desktop agents, item status for the contact \
            center, performance reports for workforce managers, the tenant policy, operations \
            endpoints and the browser pages.\n\n\
            Every error answers with a JSON `ErrorBody` (`error` code, `message`, optional \
            `field`). Any request may also end in 408 (longer than 60 s) or 500.\n\n\
            Authentication: agents send their device credential (`bld_…`) as \
            `Authorization: Bearer`; people and systems send an API key (`blk_…`) the same way. \
            Each API key has one role (`cc_agent`, `wfm` or `admin`) and belongs to one tenant, \
            and every operation names the roles it needs.",
    ),
    paths(
        super::enroll::enroll,
        super::ingest::ingest,
        super::policy::agent_policy,
        super::policy::admin_policy,
        super::policy::save_policy,
        super::items::search,
        super::items::register_items,
        super::items::lookup,
        super::items::timeline,
        super::item_stream::stream,
        super::items::list_sla_classes,
        super::webhooks::create,
        super::webhooks::list,
        super::webhooks::show,
        super::webhooks::delete,
        super::webhooks::deliveries,
        super::items::put_sla_classes,
        performance,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        root_page,
        super::pages::lookup,
        super::pages::dashboard,
        super::pages::asset,
        openapi_json,
    ),
    components(schemas(
        backlight_shared::api::ErrorBody,
        backlight_shared::event::Event,
        backlight_shared::event::EventKind,
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "agent", description = "Called by the desktop agent"),
        (name = "items", description = "Item status and registration (`docs/status-api.md`)"),
        (name = "reports", description = "Performance reports (`docs/metrics.md`)"),
        (name = "admin", description = "Tenant administration"),
        (name = "ops", description = "Liveness, readiness, metrics"),
        (name = "pages", description = "Browser pages and their assets (`docs/pages.md`)"),
    ),
)]
pub struct ApiDoc;

/// The `device` and `api_key` bearer schemes the operations refer to.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "device",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("bld_…")
                    .description(Some(
                        "The device credential (`bld_<id>_<secret>`) an agent got from \
                         `POST /v1/enroll`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("blk_…")
                    .description(Some(
                        "An API key (`blk_<id>_<secret>`) created with `backlight-server admin`; \
                         it carries one role (`cc_agent`, `wfm`, `admin`) and one tenant.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "metrics_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The token given to the server with `--metrics-token` \
                         (`BACKLIGHT_METRICS_TOKEN`), for Prometheus.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as served (built once).
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
});

/// The route of the document itself; no state, so any router can merge it.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route(OPENAPI_PATH, get(openapi_json))
}

#[utoipa::path(
    get,
    path = OPENAPI_PATH,
    tag = "ops",
    operation_id = "openapi",
    description = "This document: OpenAPI 3.1, generated from the server's code. No authentication.",
    responses(
        (status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json"),
    )
)]
async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        DOCUMENT.as_str(),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// Routes documented here rather than on their handlers
// ---------------------------------------------------------------------------------------

/// `GET /` serves the lookup page (`pages::lookup`, documented at `/lookup`).
#[utoipa::path(
    get,
    path = "/",
    tag = "pages",
    operation_id = "root_page",
    description = "The item lookup page, as at `/lookup`. Needs no authentication: the page asks for an API key and calls the JSON APIs with it.",
    params(("If-None-Match" = Option<String>, Header, description = "The page's `ETag`")),
    responses(
        (status = 200, description = "The page", body = String, content_type = "text/html; charset=utf-8"),
        (status = 304, description = "Unchanged since `If-None-Match`"),
    )
)]
#[allow(dead_code)]
fn root_page() {}

/// `GET /v1/reports/performance` (handler: `http::reports::performance`).
#[utoipa::path(
    get,
    path = super::reports::PERFORMANCE_PATH,
    tag = "reports",
    operation_id = "performance_report",
    description = "Performance figures (items handled, handle time, occupancy, SLA compliance, backlog) per group over a period, as JSON or CSV. Required role: `wfm` or `admin`; `group_by=person` only where the tenant shows person names. Recorded in the audit log before the answer leaves. Figures: `docs/metrics.md`.",
    security(("api_key" = [])),
    params(
        ("from" = String, Query, description = "Start, inclusive: RFC 3339 or epoch ms, on a 15-minute boundary"),
        ("to" = String, Query, description = "End, exclusive: RFC 3339 or epoch ms, on a 15-minute boundary; at most 92 days after `from`"),
        ("group_by" = Option<String>, Query, description = "`team` (default), `person`, `queue`, `device`, `day`, `hour` or `interval15`"),
        ("tz" = Option<String>, Query, description = "IANA time zone for day/hour/interval groupings (default: the tenant's setting)"),
        ("team" = Option<String>, Query, description = "Only this team's devices"),
        ("queue" = Option<String>, Query, description = "Only items of this queue"),
        ("format" = Option<String>, Query, description = "`json` (default) or `csv`"),
    ),
    responses(
        (status = 200, description = "The report: JSON, or CSV (with `Content-Disposition: attachment`) for `format=csv`", content(
            (Report = "application/json"),
            (String = "text/csv; charset=utf-8"),
        )),
        (status = 401, description = "Missing, malformed or unknown API key", body = backlight_shared::api::ErrorBody),
        (status = 403, description = "API key revoked, role not `wfm`/`admin` (`wrong_role`), or `group_by=person` where person names are hidden (`person_names_hidden`)", body = backlight_shared::api::ErrorBody),
        (status = 422, description = "Missing, unknown or invalid parameter (`invalid_field`, `field` names it)", body = backlight_shared::api::ErrorBody),
        (status = 429, description = "This API key is over its share of the server (`rate_limited`); retry after `Retry-After`", body = backlight_shared::api::ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 503, description = "ClickHouse or the audit log unavailable, or the period is still being prepared; retry later", body = backlight_shared::api::ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
#[allow(dead_code)]
fn performance() {}

/// A performance report, as the JSON answer shows it. Mirrors `crate::reports::Report`
/// (the test in `server/tests/openapi.rs` compares the two).
#[derive(ToSchema)]
#[allow(dead_code)]
struct Report {
    /// The grouping of the rows (`team`, `person`, `queue`, `device`, `day`, `hour`, `interval15`).
    group_by: String,
    from_ms: u64,
    to_ms: u64,
    /// The time zone of time groupings.
    tz: String,
    /// The `team` filter, when given.
    team: Option<String>,
    /// The `queue` filter, when given.
    queue: Option<String>,
    rows: Vec<ReportRow>,
    /// Every figure over all rows together (items counted once even when in several rows).
    totals: ReportRow,
    /// Registered items not completed as of `to` (filtered by `queue` when given).
    backlog: Backlog,
}

/// One row of a report. Mirrors `crate::reports::ReportRow`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct ReportRow {
    /// Team, person, queue, device id, or (time groupings) the local start of the interval.
    group: String,
    /// Time groupings only: start of the interval (UTC ms), clipped to the report range.
    start_ms: Option<u64>,
    /// Time groupings only: end of the interval (UTC ms), clipped to the report range.
    end_ms: Option<u64>,
    items_handled: u64,
    aht_mean_ms: Option<f64>,
    aht_median_ms: Option<f64>,
    aht_p90_ms: Option<u64>,
    productive_ms: u64,
    /// `null` where time without an item cannot belong to the row (queue rows, queue filter).
    other_ms: Option<u64>,
    idle_ms: Option<u64>,
    occupancy: Option<f64>,
    sla_items_with_due: u64,
    sla_items_met: u64,
    sla_compliance: Option<f64>,
    /// Only on queue rows.
    backlog: Option<Backlog>,
}

/// Backlog figures. Mirrors `crate::reports::Backlog`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Backlog {
    count: u64,
    mean_age_ms: Option<f64>,
    max_age_ms: Option<u64>,
}

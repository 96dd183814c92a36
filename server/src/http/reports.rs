//! `GET /v1/reports/performance`: performance data for workforce managers, as JSON or CSV.
//!
//! Parameters (query string): `from`, `to` (RFC 3339 or epoch ms, on 15-minute boundaries, at
//! most 92 days apart), `group_by` (`team` (default), `person`, `queue`, `device`, `day`,
//! `hour`, `interval15`), `tz` (IANA zone; default: the tenant's setting), `team`, `queue`
//! (filters), `format` (`json` (default) or `csv`). Roles `wfm` and `admin`; `person` only
//! where the tenant shows person names. Every call is written to the audit log before the
//! answer leaves (503 and no data when it cannot be). Figures: `docs/metrics.md`.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::access_limits::Work;
use super::error::ApiError;
use super::AppState;
use crate::auth::ApiCaller;
use crate::reports::time::{parse_instant, rfc3339_utc, TzOffsets};
use crate::reports::{csv, Format, GroupBy, Report, TimeZone, BUCKET_MS, MAX_RANGE_MS};
use crate::service::reports::{self as service, ReportError, ReportRequest};
use crate::storage::audit::AuditEntry;
use crate::tenancy::Role;

pub const PERFORMANCE_PATH: &str = "/v1/reports/performance";

const PARAMS: [&str; 7] = ["from", "to", "group_by", "tz", "team", "queue", "format"];

pub fn routes() -> Router<AppState> {
    Router::new().route(PERFORMANCE_PATH, get(performance))
}

/// The checked parameters of one request.
struct Params {
    from_ms: u64,
    to_ms: u64,
    group_by: GroupBy,
    tz: Option<TimeZone>,
    team: Option<String>,
    queue: Option<String>,
    format: Format,
}

fn instant(params: &HashMap<String, String>, name: &str) -> Result<u64, ApiError> {
    let raw = params
        .get(name)
        .ok_or_else(|| ApiError::invalid_field(name, format!("`{name}` is required")))?;
    let t = parse_instant(raw).map_err(|e| ApiError::invalid_field(name, e))?;
    if t % BUCKET_MS != 0 {
        return Err(ApiError::invalid_field(
            name,
            format!("`{name}` must be on a 15-minute boundary (e.g. …T08:00:00, …T08:15:00)"),
        ));
    }
    Ok(t)
}

fn parse_params(params: &HashMap<String, String>) -> Result<Params, ApiError> {
    if let Some(unknown) = params.keys().find(|k| !PARAMS.contains(&k.as_str())) {
        return Err(ApiError::invalid_field(
            unknown.clone(),
            format!(
                "unknown parameter `{unknown}`; expected {}",
                PARAMS.join(", ")
            ),
        ));
    }
    let (from_ms, to_ms) = (instant(params, "from")?, instant(params, "to")?);
    if to_ms <= from_ms {
        return Err(ApiError::invalid_field("to", "`to` must be after `from`"));
    }
    if to_ms - from_ms > MAX_RANGE_MS {
        return Err(ApiError::invalid_field(
            "to",
            format!("a report covers at most {} days", MAX_RANGE_MS / 86_400_000),
        ));
    }
    let group_by = match params.get("group_by") {
        Some(g) => g
            .parse()
            .map_err(|e: String| ApiError::invalid_field("group_by", e))?,
        None => GroupBy::Team,
    };
    let format = match params.get("format") {
        Some(f) => f
            .parse()
            .map_err(|e: String| ApiError::invalid_field("format", e))?,
        None => Format::Json,
    };
    let text = |name: &str| -> Result<Option<String>, ApiError> {
        match params.get(name) {
            Some(v) if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) => {
                Err(ApiError::invalid_field(
                    name,
                    format!("`{name}` must be 1-256 characters without control characters"),
                ))
            }
            other => Ok(other.cloned()),
        }
    };
    Ok(Params {
        from_ms,
        to_ms,
        group_by,
        tz: text("tz")?
            .map(|tz| tz.parse::<TimeZone>())
            .transpose()
            .map_err(|e| ApiError::invalid_field("tz", e))?,
        team: text("team")?,
        queue: text("queue")?,
        format,
    })
}

async fn performance(
    State(app): State<AppState>,
    caller: ApiCaller,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Wfm, Role::Admin])?;
    let _turn = app.query_share.enter(&caller.key_id, Work::Report)?;
    let params = parse_params(&raw)?;
    let _run = app.report_runs.enter().await?;
    let settings = app.store.registry().settings(&caller.tenant).await?;
    if params.group_by == GroupBy::Person && !settings.show_person_names {
        return Err(ApiError::forbidden(
            "person_names_hidden",
            "this tenant does not show person names, so reports cannot be grouped by person \
             (an admin can change the tenant setting `show_person_names`)",
        ));
    }
    let tz = match &params.tz {
        Some(tz) => tz.clone(),
        // The tenant's zone was checked when it was set; a bad one is the tenant's to fix.
        None => settings
            .time_zone
            .parse::<TimeZone>()
            .map_err(|e| ApiError::invalid_field("tz", e))?,
    };
    let request = ReportRequest {
        tenant: caller.tenant.clone(),
        from_ms: params.from_ms,
        to_ms: params.to_ms,
        group_by: params.group_by,
        tz: tz.clone(),
        team: params.team.clone(),
        queue: params.queue.clone(),
    };
    let resolved = service::resolve(&app.store, request)
        .await
        .map_err(report_error)?;

    // Audit before anything is shown; a report that cannot be audited is not shown.
    let target = audit_target(&params, &tz);
    app.audit
        .record(AuditEntry::by(&caller, "report", target.clone(), "ok"))
        .map_err(|e| ApiError::unavailable(e.to_string()))?;

    let report = match service::run(&app.store, &resolved).await {
        Ok(report) => report,
        Err(e) => {
            if !matches!(e, ReportError::Preparing) {
                // Best effort: the caller gets no data, but the attempt is on record.
                let _ = app
                    .audit
                    .record(AuditEntry::by(&caller, "report", target, "error"));
            }
            return Err(report_error(e));
        }
    };
    Ok(match params.format {
        Format::Json => Json(report).into_response(),
        Format::Csv => csv_response(&report, &resolved.offsets),
    })
}

fn report_error(e: ReportError) -> ApiError {
    match e {
        ReportError::UnknownZone(_) => ApiError::invalid_field("tz", e.to_string()),
        ReportError::Preparing => ApiError::unavailable(e.to_string()),
        ReportError::PrepareFailed(_) => ApiError::storage_unavailable(&e),
        ReportError::Storage(e) => e.into(),
    }
}

/// What the audit log says was run: the report and its parameters.
fn audit_target(p: &Params, tz: &TimeZone) -> String {
    let mut t = format!(
        "performance group_by={} from={} to={} tz={tz}",
        p.group_by,
        rfc3339_utc(p.from_ms),
        rfc3339_utc(p.to_ms)
    );
    if let Some(team) = &p.team {
        t.push_str(&format!(" team={team:?}"));
    }
    if let Some(queue) = &p.queue {
        t.push_str(&format!(" queue={queue:?}"));
    }
    t
}

fn csv_response(report: &Report, offsets: &TzOffsets) -> Response {
    let body = csv::render(&report.rows, |t| offsets.label_time(t));
    let filename = format!("performance-{}-{}.csv", report.group_by, report.from_ms);
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&format!("attachment; filename=\"{filename}\""))
                    .unwrap_or(HeaderValue::from_static("attachment")),
            ),
        ],
        body,
    )
        .into_response()
}

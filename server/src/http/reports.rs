//! `GET /v1/reports/performance`: performance data for workforce managers, as JSON or CSV.
//!
//! Parameters (query string): `from`, `to` (RFC 3339 or epoch ms, on 15-minute boundaries, at
//! most 92 days apart), `group_by` (`team` (default), `person`, `queue`, `device`, `day`,
//! `hour`, `interval15`), `tz` (IANA zone; default: the tenant's setting), `team`, `queue`
//! (filters), `format` (`json` (default) or `csv`). Roles `wfm` and `admin`; `person` only
//! where the tenant shows person names. Every call is written to the audit log before the
//! answer leaves (503 and no data when it cannot be). Figures: `docs/metrics.md`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::auth::ApiCaller;
use crate::reports::time::{parse_instant, rfc3339_utc, TzOffsets};
use crate::reports::{
    csv, metrics, plausible_zone_name, split, Backlog, Format, GroupBy, ItemFigures, Report,
    ReportRow, TimeFigures, BUCKET_MS, HANDLE_LOOKBACK_MS, MAX_RANGE_MS,
};
use crate::storage::audit::AuditEntry;
use crate::storage::reports::{self as sql, BacklogRow, ReportQuery};
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
    tz: Option<String>,
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
        tz: text("tz")?,
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
    let params = parse_params(&raw)?;
    let registry = app.store.registry();
    let settings = registry.settings(&caller.tenant).await?;
    if params.group_by == GroupBy::Person && settings.show_person_names == 0 {
        return Err(ApiError::forbidden(
            "person_names_hidden",
            "this tenant does not show person names, so reports cannot be grouped by person \
             (an admin can change the tenant setting `show_person_names`)",
        ));
    }
    let tz = params.tz.clone().unwrap_or(settings.time_zone);
    if !plausible_zone_name(&tz) {
        return Err(ApiError::invalid_field(
            "tz",
            format!("{tz:?} is not a time zone name (e.g. Europe/Berlin)"),
        ));
    }
    let client = app.store.client();
    let offsets = sql::zone_offsets(client, &tz, params.from_ms, params.to_ms)
        .await
        .map_err(|e| match e {
            crate::clickhouse::ClickHouseError::Query(clickhouse::error::Error::BadResponse(_)) => {
                ApiError::invalid_field(
                    "tz",
                    format!("unknown time zone {tz:?} (use an IANA name such as Europe/Berlin)"),
                )
            }
            other => other.into(),
        })?;

    let assignments = registry.assignments(&caller.tenant).await?;
    let devices = params.team.as_ref().map(|team| {
        assignments
            .iter()
            .filter(|a| &a.team == team)
            .map(|a| a.device_id)
            .collect::<Vec<Uuid>>()
    });
    let device_groups = assignments
        .iter()
        .map(|a| {
            let g = if params.group_by == GroupBy::Person {
                &a.person
            } else {
                &a.team
            };
            (a.device_id, g.clone())
        })
        .collect();
    let query = ReportQuery {
        tenant: caller.tenant.to_string(),
        from_ms: params.from_ms,
        to_ms: params.to_ms,
        tz: tz.clone(),
        group_by: params.group_by,
        devices,
        queue: params.queue.clone(),
        device_groups,
        total: false,
    };

    // Audit before anything is shown; a report that cannot be audited is not shown.
    let target = audit_target(&params, &tz);
    app.audit
        .record(AuditEntry::by(&caller, "report", target.clone(), "ok"))
        .map_err(|e| ApiError::unavailable(e.to_string()))?;

    prepare(&app, &query).await?;
    let report = match build(client, &query, &offsets, params.team.clone()).await {
        Ok(report) => report,
        Err(e) => {
            // Best effort: the caller gets no data, but the attempt is on record.
            let _ = app
                .audit
                .record(AuditEntry::by(&caller, "report", target, "error"));
            return Err(e.into());
        }
    };
    Ok(match params.format {
        Format::Json => Json(report).into_response(),
        Format::Csv => csv_response(&report, &offsets),
    })
}

/// What the audit log says was run: the report and its parameters.
fn audit_target(p: &Params, tz: &str) -> String {
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

fn backlog_of(rows: &[BacklogRow]) -> Backlog {
    let count: u64 = rows.iter().map(|r| r.count).sum();
    let age: u64 = rows.iter().map(|r| r.age_sum_ms).sum();
    Backlog {
        count,
        mean_age_ms: (count > 0).then(|| age as f64 / count as f64),
        max_age_ms: rows
            .iter()
            .filter(|r| r.count > 0)
            .map(|r| r.max_age_ms)
            .max(),
    }
}

fn item_figures(r: &sql::ItemRow) -> ItemFigures {
    ItemFigures {
        items_handled: r.items,
        handle_times_ms: metrics::HandleTimes {
            mean: Some(r.mean_ms),
            median: Some(r.median_ms),
            p90: Some(r.p90_ms),
        },
        sla_items_with_due: r.with_due,
        sla_items_met: r.met,
    }
}

/// Longest a request waits for the rollup of its period to be brought up to date.
const PREPARE_BUDGET: Duration = Duration::from_secs(20);

/// One refresh at a time per tenant in this process, so a client retrying while a long build
/// runs does not start the same work again (it waits, then finds little left to do).
type RefreshLocks = std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;
static REFRESH_LOCKS: LazyLock<RefreshLocks> = LazyLock::new(Default::default);

/// Brings the rollup of the report's period (and the handle-time lookback) up to date. The
/// work runs in its own task: a period nobody reported on before can take longer than a request
/// may (about a minute per 10M events on 2 cores); then the caller gets 503 with Retry-After
/// while the build goes on, and its next try finds the rollup ready.
async fn prepare(app: &AppState, q: &ReportQuery) -> Result<(), ApiError> {
    let lock = REFRESH_LOCKS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(q.tenant.clone())
        .or_default()
        .clone();
    let client = app.store.client().clone();
    let (tenant, from, to) = (
        q.tenant.clone(),
        q.from_ms.saturating_sub(HANDLE_LOOKBACK_MS),
        q.to_ms,
    );
    let task = tokio::spawn(async move {
        let _guard = lock.lock().await;
        sql::refresh(&client, &tenant, from, to).await
    });
    match tokio::time::timeout(PREPARE_BUDGET, task).await {
        Ok(Ok(result)) => Ok(result.map(|_| ())?),
        Ok(Err(join)) => Err(ApiError::storage_unavailable(&format_args!(
            "preparing the report failed: {join}"
        ))),
        Err(_) => Err(ApiError::unavailable(
            "the data of this period is being prepared for reporting (first report over it); retry shortly",
        )),
    }
}

/// Runs the queries and assembles the report (the rollup is current: see [`prepare`]).
async fn build(
    client: &clickhouse::Client,
    q: &ReportQuery,
    offsets: &TzOffsets,
    team: Option<String>,
) -> Result<Report, crate::clickhouse::ClickHouseError> {
    // Independent queries: run them side by side.
    let (time, items, backlog) = tokio::try_join!(
        sql::time_figures(client, q),
        sql::item_figures(client, q),
        sql::backlog(client, &q.tenant, q.to_ms, q.queue.as_deref()),
    )?;

    let mut groups: BTreeMap<String, (TimeFigures, ItemFigures)> = BTreeMap::new();
    for t in &time {
        groups.entry(t.g.clone()).or_default().0 = TimeFigures {
            productive_ms: t.productive_ms,
            other_ms: t.other_ms,
            idle_ms: t.idle_ms,
        };
    }
    for i in &items.groups {
        groups.entry(i.g.clone()).or_default().1 = item_figures(i);
    }
    let item_time_only = q.item_time_only();
    let mut rows: Vec<ReportRow> = match q.group_by.period() {
        None => groups
            .into_iter()
            .map(|(g, (t, i))| ReportRow::new(g, &t, &i, item_time_only))
            .collect(),
        Some(period) => {
            // Every interval of the range gets a row, with or without data.
            let mut starts = split::group_starts(q.from_ms, q.to_ms, period, offsets);
            starts.extend(groups.keys().filter_map(|k| k.parse::<u64>().ok()));
            starts.sort_unstable();
            starts.dedup();
            let ends: Vec<u64> = starts.iter().skip(1).copied().chain([q.to_ms]).collect();
            starts
                .iter()
                .zip(ends)
                .map(|(&s, e)| {
                    let (t, i) = groups.remove(&s.to_string()).unwrap_or_default();
                    let label = match period {
                        split::Period::Day => offsets.label_date(s),
                        _ => offsets.label_time(s),
                    };
                    ReportRow {
                        start_ms: Some(s),
                        end_ms: Some(e),
                        ..ReportRow::new(label, &t, &i, item_time_only)
                    }
                })
                .collect()
        }
    };
    if q.group_by == GroupBy::Queue {
        for row in &mut rows {
            let of_queue: Vec<BacklogRow> = backlog
                .iter()
                .filter(|b| b.queue == row.group)
                .cloned()
                .collect();
            row.backlog = Some(backlog_of(&of_queue));
        }
    }
    // Every piece of time lies in exactly one group (one device, one interval, one queue), so
    // the time totals are the sums of the rows; item totals come with the item figures (each
    // item counted once).
    let t = TimeFigures {
        productive_ms: time.iter().map(|t| t.productive_ms).sum(),
        other_ms: time.iter().map(|t| t.other_ms).sum(),
        idle_ms: time.iter().map(|t| t.idle_ms).sum(),
    };
    let i = items.total.as_ref().map(item_figures).unwrap_or_default();
    let mut totals = ReportRow::new("total".to_string(), &t, &i, item_time_only);
    if q.group_by.period().is_some() {
        totals.start_ms = Some(q.from_ms);
        totals.end_ms = Some(q.to_ms);
    }
    Ok(Report {
        group_by: q.group_by.to_string(),
        from_ms: q.from_ms,
        to_ms: q.to_ms,
        tz: q.tz.clone(),
        team,
        queue: q.queue.clone(),
        rows,
        totals,
        backlog: backlog_of(&backlog),
    })
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

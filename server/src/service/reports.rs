//! Performance reports: from a checked request to a [`Report`].
//!
//! Two steps, so the handler can write the audit record between them: [`resolve`] turns the
//! request into a [`Resolved`] query (the zone's offsets, the tenant's devices and groups) and
//! [`run`] brings the rollup of the period up to date and assembles the report from its
//! figures. Definitions of every figure: `docs/metrics.md`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use uuid::Uuid;

use crate::clickhouse::ClickHouseError;
use crate::reports::time::TzOffsets;
use crate::reports::{
    split, Backlog, GroupBy, ItemFigures, QueueBacklog, Report, ReportRow, TimeFigures, TimeZone,
    HANDLE_LOOKBACK_MS,
};
use crate::storage::reports::{self as sql, ReportQuery};
use crate::storage::Store;
use crate::tenancy::TenantId;

/// Longest a request waits for the rollup of its period to be brought up to date.
const PREPARE_BUDGET: Duration = Duration::from_secs(20);

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("unknown time zone {0:?} (use an IANA name such as Europe/Berlin)")]
    UnknownZone(String),
    /// The rollup build goes on in the background; the next try finds it (nearly) done.
    #[error("the data of this period is being prepared for reporting (first report over it); retry shortly")]
    Preparing,
    #[error("preparing the report failed: {0}")]
    PrepareFailed(String),
    #[error(transparent)]
    Storage(#[from] ClickHouseError),
}

/// What a caller asks for, already parsed; the tenant comes from the caller's key.
#[derive(Clone, Debug)]
pub struct ReportRequest {
    pub tenant: TenantId,
    pub from_ms: u64,
    pub to_ms: u64,
    pub group_by: GroupBy,
    pub tz: TimeZone,
    pub team: Option<String>,
    pub queue: Option<String>,
}

/// A request resolved against the tenant's data, ready to [`run`].
#[derive(Clone, Debug)]
pub struct Resolved {
    pub query: ReportQuery,
    pub offsets: TzOffsets,
    team: Option<String>,
}

/// Reads the zone's offsets over the period (ClickHouse decides whether it knows the zone)
/// and which devices the report covers and how they group.
pub async fn resolve(store: &Store, request: ReportRequest) -> Result<Resolved, ReportError> {
    let offsets = sql::zone_offsets(store.client(), &request.tz, request.from_ms, request.to_ms)
        .await
        .map_err(|e| match e {
            ClickHouseError::Query(clickhouse::error::Error::BadResponse(_)) => {
                ReportError::UnknownZone(request.tz.to_string())
            }
            other => other.into(),
        })?;
    let assignments = store.registry().assignments(&request.tenant).await?;
    let devices = request.team.as_ref().map(|team| {
        assignments
            .iter()
            .filter(|a| &a.team == team)
            .map(|a| a.device_id)
            .collect::<Vec<Uuid>>()
    });
    let device_groups = assignments
        .iter()
        .map(|a| {
            let g = if request.group_by == GroupBy::Person {
                &a.person
            } else {
                &a.team
            };
            (a.device_id, g.clone())
        })
        .collect();
    Ok(Resolved {
        query: ReportQuery {
            tenant: request.tenant.to_string(),
            from_ms: request.from_ms,
            to_ms: request.to_ms,
            tz: request.tz,
            group_by: request.group_by,
            devices,
            queue: request.queue,
            device_groups,
            total: false,
        },
        offsets,
        team: request.team,
    })
}

/// Brings the rollup up to date and assembles the report.
pub async fn run(store: &Store, resolved: &Resolved) -> Result<Report, ReportError> {
    prepare(store, &resolved.query).await?;
    Ok(build(
        store.client(),
        &resolved.query,
        &resolved.offsets,
        resolved.team.clone(),
    )
    .await?)
}

/// One refresh at a time per tenant in this process, so a client retrying while a long build
/// runs does not start the same work again (it waits, then finds little left to do).
type RefreshLocks = std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;
static REFRESH_LOCKS: LazyLock<RefreshLocks> = LazyLock::new(Default::default);

/// Brings the rollup of the report's period (and the handle-time lookback) up to date. The
/// work runs in its own task: a period nobody reported on before can take longer than a request
/// may (about a minute per 10M events on 2 cores); then the caller learns it is
/// [`ReportError::Preparing`] while the build goes on, and its next try finds the rollup ready.
async fn prepare(store: &Store, q: &ReportQuery) -> Result<(), ReportError> {
    let lock = REFRESH_LOCKS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(q.tenant.clone())
        .or_default()
        .clone();
    let client = store.client().clone();
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
        Ok(Err(join)) => Err(ReportError::PrepareFailed(join.to_string())),
        Err(_) => Err(ReportError::Preparing),
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
        groups.entry(t.group.clone()).or_default().0 = t.figures.clone();
    }
    for i in items.groups {
        groups.entry(i.group).or_default().1 = i.figures;
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
            let of_queue: Vec<QueueBacklog> = backlog
                .iter()
                .filter(|b| b.queue == row.group)
                .cloned()
                .collect();
            row.backlog = Some(Backlog::of(&of_queue));
        }
    }
    // Every piece of time lies in exactly one group (one device, one interval, one queue), so
    // the time totals are the sums of the rows; item totals come with the item figures (each
    // item counted once).
    let t = TimeFigures {
        productive_ms: time.iter().map(|t| t.figures.productive_ms).sum(),
        other_ms: time.iter().map(|t| t.figures.other_ms).sum(),
        idle_ms: time.iter().map(|t| t.figures.idle_ms).sum(),
    };
    let i = items.total.unwrap_or_default();
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
        backlog: Backlog::of(&backlog),
    })
}

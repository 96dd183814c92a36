//! SQL of the performance reports (schema in `deploy/clickhouse/migrations/0006_reports.sql`
//! and `0008_report_rollup_by_device.sql`, definitions in `docs/metrics.md`).
//!
//! Reading 30 days of raw `events` with a dedupe (FINAL, or GROUP BY device, seq) costs seconds
//! on 18.16 at 10M rows. Reports therefore read `report_rollup`: deduplicated span time and
//! completions per (device, 15-minute UTC bucket, item), sorted by device so a team's report
//! reads only its devices. [`refresh`] keeps it exact:
//!
//! 1. `report_day_rows` (a materialized view) counts every row inserted into `events` per
//!    (tenant, device, UTC day), duplicates included.
//! 2. A (device, day) whose count differs from the count its newest rollup build recorded in
//!    `report_rollup_state` is rebuilt from `events`, deduplicated by (device, seq), as a new
//!    version; its state row is written after its rows.
//! 3. Readers use only rows of the newest version of each (device, day).
//!
//! The count is read *before* the rebuild reads `events` (and ClickHouse writes `events` before
//! the view), so a row arriving meanwhile can only make a build look stale, never fresh.
//! Concurrent rebuilds of one (device, day) are harmless: each is complete, the newest wins.
//!
//! The queries hand back [`crate::reports`]' figures (`GroupFigures`, `ItemFiguresByGroup`,
//! `QueueBacklog`); the rows they read are private to this module.
//!
//! **Architecture invariant:** every report figure comes from deduplicated events; nothing here
//! sums `events` rows without grouping them by (device_id, seq) first.

use backlight_shared::now_ms;
use clickhouse::Client;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clickhouse::{with_timeout, with_write_retry, ClickHouseError};
use crate::reports::metrics::HandleTimes;
use crate::reports::time::{civil_from_days, TzOffsets};
use crate::reports::{
    GroupBy, GroupFigures, ItemFigures, ItemFiguresByGroup, QueueBacklog, TimeFigures, TimeZone,
    BUCKET_MS, HANDLE_LOOKBACK_MS,
};

const MS_PER_DAY: u64 = 86_400_000;
/// The newest registration of every item. `items` has one partition and is sorted by
/// (tenant_id, item_id), so FINAL is one sorted merge: several times cheaper on 18.16 than
/// `argMax(…, updated_ms) … GROUP BY item_id`, which hashes every item.
const ITEMS_LATEST: &str = "items FINAL";
/// (device, day) pairs rebuilt by one INSERT … SELECT (keeps the query text well under
/// ClickHouse's 256 KiB `max_query_size`).
const REBUILD_CHUNK: usize = 500;

/// A value bound to a `?` of a query, in order.
#[derive(Clone, Debug)]
enum Bind {
    Str(String),
    Strs(Vec<String>),
    U64(u64),
}

/// SQL text with its bindings, assembled in order. Every value is bound, never spliced.
#[derive(Default)]
struct Sql {
    text: String,
    binds: Vec<Bind>,
}

impl Sql {
    fn push(&mut self, text: &str) -> &mut Sql {
        self.text.push_str(text);
        self
    }

    fn str(&mut self, v: &str) -> &mut Sql {
        self.text.push('?');
        self.binds.push(Bind::Str(v.to_string()));
        self
    }

    fn strs(&mut self, v: Vec<String>) -> &mut Sql {
        self.text.push('?');
        self.binds.push(Bind::Strs(v));
        self
    }

    /// `device_id IN (…)` of these devices; an empty list matches nothing.
    fn device_in(&mut self, devices: &[Uuid]) -> &mut Sql {
        self.push("device_id IN (SELECT toUUID(arrayJoin(")
            .strs(device_strings(devices))
            .push(")))")
    }

    fn u64(&mut self, v: u64) -> &mut Sql {
        self.text.push('?');
        self.binds.push(Bind::U64(v));
        self
    }

    fn query(&self, client: &Client) -> clickhouse::query::Query {
        // For finding a slow report: RUST_LOG=backlight_server::storage::reports=debug.
        tracing::debug!(sql = %self.text, binds = ?self.binds, "report query");
        let mut q = client.query(&self.text);
        for b in &self.binds {
            q = match b {
                Bind::Str(s) => q.bind(s.as_str()),
                Bind::Strs(v) => q.bind(v.as_slice()),
                Bind::U64(n) => q.bind(*n),
            };
        }
        q
    }
}

/// `YYYY-MM-DD` of the UTC day of `t`.
fn utc_day(t: u64) -> String {
    day_string((t / MS_PER_DAY) as i64)
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01).
fn day_string(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The devices as a bound array of strings; never empty (the nil UUID, which no device
/// has, stands for none), as an empty array has no element type to convert.
fn device_strings(devices: &[Uuid]) -> Vec<String> {
    if devices.is_empty() {
        return vec![Uuid::nil().to_string()];
    }
    devices.iter().map(Uuid::to_string).collect()
}

/// What one report asks for. The tenant comes from the caller's API key.
#[derive(Clone, Debug)]
pub struct ReportQuery {
    pub tenant: String,
    /// Multiples of [`BUCKET_MS`], `from < to`.
    pub from_ms: u64,
    pub to_ms: u64,
    /// A zone ClickHouse knows (checked with [`zone_offsets`]).
    pub tz: TimeZone,
    pub group_by: GroupBy,
    /// Only these devices (a team filter); `None`: all devices.
    pub devices: Option<Vec<Uuid>>,
    /// Only items of this queue.
    pub queue: Option<String>,
    /// Team or person of each assigned device (for team / person grouping).
    pub device_groups: Vec<(Uuid, String)>,
    /// One group (key `''`) for everything: the report's totals.
    pub total: bool,
}

impl ReportQuery {
    /// Whether time without an item is left out (queue rows, queue filter).
    pub fn item_time_only(&self) -> bool {
        self.group_by == GroupBy::Queue || self.queue.is_some()
    }

    fn lookback_ms(&self) -> u64 {
        self.from_ms.saturating_sub(HANDLE_LOOKBACK_MS)
    }

    /// `report_rollup` rows of the newest build, UTC days of `[lo, to)`.
    fn current_rollup(&self, sql: &mut Sql, lo: u64) {
        sql.push("report_rollup WHERE ");
        self.current_rollup_conditions(sql, lo);
    }

    /// The conditions of [`Self::current_rollup`] (after its `WHERE`).
    fn current_rollup_conditions(&self, sql: &mut Sql, lo: u64) {
        sql.push("tenant_id = ")
            .str(&self.tenant)
            .push(" AND day >= toDate(")
            .str(&utc_day(lo))
            .push(") AND day <= toDate(")
            .str(&utc_day(self.to_ms - 1))
            .push(") AND (device_id, day, version) IN (SELECT device_id, day, max(version) FROM report_rollup_state WHERE tenant_id = ")
            .str(&self.tenant)
            .push(" AND day >= toDate(")
            .str(&utc_day(lo))
            .push(") AND day <= toDate(")
            .str(&utc_day(self.to_ms - 1))
            .push(") GROUP BY device_id, day)");
        if let Some(devices) = &self.devices {
            sql.push(" AND ").device_in(devices);
        }
    }

    /// The group key (a String) of a rollup row with columns `device_id`, `bucket_ms` and,
    /// for queue grouping, `queue`.
    fn group_expr(&self, sql: &mut Sql) {
        let from = self.from_ms;
        if self.total {
            sql.push("''");
            return;
        }
        match self.group_by {
            GroupBy::Team | GroupBy::Person => {
                let (mut ids, mut names): (Vec<String>, Vec<String>) = self
                    .device_groups
                    .iter()
                    .map(|(d, g)| (d.to_string(), g.clone()))
                    .unzip();
                if ids.is_empty() {
                    ids.push(Uuid::nil().to_string());
                    names.push(String::new());
                }
                sql.push("transform(toString(device_id), ")
                    .strs(ids)
                    .push(", ")
                    .strs(names)
                    .push(", '')");
            }
            GroupBy::Device => {
                sql.push("toString(device_id)");
            }
            GroupBy::Queue => {
                sql.push("queue");
            }
            GroupBy::Day | GroupBy::Hour => {
                let start_of = if self.group_by == GroupBy::Day {
                    "toStartOfDay"
                } else {
                    "toStartOfHour"
                };
                sql.push("toString(greatest(toUInt64(toUnixTimestamp(")
                    .push(start_of)
                    .push("(toDateTime(intDiv(bucket_ms, 1000), ")
                    .str(self.tz.as_str())
                    .push(")))) * 1000, ")
                    .u64(from)
                    .push("))");
            }
            GroupBy::Interval15 => {
                sql.push("toString(bucket_ms)");
            }
        }
    }
}

/// Time figures of one group, as the query names its columns.
#[derive(clickhouse::Row, Deserialize, Debug, Clone, PartialEq)]
struct TimeRow {
    g: String,
    productive_ms: u64,
    other_ms: u64,
    idle_ms: u64,
}

impl TimeRow {
    fn into_figures(self) -> GroupFigures<TimeFigures> {
        GroupFigures {
            group: self.g,
            figures: TimeFigures {
                productive_ms: self.productive_ms,
                other_ms: self.other_ms,
                idle_ms: self.idle_ms,
            },
        }
    }
}

/// Item figures of one group; handle-time statistics per `docs/metrics.md`.
#[derive(clickhouse::Row, Deserialize, Debug, Clone, PartialEq)]
struct ItemRow {
    /// 1 for the totals row (its `g` is empty), 0 for a group's row.
    t: u8,
    g: String,
    items: u64,
    mean_ms: f64,
    median_ms: f64,
    p90_ms: u64,
    with_due: u64,
    met: u64,
}

impl ItemRow {
    fn figures(&self) -> ItemFigures {
        ItemFigures {
            items_handled: self.items,
            handle_times_ms: HandleTimes {
                mean: Some(self.mean_ms),
                median: Some(self.median_ms),
                p90: Some(self.p90_ms),
            },
            sla_items_with_due: self.with_due,
            sla_items_met: self.met,
        }
    }
}

/// Backlog of one queue as of `to`.
#[derive(clickhouse::Row, Deserialize, Debug, Clone, PartialEq)]
struct BacklogRow {
    queue: String,
    count: u64,
    age_sum_ms: u64,
    max_age_ms: u64,
}

impl BacklogRow {
    fn into_backlog(self) -> QueueBacklog {
        QueueBacklog {
            queue: self.queue,
            count: self.count,
            age_sum_ms: self.age_sum_ms,
            max_age_ms: self.max_age_ms,
        }
    }
}

/// The UTC offset of `tz` at every 15-minute bucket of `[from, to)`. An error from ClickHouse
/// here means it does not know the zone.
pub async fn zone_offsets(
    client: &Client,
    tz: &TimeZone,
    from_ms: u64,
    to_ms: u64,
) -> Result<TzOffsets, ClickHouseError> {
    #[derive(clickhouse::Row, Deserialize)]
    struct Offsets {
        offsets: Vec<i32>,
    }
    let start_ms = from_ms - from_ms % BUCKET_MS;
    let n = to_ms.saturating_sub(start_ms).div_ceil(BUCKET_MS).max(1);
    let sql = "SELECT arrayMap(t -> toInt32(toUnixTimestamp(toDateTime(toString(toDateTime(t), ?), 'UTC'))) - toInt32(t),
                      arrayMap(i -> toUInt32(? + i * 900), range(toUInt64(?)))) AS offsets";
    let row: Offsets = with_timeout(
        client
            .query(sql)
            .bind(tz.as_str())
            .bind(start_ms / 1000)
            .bind(n)
            .fetch_one(),
    )
    .await?;
    Ok(TzOffsets {
        start_ms,
        offsets_s: row.offsets,
    })
}

/// One build of one (device, day) of the rollup.
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct StateRow {
    tenant_id: String,
    #[serde(with = "clickhouse::serde::uuid")]
    device_id: Uuid,
    /// Days since the epoch.
    day: u16,
    version: u64,
    source_rows: u64,
}

/// A (device, day) whose rollup is missing or stale.
#[derive(clickhouse::Row, Deserialize, Debug, Clone, PartialEq)]
struct Stale {
    #[serde(with = "clickhouse::serde::uuid")]
    device_id: Uuid,
    /// Days since the epoch.
    day_number: u16,
    rows: u64,
}

/// Brings the rollup of the tenant's devices up to date for the UTC days of `[from, to)`.
/// Returns how many (device, day) builds were made.
pub async fn refresh(
    client: &Client,
    tenant: &str,
    from_ms: u64,
    to_ms: u64,
) -> Result<usize, ClickHouseError> {
    let (lo, hi) = (utc_day(from_ms), utc_day(to_ms - 1));
    let stale: Vec<Stale> = with_timeout(
        client
            .query(include_str!("stale_days.sql"))
            .bind(tenant)
            .bind(&lo)
            .bind(&hi)
            .bind(tenant)
            .bind(&lo)
            .bind(&hi)
            .fetch_all(),
    )
    .await?;
    for chunk in stale.chunks(REBUILD_CHUNK) {
        rebuild(client, tenant, chunk).await?;
    }
    if !stale.is_empty() {
        metrics::counter!("backlight_report_rollup_builds_total").increment(stale.len() as u64);
    }
    Ok(stale.len())
}

/// A version newer than any earlier build and, with overwhelming odds, unique.
fn new_version() -> u64 {
    now_ms() * 1_000_000 + u64::from(rand::random::<u32>() % 1_000_000)
}

async fn rebuild(client: &Client, tenant: &str, chunk: &[Stale]) -> Result<(), ClickHouseError> {
    let version = new_version();
    let day_str = |d: u16| day_string(i64::from(d));
    let mut devices: Vec<Uuid> = chunk.iter().map(|s| s.device_id).collect();
    devices.dedup();
    let pairs: Vec<(String, String)> = chunk
        .iter()
        .map(|s| (s.device_id.to_string(), day_str(s.day_number)))
        .collect();
    let first = chunk.iter().map(|s| s.day_number).min().unwrap_or(0);
    let last = chunk.iter().map(|s| s.day_number).max().unwrap_or(0);
    let devices = device_strings(&devices);
    let (first, last) = (day_str(first), day_str(last));
    with_write_retry(|| {
        client
            .query(include_str!("rebuild.sql"))
            .bind(version)
            .bind(tenant)
            .bind(&devices)
            .bind(&first)
            .bind(&last)
            .bind(&pairs)
            .execute()
    })
    .await?;
    with_write_retry(|| async move {
        let mut insert = client.insert::<StateRow>("report_rollup_state").await?;
        for s in chunk {
            insert
                .write(&StateRow {
                    tenant_id: tenant.to_string(),
                    device_id: s.device_id,
                    day: s.day_number,
                    version,
                    source_rows: s.rows,
                })
                .await?;
        }
        insert.end().await
    })
    .await
}

/// Productive / other / idle time per group, from the rollup (call [`refresh`] first).
pub async fn time_figures(
    client: &Client,
    q: &ReportQuery,
) -> Result<Vec<GroupFigures<TimeFigures>>, ClickHouseError> {
    let mut sql = Sql::default();
    if q.item_time_only() {
        // Only time on items counts; the item's queue decides the group / the filter.
        sql.push("SELECT g, toUInt64(sum(active_ms)) AS productive_ms, toUInt64(0) AS other_ms, toUInt64(0) AS idle_ms FROM (SELECT ");
        q.group_expr(&mut sql);
        sql.push(" AS g, active_ms FROM (SELECT device_id, bucket_ms, item_id, active_ms FROM ");
        q.current_rollup(&mut sql, q.from_ms);
        sql.push(" AND bucket_ms >= ")
            .u64(q.from_ms)
            .push(" AND bucket_ms < ")
            .u64(q.to_ms);
        sql.push(
             " AND item_id != '' AND active_ms > 0) AS spans ANY LEFT JOIN (SELECT item_id, queue FROM ",
        )
        .push(ITEMS_LATEST)
        .push(" WHERE tenant_id = ")
        .str(&q.tenant);
        if let Some(queue) = &q.queue {
            sql.push(" AND queue = ").str(queue);
        }
        sql.push(") AS registered USING item_id");
        if let Some(queue) = &q.queue {
            sql.push(" WHERE queue = ").str(queue);
        }
        sql.push(") GROUP BY g ORDER BY g");
    } else {
        sql.push("SELECT g, toUInt64(sumIf(active_ms, item_id != '')) AS productive_ms, toUInt64(sumIf(active_ms, item_id = '')) AS other_ms, toUInt64(sum(idle_ms)) AS idle_ms FROM (SELECT ");
        q.group_expr(&mut sql);
        sql.push(" AS g, item_id, active_ms, idle_ms FROM ");
        q.current_rollup(&mut sql, q.from_ms);
        sql.push(" AND bucket_ms >= ")
            .u64(q.from_ms)
            .push(" AND bucket_ms < ")
            .u64(q.to_ms);
        sql.push(") GROUP BY g ORDER BY g");
    }
    let rows: Vec<TimeRow> = with_timeout(sql.query(client).fetch_all()).await?;
    Ok(rows.into_iter().map(TimeRow::into_figures).collect())
}

/// Items completed per group, and for the whole report, with handle-time statistics and SLA
/// counts (call [`refresh`] for `[from - HANDLE_LOOKBACK_MS, to)` first).
///
/// One pass over the rollup rows of items in the lookback: per item its handle time (all
/// devices) and, as two parallel arrays, the group and time of each of its completions in
/// `[from, to)` (by the filtered devices). Each item row then names its groups (the distinct
/// groups of its completions, each with the earliest completion in it) plus the totals group
/// (its earliest completion of all), and the rows are aggregated per group. The totals come
/// from the same per-item rows, so an item in two groups is counted once there, exactly as
/// `docs/metrics.md` defines.
///
/// Why this shape: arrays of plain values (not tuples) aggregate several times faster on 18.16,
/// `items FINAL` (one sorted merge) is far cheaper than `argMax … GROUP BY item_id`, and a team
/// or queue filter first narrows the items to those it can count, so a one-team report reads
/// only that team's items.
pub async fn item_figures(
    client: &Client,
    q: &ReportQuery,
) -> Result<ItemFiguresByGroup, ClickHouseError> {
    let (from, to, lo) = (q.from_ms, q.to_ms, q.lookback_ms());
    let all_devices = ReportQuery {
        devices: None,
        ..q.clone()
    };
    // A rollup row that is a completion this report counts.
    let counted = |sql: &mut Sql| {
        sql.push("completed_ms >= ")
            .u64(from)
            .push(" AND completed_ms < ")
            .u64(to);
        if let Some(devices) = &q.devices {
            sql.push(" AND ").device_in(devices);
        }
    };
    // Items a team filter leaves: those its devices completed.
    let of_team = |sql: &mut Sql| {
        if q.devices.is_some() {
            sql.push(" AND item_id IN (SELECT item_id FROM ");
            q.current_rollup(sql, from);
            sql.push(" AND item_id != '' AND completed_ms >= ")
                .u64(from)
                .push(" AND completed_ms < ")
                .u64(to)
                .push(")");
        }
    };
    let mut sql = Sql::default();
    sql.push(
        "SELECT t, g, toUInt64(count()) AS items, avg(h) AS mean_ms,
                if(count() % 2 = 1, toFloat64(arraySort(groupArray(h))[intDiv(count(), 2) + 1]),
                   (arraySort(groupArray(h))[intDiv(count(), 2)] + arraySort(groupArray(h))[intDiv(count(), 2) + 1]) / 2) AS median_ms,
                toUInt64(arraySort(groupArray(h))[intDiv(9 * count() + 9, 10)]) AS p90_ms,
                toUInt64(countIf(due > 0)) AS with_due, toUInt64(countIf(due > 0 AND done <= due)) AS met
         FROM (SELECT k.1 AS t, k.2 AS g, h, due, done FROM (
           SELECT h, due, ",
    );
    // The queue is known only after the join with the registrations.
    sql.push(if q.group_by == GroupBy::Queue && !q.total {
        "arrayMap(x -> queue, gs0)"
    } else {
        "gs0"
    });
    sql.push(
        " AS gs,
                  arrayReduce('groupUniqArray', gs) AS ug,
                  arrayConcat(arrayMap(u -> (toUInt8(0), u), ug), [(toUInt8(1), '')]) AS keys,
                  arrayConcat(arrayMap(u -> arrayReduce('min', arrayFilter((d, x) -> x = u, ds, gs)), ug),
                              [arrayReduce('min', ds)]) AS dones
           FROM (SELECT item_id, toUInt64(sum(active_ms)) AS h, groupArrayIf(",
    );
    if q.group_by == GroupBy::Queue {
        sql.push("''");
    } else {
        q.group_expr(&mut sql);
    }
    sql.push(", ");
    counted(&mut sql);
    sql.push(") AS gs0, groupArrayIf(completed_ms, ");
    counted(&mut sql);
    sql.push(") AS ds FROM report_rollup");
    // A team's items are a small share of all: PREWHERE reads only `item_id` to find their
    // rows, and the other columns only of granules that hold some.
    if q.devices.is_some() {
        sql.push(" PREWHERE 1");
        of_team(&mut sql);
    }
    sql.push(" WHERE ");
    all_devices.current_rollup_conditions(&mut sql, lo);
    sql.push(" AND item_id != '' AND bucket_ms >= ")
        .u64(lo)
        .push(" AND bucket_ms < ")
        .u64(to);
    if let Some(queue) = &q.queue {
        sql.push(" AND item_id IN (SELECT item_id FROM ")
            .push(ITEMS_LATEST)
            .push(" WHERE tenant_id = ")
            .str(&q.tenant)
            .push(" AND queue = ")
            .str(queue)
            .push(")");
    }
    sql.push(" GROUP BY item_id HAVING length(ds) > 0) AS handled ANY LEFT JOIN (SELECT item_id, queue, sla_due_ms AS due FROM ")
        .push(ITEMS_LATEST)
        .push(" WHERE tenant_id = ")
        .str(&q.tenant);
    of_team(&mut sql);
    sql.push(") AS registered USING item_id");
    if let Some(queue) = &q.queue {
        sql.push(" WHERE queue = ").str(queue);
    }
    sql.push(") ARRAY JOIN keys AS k, dones AS done) GROUP BY t, g ORDER BY t, g");
    let rows: Vec<ItemRow> = with_timeout(sql.query(client).fetch_all()).await?;
    let (totals, groups): (Vec<ItemRow>, Vec<ItemRow>) = rows.into_iter().partition(|r| r.t == 1);
    Ok(ItemFiguresByGroup {
        groups: groups
            .into_iter()
            .map(|r| GroupFigures {
                figures: r.figures(),
                group: r.g,
            })
            .collect(),
        total: totals.first().map(ItemRow::figures),
    })
}

/// Registered items not completed as of `to`, per queue.
pub async fn backlog(
    client: &Client,
    tenant: &str,
    to_ms: u64,
    queue: Option<&str>,
) -> Result<Vec<QueueBacklog>, ClickHouseError> {
    let mut sql = Sql::default();
    sql.push("SELECT queue, toUInt64(count()) AS count, toUInt64(sum(")
        .u64(to_ms);
    sql.push(" - registered_ms)) AS age_sum_ms, toUInt64(max(")
        .u64(to_ms);
    sql.push(" - registered_ms)) AS max_age_ms FROM ")
        .push(ITEMS_LATEST)
        .push(" WHERE tenant_id = ")
        .str(tenant)
        .push(" AND registered_ms < ")
        .u64(to_ms);
    if let Some(queue) = queue {
        sql.push(" AND queue = ").str(queue);
    }
    // `item_lookup` holds every event naming an item, sorted by item, with its action as a
    // column (0018): the completions are a narrow read there. Duplicates of a re-sent batch
    // cannot change "completed or not"; registrations have no action.
    // Items are matched by a 64-bit hash of their id: a set of integers is built and probed
    // about twice as fast as one of strings on 18.16. An open item would be missed only if its
    // hash equalled a completed item's: about n_open × n_completed / 2^64, under 10^-8 per
    // report at a million items (docs/metrics.md, "Backlog").
    sql.push(" AND cityHash64(item_id) NOT IN (SELECT cityHash64(item_id) FROM item_lookup WHERE tenant_id = ")
        .str(tenant)
        .push(" AND action = 'completed' AND time_ms < ")
        .u64(to_ms)
        .push(") GROUP BY queue ORDER BY queue");
    let rows: Vec<BacklogRow> = with_timeout(sql.query(client).fetch_all()).await?;
    Ok(rows.into_iter().map(BacklogRow::into_backlog).collect())
}

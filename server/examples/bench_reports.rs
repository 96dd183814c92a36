//! Benchmark of `GET /v1/reports/performance`: a 30-day team report over N activity spans
//! (default 10 million) in a throwaway ClickHouse, driven through the real router in-process.
//!
//! Run with `scripts/bench-reports.sh` (release build). Data, generated inside ClickHouse:
//! 500 devices in 20 teams, 30 days, 667 spans of ~46 s per device and day (80% active, 70% on
//! an item, each item 8 spans ≈ 6.5 min), one `completed` event per item (≈ 1.25M items), one
//! registration per item (queue q0–q4, due times), and 0.4% of rows inserted twice (a re-sent
//! batch). Prints the time of: the first report (builds the rollup), warm reports, and a
//! report after one day of every device went stale.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use backlight_server::clickhouse::embedded::{self, ClickHouseProcess};
use backlight_server::clickhouse::ClickHouseConfig;
use backlight_server::http::{router, AppState};
use backlight_server::ingest::writer::{IngestWriter, WriterConfig};
use backlight_server::storage::{reports, Store};
use backlight_server::tenancy::{Role, TenantId};
use backlight_shared::now_ms;
use http_body_util::BodyExt;
use tower::ServiceExt;

const DAY: u64 = 86_400_000;
const DEVICES: u64 = 500;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // Quiet by default; BACKLIGHT_LOG=backlight_server::storage::reports=debug prints the SQL.
    if std::env::var_os("BACKLIGHT_LOG").is_some() {
        backlight_server::telemetry::init_logging(false);
    }
    let spans: u64 = std::env::args()
        .nth(1)
        .map_or(Ok(10_000_000), |s| s.parse())?;
    let per_device = spans / DEVICES;
    let per_day = per_device / 30;
    let dir = tempfile::tempdir()?;
    // BENCH_CLICKHOUSE_URL (with BENCH_CLICKHOUSE_USER and BENCH_CLICKHOUSE_PASSWORD when it
    // needs them): use a running ClickHouse (kept afterwards, for looking into it).
    let external = std::env::var("BENCH_CLICKHOUSE_URL").ok();
    let clickhouse = match external {
        Some(_) => None,
        None => Some(ClickHouseProcess::start(dir.path(), None).await?),
    };
    let config = match &clickhouse {
        Some(process) => ClickHouseConfig {
            url: process.url(),
            database: "bench".into(),
            user: Some(embedded::USER.into()),
            password: Some(process.password().into()),
            cluster: None,
        },
        None => ClickHouseConfig {
            url: external.clone().unwrap_or_default(),
            database: "bench".into(),
            user: std::env::var("BENCH_CLICKHOUSE_USER").ok(),
            password: std::env::var("BENCH_CLICKHOUSE_PASSWORD").ok(),
            cluster: None,
        },
    };
    let store = Store::open(&config).await?;
    let client = store.client().clone();
    let tenant: TenantId = "acme".parse()?;
    // BENCH_REUSE=1 (with BENCH_CLICKHOUSE_URL): the data of an earlier run is there; skip loading.
    let reuse = std::env::var("BENCH_REUSE").is_ok_and(|v| v == "1");
    if !reuse {
        store.registry().create_tenant(&tenant, "Acme").await?;
    }
    let key = store
        .registry()
        .create_api_key(&tenant, Role::Wfm, "bench")
        .await?
        .to_string();

    // The 30 full UTC days before today.
    let to = now_ms() / DAY * DAY;
    let from = to - 30 * DAY;
    if !reuse {
        load(&client, from, spans, per_device, per_day).await?;
    }

    let writer = IngestWriter::spawn(client.clone(), WriterConfig::default());
    let app = router(AppState::new(
        store.clone(),
        writer,
        Duration::from_secs(60),
    ));
    // The whole organisation by team, and one team's month by day (what a team's manager opens).
    let org_uri =
        format!("/v1/reports/performance?from={from}&to={to}&group_by=team&tz=Europe/Berlin");
    let team_uri = format!(
        "/v1/reports/performance?from={from}&to={to}&group_by=day&team=team-3&tz=Europe/Berlin"
    );
    let report_of = |uri: String| async {
        let req = Request::builder()
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap();
        let started = Instant::now();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        (started.elapsed(), body)
    };

    // The first report over a period builds its rollup (longer than a request may take at this
    // size: the endpoint answers 503 + Retry-After meanwhile). Build it directly and time it.
    let started = Instant::now();
    let built = reports::refresh(&client, "acme", from - 31 * DAY, to).await?;
    println!(
        "rollup build of {built} device-days: {:.1?}",
        started.elapsed()
    );
    // Each query of a report on its own (for finding the slow one).
    let assignments = store.registry().assignments(&tenant).await?;
    let q = reports::ReportQuery {
        tenant: "acme".into(),
        from_ms: from,
        to_ms: to,
        tz: "Europe/Berlin".parse().expect("a zone name"),
        group_by: backlight_server::reports::GroupBy::Team,
        devices: None,
        queue: None,
        device_groups: assignments
            .iter()
            .map(|a| (a.device_id, a.team.clone()))
            .collect(),
        total: false,
    };
    // Medians of 3 runs each; `SELECT count() FROM events` is the baseline for comparing runs
    // on a noisy machine.
    let count_events = || async {
        client
            .query("SELECT count() FROM events")
            .fetch_one::<u64>()
            .await
    };
    let baseline = median3(count_events).await?;
    println!("  baseline SELECT count() FROM events: {baseline:.2?} (median of 3)");
    // What the rollup saves: only deduplicating the period's raw events, nothing computed yet.
    let dedupe_sql = format!(
        "SELECT count() FROM (SELECT device_id, seq FROM events WHERE tenant_id = 'acme'
           AND event_date >= toDate(toDateTime(intDiv({from}, 1000)), 'UTC')
           AND event_date < toDate(toDateTime(intDiv({to}, 1000)), 'UTC')
           GROUP BY device_id, seq)"
    );
    let dedupe = || async { client.query(&dedupe_sql).fetch_one::<u64>().await };
    let raw_dedupe = median3(dedupe).await?;
    println!(
        "  baseline: deduplicating the period's raw events (GROUP BY device_id, seq): {raw_dedupe:.2?} (median of 3)"
    );
    let time = median3(|| reports::time_figures(&client, &q)).await?;
    println!("  time figures: {time:.2?} (median of 3)");
    let items = median3(|| reports::item_figures(&client, &q)).await?;
    println!("  item figures (groups and totals): {items:.2?} (median of 3)");
    let backlog = median3(|| reports::backlog(&client, "acme", to, None)).await?;
    println!("  backlog: {backlog:.2?} (median of 3)");
    let q_team = reports::ReportQuery {
        devices: Some(
            assignments
                .iter()
                .filter(|a| a.team == "team-3")
                .map(|a| a.device_id)
                .collect(),
        ),
        group_by: backlight_server::reports::GroupBy::Day,
        ..q.clone()
    };
    let time = median3(|| reports::time_figures(&client, &q_team)).await?;
    println!("  one team by day, time figures: {time:.2?} (median of 3)");
    let items = median3(|| reports::item_figures(&client, &q_team)).await?;
    println!("  one team by day, item figures: {items:.2?} (median of 3)");
    let report = || report_of(org_uri.clone());
    let (cold, body) = report().await;
    println!("first report: {cold:.2?}");
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    println!(
        "  teams {}, items handled {}, productive {} ms",
        v["rows"].as_array().map_or(0, Vec::len),
        v["totals"]["items_handled"],
        v["totals"]["productive_ms"]
    );
    let mut warm = Vec::new();
    for _ in 0..5 {
        warm.push(report().await.0);
    }
    warm.sort();
    println!(
        "warm 30-day report of all 20 teams, by team: min {:.2?}, median {:.2?}, max {:.2?} ({:.2}x the raw dedupe baseline)",
        warm[0],
        warm[2],
        warm[4],
        warm[2].as_secs_f64() / raw_dedupe.as_secs_f64()
    );
    let mut warm = Vec::new();
    let mut body = Default::default();
    for _ in 0..5 {
        let (t, b) = report_of(team_uri.clone()).await;
        warm.push(t);
        body = b;
    }
    warm.sort();
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    println!(
        "warm 30-day report of one team (25 devices), by day: min {:.2?}, median {:.2?}, max {:.2?} ({:.2}x the raw dedupe baseline; {} days, items handled {})",
        warm[0],
        warm[2],
        warm[4],
        warm[2].as_secs_f64() / raw_dedupe.as_secs_f64(),
        v["rows"].as_array().map_or(0, Vec::len),
        v["totals"]["items_handled"],
    );

    // New rows for the last day of every device: that day is rebuilt by the next report.
    client
        .query(&format!(
            "INSERT INTO events SELECT * FROM events WHERE event_date = toDate(toDateTime(intDiv({}, 1000)), 'UTC') AND seq % 100 = 1",
            to - DAY
        ))
        .execute()
        .await?;
    let (stale, _) = report().await;
    println!("report after one day of all {DEVICES} devices went stale: {stale:.2?}");
    let (again, _) = report().await;
    println!("and the next one: {again:.2?}");
    if let Some(clickhouse) = clickhouse {
        clickhouse.stop().await?;
    }
    Ok(())
}

/// Generates the data set inside ClickHouse (see the module comment).
async fn load(
    client: &clickhouse::Client,
    from: u64,
    spans: u64,
    per_device: u64,
    per_day: u64,
) -> anyhow::Result<()> {
    let device =
        "toUUID(concat('00000000-0000-4000-8000-', substring(toString(1000000000000 + d), 2, 12)))";
    let started = Instant::now();
    let spans_sql = format!(
        "INSERT INTO events SELECT 'acme', {device}, k * 2 + 1, toUUID('00000000-0000-4000-8000-000000000000'), toInt8(1),
                toDate(toDateTime(intDiv(t, 1000)), 'UTC'), t, t + 45000 + (number % 7) * 500, t, 'claims-desk', NULL,
                toInt8(multiIf(number % 10 < 8, 1, number % 10 = 8, 2, 3)),
                if(number % 10 < 7, concat('IT-', toString(intDiv(number, 8))), ''), '', toInt8(0), toInt8(0), 0, 0, '', '', 0, 0, 0, 0
         FROM (SELECT number, intDiv(number, {per_device}) AS d, number % {per_device} AS k,
                      toUInt64({from} + intDiv(k, {per_day}) * 86400000 + 25200000 + (k % {per_day}) * 48500) AS t
               FROM system.numbers LIMIT {spans})"
    );
    client.query(&spans_sql).execute().await?;
    let completions_sql = format!(
        "INSERT INTO events SELECT 'acme', {device}, k * 2 + 2, toUUID('00000000-0000-4000-8000-000000000000'), toInt8(2),
                toDate(toDateTime(intDiv(t, 1000)), 'UTC'), t, t, t, '', NULL, toInt8(0), concat('IT-', toString(intDiv(number, 8))),
                '', toInt8(4), toInt8(1), 0, 0, '', '', 0, 0, 0, 0
         FROM (SELECT number, intDiv(number, {per_device}) AS d, number % {per_device} AS k,
                      toUInt64({from} + intDiv(k, {per_day}) * 86400000 + 25200000 + (k % {per_day}) * 48500 + 50000) AS t
               FROM system.numbers WHERE number % 8 = 7 LIMIT {})",
        spans / 8
    );
    client.query(&completions_sql).execute().await?;
    // A re-sent batch: two devices' events stored twice.
    client
        .query("INSERT INTO events SELECT * FROM events WHERE device_id IN (toUUID('00000000-0000-4000-8000-000000000007'), toUUID('00000000-0000-4000-8000-000000000123'))")
        .execute()
        .await?;
    client
        .query(&format!(
            "INSERT INTO device_assignments SELECT 'acme', {device}, concat('team-', toString(d % 20)), concat('person-', toString(d)), 1
             FROM (SELECT number AS d FROM system.numbers LIMIT {DEVICES})"
        ))
        .execute()
        .await?;
    client
        .query(&format!(
            "INSERT INTO items SELECT 'acme', concat('IT-', toString(number)), concat('q', toString(number % 5)), 1,
                    {from} + number * 2000, '', '', {from}, 1 FROM system.numbers LIMIT {}",
            spans / 8 + 50_000
        ))
        .execute()
        .await?;
    println!(
        "loaded {spans} spans + {} completions in {:.1?}",
        spans / 8,
        started.elapsed()
    );

    Ok(())
}

/// Median wall time of three runs of `f`.
async fn median3<T, E, F, Fut>(f: F) -> Result<Duration, E>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        f().await?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[1])
}

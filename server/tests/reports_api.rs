//! `GET /v1/reports/performance` against a real, throwaway ClickHouse, driven in-process.
//!
//! One small fixed data set goes in through `/v1/ingest` (device B's batch twice), and every
//! figure is checked against values computed by hand below. The report zone is `Etc/GMT-2`
//! (UTC+2 all year) so local midnight is 22:00 UTC whatever the date the test runs on; DST
//! days are covered by the unit tests of `reports::split`.
//!
//! Data, times relative to L = local midnight starting "day 1" (day 0 is the day before);
//! the report covers day 0 and day 1:
//!
//! | device (team, person) | seq | what |
//! |---|---|---|
//! | A (north, Alice) | 1 | active on I1, L−20m → L+10m (crosses local midnight) |
//! | A | 2 | I1 completed at L+10m |
//! | A | 3 | active, no item, L+10m → L+25m (crosses L+15m) |
//! | A | 4 | idle L+25m → L+40m |
//! | A | 5 | locked L+40m → L+50m |
//! | A | 6 | active on I2, L+50m → L+70m |
//! | A | 7 | I2 completed at L+70m |
//! | B (south, Bob) | 1 | active on I2, L+60m → L+65m |
//! | B | 2 | active on I3, L+2h → L+2h40m |
//! | B | 3 | I3 completed at L+2h40m |
//! | B | 4 | active on I4, from−30m → from+15m (clipped to 15 min) |
//! | B | 5 | active, no item, L+3h → L+3h20m |
//!
//! Items: I1 claims, due L+5m (missed); I2 claims, due L+2h (met); I3 billing, no due time;
//! I4 billing, registered L−2h, never completed; I5 claims, registered L+1h, never worked.

mod support;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use backlight_server::clickhouse::embedded::ClickHouseProcess;
use backlight_server::http::{router, AppState};
use backlight_server::items::ItemRegistration;
use backlight_server::storage::items::insert_registrations;
use backlight_server::storage::{audit, Store};
use backlight_server::tenancy::{Role, TenantId};
use backlight_shared::now_ms;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

const M: u64 = 60_000;
const H: u64 = 60 * M;
const TZ: &str = "Etc/GMT-2";

struct Fixture {
    app: Router,
    state: AppState,
    store: Store,
    /// Local midnight that starts day 1.
    l: u64,
    wfm: String,
    a: Device,
    b: Device,
    _clickhouse: ClickHouseProcess,
    _dir: tempfile::TempDir,
}

struct Device {
    id: Uuid,
    credential: String,
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(auth) = auth {
        req = req.header(header::AUTHORIZATION, format!("Bearer {auth}"));
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

fn span(seq: u64, start: u64, end: u64, state: &str, item: Option<&str>) -> Value {
    let mut e = json!({"seq": seq, "id": Uuid::new_v4(), "kind": "activity_span", "app": "claims-desk",
                       "start_ms": start, "end_ms": end, "state": state});
    if let Some(item) = item {
        e["item_id"] = json!(item);
    }
    e
}

fn completed(seq: u64, at: u64, item: &str) -> Value {
    json!({"seq": seq, "id": Uuid::new_v4(), "kind": "work_item", "item_id": item, "action": "completed",
           "at_ms": at, "source": "rule"})
}

async fn ingest(app: &Router, device: &Device, events: Vec<Value>) {
    let batch = json!({"protocol": 1, "device_id": device.id, "events": events});
    let (status, _, body) = call(
        app,
        "POST",
        "/v1/ingest",
        Some(&device.credential),
        Some(batch),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

async fn enroll(app: &Router, key: &str, host: &str) -> Device {
    let req =
        json!({"enrollment_key": key, "hostname": host, "agent_version": "0.1.0", "os": "linux"});
    let (status, _, body) = call(app, "POST", "/v1/enroll", None, Some(req)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    Device {
        id: v["device_id"].as_str().unwrap().parse().unwrap(),
        credential: v["device_credential"].as_str().unwrap().to_string(),
    }
}

fn b_batch(l: u64) -> Vec<Value> {
    let from = l - 24 * H;
    vec![
        span(1, l + 60 * M, l + 65 * M, "active", Some("I2")),
        span(2, l + 2 * H, l + 2 * H + 40 * M, "active", Some("I3")),
        completed(3, l + 2 * H + 40 * M, "I3"),
        span(4, from - 30 * M, from + 15 * M, "active", Some("I4")),
        span(5, l + 3 * H, l + 3 * H + 20 * M, "active", None),
    ]
}

async fn fixture() -> Fixture {
    let support::Parts {
        store,
        state,
        clickhouse,
        dir,
    } = support::start_parts().await;
    let app = router(state.clone());

    let registry = store.registry();
    let tenant: TenantId = "acme".parse().unwrap();
    registry.create_tenant(&tenant, "Acme").await.unwrap();
    let key = registry
        .create_enrollment_key(&tenant, None, "test")
        .await
        .unwrap()
        .to_string();
    let wfm = registry
        .create_api_key(&tenant, Role::Wfm, "wfm")
        .await
        .unwrap()
        .to_string();
    let a = enroll(&app, &key, "desk-a").await;
    let b = enroll(&app, &key, "desk-b").await;
    registry
        .assign_device(&tenant, a.id, "north", "Alice")
        .await
        .unwrap();
    registry
        .assign_device(&tenant, b.id, "south", "Bob")
        .await
        .unwrap();

    // Local (UTC+2) midnight 10 days ago: UTC midnight minus 2 hours.
    let l = (now_ms() / (24 * H) - 10) * 24 * H - 2 * H;
    ingest(
        &app,
        &a,
        vec![
            span(1, l - 20 * M, l + 10 * M, "active", Some("I1")),
            completed(2, l + 10 * M, "I1"),
            span(3, l + 10 * M, l + 25 * M, "active", None),
            span(4, l + 25 * M, l + 40 * M, "idle", None),
            span(5, l + 40 * M, l + 50 * M, "locked", None),
            span(6, l + 50 * M, l + 70 * M, "active", Some("I2")),
            completed(7, l + 70 * M, "I2"),
        ],
    )
    .await;
    // Device B's batch, and the same batch again (an acknowledgement that got lost).
    ingest(&app, &b, b_batch(l)).await;
    ingest(&app, &b, b_batch(l)).await;

    // Due 0: no SLA.
    let item = |id: &str, queue: &str, due: u64, registered: u64| ItemRegistration {
        item_id: id.into(),
        queue: queue.into(),
        priority: 0,
        sla_due_ms: Some(due).filter(|&d| d != 0),
        sla_class: None,
        customer_ref: String::new(),
        registered_ms: registered,
        updated_ms: 1,
    };
    insert_registrations(
        store.client(),
        "acme",
        &[
            item("I1", "claims", l + 5 * M, l - 3 * H),
            item("I2", "claims", l + 2 * H, l - 3 * H),
            item("I3", "billing", 0, l - 3 * H),
            item("I4", "billing", 0, l - 2 * H),
            item("I5", "claims", 0, l + H),
        ],
    )
    .await
    .unwrap();
    // Older registrations (lower `updated_ms`, in another part) that every figure must ignore:
    // the newest registration decides an item's queue, due time and registration time.
    let stale = |id: &str, queue: &str, due: u64, registered: u64| ItemRegistration {
        updated_ms: 0,
        ..item(id, queue, due, registered)
    };
    insert_registrations(
        store.client(),
        "acme",
        &[
            stale("I1", "billing", 0, l - 30 * H),
            stale("I4", "claims", l, l - 40 * H),
            stale("I5", "billing", 0, l - 50 * H),
        ],
    )
    .await
    .unwrap();

    Fixture {
        app,
        state,
        store,
        l,
        wfm,
        a,
        b,
        _clickhouse: clickhouse,
        _dir: dir,
    }
}

impl Fixture {
    fn uri(&self, extra: &str) -> String {
        format!(
            "/v1/reports/performance?from={}&to={}&tz={TZ}{extra}",
            self.l - 24 * H,
            self.l + 24 * H
        )
    }

    async fn report(&self, extra: &str) -> Value {
        let (status, _, body) =
            call(&self.app, "GET", &self.uri(extra), Some(&self.wfm), None).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }
}

fn row<'a>(report: &'a Value, group: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["group"] == group)
        .unwrap_or_else(|| panic!("no row {group} in {report:#}"))
}

fn ms(v: u64) -> Value {
    json!(v)
}

fn check_team_report(r: &Value, north_productive: u64) {
    assert_eq!(r["rows"].as_array().unwrap().len(), 2, "{r:#}");
    let north = row(r, "north");
    assert_eq!(north["productive_ms"], ms(north_productive));
    assert_eq!(north["other_ms"], ms(15 * M));
    assert_eq!(north["idle_ms"], ms(25 * M));
    assert_eq!(
        north["occupancy"],
        json!(north_productive as f64 / (north_productive + 15 * M) as f64)
    );
    assert_eq!(north["items_handled"], json!(2));
    assert_eq!(north["aht_mean_ms"], json!(27.5 * M as f64));
    assert_eq!(north["aht_median_ms"], json!(27.5 * M as f64));
    assert_eq!(north["aht_p90_ms"], ms(30 * M));
    assert_eq!(
        (
            north["sla_items_with_due"].clone(),
            north["sla_items_met"].clone()
        ),
        (json!(2), json!(1))
    );
    assert_eq!(north["sla_compliance"], json!(0.5));

    let south = row(r, "south");
    // I2 5m + I3 40m + I4 15m (clipped at `from`), counted once although sent twice.
    assert_eq!(south["productive_ms"], ms(60 * M));
    assert_eq!(south["other_ms"], ms(20 * M));
    assert_eq!(south["idle_ms"], ms(0));
    assert_eq!(south["occupancy"], json!(0.75));
    assert_eq!(south["items_handled"], json!(1));
    assert_eq!(south["aht_mean_ms"], json!((40 * M) as f64));
    assert_eq!(south["aht_p90_ms"], ms(40 * M));
    assert_eq!(south["sla_items_with_due"], json!(0));
    assert_eq!(south["sla_compliance"], Value::Null);

    let t = &r["totals"];
    assert_eq!(t["productive_ms"], ms(north_productive + 60 * M));
    assert_eq!(t["other_ms"], ms(35 * M));
    assert_eq!(t["idle_ms"], ms(25 * M));
    assert_eq!(t["items_handled"], json!(3));
    // Handle times 25m (I2: A 20m + B 5m), 30m (I1), 40m (I3).
    assert_eq!(t["aht_mean_ms"], json!((95 * M) as f64 / 3.0));
    assert_eq!(t["aht_median_ms"], json!((30 * M) as f64));
    assert_eq!(t["aht_p90_ms"], ms(40 * M));
    assert_eq!(t["sla_compliance"], json!(0.5));
    // Backlog at `to` = L+24h: I4 (registered L−2h, 26h old), I5 (L+1h, 23h old).
    assert_eq!(
        r["backlog"],
        json!({"count": 2, "mean_age_ms": (49 * H) as f64 / 2.0, "max_age_ms": 26 * H})
    );
}

#[tokio::test]
async fn performance_reports_match_hand_computed_figures() {
    let f = fixture().await;

    // Team report; then again after B's batch arrives a third time and A sends new work, so
    // the rollup must notice both (no double count, new data included).
    let r = f.report("&group_by=team").await;
    assert_eq!(r["tz"], json!(TZ));
    check_team_report(&r, 50 * M);
    ingest(&f.app, &f.b, b_batch(f.l)).await;
    ingest(
        &f.app,
        &f.a,
        vec![span(
            8,
            f.l + 5 * H,
            f.l + 5 * H + 10 * M,
            "active",
            Some("I6"),
        )],
    )
    .await;
    check_team_report(&f.report("&group_by=team").await, 60 * M);

    // Days in UTC+2: the span across local midnight is split 20m / 10m.
    let r = f.report("&group_by=day").await;
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{r:#}");
    assert_eq!(rows[0]["start_ms"], ms(f.l - 24 * H));
    assert_eq!(rows[0]["end_ms"], ms(f.l));
    assert_eq!(
        rows[0]["productive_ms"],
        ms(35 * M),
        "A 20m on I1 + B 15m on I4"
    );
    assert_eq!(rows[0]["items_handled"], json!(0));
    assert_eq!(rows[0]["occupancy"], json!(1.0));
    assert_eq!(rows[1]["productive_ms"], ms(85 * M));
    assert_eq!(rows[1]["other_ms"], ms(35 * M));
    assert_eq!(rows[1]["idle_ms"], ms(25 * M));
    assert_eq!(rows[1]["items_handled"], json!(3));

    // 15-minute intervals: 192 rows; the first ones of day 1 split at L+15m.
    let r = f.report("&group_by=interval15").await;
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 192);
    let first = &rows[96];
    assert_eq!(first["start_ms"], ms(f.l));
    assert!(
        first["group"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00+02:00"),
        "{first}"
    );
    assert_eq!(
        (first["productive_ms"].clone(), first["other_ms"].clone()),
        (ms(10 * M), ms(5 * M))
    );
    assert_eq!(first["items_handled"], json!(1), "I1, completed at L+10m");
    assert_eq!(
        first["aht_mean_ms"],
        json!((30 * M) as f64),
        "its whole handle time"
    );
    let second = &rows[97];
    assert_eq!(
        (second["other_ms"].clone(), second["idle_ms"].clone()),
        (ms(10 * M), ms(5 * M))
    );
    assert_eq!(rows[95]["productive_ms"], ms(15 * M), "L−15m → L: A on I1");
    assert_eq!(
        rows[0]["productive_ms"],
        ms(15 * M),
        "B on I4, clipped at from"
    );
    let hour = f.report("&group_by=hour").await;
    assert_eq!(hour["rows"].as_array().unwrap().len(), 48);
    assert_eq!(
        hour["rows"][24]["productive_ms"],
        ms(20 * M),
        "L → L+1h: A on I1 10m and on I2 10m"
    );

    // Queues: only item time; backlog per queue.
    let r = f.report("&group_by=queue").await;
    let claims = row(&r, "claims");
    assert_eq!(claims["productive_ms"], ms(55 * M), "I1 30m + I2 25m");
    assert_eq!(
        (claims["other_ms"].clone(), claims["occupancy"].clone()),
        (Value::Null, Value::Null)
    );
    assert_eq!(claims["items_handled"], json!(2));
    assert_eq!(
        claims["backlog"],
        json!({"count": 1, "mean_age_ms": (23 * H) as f64, "max_age_ms": 23 * H})
    );
    let billing = row(&r, "billing");
    assert_eq!(billing["productive_ms"], ms(55 * M), "I3 40m + I4 15m");
    assert_eq!(billing["items_handled"], json!(1));
    assert_eq!(billing["backlog"]["count"], json!(1));
    assert_eq!(
        row(&r, "")["productive_ms"],
        ms(10 * M),
        "I6 is not registered"
    );

    // Filters.
    let r = f.report("&team=north").await;
    assert_eq!(r["rows"].as_array().unwrap().len(), 1);
    assert_eq!(r["totals"]["productive_ms"], ms(60 * M));
    assert_eq!(r["totals"]["items_handled"], json!(2));
    let r = f.report("&group_by=team&queue=claims").await;
    assert_eq!(row(&r, "north")["productive_ms"], ms(50 * M));
    assert_eq!(row(&r, "north")["other_ms"], Value::Null);
    assert_eq!(row(&r, "south")["productive_ms"], ms(5 * M));
    assert_eq!(r["backlog"]["count"], json!(1));

    // Devices.
    let r = f.report("&group_by=device").await;
    assert_eq!(row(&r, &f.a.id.to_string())["idle_ms"], ms(25 * M));

    // CSV.
    let (status, headers, body) = call(
        &f.app,
        "GET",
        &f.uri("&group_by=team&format=csv"),
        Some(&f.wfm),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    assert!(headers[header::CONTENT_DISPOSITION]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
    let csv = String::from_utf8(body).unwrap();
    let lines: Vec<&str> = csv.split("\r\n").collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].starts_with("group,start,end,items_handled,aht_mean_ms"));
    assert_eq!(
        lines[1],
        format!(
            "north,,,2,{},{},{},{},{},{},{},2,1,0.5,,,",
            27.5 * M as f64,
            27.5 * M as f64,
            30 * M,
            60 * M,
            15 * M,
            25 * M,
            0.8
        )
    );
    assert!(lines[2].starts_with("south,,,1,"));

    // Person grouping only where the tenant shows names.
    let (status, _, body) = call(
        &f.app,
        "GET",
        &f.uri("&group_by=person"),
        Some(&f.wfm),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "person_names_hidden");
    assert!(v["message"].as_str().unwrap().contains("show_person_names"));
    let tenant: TenantId = "acme".parse().unwrap();
    f.store
        .registry()
        .update_settings(&tenant, Some(true), None)
        .await
        .unwrap();
    let r = f.report("&group_by=person").await;
    assert_eq!(row(&r, "Alice")["productive_ms"], ms(60 * M));
    assert_eq!(row(&r, "Bob")["productive_ms"], ms(60 * M));

    // Every report call is in the audit log.
    f.state.audit.flush().await.unwrap();
    let entries = audit::recent(f.store.client(), "acme", 100).await.unwrap();
    let reports: Vec<_> = entries.iter().filter(|e| e.action == "report").collect();
    assert_eq!(reports.len(), 11, "{entries:?}");
    assert!(reports
        .iter()
        .all(|e| e.key_name == "wfm" && e.role == "wfm"));
    assert!(reports.iter().any(|e| e.target.contains("group_by=person")));
}

#[tokio::test]
async fn report_access_and_parameters_are_checked() {
    let f = fixture().await;
    let registry = f.store.registry();
    let tenant: TenantId = "acme".parse().unwrap();
    let agent = registry
        .create_api_key(&tenant, Role::CcAgent, "agent")
        .await
        .unwrap()
        .to_string();
    let admin = registry
        .create_api_key(&tenant, Role::Admin, "admin")
        .await
        .unwrap()
        .to_string();
    let uri = f.uri("");

    let (status, _, _) = call(&f.app, "GET", &uri, Some(&agent), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "cc_agent");
    let (status, _, _) = call(&f.app, "GET", &uri, Some(&f.a.credential), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "device credential");
    let (status, _, _) = call(&f.app, "GET", &uri, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no credential");
    let (status, _, _) = call(&f.app, "GET", &uri, Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "admin");

    // Another tenant's WFM sees none of acme's data.
    let other: TenantId = "globex".parse().unwrap();
    registry.create_tenant(&other, "Globex").await.unwrap();
    let globex = registry
        .create_api_key(&other, Role::Wfm, "wfm")
        .await
        .unwrap()
        .to_string();
    let (status, _, body) = call(&f.app, "GET", &uri, Some(&globex), None).await;
    assert_eq!(status, StatusCode::OK);
    let r: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(r["rows"], json!([]));
    assert_eq!(r["totals"]["productive_ms"], json!(0));
    assert_eq!(r["totals"]["items_handled"], json!(0));
    assert_eq!(r["backlog"]["count"], json!(0));

    // Default zone from the tenant's settings.
    registry
        .update_settings(&tenant, None, Some("Europe/Berlin"))
        .await
        .unwrap();
    let no_tz = format!(
        "/v1/reports/performance?from={}&to={}",
        f.l - 24 * H,
        f.l + 24 * H
    );
    let (status, _, body) = call(&f.app, "GET", &no_tz, Some(&f.wfm), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["tz"],
        "Europe/Berlin"
    );

    let bad = |extra: &str, field: &str| {
        (
            format!("/v1/reports/performance?{extra}"),
            field.to_string(),
        )
    };
    let (from, to) = (f.l - 24 * H, f.l + 24 * H);
    for (uri, field) in [
        bad(&format!("from={from}&to={to}&tz=Mars/Olympus_Mons"), "tz"),
        bad(&format!("from={from}&to={to}&tz=Europe/Berlin'--"), "tz"),
        bad(&format!("from={}&to={to}", from + 1), "from"),
        bad(&format!("from={from}&to={from}"), "to"),
        bad(&format!("from={from}&to={}", from + 93 * 24 * H), "to"),
        bad(&format!("from=yesterday&to={to}"), "from"),
        bad(&format!("to={to}"), "from"),
        bad(&format!("from={from}&to={to}&group_by=week"), "group_by"),
        bad(&format!("from={from}&to={to}&format=xml"), "format"),
        bad(&format!("from={from}&to={to}&colour=red"), "colour"),
    ] {
        let (status, _, body) = call(&f.app, "GET", &uri, Some(&f.wfm), None).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{uri}: {}",
            String::from_utf8_lossy(&body)
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["field"], json!(field), "{uri}: {v}");
    }
    // RFC 3339 works as well as milliseconds.
    let rfc = "/v1/reports/performance?from=2026-01-01T00:00:00%2B01:00&to=2026-01-02T00:00:00Z";
    let (status, _, body) = call(&f.app, "GET", rfc, Some(&f.wfm), None).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

/// Items completed more than once: in two teams (counted in each team, once in the totals, with
/// the earliest completion deciding the SLA), and twice on one device in two hours (in each
/// hour, once for the team). Device B's batch is sent twice. Another period than the fixture's
/// (local day −2), so the fixture's data is not in it.
#[tokio::test]
async fn items_completed_in_several_groups_count_once_in_the_totals() {
    let f = fixture().await;
    let w = f.l - 72 * H;
    ingest(
        &f.app,
        &f.a,
        vec![
            span(20, w + H, w + H + 10 * M, "active", Some("J1")),
            completed(21, w + H + 10 * M, "J1"),
            span(22, w + 2 * H, w + 2 * H + 20 * M, "active", Some("J2")),
            completed(23, w + 2 * H + 20 * M, "J2"),
            completed(24, w + 3 * H, "J2"),
        ],
    )
    .await;
    let b_events = || {
        vec![
            span(20, w + 4 * H + 55 * M, w + 5 * H, "active", Some("J1")),
            completed(21, w + 5 * H, "J1"),
        ]
    };
    ingest(&f.app, &f.b, b_events()).await;
    ingest(&f.app, &f.b, b_events()).await;
    insert_registrations(
        f.store.client(),
        "acme",
        &[ItemRegistration {
            item_id: "J1".into(),
            queue: "claims".into(),
            priority: 0,
            sla_due_ms: Some(w + 2 * H),
            sla_class: None,
            customer_ref: String::new(),
            registered_ms: w,
            updated_ms: 1,
        }],
    )
    .await
    .unwrap();
    let uri = |extra: &str| {
        format!(
            "/v1/reports/performance?from={w}&to={}&tz={TZ}{extra}",
            w + 24 * H
        )
    };
    let (app, wfm) = (&f.app, &f.wfm);
    let get = |extra: &str| {
        let uri = uri(extra);
        async move {
            let (status, _, body) = call(app, "GET", &uri, Some(wfm), None).await;
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            serde_json::from_slice::<Value>(&body).unwrap()
        }
    };

    // J1: handle time 15m (A 10m + B 5m), due W+2h; completed by A (north) at W+1h10m (met)
    // and by B (south) at W+5h (missed). J2: 20m, no due time, completed twice by A.
    let r = get("&group_by=team").await;
    let north = row(&r, "north");
    assert_eq!(north["items_handled"], json!(2));
    assert_eq!(north["aht_mean_ms"], json!((35 * M) as f64 / 2.0));
    assert_eq!(north["aht_median_ms"], json!((35 * M) as f64 / 2.0));
    assert_eq!(north["aht_p90_ms"], ms(20 * M));
    assert_eq!(
        (
            north["sla_items_with_due"].clone(),
            north["sla_items_met"].clone()
        ),
        (json!(1), json!(1))
    );
    let south = row(&r, "south");
    assert_eq!(south["items_handled"], json!(1));
    assert_eq!(south["aht_mean_ms"], json!((15 * M) as f64));
    assert_eq!(
        (
            south["sla_items_with_due"].clone(),
            south["sla_items_met"].clone()
        ),
        (json!(1), json!(0))
    );
    let t = &r["totals"];
    assert_eq!(t["items_handled"], json!(2));
    assert_eq!(t["aht_mean_ms"], json!((35 * M) as f64 / 2.0));
    assert_eq!(t["aht_median_ms"], json!((35 * M) as f64 / 2.0));
    assert_eq!(t["aht_p90_ms"], ms(20 * M));
    assert_eq!(
        (t["sla_items_with_due"].clone(), t["sla_items_met"].clone()),
        (json!(1), json!(1)),
        "the earliest completion decides"
    );

    // Hours: J1 at W+1h and W+5h, J2 at W+2h and W+3h; each hour counts its item once.
    let r = get("&group_by=hour").await;
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 24);
    let handled: Vec<u64> = rows
        .iter()
        .map(|r| r["items_handled"].as_u64().unwrap())
        .collect();
    let mut expected = vec![0; 24];
    for h in [1, 2, 3, 5] {
        expected[h] = 1;
    }
    assert_eq!(handled, expected);
    assert_eq!(rows[5]["aht_mean_ms"], json!((15 * M) as f64));
    assert_eq!(rows[5]["sla_items_met"], json!(0));
    assert_eq!(rows[1]["sla_items_met"], json!(1));
    assert_eq!(rows[3]["aht_mean_ms"], json!((20 * M) as f64));
    assert_eq!(r["totals"]["items_handled"], json!(2));

    // Team filter: only south's completion of J1 counts, but its handle time is all of it.
    let r = get("&team=south").await;
    assert_eq!(r["totals"]["items_handled"], json!(1));
    assert_eq!(r["totals"]["aht_mean_ms"], json!((15 * M) as f64));
    assert_eq!(r["totals"]["sla_items_met"], json!(0));

    // Queue filter and queue rows: J2 is not registered (queue "").
    let r = get("&group_by=queue").await;
    assert_eq!(row(&r, "claims")["items_handled"], json!(1));
    assert_eq!(row(&r, "")["items_handled"], json!(1));
    assert_eq!(r["totals"]["items_handled"], json!(2));
    let r = get("&queue=claims").await;
    assert_eq!(r["totals"]["items_handled"], json!(1));
    assert_eq!(r["totals"]["sla_items_met"], json!(1));
}

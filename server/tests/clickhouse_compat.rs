//! Every SQL statement the server sends runs on ClickHouse 18.16 *and* on the current release.
//!
//! Our machines can only run 18.16; production runs 24.x–26.x. This test drives the server
//! through every route, every report grouping in two time zones as JSON and CSV, and every
//! admin command, against a throwaway 18.16 that logs every query (`log_queries=1`). Then
//! `scripts/clickhouse-compat.py` fails on any statement that did not finish on 18.16, and
//! replays the distinct statements that did — migrations first, row inserts with the rows the
//! tour stored — on the current engine in-process (chDB, `pip install chdb-core`), failing on
//! any error there. The statements are not a copy kept by hand: they are what the code sent.

mod support;

use std::io::Write;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use backlight_server::cli::{Cli, Command as CliCommand};
use backlight_server::live::LiveConfig;
use backlight_server::storage::migrations::{
    statements, BASELINE_SQL, BASELINE_VERSION, MIGRATIONS,
};
use backlight_server::storage::retention::{self, DailyTable};
use backlight_server::telemetry::MetricsConfig;
use backlight_server::tenancy::Role;
use backlight_server::webhooks::target::TargetPolicy;
use backlight_server::webhooks::{WebhookConfig, WebhookEngine};
use backlight_shared::event::{
    ActivitySpan, ActivityState, AgentHealth, ConsentChange, DesktopSession, EventBody, ItemAction,
    ItemSource, SessionKind, WorkItemEvent,
};
use backlight_shared::now_ms;
use clap::Parser;
use http_body_util::BodyExt;
use serde_json::json;
use support::{TestApp, TestDevice};
use tower::ServiceExt;

const DATABASE: &str = "backlight_test";
const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;
const ZONES: [&str; 2] = ["UTC", "America/New_York"];
const GROUPINGS: [&str; 7] = [
    "team",
    "person",
    "queue",
    "device",
    "day",
    "hour",
    "interval15",
];

/// The token the tour scrapes `/metrics` with.
const METRICS_TOKEN: &str = "compat-metrics-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_runs_on_clickhouse_18_16_and_on_the_current_release() {
    let mut parts =
        support::start_parts_on(support::start_clickhouse_logging_queries(DATABASE).await).await;
    let clickhouse_url = parts.clickhouse.url();
    let clickhouse = ClickHouseAt {
        url: clickhouse_url.clone(),
        password: parts.clickhouse.password().to_string(),
    };
    // Live streams check their keys every second, webhooks may call loopback (nothing listens
    // there: every attempt fails and is retried, which is what the tour wants to exercise).
    // /metrics with per-device gap series, so both gap queries run.
    let mut state = parts
        .state
        .clone()
        .with_live_config(LiveConfig {
            key_check: Duration::from_secs(1),
            ..LiveConfig::default()
        })
        .with_metrics(MetricsConfig {
            token: Some(METRICS_TOKEN.into()),
            per_device: true,
            ..MetricsConfig::default()
        });
    state.webhook_targets = TargetPolicy::allowing(["127.0.0.1".to_string()]);
    parts.state = state.clone();
    let webhooks = WebhookEngine::spawn(
        state.clone(),
        WebhookConfig {
            policy: state.webhook_targets.clone(),
            retry_base: Duration::from_secs(1),
            tick: Duration::from_millis(200),
            sla_sweep: Duration::from_millis(200),
            host: "compat".into(),
        },
    )
    .unwrap();
    let app = TestApp::from_state(state, parts);

    tour(&app, &clickhouse).await;
    // Its goodbye and last cursors are statements too.
    webhooks.stop().await;
    for table in DailyTable::ALL {
        retention::drop_expired(app.store.client(), None, table)
            .await
            .unwrap();
    }

    // The schema statements in the order the runner sends them to a new database: the query
    // log orders by the second, and a migration may drop in that second what the baseline made.
    let mut schema = tempfile::NamedTempFile::new().unwrap();
    for statement in statements(BASELINE_SQL).into_iter().chain(
        MIGRATIONS
            .iter()
            .filter(|m| m.version > BASELINE_VERSION)
            .flat_map(|m| statements(m.sql)),
    ) {
        writeln!(schema, "{}", serde_json::to_string(&statement).unwrap()).unwrap();
    }
    schema.flush().unwrap();
    support::run_check_script(
        "clickhouse-compat.py",
        &[
            "--clickhouse-url".as_ref(),
            clickhouse_url.as_ref(),
            "--database".as_ref(),
            DATABASE.as_ref(),
            "--schema".as_ref(),
            schema.path().as_os_str(),
        ],
        &[("BACKLIGHT_CLICKHOUSE_PASSWORD", &clickhouse.password)],
    );
}

/// Everything a deployment does, once: enrollment, ingest (re-sent batch included), policy,
/// registration, SLA classes, lookups, timeline, search, live streams, webhooks (their API, the
/// engine's evaluation, attempts and retries), every report variant, operations endpoints and
/// the admin CLI.
async fn tour(app: &TestApp, clickhouse: &ClickHouseAt) {
    let tenant = app.create_tenant("compat").await;
    let admin = app.api_key(&tenant, Role::Admin).await;
    let wfm = app.api_key(&tenant, Role::Wfm).await;
    let cc_agent = app.api_key(&tenant, Role::CcAgent).await;
    let mut north = app.enroll(&tenant).await;
    let mut south = app.enroll(&tenant).await;

    run_admin(
        clickhouse,
        &["tenant", "set", "compat", "--show-person-names", "true"],
    )
    .await;
    for (device, team, person) in [(&north, "north", "Alice"), (&south, "south", "Bob")] {
        let id = device.device_id.to_string();
        run_admin(
            clickhouse,
            &[
                "device", "assign", "--tenant", "compat", &id, "--team", team, "--person", person,
            ],
        )
        .await;
    }

    // SLA classes and registrations before the work.
    let now = now_ms();
    let start = now - 3 * HOUR;
    let ok = |r: support::TestResponse, what: &str| {
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r
    };
    ok(
        app.send_json(
            "PUT",
            "/v1/sla-classes",
            &admin,
            &json!({"classes": [{"sla_class": "gold", "target_ms": 4 * HOUR}]}),
        )
        .await,
        "PUT sla-classes",
    );
    ok(app.get("/v1/sla-classes", &wfm).await, "GET sla-classes");
    ok(
        app.send_json(
            "POST",
            "/v1/items",
            &admin,
            &json!({"items": [
                {"item_id": "CLM-1", "queue": "motor", "priority": 3, "sla_due_ms": now + HOUR, "customer_ref": "C-1"},
                {"item_id": "CLM-2", "queue": "motor", "sla_class": "gold"},
                {"item_id": "CLM-3", "queue": "home", "customer_ref": "C-3"},
            ]}),
        )
        .await,
        "POST items",
    );

    // Work on two desks; one batch arrives twice, as after a lost acknowledgement.
    ingest(app, &mut north, work(start, "CLM-1", "claims-desk")).await;
    let again = app
        .ingest(&mut south, work(start + HOUR, "CLM-2", "mail"))
        .await;
    app.ingest_batch(&south, &again).await;
    ingest(
        app,
        &mut south,
        vec![
            item(start + 2 * HOUR, "CLM-3", ItemAction::Started),
            item(start + 2 * HOUR + MIN, "CLM-3", ItemAction::Transferred),
            EventBody::Consent(ConsentChange {
                granted: true,
                policy_version: 1,
                scope: "activity,items".into(),
                at_ms: start,
            }),
            EventBody::Health(AgentHealth {
                agent_version: "compat".into(),
                spool_depth: 0,
                events_dropped: 0,
                events_rejected: 0,
                clock_offset_ms: 0,
                at_ms: now,
                // `admin device list` reads the newest session report of each device.
                session: Some(DesktopSession {
                    kind: SessionKind::Citrix,
                    client_name: Some("THIN-7".into()),
                }),
            }),
        ],
    )
    .await;

    // Policy, as devices and admins see it.
    ok(
        app.get("/v1/agent/policy", &north.credential).await,
        "agent policy",
    );
    let policy = ok(app.get("/v1/admin/policy", &admin).await, "admin policy").json();
    ok(
        app.send_json("PUT", "/v1/admin/policy", &admin, &policy)
            .await,
        "PUT policy",
    );

    // The contact center: lookups, timelines, searches, a live stream.
    for key in [&cc_agent, &wfm] {
        for item in ["CLM-1", "CLM-2", "CLM-3", "UNKNOWN-9"] {
            let status = app.get(&format!("/v1/items/{item}"), key).await.status;
            assert!(
                status == StatusCode::OK || status == StatusCode::NOT_FOUND,
                "{item}: {status}"
            );
            app.get(&format!("/v1/items/{item}/timeline"), key).await;
        }
    }
    for query in [
        "customer_ref=C-1",
        "queue=motor",
        "queue=motor&status=completed",
        "sla_state=breached",
        "status=in_progress&limit=5",
    ] {
        ok(
            app.get(&format!("/v1/items?{query}"), &cc_agent).await,
            query,
        );
    }
    first_stream_event(app, "CLM-1", &cc_agent).await;

    // Webhooks, then a change seen by a live stream and evaluated for the webhook.
    let created = app
        .send_json(
            "POST",
            "/v1/admin/webhooks",
            &admin,
            &json!({"url": "http://127.0.0.1:9/hook",
                    "events": ["item.status_changed", "item.sla_at_risk", "item.sla_breached"]}),
        )
        .await;
    assert_eq!(
        created.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let webhook_id = created.json()["webhook_id"].as_str().unwrap().to_string();
    ok(app.get("/v1/admin/webhooks", &admin).await, "webhooks");
    ok(
        app.get(&format!("/v1/admin/webhooks/{webhook_id}"), &admin)
            .await,
        "webhook",
    );
    // Every server re-reads the webhooks every 5 s; the change must come after that.
    tokio::time::sleep(Duration::from_secs(6)).await;
    live_stream_sees_a_change(app, &mut north, &cc_agent).await;
    let deliveries = format!("/v1/admin/webhooks/{webhook_id}/deliveries");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Two attempts: the first, and a retry found by the scan of the delivery log.
        let listed = ok(app.get(&deliveries, &admin).await, "deliveries").json();
        let retried = listed["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["attempts"].as_u64() >= Some(2));
        if retried {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retried delivery: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ok(
        app.get(&format!("{deliveries}?state=pending&limit=5"), &admin)
            .await,
        "pending",
    );

    // Workforce reports: every grouping, two zones, both formats, with and without filters.
    let (from, to) = (quarter_hour(start - 24 * HOUR), quarter_hour(now + HOUR));
    for zone in ZONES {
        for group_by in GROUPINGS {
            for format in ["json", "csv"] {
                let path = format!(
                    "/v1/reports/performance?from={from}&to={to}&group_by={group_by}&tz={zone}&format={format}"
                );
                ok(app.get(&path, &wfm).await, &path);
            }
        }
    }
    for filter in ["team=north", "queue=motor", "team=south&queue=home"] {
        let path = format!("/v1/reports/performance?from={from}&to={to}&{filter}");
        ok(app.get(&path, &wfm).await, &path);
    }

    // Operations.
    ok(app.get("/readyz", "").await, "readyz");
    // Sequence gaps are computed in the background after the first scrape: wait for them.
    let mut scrapes = 0;
    loop {
        let r = app.get("/metrics", METRICS_TOKEN).await;
        assert_eq!(r.status, StatusCode::OK, "metrics");
        if String::from_utf8_lossy(&r.body).contains("backlight_sequence_missing_total") {
            break;
        }
        scrapes += 1;
        assert!(scrapes < 100, "no sequence gaps in /metrics after 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The admin CLI, the listings and the revocations included.
    for args in [
        vec!["tenant", "list"],
        vec!["enrollment-key", "create", "--tenant", "compat"],
        vec![
            "enrollment-key",
            "create",
            "--tenant",
            "compat",
            "--max-uses",
            "3",
            "--expires-in",
            "14d",
        ],
        vec!["enrollment-key", "list", "--tenant", "compat"],
        vec!["api-key", "list", "--tenant", "compat"],
        vec!["device", "list", "--tenant", "compat"],
        vec!["device", "list", "--tenant", "compat", "--json"],
        vec!["policy", "show", "--tenant", "compat"],
        vec!["policy", "history", "--tenant", "compat"],
    ] {
        run_admin(clickhouse, &args).await;
    }
    let policy_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(policy_file.path(), policy.to_string()).unwrap();
    let policy_path = policy_file.path().to_str().unwrap();
    run_admin(
        clickhouse,
        &["policy", "set", "--tenant", "compat", policy_path],
    )
    .await;
    for args in [
        vec![
            "webhook",
            "create",
            "--tenant",
            "compat",
            "--url",
            "https://crm.example.com/hook",
            "--event",
            "item.sla_breached",
        ],
        vec!["webhook", "list", "--tenant", "compat"],
        vec!["webhook", "deliveries", "--tenant", "compat", &webhook_id],
        vec![
            "webhook",
            "deliveries",
            "--tenant",
            "compat",
            &webhook_id,
            "--state",
            "failed",
        ],
        vec!["webhook", "delete", "--tenant", "compat", &webhook_id],
    ] {
        run_admin(clickhouse, &args).await;
    }
    let south_id = south.device_id.to_string();
    run_admin(
        clickhouse,
        &["device", "revoke", "--tenant", "compat", &south_id],
    )
    .await;
}

/// A worker's morning on one item: active and idle spans, started → paused → resumed → done.
fn work(start: u64, item_id: &str, app: &str) -> Vec<EventBody> {
    let span = |from: u64, to: u64, state: ActivityState, item: Option<&str>| {
        EventBody::ActivitySpan(ActivitySpan {
            app: app.into(),
            title: None,
            start_ms: from,
            end_ms: to,
            state,
            item_id: item.map(Into::into),
            step: None,
        })
    };
    vec![
        item(start, item_id, ItemAction::Started),
        span(
            start,
            start + 20 * MIN,
            ActivityState::Active,
            Some(item_id),
        ),
        item(start + 20 * MIN, item_id, ItemAction::Paused),
        span(
            start + 20 * MIN,
            start + 30 * MIN,
            ActivityState::Idle,
            None,
        ),
        span(
            start + 30 * MIN,
            start + 35 * MIN,
            ActivityState::Locked,
            None,
        ),
        item(start + 35 * MIN, item_id, ItemAction::Resumed),
        span(
            start + 35 * MIN,
            start + 50 * MIN,
            ActivityState::Active,
            Some(item_id),
        ),
        item(start + 50 * MIN, item_id, ItemAction::Completed),
        span(
            start + 50 * MIN,
            start + 55 * MIN,
            ActivityState::Active,
            None,
        ),
    ]
}

fn item(at_ms: u64, item_id: &str, action: ItemAction) -> EventBody {
    EventBody::WorkItem(WorkItemEvent {
        item_id: item_id.into(),
        action,
        step: Some("assess".into()),
        at_ms,
        source: ItemSource::App,
    })
}

async fn ingest(app: &TestApp, device: &mut TestDevice, bodies: Vec<EventBody>) {
    app.ingest(device, bodies).await;
}

fn quarter_hour(ms: u64) -> u64 {
    ms - ms % (15 * MIN)
}

/// Opens the item's live stream and reads its first event (the current status), then hangs up.
async fn first_stream_event(app: &TestApp, item: &str, key: &str) {
    let request = Request::get(format!("/v1/items/{item}/events"))
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap();
    let response = app.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "stream of {item}");
    let mut body = response.into_body();
    let frame = tokio::time::timeout(std::time::Duration::from_secs(30), body.frame())
        .await
        .expect("the stream sends the current status at once");
    assert!(frame.is_some(), "the stream ended before its first event");
}

/// A stream of CLM-2 open while a change of it is ingested, and long enough for the revocation
/// check of its key; the change reaches the stream.
async fn live_stream_sees_a_change(app: &TestApp, device: &mut TestDevice, key: &str) {
    let request = Request::get("/v1/items/CLM-2/events")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap();
    let response = app.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "stream of CLM-2");
    let mut body = response.into_body();
    let mut seen = String::new();
    for what in ["first status", "pushed change"] {
        if what == "pushed change" {
            ingest(
                app,
                device,
                vec![item(now_ms(), "CLM-2", ItemAction::Resumed)],
            )
            .await;
        }
        let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .unwrap_or_else(|_| panic!("no {what} on the stream"))
            .expect("the stream ended")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(seen.matches("event: status").count() >= 2, "{seen}");
}

/// Where the test's ClickHouse listens and its password (the embedded one has one).
struct ClickHouseAt {
    url: String,
    password: String,
}

/// `backlight-server admin ARGS…` against the test's ClickHouse, in process.
async fn run_admin(clickhouse: &ClickHouseAt, args: &[&str]) {
    let cli = Cli::try_parse_from(
        [
            "backlight-server",
            "--clickhouse-url",
            &clickhouse.url,
            "--clickhouse-database",
            DATABASE,
            "--clickhouse-user",
            "default",
            "--clickhouse-password",
            &clickhouse.password,
            "admin",
        ]
        .iter()
        .chain(args),
    )
    .unwrap_or_else(|e| panic!("admin {args:?}: {e}"));
    let Some(CliCommand::Admin(command)) = cli.command else {
        panic!("admin {args:?} parsed as another command");
    };
    backlight_server::admin::run(cli.storage, cli.webhooks, command)
        .await
        .unwrap_or_else(|e| panic!("admin {args:?}: {e:#}"));
}

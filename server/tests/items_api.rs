//! The items API against a real ClickHouse: events ingested the way an agent sends them,
//! status derived, SLA and ETA, roles, tenant isolation, audit, and the status stream.
//!
//! Needs `clickhouse-server` installed (`deploy/install-clickhouse.sh`); fails loudly without it.

mod support;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use backlight_server::clickhouse::embedded::ClickHouseProcess;
use backlight_server::http::{router, AppState};
use backlight_server::storage::items::handle_time_cache;
use backlight_server::storage::{audit, Store};
use backlight_server::tenancy::{Role, TenantId};
use backlight_shared::now_ms;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

const MIN: u64 = 60_000;

struct TestApp {
    app: Router,
    store: Store,
    state: AppState,
    _clickhouse: ClickHouseProcess,
    _dir: tempfile::TempDir,
}

impl TestApp {
    async fn start() -> TestApp {
        let support::Parts {
            store,
            mut state,
            clickhouse,
            dir,
        } = support::start_parts().await;
        // No caching of ETA statistics: each lookup sees the history written just before it.
        state.handle_times = handle_time_cache(Duration::ZERO);
        TestApp {
            app: router(state.clone()),
            store,
            state,
            _clickhouse: clickhouse,
            _dir: dir,
        }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = auth {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(b) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{uri}: non-JSON answer {status}: {e}: {bytes:?}"))
        };
        (status, value)
    }

    async fn get(&self, uri: &str, auth: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, Some(auth), None).await
    }

    async fn tenant(&self, name: &str) -> TenantId {
        let tenant: TenantId = name.parse().unwrap();
        self.store
            .registry()
            .create_tenant(&tenant, name)
            .await
            .unwrap();
        tenant
    }

    async fn key(&self, tenant: &TenantId, role: Role) -> String {
        let name = format!("{role}-key");
        self.store
            .registry()
            .create_api_key(tenant, role, &name)
            .await
            .unwrap()
            .to_string()
    }

    /// Enrolls a device through `/v1/enroll`, like an agent, and assigns it to a team.
    async fn device(&self, tenant: &TenantId, team: &str, person: &str) -> Device {
        let key = self
            .store
            .registry()
            .create_enrollment_key(tenant, None, "test")
            .await
            .unwrap();
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/enroll",
                None,
                Some(json!({"enrollment_key": key.to_string(), "hostname": "desk", "agent_version": "0.1.0", "os": "linux"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let id: Uuid = body["device_id"].as_str().unwrap().parse().unwrap();
        self.store
            .registry()
            .assign_device(tenant, id, team, person)
            .await
            .unwrap();
        Device {
            id,
            credential: body["device_credential"].as_str().unwrap().to_string(),
            seq: 0,
        }
    }

    /// Sends a batch through `/v1/ingest`; returns it so it can be sent again.
    async fn ingest(&self, device: &mut Device, events: Vec<Value>) -> Value {
        let events: Vec<Value> = events
            .into_iter()
            .map(|mut e| {
                device.seq += 1;
                e["seq"] = json!(device.seq);
                e["id"] = json!(Uuid::new_v4());
                e
            })
            .collect();
        let batch = json!({"protocol": 1, "device_id": device.id, "events": events});
        self.send(device, &batch).await;
        batch
    }

    async fn send(&self, device: &Device, batch: &Value) {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/ingest",
                Some(&device.credential),
                Some(batch.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "ingest: {body}");
    }

    async fn register(&self, admin: &str, items: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/v1/items",
            Some(admin),
            Some(json!({"items": items})),
        )
        .await
    }
}

struct Device {
    id: Uuid,
    credential: String,
    seq: u64,
}

fn action(item: &str, action: &str, step: &str, at_ms: u64) -> Value {
    let mut event = json!({"kind": "work_item", "item_id": item, "action": action, "at_ms": at_ms, "source": "app"});
    if !step.is_empty() {
        event["step"] = json!(step);
    }
    event
}

fn span(item: &str, state: &str, start_ms: u64, end_ms: u64) -> Value {
    json!({"kind": "activity_span", "app": "claims-desk", "start_ms": start_ms, "end_ms": end_ms, "state": state, "item_id": item})
}

/// Reads server-sent events from a streaming body.
struct SseReader {
    body: Body,
    buffer: String,
}

impl SseReader {
    /// The next `(event, data)`, skipping keep-alive comments; panics after `timeout`.
    async fn next(&mut self, timeout: Duration) -> (String, Value) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if event.is_empty() && data.is_empty() {
                    continue;
                }
                return (event, serde_json::from_str(&data).unwrap());
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .expect("no server-sent event in time")
                .expect("stream ended")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }
}

/// Four completed items of queue `motor` with 10, 20, 30 and 40 minutes of active time: the
/// history the ETA is estimated from.
async fn completed_history(t: &TestApp, admin: &str, device: &mut Device, base: u64) {
    let (status, body) = t
        .register(
            admin,
            json!((1..=4)
                .map(|i| json!({"item_id": format!("H-{i}"), "queue": "motor"}))
                .collect::<Vec<_>>()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for i in 1..=4u64 {
        let item = format!("H-{i}");
        let start = base + i * 100 * MIN;
        t.ingest(
            device,
            vec![
                action(&item, "started", "assess", start),
                span(&item, "active", start, start + i * 10 * MIN),
                action(&item, "completed", "assess", start + i * 10 * MIN),
            ],
        )
        .await;
    }
}

#[tokio::test]
async fn item_lifecycle_sla_eta_dedupe_timeline_stream_and_audit() {
    let t = TestApp::start().await;
    let acme = t.tenant("acme").await;
    let admin = t.key(&acme, Role::Admin).await;
    let agent = t.key(&acme, Role::CcAgent).await;
    let wfm = t.key(&acme, Role::Wfm).await;
    let mut desk_a = t.device(&acme, "claims-a", "Ann").await;
    let mut desk_b = t.device(&acme, "claims-b", "Bob").await;
    let now = now_ms();
    let base = now - 20 * 60 * MIN; // 20 hours ago
    completed_history(&t, &admin, &mut desk_a, base).await;

    // Registration: all or nothing, the bad field named.
    let bad = json!([
        {"item_id": "CLM-1", "queue": "motor", "sla_due_ms": now + 60 * MIN, "customer_ref": "C-9"},
        {"item_id": "CLM-2"},
        {"item_id": "CLM-3"},
        {"item_id": "CLM-4", "sla_due_ms": 12}
    ]);
    let (status, body) = t.register(&admin, bad).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("items[3].sla_due_ms")
        ),
        "{body}"
    );
    assert_eq!(
        t.get("/v1/items/CLM-1", &agent).await.0,
        StatusCode::NOT_FOUND,
        "nothing stored from a refused call"
    );
    let (status, body) = t
        .call(
            Method::PUT,
            "/v1/sla-classes",
            Some(&admin),
            Some(json!({"classes": [{"sla_class": "quick", "target_ms": 10 * MIN}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = t
        .register(
            &admin,
            json!([
                {"item_id": "CLM-1", "queue": "motor", "priority": 3, "sla_due_ms": now + 60 * MIN, "customer_ref": "C-9"},
                {"item_id": "CLM-2", "queue": "motor", "sla_due_ms": now - MIN},
                {"item_id": "CLM-3", "queue": "motor", "sla_class": "quick"},
                {"item_id": "CLM-4", "queue": "motor", "sla_due_ms": now - 30 * MIN},
                {"item_id": "CLM-5", "queue": "motor", "sla_due_ms": now + 5 * MIN}
            ]),
        )
        .await;
    assert_eq!(
        (status, &body["registered"]),
        (StatusCode::OK, &json!(5)),
        "{body}"
    );

    // Registered, no events yet: waiting; CLM-2 is past due → breached.
    let (status, doc) = t.get("/v1/items/CLM-2", &agent).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(
        (doc["status"].as_str(), doc["sla"]["state"].as_str()),
        (Some("waiting"), Some("breached"))
    );
    // CLM-3 (due in 10 minutes by its class) is expected to take 25 minutes: at risk.
    let (_, doc) = t.get("/v1/items/CLM-3", &agent).await;
    assert_eq!(doc["sla"]["sla_class"], "quick");
    assert_eq!(
        (doc["eta"]["method"].as_str(), doc["sla"]["state"].as_str()),
        (Some("queue_median"), Some("at_risk")),
        "{doc}"
    );

    // CLM-1: started, 5 minutes active, 10 idle, 2 locked, paused.
    let t0 = now - 30 * MIN;
    let batch = t
        .ingest(
            &mut desk_a,
            vec![
                action("CLM-1", "started", "intake", t0),
                span("CLM-1", "active", t0, t0 + 5 * MIN),
                span("CLM-1", "idle", t0 + 5 * MIN, t0 + 15 * MIN),
                span("CLM-1", "locked", t0 + 15 * MIN, t0 + 17 * MIN),
                action("CLM-1", "paused", "assess", t0 + 17 * MIN),
            ],
        )
        .await;
    let before = now_ms();
    let (_, doc) = t.get("/v1/items/CLM-1", &agent).await;
    let after = now_ms();
    assert_eq!(doc["status"], "paused", "{doc}");
    assert_eq!(doc["step"], "assess");
    assert_eq!(
        doc["handler"],
        json!({"team": "claims-a"}),
        "cc_agent sees the team, never a person"
    );
    assert_eq!(
        (doc.get("handle_time_ms"), doc.get("touches")),
        (None, None),
        "cc_agent reads no per-person figures"
    );
    let (_, wfm_doc) = t.get("/v1/items/CLM-1", &wfm).await;
    assert_eq!(
        (
            wfm_doc["handle_time_ms"].as_u64(),
            wfm_doc["touches"].as_u64()
        ),
        (Some(5 * MIN), Some(1))
    );
    assert_eq!(
        (doc["first_seen_ms"].as_u64(), doc["started_ms"].as_u64()),
        (Some(t0), Some(t0))
    );
    assert_eq!(doc["last_activity_ms"].as_u64(), Some(t0 + 17 * MIN));
    assert_eq!(doc["registration"]["customer_ref"], "C-9");
    assert_eq!(doc["registration"]["priority"], 3);
    // ETA: 5 minutes in; remaining of the 4 motor items: 5, 15, 25, 35 → median 20 minutes.
    assert_eq!(
        (
            doc["eta"]["method"].as_str(),
            doc["eta"]["sample_size"].as_u64()
        ),
        (Some("queue_median"), Some(4)),
        "{doc}"
    );
    let expected = doc["eta"]["expected_ms"].as_u64().unwrap();
    assert!(
        (before + 20 * MIN..=after + 20 * MIN).contains(&expected),
        "{expected} not ~now+20min"
    );
    assert_eq!(doc["sla"]["state"], "on_track");
    assert_eq!(doc["history"].as_array().unwrap().len(), 2);
    assert!(!doc.to_string().contains("Ann"));

    // The same batch re-sent (a lost acknowledgement) changes nothing.
    t.send(&desk_a, &batch).await;
    let (_, again) = t.get("/v1/items/CLM-1", &wfm).await;
    assert_eq!(
        (again["handle_time_ms"].as_u64(), again["touches"].as_u64()),
        (Some(5 * MIN), Some(1))
    );
    assert_eq!(again["history"], wfm_doc["history"]);

    // Another team resumes it.
    t.ingest(
        &mut desk_b,
        vec![
            action("CLM-1", "resumed", "assess", t0 + 20 * MIN),
            span("CLM-1", "active", t0 + 20 * MIN, t0 + 22 * MIN),
        ],
    )
    .await;
    let (_, doc) = t.get("/v1/items/CLM-1", &wfm).await;
    assert_eq!(
        (doc["status"].as_str(), doc["handler"]["team"].as_str()),
        (Some("in_progress"), Some("claims-b"))
    );
    assert_eq!(
        (
            doc["touches"].as_u64(),
            doc["people_involved"].as_u64(),
            doc["handle_time_ms"].as_u64()
        ),
        (Some(2), Some(2), Some(7 * MIN))
    );

    // Timeline: spans for wfm, actions only for cc_agent.
    let (_, full) = t.get("/v1/items/CLM-1/timeline", &wfm).await;
    assert_eq!(full["entries"].as_array().unwrap().len(), 7, "{full}");
    let (_, limited) = t.get("/v1/items/CLM-1/timeline", &agent).await;
    assert_eq!(limited["includes_spans"], false);
    assert!(
        limited["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["kind"] == "action"),
        "{limited}"
    );
    assert_eq!(limited["entries"].as_array().unwrap().len(), 3);

    // Completed after the due time: breached; completed before: on track.
    t.ingest(
        &mut desk_b,
        vec![
            action("CLM-4", "started", "", now - 40 * MIN),
            action("CLM-4", "completed", "", now - 20 * MIN),
        ],
    )
    .await;
    t.ingest(
        &mut desk_b,
        vec![
            action("CLM-5", "started", "", now - 4 * MIN),
            action("CLM-5", "completed", "", now - 3 * MIN),
        ],
    )
    .await;
    let (_, doc) = t.get("/v1/items/CLM-4", &agent).await;
    assert_eq!(
        (
            doc["status"].as_str(),
            doc["sla"]["state"].as_str(),
            doc["eta"]["method"].as_str()
        ),
        (Some("completed"), Some("breached"), Some("none"))
    );
    let (_, doc) = t.get("/v1/items/CLM-5", &agent).await;
    assert_eq!(
        (doc["status"].as_str(), doc["sla"]["state"].as_str()),
        (Some("completed"), Some("on_track"))
    );

    // An item only agents know about (never registered) is found too, with the tenant-wide ETA.
    t.ingest(
        &mut desk_a,
        vec![action("ADHOC-1", "started", "x", now - MIN)],
    )
    .await;
    let (status, doc) = t.get("/v1/items/ADHOC-1", &agent).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            doc["eta"]["method"].as_str(),
            doc["sla"]["state"].as_str(),
            &doc["registration"]
        ),
        (Some("tenant_median"), Some("none"), &Value::Null)
    );

    // Search.
    let (status, found) = t.get("/v1/items?customer_ref=C-9", &agent).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let ids: Vec<&str> = found["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["item_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["CLM-1"]);
    let (_, found) = t
        .get("/v1/items?queue=motor&status=completed&limit=200", &agent)
        .await;
    let mut ids: Vec<&str> = found["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["item_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["CLM-4", "CLM-5", "H-1", "H-2", "H-3", "H-4"]);
    let (_, found) = t.get("/v1/items?sla_state=breached", &agent).await;
    let mut ids: Vec<&str> = found["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["item_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["CLM-2", "CLM-4"]);
    for bad in [
        "/v1/items?limit=201",
        "/v1/items?status=done",
        "/v1/items?sla_state=late",
        "/v1/items?colour=red",
    ] {
        let (status, body) = t.get(bad, &agent).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }

    // The stream: first the current document, then each change within a second of ingest.
    let request = Request::builder()
        .uri("/v1/items/CLM-1/events")
        .header(header::AUTHORIZATION, format!("Bearer {agent}"))
        .body(Body::empty())
        .unwrap();
    let response = t.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut events = SseReader {
        body: response.into_body(),
        buffer: String::new(),
    };
    let (name, doc) = events.next(Duration::from_secs(5)).await;
    assert_eq!(
        (name.as_str(), doc["status"].as_str()),
        ("status", Some("in_progress"))
    );
    t.ingest(
        &mut desk_b,
        vec![action("CLM-1", "paused", "assess", t0 + 23 * MIN)],
    )
    .await;
    let acknowledged = Instant::now();
    let (name, doc) = events.next(Duration::from_secs(3)).await;
    let seen_after = acknowledged.elapsed();
    assert_eq!(
        (name.as_str(), doc["status"].as_str()),
        ("status", Some("paused"))
    );
    assert!(
        seen_after < Duration::from_secs(1),
        "change pushed {seen_after:?} after the ingest was acknowledged"
    );
    drop(events);

    // Audit: every read above is recorded with the key, its role and the item.
    t.state.audit.flush().await.unwrap();
    let rows = audit::recent(t.store.client(), "acme", 1_000)
        .await
        .unwrap();
    let count = |action: &str, target: &str| {
        rows.iter()
            .filter(|r| r.action == action && r.target == target)
            .count()
    };
    assert!(count("item_lookup", "CLM-1") >= 4, "{rows:?}");
    assert_eq!(count("item_timeline", "CLM-1"), 2);
    assert_eq!(count("item_stream", "CLM-1"), 1);
    assert_eq!(count("item_search", "customer_ref=C-9"), 1);
    let lookup = rows
        .iter()
        .find(|r| r.action == "item_lookup" && r.role == "cc_agent")
        .unwrap();
    assert_eq!(
        (lookup.key_name.as_str(), lookup.outcome.as_str()),
        ("cc_agent-key", "ok")
    );
    assert!(rows
        .iter()
        .any(|r| r.action == "item_lookup" && r.outcome == "not_found"));
    assert!(rows
        .iter()
        .any(|r| r.action == "item_register" && r.role == "admin"));
}

#[tokio::test]
async fn roles_tenant_isolation_and_person_names() {
    let t = TestApp::start().await;
    let acme = t.tenant("acme").await;
    let other = t.tenant("other").await;
    let admin = t.key(&acme, Role::Admin).await;
    let agent = t.key(&acme, Role::CcAgent).await;
    let wfm = t.key(&acme, Role::Wfm).await;
    let other_admin = t.key(&other, Role::Admin).await;
    let mut desk = t.device(&acme, "claims-a", "Ann").await;
    let now = now_ms();
    t.ingest(
        &mut desk,
        vec![
            action("CLM-9", "started", "intake", now - MIN),
            span("CLM-9", "active", now - MIN, now - 1),
        ],
    )
    .await;

    for key in [&agent, &wfm, &admin] {
        let (status, doc) = t.get("/v1/items/CLM-9", key).await;
        assert_eq!(
            (status, doc["status"].as_str()),
            (StatusCode::OK, Some("in_progress")),
            "{doc}"
        );
    }

    // Another tenant's item looks exactly like an unknown one.
    let (status_a, body_a) = t.get("/v1/items/CLM-9", &other_admin).await;
    let (status_b, body_b) = t.get("/v1/items/NOPE-1", &other_admin).await;
    assert_eq!(
        (status_a, status_b),
        (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND)
    );
    assert_eq!(body_a, body_b);
    for path in ["/v1/items/CLM-9/timeline", "/v1/items/CLM-9/events"] {
        assert_eq!(
            t.get(path, &other_admin).await.0,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    let (_, found) = t.get("/v1/items?queue=", &other_admin).await;
    assert_eq!(found["items"], json!([]));

    // Device credentials and anonymous callers get nothing; cc_agent and wfm cannot register.
    let (status, body) = t.get("/v1/items/CLM-9", &desk.credential).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    assert_eq!(
        t.call(Method::GET, "/v1/items/CLM-9", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    for key in [&agent, &wfm] {
        let (status, body) = t.register(key, json!([{"item_id": "X-1"}])).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("wrong_role"))
        );
    }

    // Names appear only once the tenant switches them on, and only to wfm and admin.
    let (_, doc) = t.get("/v1/items/CLM-9", &wfm).await;
    assert_eq!(doc["handler"], json!({"team": "claims-a"}));
    t.store
        .registry()
        .update_settings(&acme, Some(true), None)
        .await
        .unwrap();
    let (_, doc) = t.get("/v1/items/CLM-9", &wfm).await;
    assert_eq!(doc["handler"], json!({"team": "claims-a", "person": "Ann"}));
    let (_, doc) = t.get("/v1/items/CLM-9", &agent).await;
    assert_eq!(doc["handler"], json!({"team": "claims-a"}));

    // Lookup ids are checked; an id with a slash works percent-encoded.
    let (status, body) = t
        .get(&format!("/v1/items/{}", "x".repeat(129)), &agent)
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("item_id"))
    );
    assert_eq!(
        t.register(&admin, json!([{"item_id": "ORD/7#1", "queue": "web"}]))
            .await
            .0,
        StatusCode::OK
    );
    let (status, doc) = t.get("/v1/items/ORD%2F7%231", &agent).await;
    assert_eq!(
        (status, doc["item_id"].as_str()),
        (StatusCode::OK, Some("ORD/7#1")),
        "{doc}"
    );

    t.state.audit.flush().await.unwrap();
    let rows = audit::recent(t.store.client(), "other", 100).await.unwrap();
    assert!(
        rows.iter()
            .any(|r| r.target == "CLM-9" && r.outcome == "not_found"),
        "{rows:?}"
    );
}

/// Lookups that arrive together are read in shared batches (`storage::item_reader`); each
/// caller must still get exactly its own item of its own tenant: the same answer as alone.
#[tokio::test]
async fn concurrent_lookups_share_batches_and_answer_each_their_own() {
    let mut t = TestApp::start().await;
    // One batch at a time, so concurrent lookups pile up into large batches.
    t.state.item_reader =
        backlight_server::storage::item_reader::ItemReader::spawn(t.store.client().clone(), 1);
    t.app = router(t.state.clone());
    let base = now_ms() - 600 * MIN;
    let mut readers = Vec::new();
    for name in ["north", "south"] {
        let tenant = t.tenant(name).await;
        let admin = t.key(&tenant, Role::Admin).await;
        let reader = t.key(&tenant, Role::CcAgent).await;
        let mut device = t.device(&tenant, &format!("{name}-team"), "pat").await;
        // Both tenants have items C-0 … C-9; each tenant's differ in step and status.
        for i in 0..10u64 {
            let item = format!("C-{i}");
            let mut events = vec![action(
                &item,
                "started",
                &format!("{name}-step-{i}"),
                base + i * MIN,
            )];
            if (i + u64::from(name == "south")) % 2 == 0 {
                events.push(action(&item, "completed", "", base + i * MIN + 1_000));
            }
            t.ingest(&mut device, events).await;
        }
        let (status, body) = t
            .register(
                &admin,
                json!([{"item_id": "R-only", "queue": format!("{name}-queue")}]),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        readers.push(reader);
    }

    // Every id of both tenants, some twice, plus unknown ones: first one at a time…
    let mut uris: Vec<(usize, String)> = Vec::new();
    for (r, _) in readers.iter().enumerate() {
        for i in 0..10 {
            uris.push((r, format!("/v1/items/C-{i}")));
        }
        uris.push((r, "/v1/items/C-3".into()));
        uris.push((r, "/v1/items/R-only".into()));
        uris.push((r, "/v1/items/missing".into()));
    }
    let strip = |(status, mut body): (StatusCode, Value)| {
        body.as_object_mut().map(|o| o.remove("as_of_ms"));
        body.as_object_mut().map(|o| o.remove("eta"));
        (status, body)
    };
    let mut alone = Vec::new();
    for (r, uri) in &uris {
        alone.push(strip(t.get(uri, &readers[*r]).await));
    }
    // …then all at once.
    let together =
        futures_util::future::join_all(uris.iter().map(|(r, uri)| t.get(uri, &readers[*r]))).await;
    for ((uri, alone), together) in uris.iter().zip(&alone).zip(together.into_iter().map(strip)) {
        assert_eq!(alone, &together, "{uri:?}");
    }
    // And the answers are the tenants' own.
    assert_eq!(alone[4].0, StatusCode::OK);
    assert_eq!(alone[4].1["step"], "north-step-4");
    assert_eq!(alone[13 + 4].1["step"], "south-step-4");
    assert_ne!(alone[4].1["status"], alone[13 + 4].1["status"]);
    assert_eq!(alone[11].1["registration"]["queue"], "north-queue");
    assert_eq!(alone[13 + 11].1["registration"]["queue"], "south-queue");
    assert_eq!(alone[12].0, StatusCode::NOT_FOUND);
}

/// Issue 10: a contact-center key must not read per-person performance. With names on and one
/// person per item, `handle_time_ms` is that person's handle time, and search hands out 200
/// such documents a call; the timeline names the person behind every action. The cc_agent
/// documents carry neither names nor handle times; wfm and admin keep both.
#[tokio::test]
async fn cc_agent_reads_no_per_person_performance() {
    let t = TestApp::start().await;
    let acme = t.tenant("acme").await;
    let admin = t.key(&acme, Role::Admin).await;
    let agent = t.key(&acme, Role::CcAgent).await;
    let wfm = t.key(&acme, Role::Wfm).await;
    t.store
        .registry()
        .update_settings(&acme, Some(true), None)
        .await
        .unwrap();
    let mut ann = t.device(&acme, "claims-a", "Ann").await;
    let now = now_ms();
    let items: Vec<Value> = (0..3)
        .map(|i| json!({"item_id": format!("PP-{i}"), "queue": "motor", "customer_ref": "C-1"}))
        .collect();
    assert_eq!(t.register(&admin, json!(items)).await.0, StatusCode::OK);
    for i in 0..3u64 {
        let at = now - 30 * MIN + i * MIN;
        t.ingest(
            &mut ann,
            vec![
                action(&format!("PP-{i}"), "started", "intake", at),
                span(&format!("PP-{i}"), "active", at, at + (i + 1) * MIN),
                action(&format!("PP-{i}"), "completed", "", at + (i + 1) * MIN),
            ],
        )
        .await;
    }

    let per_person = [
        "person",
        "handle_time_ms",
        "touches",
        "people_involved",
        "Ann",
    ];
    let leaks = |doc: &Value| -> Vec<&str> {
        let text = doc.to_string();
        per_person
            .iter()
            .copied()
            .filter(|f| text.contains(&format!("\"{f}\"")) || (*f == "Ann" && text.contains(f)))
            .collect()
    };

    let (status, found) = t.get("/v1/items?customer_ref=C-1&limit=200", &agent).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["items"].as_array().unwrap().len(), 3, "{found}");
    assert_eq!(found["items"][0]["handler"], json!({"team": "claims-a"}));
    assert!(
        leaks(&found).is_empty(),
        "search leaks {:?}: {found}",
        leaks(&found)
    );
    let (_, doc) = t.get("/v1/items/PP-2", &agent).await;
    assert_eq!(doc["status"], "completed", "{doc}");
    assert!(
        leaks(&doc).is_empty(),
        "lookup leaks {:?}: {doc}",
        leaks(&doc)
    );
    let (_, timeline) = t.get("/v1/items/PP-2/timeline", &agent).await;
    assert_eq!(
        timeline["entries"].as_array().unwrap().len(),
        2,
        "{timeline}"
    );
    assert!(
        leaks(&timeline).is_empty(),
        "timeline leaks {:?}: {timeline}",
        leaks(&timeline)
    );

    // Workforce management keeps what it is there for.
    let (_, doc) = t.get("/v1/items/PP-2", &wfm).await;
    assert_eq!(
        (
            doc["handle_time_ms"].as_u64(),
            doc["handler"]["person"].as_str()
        ),
        (Some(3 * MIN), Some("Ann")),
        "{doc}"
    );
    let (_, found) = t.get("/v1/items?customer_ref=C-1", &admin).await;
    assert_eq!(found["items"][0]["handler"]["person"], "Ann", "{found}");
}

/// A failing ClickHouse answers 503 with an error id to quote, never ClickHouse's own words
/// (they name databases, tables, hosts and queries): item reads, SLA classes, the policy and
/// enrollment each map their storage error to the same generic message.
#[tokio::test]
async fn storage_failures_answer_with_a_generic_message() {
    let t = TestApp::start().await;
    let tenant = t.tenant("acme").await;
    let admin = t.key(&tenant, Role::Admin).await;
    let enrollment_key = t
        .store
        .registry()
        .create_enrollment_key(&tenant, None, "test")
        .await
        .unwrap();
    // Credentials cached, so the calls below get past authentication to their own reads.
    let state = AppState::new(
        t.store.clone(),
        t.state.writer.clone(),
        Duration::from_secs(600),
    );
    let app = TestApp {
        app: router(state.clone()),
        store: t.store.clone(),
        state,
        _clickhouse: t._clickhouse,
        _dir: t._dir,
    };
    let (status, _) = app.get("/v1/items/CLM-1", &admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Every statement from now on fails inside ClickHouse with a message naming the database.
    app.store
        .client()
        .query("DROP DATABASE backlight_test")
        .execute()
        .await
        .expect("dropping the database");

    let enroll = json!({"enrollment_key": enrollment_key.to_string(), "hostname": "desk", "agent_version": "0.1.0", "os": "linux"});
    for (method, uri, auth, body) in [
        (Method::GET, "/v1/items/CLM-1", Some(&admin), None),
        (Method::GET, "/v1/items/CLM-1/timeline", Some(&admin), None),
        (Method::GET, "/v1/items?queue=claims", Some(&admin), None),
        (Method::GET, "/v1/sla-classes", Some(&admin), None),
        (Method::GET, "/v1/admin/policy", Some(&admin), None),
        (Method::POST, "/v1/enroll", None, Some(enroll.clone())),
    ] {
        let (status, body) = app
            .call(method.clone(), uri, auth.map(String::as_str), body)
            .await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {uri}: {body}"
        );
        assert_eq!(body["error"], "unavailable", "{method} {uri}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("storage unavailable, retry later (error id "),
            "{method} {uri}: {body}"
        );
        for leak in ["backlight_test", "Code:", "Exception", "127.0.0.1"] {
            assert!(
                !body.to_string().contains(leak),
                "{method} {uri} shows {leak:?}: {body}"
            );
        }
    }
}

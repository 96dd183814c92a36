//! The webhook admin API and the status stream's clock-driven updates, in-process against a
//! real ClickHouse: validation naming the field, roles, tenant isolation, the per-tenant limit,
//! deletion, the delivery log listing; and a stream that shows an SLA breach although nothing
//! was ingested. Deliveries to a real receiver are tested end to end (`tests/tests/e2e/webhooks.rs`).
//!
//! Needs `clickhouse-server` installed (`deploy/install-clickhouse.sh`); fails loudly without it.

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use backlight_server::storage::retention::{self, DailyTable};
use backlight_server::tenancy::Role;
use backlight_server::webhooks::registration::MAX_WEBHOOKS_PER_TENANT;
use backlight_shared::event::{EventBody, ItemAction, ItemSource, WorkItemEvent};
use backlight_shared::now_ms;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use support::TestApp;
use tower::ServiceExt;

fn hook(url: &str) -> Value {
    json!({"url": url, "events": ["item.status_changed"]})
}

#[tokio::test]
async fn webhook_admin_api_validates_isolates_tenants_limits_and_deletes() {
    let t = TestApp::start().await;
    let acme = t.create_tenant("acme").await;
    let other = t.create_tenant("other").await;
    let admin = t.api_key(&acme, Role::Admin).await;
    let wfm = t.api_key(&acme, Role::Wfm).await;
    let other_admin = t.api_key(&other, Role::Admin).await;

    // Validation names the field; the default policy allows only https to public addresses.
    for (body, field) in [
        (hook("http://crm.example.com/x"), "url"),
        (hook("https://127.0.0.1/x"), "url"),
        (hook("https://user:pw@crm.example.com/x"), "url"),
        (hook("not a url"), "url"),
        (
            json!({"url": "https://crm.example.com/x", "events": []}),
            "events",
        ),
        (
            json!({"url": "https://crm.example.com/x", "events": ["item.x"]}),
            "events",
        ),
        (
            json!({"url": "https://crm.example.com/x", "events": ["item.sla_breached"], "description": "a\u{7}b"}),
            "description",
        ),
    ] {
        let r = t
            .send_json("POST", "/v1/admin/webhooks", &admin, &body)
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(r.json()["field"], field, "{body}");
    }
    let r = t
        .send_json("POST", "/v1/admin/webhooks", &admin, &json!({"url": "https://crm.example.com/x", "events": ["item.status_changed"], "secret": "mine"}))
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown fields are refused"
    );
    let r = register(&t, &wfm, "https://crm.example.com/x").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Created: the secret once, never again.
    let r = register(&t, &admin, "https://crm.example.com/hooks/1").await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let created = r.json();
    let id = created["webhook_id"].as_str().unwrap().to_string();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["events"], json!(["item.status_changed"]));
    let list = t.get("/v1/admin/webhooks", &admin).await.json();
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1);
    assert!(
        !String::from_utf8_lossy(&t.get("/v1/admin/webhooks", &admin).await.body)
            .contains("whsec_")
    );
    let one = t.get(&format!("/v1/admin/webhooks/{id}"), &admin).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(
        one.json()["deliveries"],
        json!({"pending": 0, "delivered": 0, "failed": 0, "last_attempt_ms": 0})
    );
    let deliveries = t
        .get(&format!("/v1/admin/webhooks/{id}/deliveries"), &admin)
        .await;
    assert_eq!(deliveries.json(), json!({"deliveries": []}));
    for bad in ["state=lost", "limit=0", "limit=501", "colour=red"] {
        let r = t
            .get(&format!("/v1/admin/webhooks/{id}/deliveries?{bad}"), &admin)
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let r = t.get("/v1/admin/webhooks/not-an-id", &admin).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Another tenant's admin sees nothing of it and cannot delete it.
    assert_eq!(
        t.get("/v1/admin/webhooks", &other_admin).await.json(),
        json!({"webhooks": []})
    );
    let theirs = t
        .get(&format!("/v1/admin/webhooks/{id}"), &other_admin)
        .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert_eq!(delete(&t, &id, &other_admin).await, StatusCode::NOT_FOUND);

    // The per-tenant limit.
    for i in 1..MAX_WEBHOOKS_PER_TENANT {
        let r = register(
            &t,
            &admin,
            &format!("https://crm.example.com/hooks/{}", i + 1),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let r = register(&t, &admin, "https://crm.example.com/one-more").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json()["error"], "too_many_webhooks");

    // Deleted: gone from the list and from every route, room for a new one.
    assert_eq!(delete(&t, &id, &admin).await, StatusCode::NO_CONTENT);
    assert_eq!(delete(&t, &id, &admin).await, StatusCode::NOT_FOUND);
    let r = t
        .get(&format!("/v1/admin/webhooks/{id}/deliveries"), &admin)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let list = t.get("/v1/admin/webhooks", &admin).await.json();
    assert_eq!(
        list["webhooks"].as_array().unwrap().len(),
        MAX_WEBHOOKS_PER_TENANT - 1
    );
    assert!(!list.to_string().contains(&id));
    let r = register(&t, &admin, "https://crm.example.com/one-more").await;
    assert_eq!(r.status, StatusCode::CREATED);

    // Retention: day partitions of the change feed older than two days go, today's stay.
    let client = t.store.client();
    client
        .query(
            "INSERT INTO item_changes (tenant_id, received_ms, item_id, what, change_date)
             VALUES ('acme', 1, 'OLD', 2, '2020-01-01'), ('acme', ?, 'NEW', 2, today())",
        )
        .bind(now_ms())
        .execute()
        .await
        .unwrap();
    let dropped = retention::drop_expired(client, None, DailyTable::ItemChanges)
        .await
        .unwrap();
    assert!(dropped >= 1, "the 2020 partition was not dropped");
    let left: Vec<String> = client
        .query("SELECT item_id FROM item_changes WHERE item_id IN ('OLD', 'NEW')")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(left, vec!["NEW".to_string()]);
}

async fn register(t: &TestApp, key: &str, url: &str) -> support::TestResponse {
    t.send_json("POST", "/v1/admin/webhooks", key, &hook(url))
        .await
}

async fn delete(t: &TestApp, id: &str, key: &str) -> StatusCode {
    t.request(
        Request::delete(format!("/v1/admin/webhooks/{id}"))
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .status
}

/// Nothing is ingested after the stream opens: the SLA passing its due time alone is pushed
/// (the stream rebuilds its document from its last read as the clock moves).
#[tokio::test]
async fn a_stream_shows_an_sla_breach_that_only_the_clock_made() {
    let t = TestApp::start().await;
    let acme = t.create_tenant("acme").await;
    let admin = t.api_key(&acme, Role::Admin).await;
    let agent = t.api_key(&acme, Role::CcAgent).await;
    let mut desk = t.enroll(&acme).await;
    let due = now_ms() + 2_500;
    let r = t
        .send_json(
            "POST",
            "/v1/items",
            &admin,
            &json!({"items": [{"item_id": "CLM-5", "sla_due_ms": due}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    t.ingest(
        &mut desk,
        vec![EventBody::WorkItem(WorkItemEvent {
            item_id: "CLM-5".into(),
            action: ItemAction::Started,
            step: None,
            at_ms: now_ms(),
            source: ItemSource::App,
        })],
    )
    .await;
    let response = t
        .app
        .clone()
        .oneshot(
            Request::get("/v1/items/CLM-5/events")
                .header(header::AUTHORIZATION, format!("Bearer {agent}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut states = Vec::new();
    while !states.contains(&"breached".to_string()) {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no breach pushed; states seen: {states:?}"))
            .expect("stream ended")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) {
                let doc: Value = serde_json::from_str(data.trim()).unwrap();
                states.push(doc["sla"]["state"].as_str().unwrap_or("").to_string());
            }
        }
    }
    assert!(now_ms() > due, "breached before the due time");
    assert_ne!(states[0], "breached", "{states:?}");
}

//! The agent policy over HTTP: agents fetch it with ETag, admins replace it, bad policies are
//! refused with the field and reason. Real ClickHouse, in-process router.

mod support;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use backlight_server::tenancy::Role;
use serde_json::json;
use support::TestApp;

#[tokio::test]
async fn agents_get_the_policy_with_etag_and_admins_replace_it() {
    let app = TestApp::start().await;
    let tenant = app.create_tenant("acme").await;
    let admin = app.api_key(&tenant, Role::Admin).await;
    let device = app.enroll(&tenant).await;

    let first = app.get("/v1/agent/policy", &device.credential).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.json()["title_policy"],
        "drop",
        "titles stay on the desktop by default"
    );
    let etag = first.headers[header::ETAG].to_str().unwrap().to_string();

    let unchanged = app
        .request(
            Request::get("/v1/agent/policy")
                .header(
                    header::AUTHORIZATION,
                    format!("Bearer {}", device.credential),
                )
                .header(header::IF_NONE_MATCH, &etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);

    let policy = json!({
        "version": 2,
        "notice": "We record focused apps and work items. Titles stay here.",
        "rules": [{"name": "claims", "app": "claims-desk", "title": "Claim (?P<item>CLM-\\d+)"}]
    });
    let saved = app
        .send_json("PUT", "/v1/admin/policy", &admin, &policy)
        .await;
    assert_eq!(
        saved.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&saved.body)
    );

    let after = app.get("/v1/agent/policy", &device.credential).await;
    assert_eq!(after.json()["rules"][0]["name"], "claims");
    assert_ne!(after.headers[header::ETAG].to_str().unwrap(), etag);
}

#[tokio::test]
async fn bad_policies_are_refused_with_the_reason() {
    let app = TestApp::start().await;
    let tenant = app.create_tenant("acme").await;
    let admin = app.api_key(&tenant, Role::Admin).await;
    let wfm = app.api_key(&tenant, Role::Wfm).await;
    let device = app.enroll(&tenant).await;

    let bad_regex =
        json!({"version": 2, "notice": "n", "rules": [{"name": "r", "title": "Claim (unclosed"}]});
    let refused = app
        .send_json("PUT", "/v1/admin/policy", &admin, &bad_regex)
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.json()["field"], "rules[0].title");
    assert!(refused.json()["message"]
        .as_str()
        .unwrap()
        .contains("invalid regex"));

    // A changed notice without a new version would skip asking employees again.
    let same_version = json!({"version": 1, "notice": "a different notice"});
    let refused = app
        .send_json("PUT", "/v1/admin/policy", &admin, &same_version)
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.json()["field"], "version");

    let unknown_field = json!({"version": 2, "notice": "n", "colour": "red"});
    let refused = app
        .send_json("PUT", "/v1/admin/policy", &admin, &unknown_field)
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);

    let not_admin = app
        .send_json(
            "PUT",
            "/v1/admin/policy",
            &wfm,
            &json!({"version": 2, "notice": "n"}),
        )
        .await;
    assert_eq!(not_admin.status, StatusCode::FORBIDDEN);
    let device_as_admin = app.get("/v1/admin/policy", &device.credential).await;
    assert_eq!(device_as_admin.status, StatusCode::UNAUTHORIZED);

    // Nothing of the refused attempts was saved.
    let current = app.get("/v1/agent/policy", &device.credential).await;
    assert_eq!(current.json()["version"], 1);
}

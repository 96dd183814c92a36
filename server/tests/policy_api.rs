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

/// Issue 10: a policy that records more (titles sent instead of dropped, a private-window
/// pattern removed, a new item rule) under the same version would apply without asking the
/// employees again. It is refused; with a new version it is saved. Every change is in the audit
/// log: who, when, and what changed.
#[tokio::test]
async fn widening_needs_a_new_version_and_every_change_is_audited() {
    let app = TestApp::start().await;
    let tenant = app.create_tenant("acme").await;
    let admin = app.api_key(&tenant, Role::Admin).await;
    let device = app.enroll(&tenant).await;
    let v2 = json!({
        "version": 2,
        "notice": "We record focused apps and work items. Titles stay here.",
        "private_titles": ["(?i)bank"],
    });
    let saved = app.send_json("PUT", "/v1/admin/policy", &admin, &v2).await;
    assert_eq!(saved.status, StatusCode::OK);

    for (widened, words) in [
        (json!({"title_policy": "send"}), "window titles send"),
        (json!({"private_titles": []}), "private_titles"),
        (
            json!({"rules": [{"name": "claims", "title": "Claim (?P<item>CLM-\\d+)"}]}),
            "claims",
        ),
    ] {
        let mut policy = v2.clone();
        for (k, v) in widened.as_object().unwrap() {
            policy[k] = v.clone();
        }
        let refused = app
            .send_json("PUT", "/v1/admin/policy", &admin, &policy)
            .await;
        let body = refused.json();
        assert_eq!(
            (refused.status, body["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("version")),
            "{widened}: {body}"
        );
        assert!(body["message"].as_str().unwrap().contains(words), "{body}");
    }
    let current = app.get("/v1/agent/policy", &device.credential).await;
    assert_eq!(
        current.json()["title_policy"],
        "drop",
        "nothing widened was saved"
    );

    // Narrowing needs no new version; widening with one is saved.
    let mut narrower = v2.clone();
    narrower["private_titles"] = json!(["(?i)bank", "(?i)health"]);
    let saved = app
        .send_json("PUT", "/v1/admin/policy", &admin, &narrower)
        .await;
    assert_eq!(saved.status, StatusCode::OK);
    let mut v3 = narrower.clone();
    v3["version"] = json!(3);
    v3["title_policy"] = json!("send");
    let saved = app.send_json("PUT", "/v1/admin/policy", &admin, &v3).await;
    assert_eq!(saved.status, StatusCode::OK, "{}", saved.json());

    // Audit: each save, by whom, with what changed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let saves = loop {
        let rows = backlight_server::storage::audit::recent(app.store.client(), "acme", 100)
            .await
            .unwrap();
        let saves: Vec<_> = rows
            .into_iter()
            .filter(|r| r.action == "policy_save")
            .collect();
        if saves.len() >= 3 || std::time::Instant::now() > deadline {
            break saves;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(saves.len(), 3, "{saves:#?}");
    let admin_key_id = admin.split('_').nth(1).unwrap();
    assert!(
        saves
            .iter()
            .all(|r| r.role == "admin" && r.key_id == admin_key_id),
        "{saves:#?}"
    );
    let newest = &saves[0];
    assert!(
        newest.target.contains("version 2 → 3")
            && newest.target.contains("title_policy drop → send"),
        "{newest:?}"
    );
    assert!(
        saves[1]
            .target
            .contains("private_titles adds \"(?i)health\""),
        "{saves:#?}"
    );
}

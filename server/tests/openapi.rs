//! The OpenAPI document (`GET /openapi.json`) against the code it describes:
//!
//! - every route registered in `src/` is in the document, and every route in the document is
//!   registered (read from the sources, so a new route without an annotation fails here);
//! - the real router (on a real ClickHouse, as the other API tests) serves every documented
//!   operation and refuses every undocumented method on a documented path with 405;
//! - the document is valid OpenAPI 3 (parsed back with utoipa's own types), its references
//!   resolve, every operation names its security and required roles;
//! - the hand-written report schema matches what the reports handler really serializes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use backlight_server::http::openapi::{ApiDoc, OPENAPI_PATH};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use utoipa::OpenApi;

/// Methods the router could register; the document's operations use the same names.
const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// Path constants used in `.route(…)` calls, by the name the sources use.
fn path_constant(name: &str) -> Option<&'static str> {
    Some(match name {
        "ENROLL_PATH" => backlight_shared::api::ENROLL_PATH,
        "INGEST_PATH" => backlight_shared::api::INGEST_PATH,
        "POLICY_PATH" => backlight_shared::policy::POLICY_PATH,
        "PERFORMANCE_PATH" => backlight_server::http::reports::PERFORMANCE_PATH,
        "OPENAPI_PATH" => OPENAPI_PATH,
        _ => return None,
    })
}

fn document() -> Value {
    serde_json::from_str(&ApiDoc::openapi().to_json().unwrap()).unwrap()
}

/// `(method, path)` of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, _) in item.as_object().unwrap() {
            assert!(
                METHODS.contains(&method.as_str()),
                "{path}: unexpected key {method}"
            );
            ops.insert((method.clone(), path.clone()));
        }
    }
    ops
}

/// The text of the `(…)` that starts at `open` (the index of `(`), without the parentheses.
fn parenthesized(text: &str, open: usize) -> &str {
    let mut depth = 0;
    for (i, c) in text[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses after {}", &text[open..]);
}

/// Splits at commas outside parentheses.
fn top_level_args(args: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in args.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(args[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(args[start..].trim());
    out.retain(|a| !a.is_empty());
    out
}

/// The methods of a method router expression such as `get(a).put(b)` or `axum::routing::post(c)`.
fn methods_of(expr: &str) -> Vec<String> {
    let mut methods = Vec::new();
    let (mut depth, mut ident_start) = (0, None);
    for (i, c) in expr.char_indices() {
        match c {
            '(' => {
                if depth == 0 {
                    if let Some(s) = ident_start {
                        let name = expr[s..i].rsplit("::").next().unwrap().trim();
                        assert!(
                            METHODS.contains(&name),
                            "`{expr}`: `{name}` is not a method this test knows; extend it"
                        );
                        methods.push(name.to_string());
                    }
                }
                depth += 1;
                ident_start = None;
            }
            ')' => depth -= 1,
            c if depth == 0 && (c.is_alphanumeric() || c == '_' || c == ':') => {
                ident_start.get_or_insert(i);
            }
            _ => ident_start = None,
        }
    }
    assert!(!methods.is_empty(), "no method in `{expr}`");
    methods
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `(method, path)` of every route registered in the server's sources (test modules aside).
fn registered() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut routes = BTreeSet::new();
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        let source = source.split("#[cfg(test)]\nmod tests").next().unwrap();
        for other in [
            ".nest(",
            ".nest_service(",
            ".route_service(",
            ".route_layer(",
        ] {
            assert!(
                !source.contains(other),
                "{}: uses `{other}…)`, which this test cannot read yet; extend it",
                file.display()
            );
        }
        for (at, _) in source.match_indices(".route(") {
            let args = parenthesized(source, at + ".route".len());
            let args = top_level_args(args);
            assert_eq!(args.len(), 2, "{}: .route({args:?})", file.display());
            let path = match args[0].strip_prefix('"') {
                Some(literal) => literal.trim_end_matches('"').to_string(),
                None => {
                    let name = args[0].rsplit("::").next().unwrap();
                    path_constant(name)
                        .unwrap_or_else(|| {
                            panic!(
                                "{}: route path `{}` is a constant this test does not know; \
                                 add it to `path_constant`",
                                file.display(),
                                args[0]
                            )
                        })
                        .to_string()
                }
            };
            for method in methods_of(args[1]) {
                routes.insert((method, path.clone()));
            }
        }
    }
    routes
}

#[test]
fn every_registered_route_is_documented_and_nothing_else() {
    let registered = registered();
    let documented = documented(&document());
    // Sanity: the scan found the routes we know exist.
    for known in [
        ("post", "/v1/ingest"),
        ("put", "/v1/admin/policy"),
        ("get", "/v1/items/{id}/events"),
        ("get", "/v1/reports/performance"),
        ("get", "/"),
        ("get", OPENAPI_PATH),
    ] {
        let known = (known.0.to_string(), known.1.to_string());
        assert!(registered.contains(&known), "scan missed {known:?}");
    }
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&registered).collect();
    assert!(
        undocumented.is_empty(),
        "routes without a #[utoipa::path] in http::openapi::ApiDoc: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "documented but not registered: {unserved:?}"
    );
}

#[test]
fn the_document_is_valid_openapi_3_and_round_trips() {
    let json = ApiDoc::openapi().to_pretty_json().unwrap();
    let parsed: utoipa::openapi::OpenApi =
        serde_json::from_str(&json).expect("utoipa parses its own document back");
    let original: Value = serde_json::from_str(&json).unwrap();
    let again: Value = serde_json::from_str(&parsed.to_json().unwrap()).unwrap();
    assert_eq!(original, again, "the document round-trips");
    let version = original["openapi"].as_str().unwrap();
    assert!(version.starts_with("3."), "{version}");
    assert!(!original["info"]["title"].as_str().unwrap().is_empty());
}

/// Every `$ref` in `value`.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn references_resolve_and_operations_say_who_may_call_them() {
    let doc = document();
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "{r} is not in components"
        );
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["device"]["bearerFormat"], "bld_…");
    assert_eq!(schemes["api_key"]["bearerFormat"], "blk_…");
    assert_eq!(schemes["metrics_token"]["scheme"], "bearer");

    let mut operation_ids = BTreeSet::new();
    for (method, path) in documented(&doc) {
        let op = &doc["paths"][&path][&method];
        let id = op["operationId"].as_str().unwrap().to_string();
        assert!(operation_ids.insert(id.clone()), "operationId {id} twice");
        assert!(
            !op["description"].as_str().unwrap_or("").is_empty(),
            "{method} {path}: no description"
        );
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path}: no success response"
        );
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                if path != "/readyz" {
                    assert_eq!(
                        schema, "#/components/schemas/ErrorBody",
                        "{method} {path} {status}: errors are ErrorBody"
                    );
                }
            }
        }
        let security: Vec<String> = op["security"]
            .as_array()
            .map(|s| {
                s.iter()
                    .flat_map(|r| r.as_object().unwrap().keys().cloned())
                    .collect()
            })
            .unwrap_or_default();
        for scheme in &security {
            assert!(schemes.get(scheme).is_some(), "{method} {path}: {scheme}");
        }
        let needs_key = (path.starts_with("/v1/") && path != backlight_shared::api::ENROLL_PATH)
            || path == "/metrics";
        assert_eq!(
            !security.is_empty(),
            needs_key,
            "{method} {path}: security {security:?}"
        );
        if security.iter().any(|s| s == "api_key") {
            assert!(
                op["description"]
                    .as_str()
                    .unwrap()
                    .contains("Required role"),
                "{method} {path}: the description must name the required roles"
            );
            assert!(responses.contains_key("401") && responses.contains_key("403"));
        }
    }
}

#[test]
fn streams_pages_metrics_and_csv_have_their_media_types() {
    let doc = document();
    let content = |method: &str, path: &str| -> BTreeSet<String> {
        doc["paths"][path][method]["responses"]["200"]["content"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path}: no 200 content"))
            .keys()
            .cloned()
            .collect()
    };
    assert!(content("get", "/v1/items/{id}/events").contains("text/event-stream"));
    let report = content("get", "/v1/reports/performance");
    assert!(report.contains("application/json") && report.contains("text/csv; charset=utf-8"));
    for page in ["/", "/lookup", "/dashboard"] {
        assert!(content("get", page).contains("text/html; charset=utf-8"));
    }
    assert!(content("get", "/metrics").contains("text/plain; version=0.0.4"));
    let ingest = &doc["paths"]["/v1/ingest"]["post"];
    assert_eq!(
        ingest["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Batch"
    );
    for status in ["400", "401", "403", "413", "415", "422", "503"] {
        assert!(
            ingest["responses"].get(status).is_some(),
            "ingest: {status}"
        );
    }
    let search: BTreeSet<&str> = doc["paths"]["/v1/items"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        search,
        BTreeSet::from(["customer_ref", "queue", "status", "sla_state", "limit"])
    );
}

/// Object keys of `value`, sorted.
fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn the_report_schema_matches_the_report_the_handler_serializes() {
    use backlight_server::reports::{Backlog, ItemFigures, Report, ReportRow, TimeFigures};
    let backlog = Backlog {
        count: 1,
        mean_age_ms: Some(1.0),
        max_age_ms: Some(1),
    };
    // Every optional field set, so every key appears.
    let mut row = ReportRow::new(
        "g".into(),
        &TimeFigures::default(),
        &ItemFigures::default(),
        false,
    );
    row.start_ms = Some(0);
    row.end_ms = Some(1);
    row.backlog = Some(backlog.clone());
    let report = Report {
        group_by: "team".into(),
        from_ms: 0,
        to_ms: 1,
        tz: "UTC".parse().expect("a zone name"),
        team: Some("t".into()),
        queue: Some("q".into()),
        rows: vec![row.clone()],
        totals: row,
        backlog,
    };
    let json = serde_json::to_value(&report).unwrap();
    let doc = document();
    let schema = |name: &str| keys(&doc["components"]["schemas"][name]["properties"]);
    assert_eq!(keys(&json), schema("Report"), "Report");
    assert_eq!(keys(&json["totals"]), schema("ReportRow"), "ReportRow");
    assert_eq!(keys(&json["backlog"]), schema("Backlog"), "Backlog");
}

#[tokio::test]
async fn openapi_json_is_served_as_generated() {
    let response = backlight_server::http::openapi::routes::<()>()
        .oneshot(Request::get(OPENAPI_PATH).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let served: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(served, document());
}

/// A concrete URL for a documented path (`{id}` → a sample value).
fn concrete(path: &str) -> String {
    path.replace("{id}", "CLAIM-1")
        .replace("{file}", "nothing.css")
}

#[tokio::test]
async fn the_real_router_serves_exactly_the_documented_operations() {
    let app = support::TestApp::start().await;
    let doc = document();
    let mut by_path: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (method, path) in documented(&doc) {
        by_path.entry(path).or_default().insert(method);
    }
    for (path, methods) in &by_path {
        let url = concrete(path);
        for method in METHODS {
            let request = Request::builder()
                .method(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap())
                .uri(&url)
                .body(Body::empty())
                .unwrap();
            let response = app.request(request).await;
            let text = String::from_utf8_lossy(&response.body);
            if methods.contains(method) {
                assert_ne!(
                    response.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is documented but not routed"
                );
                assert!(
                    !text.contains("no such endpoint"),
                    "{method} {path} is documented but falls through to the fallback"
                );
            } else {
                assert_eq!(
                    response.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is served but not documented: {text}"
                );
            }
        }
    }
}

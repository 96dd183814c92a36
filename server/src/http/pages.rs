//! The two browser pages and their assets, compiled into the binary (no build step, nothing
//! fetched from elsewhere at runtime). User documentation: `docs/pages.md`.
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /`, `GET /lookup` | contact-center agents | look an item up, watch it live |
//! | `GET /dashboard` | workforce managers | the performance report as table, charts, CSV |
//! | `GET /static/{name}.{hash}.{ext}` | the pages | CSS and JS, cached for a year |
//!
//! The pages hold no data and need no authentication: the browser asks for an API key once
//! per tab (kept in `sessionStorage`) and calls the JSON APIs with `Authorization: Bearer`, so
//! every read goes through the same role checks and audit log as any other client. Live item
//! updates use `fetch` with a streaming reader on `/v1/items/{id}/events`, because
//! `EventSource` cannot send an `Authorization` header.
//!
//! Caching: an asset's URL carries a hash of its content, so it is served `immutable` for a
//! year and a new release changes the URL; the pages themselves are `no-cache` (revalidated
//! with an `ETag`). Every page carries a strict `Content-Security-Policy` (same origin only, no
//! inline script or style), which the static files are written to satisfy.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// Same origin only; no inline script or style; no framing; forms post nowhere else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

/// Assets: logical name, content type, content. Pages refer to them as `{{name}}`.
const ASSETS: [(&str, &str, &str); 4] = [
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../static/app.css"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/common.js"),
    ),
    (
        "lookup.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/lookup.js"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/dashboard.js"),
    ),
];

const LOOKUP_HTML: &str = include_str!("../../static/lookup.html");
const DASHBOARD_HTML: &str = include_str!("../../static/dashboard.html");

struct Asset {
    content_type: &'static str,
    body: &'static str,
}

struct Page {
    html: String,
    etag: String,
}

/// Everything derived from the embedded files once: versioned asset names and the pages with
/// their asset URLs filled in.
struct Site {
    /// By versioned file name (`app.1a2b3c4d5e.css`).
    assets: HashMap<String, Asset>,
    lookup: Page,
    dashboard: Page,
}

fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..5])
}

/// `app.css` + hash → `app.<hash>.css`.
fn versioned_name(name: &str, hash: &str) -> String {
    match name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{hash}.{ext}"),
        None => format!("{name}.{hash}"),
    }
}

fn page(template: &str, urls: &[(String, String)]) -> Page {
    let mut html = template.to_string();
    for (placeholder, url) in urls {
        html = html.replace(placeholder, url);
    }
    debug_assert!(!html.contains("{{"), "a page refers to an unknown asset");
    let etag = format!("\"{}\"", short_hash(html.as_bytes()));
    Page { html, etag }
}

static SITE: LazyLock<Site> = LazyLock::new(|| {
    let mut assets = HashMap::new();
    let mut urls = Vec::new();
    for (name, content_type, body) in ASSETS {
        let file = versioned_name(name, &short_hash(body.as_bytes()));
        urls.push((format!("{{{{{name}}}}}"), format!("/static/{file}")));
        assets.insert(file, Asset { content_type, body });
    }
    Site {
        assets,
        lookup: page(LOOKUP_HTML, &urls),
        dashboard: page(DASHBOARD_HTML, &urls),
    }
});

/// The page routes; they use no state, so any router can merge them.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(lookup))
        .route("/lookup", get(lookup))
        .route("/dashboard", get(dashboard))
        .route("/static/{file}", get(asset))
}

#[utoipa::path(
    get,
    path = "/lookup",
    tag = "pages",
    operation_id = "lookup_page",
    description = "The item lookup page for contact-center agents (also served at `/`). Needs no authentication: the page asks for an API key and calls the JSON APIs with it.",
    params(("If-None-Match" = Option<String>, Header, description = "The page's `ETag`")),
    responses(
        (status = 200, description = "The page", body = String, content_type = "text/html; charset=utf-8", headers(
            ("ETag" = String, description = "Revalidate with `If-None-Match`"),
            ("Cache-Control" = String, description = "`no-cache`"),
            ("Content-Security-Policy" = String, description = "Same origin only, no inline script or style"),
        )),
        (status = 304, description = "Unchanged since `If-None-Match`"),
    )
)]
async fn lookup(headers: HeaderMap) -> Response {
    serve_page(&SITE.lookup, &headers)
}

#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "pages",
    operation_id = "dashboard_page",
    description = "The performance dashboard for workforce managers. Needs no authentication: the page asks for an API key and calls the JSON APIs with it.",
    params(("If-None-Match" = Option<String>, Header, description = "The page's `ETag`")),
    responses(
        (status = 200, description = "The page", body = String, content_type = "text/html; charset=utf-8", headers(
            ("ETag" = String, description = "Revalidate with `If-None-Match`"),
            ("Cache-Control" = String, description = "`no-cache`"),
            ("Content-Security-Policy" = String, description = "Same origin only, no inline script or style"),
        )),
        (status = 304, description = "Unchanged since `If-None-Match`"),
    )
)]
async fn dashboard(headers: HeaderMap) -> Response {
    serve_page(&SITE.dashboard, &headers)
}

fn serve_page(page: &Page, request: &HeaderMap) -> Response {
    let not_modified = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == page.etag));
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        page.html.clone().into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(etag) = HeaderValue::from_str(&page.etag) {
        h.insert(header::ETAG, etag);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[utoipa::path(
    get,
    path = "/static/{file}",
    tag = "pages",
    operation_id = "static_asset",
    description = "CSS and JavaScript of the pages, under content-hashed names (`app.1a2b3c4d5e.css`) that the pages link to; served `immutable` for a year. No authentication.",
    params(("file" = String, Path, description = "Versioned file name, as linked from a page")),
    responses(
        (status = 200, description = "The file", content(("text/css; charset=utf-8"), ("text/javascript; charset=utf-8"))),
        (status = 404, description = "No such file (unknown or stale name)", body = backlight_shared::api::ErrorBody),
    )
)]
async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let asset = SITE
        .assets
        .get(&file)
        .ok_or_else(|| ApiError::not_found("no such file"))?;
    Ok((
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        asset.body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(path: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
        let mut request = Request::get(path);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = routes::<()>()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    /// The `/static/…` URLs a page refers to.
    fn asset_urls(html: &str) -> Vec<String> {
        html.match_indices("\"/static/")
            .map(|(i, _)| {
                let rest = &html[i + 1..];
                rest[..rest.find('"').unwrap()].to_string()
            })
            .collect()
    }

    #[tokio::test]
    async fn pages_are_not_cached_and_carry_a_strict_csp() {
        for path in ["/", "/lookup", "/dashboard"] {
            let (status, h, body) = get(path, &[]).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(h[header::CACHE_CONTROL], "no-cache", "{path}");
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
            assert!(h[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html"));
            assert!(!body.contains("{{"), "{path} has an unfilled placeholder");
            assert!(
                !body.contains("<script>"),
                "{path} has inline script (CSP forbids it)"
            );
            assert!(
                !body.contains(" style="),
                "{path} has inline style (CSP forbids it)"
            );
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{path} loads from elsewhere"
            );
        }
    }

    #[tokio::test]
    async fn a_page_revalidates_with_its_etag() {
        let (_, h, _) = get("/", &[]).await;
        let etag = h[header::ETAG].to_str().unwrap().to_string();
        let (status, _, body) = get("/", &[("if-none-match", &etag)]).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert!(body.is_empty());
    }

    #[tokio::test]
    async fn every_asset_a_page_uses_is_served_immutable_under_a_hashed_name() {
        for path in ["/", "/dashboard"] {
            let (_, _, html) = get(path, &[]).await;
            let urls = asset_urls(&html);
            assert!(urls.len() >= 3, "{path}: {urls:?}");
            for url in urls {
                let (status, h, body) = get(&url, &[]).await;
                assert_eq!(status, StatusCode::OK, "{url}");
                assert!(h[header::CACHE_CONTROL]
                    .to_str()
                    .unwrap()
                    .contains("immutable"));
                let name = url.trim_start_matches("/static/");
                let hash = name.split('.').nth(1).unwrap();
                assert_eq!(
                    hash,
                    short_hash(body.as_bytes()),
                    "{url}: the URL must change with the content"
                );
            }
        }
    }

    #[tokio::test]
    async fn unknown_or_stale_assets_are_404() {
        for url in [
            "/static/app.css",
            "/static/app.0000000000.css",
            "/static/..%2Fcli.rs",
        ] {
            let (status, h, _) = get(url, &[]).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{url}");
            assert!(h[header::CONTENT_TYPE].to_str().unwrap().contains("json"));
        }
    }

    #[test]
    fn versioned_names_keep_the_extension() {
        assert_eq!(versioned_name("app.css", "abc"), "app.abc.css");
        assert_eq!(versioned_name("LICENSE", "abc"), "LICENSE.abc");
    }
}

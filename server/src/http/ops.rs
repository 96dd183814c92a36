//! Operational endpoints: liveness, readiness, metrics.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::AppState;
use crate::telemetry::{Progress, MAX_DEVICE_SERIES};

/// `GET /healthz`: the process is up and serving.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    operation_id = "healthz",
    description = "Liveness: the process is up and serving. No authentication.",
    responses(
        (status = 200, description = "Up", body = Object, example = json!({"status": "ok"})),
    )
)]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: ClickHouse answers and the schema is current; a load balancer should only
/// send traffic to servers that say yes.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    operation_id = "readyz",
    description = "Readiness: ClickHouse answers and the schema is current. No authentication.",
    responses(
        (status = 200, description = "Ready", body = Object, example = json!({"status": "ready"})),
        (status = 503, description = "Not ready; the server's log has the reason under `error_id`", body = Object, example = json!({"status": "not_ready", "reason": "storage not ready", "error_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7"})),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.readiness().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(reason) => {
            // ClickHouse's words (hosts, users, tables) stay in the log: anyone can call this.
            let error_id = uuid::Uuid::new_v4();
            tracing::warn!(%error_id, %reason, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "status": "not_ready",
                    "reason": "storage not ready",
                    "error_id": error_id,
                })),
            )
                .into_response()
        }
    }
}

/// `GET /metrics`: Prometheus text, for a scraper holding the metrics token. Sequence gaps are
/// summed over all devices (per device only with `--metrics-per-device`) and come from the last
/// background computation (see [`crate::telemetry`]); a scrape never scans `events` itself.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    operation_id = "metrics",
    description = "Prometheus metrics, including sequence gaps summed over all devices (per device only when the server runs with `--metrics-per-device`). Needs the metrics token (`Authorization: Bearer <--metrics-token>`); without a token configured the endpoint is off.",
    security(("metrics_token" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 401, description = "No or wrong metrics token, or no token configured on the server", body = backlight_shared::api::ErrorBody),
    )
)]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let config = &state.metrics;
    let Some(token) = config.token.as_deref() else {
        return ApiError::unauthorized(
            "/metrics is off: start the server with --metrics-token (or BACKLIGHT_METRICS_TOKEN) \
             and give Prometheus that token",
        )
        .into_response();
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|p| same_secret(p, token)) {
        return ApiError::unauthorized("send Authorization: Bearer <the metrics token>")
            .into_response();
    }
    let mut text = crate::telemetry::prometheus().render();
    let (progress, error) = state.progress.get(state.store.client(), config);
    append_progress(
        &mut text,
        progress.as_deref(),
        error.as_deref(),
        config.per_device,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Equal tokens, compared through their digests so the time taken says nothing about the token.
fn same_secret(a: &str, b: &str) -> bool {
    Sha256::digest(a.as_bytes()) == Sha256::digest(b.as_bytes())
}

fn append_progress(
    text: &mut String,
    progress: Option<&Progress>,
    error: Option<&str>,
    per_device: bool,
) {
    if let Some(e) = error {
        // Only that it failed: ClickHouse's own words stay in the server log.
        let _ = writeln!(
            text,
            "# sequence gaps could not be computed the last time ({} bytes of error in the log)",
            e.len()
        );
    }
    let Some(p) = progress else {
        let _ = writeln!(
            text,
            "# sequence gaps not computed yet; they appear on a later scrape"
        );
        return;
    };
    if per_device {
        let _ = writeln!(text, "# HELP backlight_device_sequence_missing Events a device recorded that never reached the server (sequence gaps); the devices with the most, at most {MAX_DEVICE_SERIES}.");
        let _ = writeln!(text, "# TYPE backlight_device_sequence_missing gauge");
        for d in &p.worst {
            let _ = writeln!(
                text,
                "backlight_device_sequence_missing{{tenant=\"{}\",device=\"{}\"}} {}",
                d.tenant_id, d.device_id, d.missing
            );
        }
    }
    for (name, help, value) in [
        (
            "backlight_sequence_missing_total",
            "Sum of sequence gaps over all devices.",
            p.totals.missing,
        ),
        (
            "backlight_devices_with_gaps",
            "Devices with at least one event that never reached the server.",
            p.totals.devices_with_gaps,
        ),
        (
            "backlight_devices_reporting",
            "Devices that have sent at least one event.",
            p.totals.devices,
        ),
    ] {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} gauge");
        let _ = writeln!(text, "{name} {value}");
    }
    let _ = writeln!(text, "# HELP backlight_sequence_gaps_age_seconds How long ago the sequence gaps above were computed.");
    let _ = writeln!(text, "# TYPE backlight_sequence_gaps_age_seconds gauge");
    let _ = writeln!(
        text,
        "backlight_sequence_gaps_age_seconds {:.0}",
        p.computed.elapsed().as_secs_f64()
    );
}

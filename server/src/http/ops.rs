//! Operational endpoints: liveness, readiness, metrics.

use std::fmt::Write;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::storage::events::{self, DeviceProgress};

/// How long a computed per-device progress table is reused by `/metrics` scrapes.
const PROGRESS_CACHE_TTL: Duration = Duration::from_secs(15);

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

/// `GET /metrics`: Prometheus text. Per-device sequence gaps come from ClickHouse (so every
/// server reports the same truth) and are cached for a few seconds.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    operation_id = "metrics",
    description = "Prometheus metrics, including per-device sequence gaps. No authentication.",
    responses(
        (status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain; version=0.0.4"),
    )
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = crate::telemetry::prometheus().render();
    match device_progress(&state).await {
        Ok(progress) => append_progress(&mut text, &progress),
        Err(e) => {
            let _ = writeln!(
                text,
                "# device progress unavailable: {}",
                e.to_string().replace('\n', " ")
            );
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn device_progress(
    state: &AppState,
) -> Result<Vec<DeviceProgress>, crate::clickhouse::ClickHouseError> {
    let mut cache = state.progress_cache.lock().await;
    if let Some((at, progress)) = cache.as_ref() {
        if at.elapsed() < PROGRESS_CACHE_TTL {
            return Ok(progress.clone());
        }
    }
    let progress = events::device_progress(state.store.client(), None).await?;
    *cache = Some((Instant::now(), progress.clone()));
    Ok(progress)
}

fn append_progress(text: &mut String, progress: &[DeviceProgress]) {
    let total: u64 = progress.iter().map(|p| p.missing).sum();
    let _ = writeln!(text, "# HELP backlight_device_sequence_missing Events a device recorded that never reached the server (sequence gaps).");
    let _ = writeln!(text, "# TYPE backlight_device_sequence_missing gauge");
    // Only devices with gaps get a series: a healthy fleet of thousands adds no cardinality.
    for p in progress.iter().filter(|p| p.missing > 0) {
        let _ = writeln!(
            text,
            "backlight_device_sequence_missing{{tenant=\"{}\",device=\"{}\"}} {}",
            p.tenant_id, p.device_id, p.missing
        );
    }
    let _ = writeln!(
        text,
        "# HELP backlight_sequence_missing_total Sum of sequence gaps over all devices."
    );
    let _ = writeln!(text, "# TYPE backlight_sequence_missing_total gauge");
    let _ = writeln!(text, "backlight_sequence_missing_total {total}");
    let _ = writeln!(
        text,
        "# HELP backlight_devices_reporting Devices that have sent at least one event."
    );
    let _ = writeln!(text, "# TYPE backlight_devices_reporting gauge");
    let _ = writeln!(text, "backlight_devices_reporting {}", progress.len());
}

//! The server's own metrics (Prometheus text at `GET /metrics`) and logs.
//!
//! `/metrics` needs a credential ([`MetricsConfig::token`]): it describes the whole fleet. It
//! shows sequence gaps summed over all devices; per-device series (which name tenants and
//! devices) only with [`MetricsConfig::per_device`]. Gaps are computed from the `events` table
//! (so every server agrees), which takes a scan of it: [`ProgressCache`] runs that scan in the
//! background at most once per [`MetricsConfig::progress_interval`], never because of a scrape,
//! and a scrape is answered from what was computed last.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clickhouse::Client;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::storage::events::{self, DeviceProgress, ProgressTotals};

/// How `/metrics` is served (`serve --metrics-token`, `--metrics-per-device`,
/// `--metrics-progress-interval`).
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// The bearer token a scraper must send; `None`: `/metrics` is off (401).
    pub token: Option<Arc<str>>,
    /// Per-device gap series (labels `tenant`, `device`), at most [`MAX_DEVICE_SERIES`].
    pub per_device: bool,
    /// How often sequence gaps are computed at most.
    pub progress_interval: Duration,
}

/// Most per-device series, the devices with the most missing events first.
pub const MAX_DEVICE_SERIES: u64 = 1_000;
/// How often sequence gaps are computed by default.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(300);
/// How soon a failed computation of sequence gaps is tried again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// Shortest token accepted for `/metrics`.
pub const MIN_METRICS_TOKEN_LEN: usize = 16;

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            token: None,
            per_device: false,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
        }
    }
}

/// Sequence gaps as last computed.
#[derive(Debug, Clone)]
pub struct Progress {
    pub computed: Instant,
    pub totals: ProgressTotals,
    /// The devices with the most missing events (empty unless per-device series are on).
    pub worst: Vec<DeviceProgress>,
}

#[derive(Default)]
struct ProgressState {
    latest: Option<Arc<Progress>>,
    /// When the running or last refresh started.
    started: Option<Instant>,
    running: bool,
    refreshes: u64,
    last_error: Option<String>,
}

/// See the module documentation. Cheap to clone.
#[derive(Clone, Default)]
pub struct ProgressCache {
    state: Arc<Mutex<ProgressState>>,
}

impl ProgressCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        // Every critical section leaves the state consistent; keep serving after a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What was computed last (`None` before the first computation finished) and the error of
    /// the last attempt; starts one background computation when the last one started more
    /// than `interval` ago. Never waits for ClickHouse.
    pub fn get(
        &self,
        client: &Client,
        config: &MetricsConfig,
    ) -> (Option<Arc<Progress>>, Option<String>) {
        let mut state = self.lock();
        // After a failure, try again sooner than the interval (ClickHouse may be back).
        let wait = if state.last_error.is_some() {
            config.progress_interval.min(RETRY_AFTER_FAILURE)
        } else {
            config.progress_interval
        };
        let due = !state.running && state.started.is_none_or(|at| at.elapsed() >= wait);
        if due {
            state.running = true;
            state.started = Some(Instant::now());
            state.refreshes += 1;
            let (cache, client) = (self.clone(), client.clone());
            let limit = if config.per_device {
                MAX_DEVICE_SERIES
            } else {
                0
            };
            tokio::spawn(async move {
                let result = events::progress_summary(&client, limit).await;
                let mut state = cache.lock();
                state.running = false;
                match result {
                    Ok((totals, worst)) => {
                        state.latest = Some(Arc::new(Progress {
                            computed: Instant::now(),
                            totals,
                            worst,
                        }));
                        state.last_error = None;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "computing sequence gaps for /metrics failed");
                        state.last_error = Some(e.to_string());
                    }
                }
            });
        }
        (state.latest.clone(), state.last_error.clone())
    }

    /// How many computations were started (tests and the scan-count metric).
    pub fn refreshes(&self) -> u64 {
        self.lock().refreshes
    }
}

/// The process-wide Prometheus recorder. Installed on first use; in-process tests that build
/// several apps share it, which is what a process-wide registry means.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                100.0, 1_000.0, 5_000.0,
            ])
            .expect("static, non-empty bucket list")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then ours renders nothing new,
        // which is visible in /metrics rather than fatal.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be incomplete");
        }
        handle
    })
}

/// Sets up logging: JSON lines when `json`, human-readable otherwise; filter from `RUST_LOG`
/// or `BACKLIGHT_LOG` (default `info`).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BACKLIGHT_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.compact().init();
    }
}

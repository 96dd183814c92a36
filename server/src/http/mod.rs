//! The HTTP API. [`router`] builds the whole app from an [`AppState`], so tests drive it
//! in-process and the binary serves the very same router. Handlers parse, authorize, record
//! the call in the audit log ([`audit`]) and render; the work is done by [`crate::service`]
//! (items, registry, reports) and [`crate::ingest::accept`], each built per request from the
//! [`AppState`]'s handles ([`AppState::items`], [`AppState::registry`],
//! [`AppState::ingestion`]). A storage error reaches the client only as a generic 503 with an
//! error id ([`error::ApiError::storage_unavailable`]).
//!
//! | route | who | what |
//! |---|---|---|
//! | `POST /v1/enroll` | agent with an enrollment key | get a device credential |
//! | `POST /v1/ingest` | enrolled device | a batch of events |
//! | `GET /v1/agent/policy` | enrolled device | the tenant's policy (ETag) |
//! | `GET`/`PUT /v1/admin/policy` | admin API key | read / replace the policy |
//! | `/v1/admin/webhooks…` | admin API key | outbound webhooks ([`webhooks`]) |
//! | `GET`/`POST /v1/items`, `GET /v1/items/{id}`, `…/timeline` | API key (role-dependent view) | item status, search, registration ([`items`]) |
//! | `GET /v1/items/{id}/events` | API key | live status stream, SSE ([`item_stream`]) |
//! | `GET /v1/reports/performance` | wfm / admin API key | performance report, JSON or CSV ([`reports`]) |
//! | `GET /`, `/lookup`, `/dashboard`, `/static/…` | browser | the pages ([`pages`]) |
//! | `GET /openapi.json` | anyone | the API description ([`openapi`]) |
//! | `GET /healthz` | orchestrator | process is up |
//! | `GET /readyz` | load balancer | ClickHouse reachable, schema current |
//! | `GET /metrics` | Prometheus with the metrics token | counters, histograms, sequence gaps |

pub mod access_limits;
pub mod audit;
pub mod enroll;
pub mod error;
pub mod ingest;
pub mod item_stream;
pub mod items;
pub mod json;
pub mod openapi;
pub mod ops;
pub mod pages;
pub mod policy;
pub mod reports;
pub mod webhooks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use backlight_shared::api::{ENROLL_PATH, INGEST_PATH};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

use crate::auth::{ApiKeyAuthenticator, DeviceAuthenticator};
use crate::ingest::writer::IngestWriter;
use crate::storage::Store;
use access_limits::AccessLimits;

/// Item searches reading ClickHouse at once, per server. Each costs a few ms of
/// ClickHouse CPU; more in parallel only queue inside ClickHouse (which refuses past 100).
pub const MAX_CONCURRENT_ITEM_READS: usize = 32;
/// Reports running at once, per server (each runs a rollup refresh and three aggregations):
/// with the per-key share (see [`access_limits`]) this keeps reports from taking all of
/// ClickHouse's query slots (100) from lookups and ingest.
pub const MAX_CONCURRENT_REPORTS: usize = 16;
/// Item lookup batches reading ClickHouse at once (each is two queries). Few, so that under
/// load lookups gather into large batches instead of many small queries.
pub const ITEM_READ_BATCHES_IN_FLIGHT: usize = 2;

/// Longest any request may take, end to end, before the server answers 408 itself.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What every handler can reach. Cheap to clone; holds handles, not data.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub writer: IngestWriter,
    pub devices: DeviceAuthenticator,
    pub api_keys: ApiKeyAuthenticator,
    /// Sequence gaps for `/metrics`, computed in the background (see [`crate::telemetry`]).
    pub progress: crate::telemetry::ProgressCache,
    /// Who may read `/metrics` and what it shows.
    pub metrics: crate::telemetry::MetricsConfig,
    /// Who looked at what (items API, reports): batched writer, see [`crate::storage::audit`].
    pub audit: crate::storage::audit::AuditLog,
    /// Per-tenant handle-time statistics for item ETAs (a cache; see [`crate::storage::items`]).
    pub handle_times: crate::storage::items::HandleTimeCache,
    /// Per-tenant settings and device assignments for item lookups (a cache, same module).
    pub lookup_context: crate::service::items::LookupContextCache,
    /// Bounds the item reads in flight (search): beyond it reads wait briefly, then get 503.
    pub item_reads: ReadLimit,
    /// Bounds the reports running at once, the same way.
    pub report_runs: ReadLimit,
    /// Reads items for lookups, batching concurrent ones (see [`crate::storage::item_reader`]).
    pub item_reader: crate::storage::item_reader::ItemReader,
    /// Each API key's share of query capacity (see [`access_limits`]).
    pub query_share: Arc<access_limits::QueryShare>,
    /// Rate limits of enrollment (see [`access_limits`]).
    pub enroll_limits: Arc<access_limits::EnrollLimiter>,
    /// Fair shares, body and decode bounds, first-copy rule of ingest (see [`crate::ingest`]).
    pub ingest: crate::ingest::IngestControls,
    /// Tells open status streams when their item changed (see [`crate::live`]).
    pub live: crate::live::LiveHub,
    /// Where webhooks may deliver (`--webhook-allow-hosts`; see [`crate::webhooks::target`]).
    pub webhook_targets: crate::webhooks::target::TargetPolicy,
}

/// A bound on concurrent reads of one kind, so a burst of lookups queues here instead of
/// overrunning ClickHouse's own query limit.
#[derive(Clone)]
pub struct ReadLimit {
    permits: Arc<tokio::sync::Semaphore>,
    what: &'static str,
}

impl ReadLimit {
    /// How long a read may wait for its turn before it is turned away.
    const WAIT: Duration = Duration::from_secs(2);

    pub fn new(concurrent: usize, what: &'static str) -> ReadLimit {
        ReadLimit {
            permits: Arc::new(tokio::sync::Semaphore::new(concurrent)),
            what,
        }
    }

    /// Waits for a turn (at most [`Self::WAIT`]); hold the permit while reading.
    pub async fn enter(
        &self,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, crate::clickhouse::ClickHouseError> {
        match tokio::time::timeout(Self::WAIT, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(crate::clickhouse::ClickHouseError::Saturated(self.what)),
        }
    }
}

impl AppState {
    /// The item service over this server's handles (see [`crate::service::items`]).
    pub fn items(&self) -> crate::service::items::Items<'_> {
        crate::service::items::Items {
            client: self.store.client(),
            reader: &self.item_reader,
            lookup_context: &self.lookup_context,
            handle_times: &self.handle_times,
            live: &self.live,
            clock: backlight_shared::now_ms,
        }
    }

    /// Enrollment and policies over this server's handles (see [`crate::service::registry`]).
    pub fn registry(&self) -> crate::service::registry::Registry<'_> {
        crate::service::registry::Registry {
            registry: self.store.registry(),
            client: self.store.client(),
            clock: backlight_shared::now_ms,
        }
    }

    /// The ingest path over this server's handles (see [`crate::ingest::accept`]).
    pub fn ingestion(&self) -> crate::ingest::accept::Ingest<'_> {
        crate::ingest::accept::Ingest {
            controls: &self.ingest,
            writer: &self.writer,
            live: &self.live,
            clock: backlight_shared::now_ms,
        }
    }

    /// `auth_cache_ttl`: how long credential lookups are cached (see [`crate::auth`]); it also
    /// bounds how long item lookups reuse a tenant's settings and assignments.
    pub fn new(store: Store, writer: IngestWriter, auth_cache_ttl: Duration) -> AppState {
        let item_reader = crate::storage::item_reader::ItemReader::spawn(
            store.client().clone(),
            ITEM_READ_BATCHES_IN_FLIGHT,
        );
        AppState {
            devices: DeviceAuthenticator::new(store.registry().clone(), auth_cache_ttl),
            api_keys: ApiKeyAuthenticator::new(store.registry().clone(), auth_cache_ttl),
            audit: crate::storage::audit::AuditLog::new(store.client().clone()),
            handle_times: crate::storage::items::handle_time_cache(
                crate::storage::items::HANDLE_TIME_CACHE_TTL,
            ),
            lookup_context: crate::service::items::context::lookup_context_cache(
                store.registry().clone(),
                auth_cache_ttl.min(crate::service::items::context::LOOKUP_CONTEXT_TTL),
            ),
            item_reads: ReadLimit::new(MAX_CONCURRENT_ITEM_READS, "item reads"),
            report_runs: ReadLimit::new(MAX_CONCURRENT_REPORTS, "reports"),
            live: crate::live::LiveHub::spawn(
                crate::live::LiveConfig::default(),
                store.client().clone(),
                item_reader.clone(),
                store.registry().clone(),
            ),
            ingest: crate::ingest::IngestControls::new(
                crate::ingest::IngestLimits::default(),
                store.client().clone(),
                crate::ingest::first_copy::DEFAULT_TTL,
            ),
            item_reader,
            webhook_targets: crate::webhooks::target::TargetPolicy::strict(),
            store,
            writer,
            progress: crate::telemetry::ProgressCache::default(),
            metrics: crate::telemetry::MetricsConfig::default(),
            query_share: access_limits::QueryShare::new(&AccessLimits::default()),
            enroll_limits: Arc::new(access_limits::EnrollLimiter::new(&AccessLimits::default())),
        }
    }

    /// The same state with a device directory of at most `capacity` devices (see
    /// [`DeviceAuthenticator`]).
    pub fn with_device_directory(mut self, capacity: usize, auth_cache_ttl: Duration) -> AppState {
        self.devices = DeviceAuthenticator::with_capacity(
            self.store.registry().clone(),
            auth_cache_ttl,
            capacity,
        );
        self
    }

    /// The same state serving `/metrics` as `config` says.
    pub fn with_metrics(mut self, config: crate::telemetry::MetricsConfig) -> AppState {
        self.metrics = config;
        self
    }

    /// The same state with other per-caller limits (the defaults come from [`AccessLimits`]).
    pub fn with_access_limits(mut self, limits: &AccessLimits) -> AppState {
        self.query_share = access_limits::QueryShare::new(limits);
        self.enroll_limits = Arc::new(access_limits::EnrollLimiter::new(limits));
        self
    }

    /// The same state with other ingest limits (the defaults come from [`AppState::new`]).
    pub fn with_ingest_limits(mut self, limits: crate::ingest::IngestLimits) -> AppState {
        let progress_ttl = self.ingest.first_copy.ttl();
        self.ingest =
            crate::ingest::IngestControls::new(limits, self.store.client().clone(), progress_ttl);
        self
    }

    /// This state with a live hub of its own tuning (stream limits, tick) instead of the
    /// default one.
    pub fn with_live_config(mut self, config: crate::live::LiveConfig) -> AppState {
        self.live = crate::live::LiveHub::spawn(
            config,
            self.store.client().clone(),
            self.item_reader.clone(),
            self.store.registry().clone(),
        );
        self
    }
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    // No request body may pause for longer (`--body-read-timeout`); ingest bodies are bounded
    // further by a minimum rate (`crate::ingest::body`).
    let body_idle = state.ingest.limits.body_idle;
    Router::new()
        .route(ENROLL_PATH, post(enroll::enroll))
        .route(INGEST_PATH, post(ingest::ingest))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .merge(items::routes())
        .merge(item_stream::routes())
        .merge(webhooks::routes())
        .merge(policy::routes())
        .merge(reports::routes())
        .merge(pages::routes())
        .merge(openapi::routes())
        .fallback(error::fallback)
        .layer(RequestBodyTimeoutLayer::new(body_idle))
        .with_state(state)
        .layer(middleware::from_fn(record_request))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(CatchPanicLayer::new())
}

/// Counts requests and their latency by matched route (never by raw path: bounded labels).
async fn record_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("backlight_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("backlight_http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

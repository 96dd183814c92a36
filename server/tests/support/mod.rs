//! Shared setup for the server's in-process API tests: a real, throwaway ClickHouse (never a
//! mock), the real router driven with `tower::ServiceExt::oneshot`, and helpers to create
//! tenants, keys and devices and to ingest like an agent.
#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use backlight_server::clickhouse::embedded::ClickHouseProcess;
use backlight_server::clickhouse::ClickHouseConfig;
use backlight_server::http::{router, AppState};
use backlight_server::ingest::writer::{IngestWriter, WriterConfig};
use backlight_server::storage::Store;
use backlight_server::tenancy::{Role, TenantId};
use backlight_shared::api::EnrollResponse;
use backlight_shared::batch::Batch;
use backlight_shared::event::{Event, EventBody};
use backlight_shared::PROTOCOL_VERSION;
use http_body_util::BodyExt;
use uuid::Uuid;

pub struct TestApp {
    pub app: Router,
    pub store: Store,
    // Keeps ClickHouse alive (killed on drop) and its data dir present.
    _clickhouse: ClickHouseProcess,
    _dir: tempfile::TempDir,
}

/// A device enrolled through the real `/v1/enroll`.
pub struct TestDevice {
    pub device_id: Uuid,
    pub credential: String,
    next_seq: u64,
}

pub struct TestResponse {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl TestResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A real ClickHouse with a migrated store and the app state on top, for tests that build
/// their own harness around it.
pub struct Parts {
    pub store: Store,
    pub state: AppState,
    pub clickhouse: ClickHouseProcess,
    pub dir: tempfile::TempDir,
}

/// A throwaway ClickHouse under a new temp dir (fails loudly when the binary is missing), and
/// the configuration for `database` on it (nothing created yet).
pub async fn start_clickhouse(
    database: &str,
) -> (tempfile::TempDir, ClickHouseProcess, ClickHouseConfig) {
    start_clickhouse_with(database, false).await
}

/// [`start_clickhouse`] with `log_queries` on, so `system.query_log` holds every statement
/// sent to it (the SQL compatibility test replays them on the current ClickHouse).
pub async fn start_clickhouse_logging_queries(
    database: &str,
) -> (tempfile::TempDir, ClickHouseProcess, ClickHouseConfig) {
    start_clickhouse_with(database, true).await
}

async fn start_clickhouse_with(
    database: &str,
    log_queries: bool,
) -> (tempfile::TempDir, ClickHouseProcess, ClickHouseConfig) {
    let dir = tempfile::tempdir().expect("temp dir");
    let clickhouse_dir = dir.path().join("clickhouse");
    if log_queries {
        // ClickHouse merges `users.d/*.xml` into the users.xml the embedded start writes.
        let users_d = clickhouse_dir.join("users.d");
        std::fs::create_dir_all(&users_d).expect("creating users.d");
        std::fs::write(
            users_d.join("log_queries.xml"),
            "<yandex><profiles><default><log_queries>1</log_queries></default></profiles></yandex>\n",
        )
        .expect("writing users.d/log_queries.xml");
    }
    let clickhouse = ClickHouseProcess::start(&clickhouse_dir, None)
        .await
        .unwrap_or_else(|e| panic!("cannot start ClickHouse for the test: {e}"));
    let config = ClickHouseConfig {
        url: clickhouse.url(),
        database: database.into(),
        user: Some(backlight_server::clickhouse::embedded::USER.into()),
        password: Some(clickhouse.password().into()),
        cluster: None,
    };
    (dir, clickhouse, config)
}

/// Starts ClickHouse (fails loudly when the binary is missing), opens the store and builds the
/// app state with credential caching off, so revocations and new keys apply at once.
pub async fn start_parts() -> Parts {
    start_parts_on(start_clickhouse("backlight_test").await).await
}

/// [`start_parts`] on a ClickHouse the caller started.
pub async fn start_parts_on(
    (dir, clickhouse, config): (tempfile::TempDir, ClickHouseProcess, ClickHouseConfig),
) -> Parts {
    let store = Store::open(&config).await.expect("open store");
    let writer = IngestWriter::spawn(
        store.client().clone(),
        WriterConfig {
            min_insert_interval: Duration::ZERO,
            ..WriterConfig::default()
        },
    );
    let state = AppState::new(store.clone(), writer, Duration::ZERO);
    Parts {
        store,
        state,
        clickhouse,
        dir,
    }
}

impl TestApp {
    /// Starts ClickHouse (fails loudly when the binary is missing) and the app on top of it.
    pub async fn start() -> TestApp {
        let parts = start_parts().await;
        TestApp {
            app: router(parts.state),
            store: parts.store,
            _clickhouse: parts.clickhouse,
            _dir: parts.dir,
        }
    }

    /// The app on `state` (e.g. with a writer configured by the test) instead of the state of
    /// `parts`, whose ClickHouse it keeps alive.
    pub fn from_state(state: AppState, parts: Parts) -> TestApp {
        TestApp {
            app: router(state),
            store: parts.store,
            _clickhouse: parts.clickhouse,
            _dir: parts.dir,
        }
    }

    pub async fn request(&self, request: Request<Body>) -> TestResponse {
        use tower::ServiceExt;
        let response = self
            .app
            .clone()
            .oneshot(request)
            .await
            .expect("infallible router");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        TestResponse {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, bearer: &str) -> TestResponse {
        self.request(
            Request::get(path)
                .header(header::AUTHORIZATION, format!("Bearer {bearer}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    pub async fn send_json(
        &self,
        method: &str,
        path: &str,
        bearer: &str,
        body: &serde_json::Value,
    ) -> TestResponse {
        self.request(
            Request::builder()
                .method(method)
                .uri(path)
                .header(header::AUTHORIZATION, format!("Bearer {bearer}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }

    pub async fn create_tenant(&self, id: &str) -> TenantId {
        let tenant: TenantId = id.parse().unwrap();
        self.store
            .registry()
            .create_tenant(&tenant, id)
            .await
            .unwrap();
        tenant
    }

    pub async fn api_key(&self, tenant: &TenantId, role: Role) -> String {
        self.store
            .registry()
            .create_api_key(tenant, role, "test")
            .await
            .unwrap()
            .to_string()
    }

    pub async fn enroll(&self, tenant: &TenantId) -> TestDevice {
        let key = self
            .store
            .registry()
            .create_enrollment_key(tenant, None, "test")
            .await
            .unwrap();
        let response = self
            .request(
                Request::post("/v1/enroll")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(
                        serde_json::json!({
                            "enrollment_key": key.to_string(), "hostname": "test-desk",
                            "agent_version": "test", "os": "linux"
                        })
                        .to_string(),
                    ))
                    .unwrap(),
            )
            .await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        let enrolled: EnrollResponse = serde_json::from_slice(&response.body).unwrap();
        TestDevice {
            device_id: enrolled.device_id,
            credential: enrolled.device_credential,
            next_seq: 1,
        }
    }

    /// Sends `bodies` as one zstd batch from `device`, numbering them after its last batch.
    /// Returns the batch so a test can send it again.
    pub async fn ingest(&self, device: &mut TestDevice, bodies: Vec<EventBody>) -> Batch {
        let events = bodies
            .into_iter()
            .map(|body| {
                let seq = device.next_seq;
                device.next_seq += 1;
                Event {
                    seq,
                    id: Uuid::new_v4(),
                    body,
                }
            })
            .collect();
        let batch = Batch {
            protocol: PROTOCOL_VERSION,
            device_id: device.device_id,
            events,
        };
        self.ingest_batch(device, &batch).await;
        batch
    }

    /// Sends an already built batch (e.g. again, as after a lost acknowledgement).
    pub async fn ingest_batch(&self, device: &TestDevice, batch: &Batch) {
        let response = self.request(ingest_request(device, batch)).await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
    }
}

/// `POST /v1/ingest` of `batch` as `device` sends it: zstd-compressed JSON.
pub fn ingest_request(device: &TestDevice, batch: &Batch) -> Request<Body> {
    let body = zstd::encode_all(&serde_json::to_vec(batch).unwrap()[..], 3).unwrap();
    Request::post("/v1/ingest")
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", device.credential),
        )
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_ENCODING, "zstd")
        .body(Body::from(body))
        .unwrap()
}

/// Runs `python3 scripts/<script> <args>` with `env` added (a check on the current ClickHouse
/// engine, chDB), prints what it reported and fails the test, with the report, unless it
/// succeeded.
pub fn run_check_script(script: &str, args: &[&std::ffi::OsStr], env: &[(&str, &str)]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(script);
    let output = std::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{report}",
        output.status
    );
}

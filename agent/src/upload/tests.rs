//! The uploader against a small in-process server (axum on a free loopback port) whose answers
//! each test scripts.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use backlight_shared::api::{ErrorBody, IngestResponse, INGEST_PATH};
use backlight_shared::batch::Batch;
use backlight_shared::event::{
    ActivitySpan, ActivityState, EventBody, ItemAction, ItemSource, WorkItemEvent,
};
use backlight_shared::{now_ms, PROTOCOL_VERSION};
use uuid::Uuid;

use super::*;
use crate::credentials::Credentials;
use crate::spool::{inspect, SourceProgress, SpoolConfig};

const CREDENTIAL: &str = "bld_1a_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// One scripted answer; `body: None` answers like a real server accepting the batch.
struct Answer {
    status: StatusCode,
    headers: Vec<(&'static str, String)>,
    body: Option<String>,
}

impl Answer {
    fn status(status: StatusCode) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: None,
        }
    }

    fn error(status: StatusCode, message: &str, field: Option<&str>) -> Answer {
        let body = ErrorBody {
            error: "scripted".into(),
            message: message.into(),
            field: field.map(String::from),
        };
        Answer {
            status,
            headers: Vec::new(),
            body: serde_json::to_string(&body).ok(),
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }

    fn body(mut self, body: &str) -> Answer {
        self.body = Some(body.into());
        self
    }
}

/// What the server saw in one request.
struct Received {
    batch: Batch,
    headers: HeaderMap,
    /// Events in the agent's spool while the request was being handled.
    spool_depth_during_request: u64,
    at: Instant,
}

impl Received {
    fn seqs(&self) -> Vec<u64> {
        self.batch.events.iter().map(|e| e.seq).collect()
    }
}

struct Server {
    script: Mutex<VecDeque<Answer>>,
    received: Mutex<Vec<Received>>,
    spool_path: PathBuf,
}

impl Server {
    fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.script.lock().unwrap().extend(answers);
    }

    fn batches(&self) -> Vec<Vec<u64>> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(Received::seqs)
            .collect()
    }
}

async fn ingest(State(server): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    let json = zstd::decode_all(&body[..]).expect("the body must be zstd");
    let batch: Batch = serde_json::from_slice(&json).expect("the body must be a batch");
    let accepted = IngestResponse {
        accepted: batch.events.len(),
        max_seq: batch.events.last().map_or(0, |e| e.seq),
    };
    let depth = inspect(&server.spool_path).unwrap().map_or(0, |r| r.depth);
    server.received.lock().unwrap().push(Received {
        batch,
        headers,
        spool_depth_during_request: depth,
        at: Instant::now(),
    });
    let Some(answer) = server.script.lock().unwrap().pop_front() else {
        return Json(accepted).into_response();
    };
    let mut response = match answer.body {
        Some(body) => (answer.status, body).into_response(),
        None => (answer.status, Json(accepted)).into_response(),
    };
    for (name, value) in answer.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

struct Fixture {
    _dir: tempfile::TempDir,
    spool: Spool,
    server: Arc<Server>,
    uploader: Uploader,
    clock: Arc<ClockOffset>,
    device_id: Uuid,
}

impl Fixture {
    async fn new(batch_max_events: usize) -> Fixture {
        Fixture::with_age(batch_max_events, Duration::from_secs(3600)).await
    }

    async fn with_age(batch_max_events: usize, batch_max_age: Duration) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let spool_path = dir.path().join("spool.sqlite3");
        let spool = Spool::open(&spool_path, SpoolConfig { max_events: 10_000 }).unwrap();
        let server = Arc::new(Server {
            script: Mutex::default(),
            received: Mutex::default(),
            spool_path,
        });
        let app = Router::new()
            .route(INGEST_PATH, post(ingest))
            .with_state(Arc::clone(&server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Fixture::connect(
            dir,
            spool,
            server,
            &format!("http://{address}"),
            batch_max_events,
            batch_max_age,
        )
    }

    fn connect(
        dir: tempfile::TempDir,
        spool: Spool,
        server: Arc<Server>,
        url: &str,
        batch_max_events: usize,
        batch_max_age: Duration,
    ) -> Fixture {
        let device_id = Uuid::new_v4();
        let credentials = Credentials {
            server_url: url.into(),
            device_id,
            tenant_id: "acme".into(),
            device_credential: CREDENTIAL.into(),
            insecure_http: false,
        };
        let config = UploadConfig {
            batch_max_events,
            batch_max_age,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            auth_retry: Duration::from_secs(300),
        };
        let clock = ClockOffset::new();
        let uploader = Uploader::new(
            crate::http::client().unwrap(),
            &credentials,
            spool.clone(),
            config,
            Arc::clone(&clock),
        )
        .unwrap();
        Fixture {
            _dir: dir,
            spool,
            server,
            uploader,
            clock,
            device_id,
        }
    }

    /// Records `count` activity spans: the bulk, which waits for its batch.
    async fn record(&self, count: u64) {
        let bodies = (0..count)
            .map(|n| {
                EventBody::ActivitySpan(ActivitySpan {
                    app: format!("app-{n}"),
                    title: None,
                    start_ms: now_ms(),
                    end_ms: now_ms(),
                    state: ActivityState::Active,
                    item_id: None,
                    step: None,
                })
            })
            .collect();
        self.spool
            .append(bodies, SourceProgress::default())
            .await
            .unwrap();
    }

    /// Records one work-item event: urgent.
    async fn record_item(&self, item: &str) {
        let body = EventBody::WorkItem(WorkItemEvent {
            item_id: item.into(),
            action: ItemAction::Completed,
            step: None,
            at_ms: now_ms(),
            source: ItemSource::Manual,
        });
        self.spool
            .append(vec![body], SourceProgress::default())
            .await
            .unwrap();
    }

    async fn depth(&self) -> u64 {
        self.spool.stats().await.unwrap().depth
    }

    fn report(&self) -> crate::spool::SpoolReport {
        inspect(&self.server.spool_path).unwrap().unwrap()
    }
}

#[tokio::test]
async fn deletes_only_after_200() {
    let mut f = Fixture::new(100).await;
    f.record(3).await;
    assert_eq!(
        f.uploader.step(true).await.unwrap(),
        Step::Delivered { events: 3 }
    );
    assert_eq!(f.depth().await, 0);

    let received = f.server.received.lock().unwrap();
    let request = &received[0];
    assert_eq!(
        request.spool_depth_during_request, 3,
        "nothing deleted before the answer"
    );
    assert_eq!(request.seqs(), [1, 2, 3]);
    assert_eq!(request.batch.protocol, PROTOCOL_VERSION);
    assert_eq!(request.batch.device_id, f.device_id);
    assert_eq!(request.headers["content-encoding"], "zstd");
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(
        request.headers["authorization"],
        format!("Bearer {CREDENTIAL}")
    );
    drop(received);
    assert!(f.report().last_upload_ms.is_some());
}

#[tokio::test]
async fn a_200_that_is_not_an_acknowledgement_keeps_the_data() {
    let mut f = Fixture::new(100).await;
    f.record(2).await;
    f.server.script([
        // A captive portal or proxy page.
        Answer::status(StatusCode::OK).body("<html>Welcome to the hotel wifi</html>"),
        // An answer for another batch.
        Answer::status(StatusCode::OK).body(r#"{"accepted":1,"max_seq":1}"#),
    ]);
    for _ in 0..2 {
        assert!(matches!(
            f.uploader.step(true).await.unwrap(),
            Step::Retry { .. }
        ));
        assert_eq!(f.depth().await, 2);
    }
    assert_eq!(
        f.uploader.step(true).await.unwrap(),
        Step::Delivered { events: 2 }
    );
    assert_eq!(f.server.batches(), [vec![1, 2], vec![1, 2], vec![1, 2]]);
}

#[tokio::test]
async fn keeps_data_and_backs_off_on_503_with_retry_after() {
    let mut f = Fixture::new(100).await;
    f.record(4).await;
    f.server.script([
        Answer::error(StatusCode::SERVICE_UNAVAILABLE, "clickhouse is down", None)
            .header("retry-after", "7"),
        Answer::error(StatusCode::SERVICE_UNAVAILABLE, "still down", None),
    ]);
    assert_eq!(
        f.uploader.step(true).await.unwrap(),
        Step::Retry {
            after: Duration::from_secs(7)
        }
    );
    assert_eq!(f.depth().await, 4);
    assert!(f
        .report()
        .last_error
        .unwrap()
        .contains("clickhouse is down"));

    // Without Retry-After: jittered backoff, ceiling base · 2^1 after one failure.
    let Step::Retry { after } = f.uploader.step(true).await.unwrap() else {
        panic!("expected a retry");
    };
    assert!(after <= Duration::from_millis(400), "{after:?}");
    assert_eq!(f.depth().await, 4);

    assert_eq!(
        f.uploader.step(true).await.unwrap(),
        Step::Delivered { events: 4 }
    );
    let report = f.report();
    assert_eq!(report.last_error, None, "a success clears the last error");
    assert_eq!(report.depth, 0);
}

#[tokio::test]
async fn run_waits_as_long_as_retry_after_says() {
    let f = Fixture::new(100).await;
    f.record(2).await;
    f.server
        .script([Answer::status(StatusCode::TOO_MANY_REQUESTS).header("retry-after", "1")]);
    let (_shutdown_tx, shutdown) = watch::channel(false);
    let (_drain_tx, drain) = watch::channel(true);
    let finished = tokio::time::timeout(Duration::from_secs(20), f.uploader.run(shutdown, drain))
        .await
        .expect("the uploader should drain")
        .unwrap();
    assert_eq!(finished, Finished::Drained);
    let received = f.server.received.lock().unwrap();
    assert_eq!(received.len(), 2);
    let waited = received[1].at - received[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}"
    );
}

#[tokio::test]
async fn invalid_event_422_moves_exactly_that_event_to_rejected() {
    let mut f = Fixture::new(100).await;
    f.record(5).await;
    f.server.script([Answer::error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "events[2].item_id: must not be empty",
        Some("events[2].item_id"),
    )]);
    assert_eq!(
        f.uploader.step(true).await.unwrap(),
        Step::Rejected { seq: 3 }
    );
    assert_eq!(
        f.uploader.step(true).await.unwrap(),
        Step::Delivered { events: 4 }
    );
    assert_eq!(f.server.batches(), [vec![1, 2, 3, 4, 5], vec![1, 2, 4, 5]]);

    let report = f.report();
    assert_eq!((report.depth, report.events_rejected), (0, 1));
    assert_eq!(report.recent_rejected.len(), 1);
    assert_eq!(report.recent_rejected[0].seq, 3);
    assert!(report.recent_rejected[0]
        .reason
        .contains("must not be empty"));
}

#[tokio::test]
async fn invalid_batch_not_about_one_event_keeps_data_and_shows_the_message() {
    let mut f = Fixture::new(100).await;
    f.record(2).await;
    f.server.script([
        Answer::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported protocol version 1 (this server speaks 2)",
            Some("protocol"),
        ),
        Answer::error(
            StatusCode::BAD_REQUEST,
            "events[9] is out of range",
            Some("events[9]"),
        ),
    ]);
    assert!(matches!(
        f.uploader.step(true).await.unwrap(),
        Step::Retry { .. }
    ));
    assert!(f
        .report()
        .last_error
        .unwrap()
        .contains("this server speaks 2"));
    // An index outside the batch cannot be trusted to name an event.
    assert!(matches!(
        f.uploader.step(true).await.unwrap(),
        Step::Retry { .. }
    ));
    let report = f.report();
    assert_eq!((report.depth, report.events_rejected), (2, 0));
}

#[tokio::test]
async fn unauthorized_keeps_data_and_retries_every_five_minutes() {
    let mut f = Fixture::new(100).await;
    f.record(3).await;
    f.server.script([
        Answer::error(StatusCode::UNAUTHORIZED, "device revoked", None),
        Answer::error(StatusCode::FORBIDDEN, "device revoked", None),
    ]);
    for _ in 0..2 {
        assert_eq!(
            f.uploader.step(true).await.unwrap(),
            Step::Retry {
                after: Duration::from_secs(300)
            }
        );
        let report = f.report();
        assert_eq!(report.depth, 3);
        assert_eq!(report.last_error.as_deref(), Some(UNAUTHORIZED_MESSAGE));
    }
}

#[tokio::test]
async fn payload_too_large_halves_the_batch() {
    let mut f = Fixture::new(8).await;
    f.record(8).await;
    f.server.script([
        Answer::status(StatusCode::PAYLOAD_TOO_LARGE),
        Answer::status(StatusCode::PAYLOAD_TOO_LARGE),
    ]);
    assert_eq!(
        f.uploader.step(true).await.unwrap(),
        Step::Shrunk { limit: 4 }
    );
    assert_eq!(
        f.uploader.step(true).await.unwrap(),
        Step::Shrunk { limit: 2 }
    );
    for _ in 0..4 {
        assert_eq!(
            f.uploader.step(true).await.unwrap(),
            Step::Delivered { events: 2 }
        );
    }
    assert_eq!(f.uploader.step(true).await.unwrap(), Step::Empty);
    let sizes: Vec<usize> = f.server.batches().iter().map(Vec::len).collect();
    assert_eq!(sizes, [8, 4, 2, 2, 2, 2]);
    assert_eq!(f.uploader.batch_limit(), 2);
}

#[tokio::test]
async fn payload_too_large_for_one_event_backs_off() {
    let mut f = Fixture::new(1).await;
    f.record(1).await;
    f.server
        .script([Answer::status(StatusCode::PAYLOAD_TOO_LARGE)]);
    assert!(matches!(
        f.uploader.step(true).await.unwrap(),
        Step::Retry { .. }
    ));
    assert_eq!(f.depth().await, 1);
    assert!(f.report().last_error.unwrap().contains("413"));
}

#[tokio::test]
async fn unreachable_server_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let spool_path = dir.path().join("spool.sqlite3");
    let spool = Spool::open(&spool_path, SpoolConfig { max_events: 100 }).unwrap();
    // A port that was free a moment ago: nothing listens there now.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let server = Arc::new(Server {
        script: Mutex::default(),
        received: Mutex::default(),
        spool_path,
    });
    let mut f = Fixture::connect(dir, spool, server, &url, 100, Duration::from_secs(1));
    f.record(2).await;
    assert!(matches!(
        f.uploader.step(true).await.unwrap(),
        Step::Retry { .. }
    ));
    assert_eq!(f.depth().await, 2);
    assert!(f
        .report()
        .last_error
        .unwrap()
        .starts_with("cannot reach the server"));
}

#[tokio::test]
async fn batches_wait_for_size_or_age() {
    let mut f = Fixture::new(10).await;
    f.record(3).await;
    let Step::NotDue(wait) = f.uploader.step(false).await.unwrap() else {
        panic!("three events of ten, just recorded, are not due");
    };
    assert!(wait > Duration::from_secs(3500));
    f.record(9).await;
    assert_eq!(
        f.uploader.step(false).await.unwrap(),
        Step::Delivered { events: 10 }
    );
    assert!(matches!(
        f.uploader.step(false).await.unwrap(),
        Step::NotDue(_)
    ));
    assert_eq!(
        f.uploader.step(true).await.unwrap(),
        Step::Delivered { events: 2 }
    );

    let mut f = Fixture::with_age(10, Duration::from_millis(50)).await;
    f.record(1).await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(
        f.uploader.step(false).await.unwrap(),
        Step::Delivered { events: 1 }
    );
}

#[tokio::test]
async fn clock_offset_comes_from_the_date_header() {
    let mut f = Fixture::new(10).await;
    f.record(1).await;
    let an_hour_ahead = std::time::SystemTime::now() + Duration::from_secs(3600);
    f.server.script([
        Answer::status(StatusCode::OK).header("date", httpdate::fmt_http_date(an_hour_ahead))
    ]);
    assert_eq!(
        f.uploader.step(true).await.unwrap(),
        Step::Delivered { events: 1 }
    );
    let offset = f.clock.get();
    assert!(
        (3_598_000..=3_602_000).contains(&offset),
        "offset {offset} ms"
    );
}

#[tokio::test]
async fn run_drains_in_order_and_stops() {
    let f = Fixture::new(10).await;
    f.record(25).await;
    let (_shutdown_tx, shutdown) = watch::channel(false);
    let (_drain_tx, drain) = watch::channel(true);
    let finished = tokio::time::timeout(Duration::from_secs(20), f.uploader.run(shutdown, drain))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(finished, Finished::Drained);
    let batches = f.server.batches();
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert_eq!(sizes, [10, 10, 5]);
    assert_eq!(batches.concat(), (1..=25).collect::<Vec<_>>());
}

#[tokio::test]
async fn run_stops_on_shutdown_while_backing_off() {
    let f = Fixture::new(10).await;
    f.record(1).await;
    f.server
        .script([Answer::status(StatusCode::SERVICE_UNAVAILABLE).header("retry-after", "600")]);
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (_drain_tx, drain) = watch::channel(true);
    let run = tokio::spawn(f.uploader.run(shutdown, drain));
    while f.server.received.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown_tx.send(true).unwrap();
    let finished = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(finished.unwrap(), Finished::Stopped);
    assert_eq!(f.spool.stats().await.unwrap().depth, 1);
}

#[tokio::test]
async fn a_work_item_is_due_at_once_and_takes_the_waiting_spans_along() {
    let mut f = Fixture::new(10).await;
    f.record(3).await;
    assert!(matches!(
        f.uploader.step(false).await.unwrap(),
        Step::NotDue(_)
    ));
    f.record_item("CLM-7").await;
    assert_eq!(
        f.uploader.step(false).await.unwrap(),
        Step::Delivered { events: 4 }
    );
    assert_eq!(f.server.batches(), [vec![1, 2, 3, 4]], "in order, no gap");
    assert_eq!(f.uploader.step(false).await.unwrap(), Step::Empty);
}

#[tokio::test]
async fn after_an_outage_work_items_go_ahead_of_the_backlog() {
    let mut f = Fixture::new(10).await;
    f.record(25).await;
    f.record_item("CLM-26").await;
    f.record(5).await;
    f.record_item("CLM-32").await;
    f.server
        .script([Answer::status(StatusCode::SERVICE_UNAVAILABLE)]);
    assert!(matches!(
        f.uploader.step(false).await.unwrap(),
        Step::Retry { .. }
    ));
    // The server is back: the two items first, then the backlog oldest first.
    loop {
        match f.uploader.step(false).await.unwrap() {
            Step::Delivered { .. } => {}
            Step::Empty => break,
            other => panic!("{other:?}"),
        }
    }
    let batches = f.server.batches();
    assert_eq!(batches[0], [26, 32], "the failed try");
    assert_eq!(batches[1], [26, 32]);
    assert_eq!(batches[2], (1..=10).collect::<Vec<_>>());
    assert_eq!(batches[3], (11..=20).collect::<Vec<_>>());
    assert_eq!(batches[4], [21, 22, 23, 24, 25, 27, 28, 29, 30, 31]);
    assert_eq!(batches.len(), 5);
    assert_eq!(f.depth().await, 0);
}

#[tokio::test]
async fn a_work_item_inside_the_oldest_batch_keeps_the_order() {
    let mut f = Fixture::new(10).await;
    f.record(2).await;
    f.record_item("CLM-3").await;
    f.record(12).await;
    assert_eq!(
        f.uploader.step(false).await.unwrap(),
        Step::Delivered { events: 10 }
    );
    assert_eq!(f.server.batches(), [(1..=10).collect::<Vec<_>>()]);
    // The rest is spans only: they wait for their batch again.
    assert!(matches!(
        f.uploader.step(false).await.unwrap(),
        Step::NotDue(_)
    ));
}

#[tokio::test]
async fn run_uploads_a_work_item_without_waiting_for_the_span_batch() {
    let f = Fixture::new(100).await;
    f.record(3).await;
    let (_shutdown_tx, shutdown) = watch::channel(false);
    let (_drain_tx, drain) = watch::channel(false);
    let spool = f.spool.clone();
    let server = Arc::clone(&f.server);
    tokio::spawn(f.uploader.run(shutdown, drain));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.batches().is_empty(), "spans wait for their batch");
    let recorded = Instant::now();
    spool
        .append(
            vec![EventBody::WorkItem(WorkItemEvent {
                item_id: "CLM-1".into(),
                action: ItemAction::Started,
                step: None,
                at_ms: now_ms(),
                source: ItemSource::Rule,
            })],
            SourceProgress::default(),
        )
        .await
        .unwrap();
    while server.batches().is_empty() {
        assert!(
            recorded.elapsed() < Duration::from_secs(10),
            "the work item was not uploaded"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(server.batches(), [vec![1, 2, 3, 4]]);
}

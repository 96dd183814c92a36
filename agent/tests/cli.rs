//! The command-line contract (`enroll`, `run`, `status --json`) exercised through the real
//! binary against a small fake server on a free loopback port.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use backlight_shared::api::{
    EnrollRequest, EnrollResponse, ErrorBody, IngestResponse, ENROLL_PATH, INGEST_PATH,
};
use backlight_shared::batch::Batch;
use backlight_shared::event::{Event, EventBody};
use serde_json::Value;
use uuid::Uuid;

const KEY: &str = "ble_1_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const REVOKED_KEY: &str = "ble_2_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const DEVICE_CREDENTIAL: &str =
    "bld_3_cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

/// A key the fake answers `429 Retry-After: 1` the first time (a server over its rate limit).
const BUSY_KEY: &str = "ble_4_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

#[derive(Default)]
struct Fake {
    events: Mutex<Vec<Event>>,
    enrollments: Mutex<Vec<EnrollRequest>>,
    busy_answered: Mutex<bool>,
}

async fn enroll(State(fake): State<Arc<Fake>>, Json(request): Json<EnrollRequest>) -> Response {
    if request.enrollment_key == BUSY_KEY
        && !std::mem::replace(&mut *fake.busy_answered.lock().unwrap(), true)
    {
        let body = ErrorBody {
            error: "rate_limited".into(),
            message: "too many enrollment attempts on this server".into(),
            field: None,
        };
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(axum::http::header::RETRY_AFTER, "1")],
            Json(body),
        )
            .into_response();
    }
    if request.enrollment_key == REVOKED_KEY {
        let body = ErrorBody {
            error: "forbidden".into(),
            message: "enrollment key revoked".into(),
            field: None,
        };
        return (StatusCode::FORBIDDEN, Json(body)).into_response();
    }
    fake.enrollments.lock().unwrap().push(request);
    Json(EnrollResponse {
        device_id: Uuid::new_v4(),
        tenant_id: "acme".into(),
        device_credential: DEVICE_CREDENTIAL.into(),
    })
    .into_response()
}

async fn ingest(State(fake): State<Arc<Fake>>, body: Bytes) -> Response {
    let json = zstd::decode_all(&body[..]).unwrap();
    let batch: Batch = serde_json::from_slice(&json).unwrap();
    let answer = IngestResponse {
        accepted: batch.events.len(),
        max_seq: batch.events.last().map_or(0, |e| e.seq),
    };
    fake.events.lock().unwrap().extend(batch.events);
    Json(answer).into_response()
}

/// Starts the fake server on its own thread and runtime; returns its URL.
fn start_server() -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let app = Router::new()
        .route(ENROLL_PATH, post(enroll))
        .route(INGEST_PATH, post(ingest))
        .with_state(Arc::clone(&fake));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await
        })
    });
    (url, fake)
}

fn agent(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_backlight-agent"));
    command
        .args(args)
        .env("BACKLIGHT_AGENT_DIR", dir)
        .env_remove("BACKLIGHT_ENROLLMENT_KEY")
        .env("BACKLIGHT_LOG", "info");
    command
}

fn output(dir: &Path, args: &[&str]) -> Output {
    agent(dir, args).output().unwrap()
}

fn status_json(dir: &Path) -> Value {
    let out = output(dir, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn work_items(fake: &Fake) -> Vec<String> {
    fake.events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::WorkItem(w) => Some(w.item_id.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn enroll_run_status_round_trip_records_each_line_once() {
    let (url, fake) = start_server();
    let dir = tempfile::tempdir().unwrap();

    let out = output(dir.path(), &["enroll", "--server", &url, "--key", KEY]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("device id:") && stdout.contains("acme"),
        "{stdout}"
    );
    let enrolled = fake.enrollments.lock().unwrap()[0].clone();
    assert_eq!(enrolled.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(enrolled.os, std::env::consts::OS);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("credentials.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let again = output(dir.path(), &["enroll", "--server", &url, "--key", KEY]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));

    let now = backlight_shared::now_ms();
    let input = dir.path().join("items.jsonl");
    let mut lines: Vec<String> = (0..5)
        .map(|i| {
            format!(r#"{{"kind":"work_item","item_id":"CLM-{i}","action":"started","at_ms":{now},"source":"app"}}"#)
        })
        .collect();
    lines.insert(2, "{broken".into());
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let source = format!("file:{}", input.display());
    let run_args = [
        "run",
        "--source",
        &source,
        "--exit-when-drained",
        "--batch-max-age",
        "100ms",
    ];

    let out = output(dir.path(), &run_args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("line=3"),
        "the bad line is named: {}",
        stderr(&out)
    );
    assert_eq!(
        work_items(&fake),
        ["CLM-0", "CLM-1", "CLM-2", "CLM-3", "CLM-4"]
    );
    assert!(fake
        .events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e.body, EventBody::Health(_))));

    let status = status_json(dir.path());
    assert_eq!(status["enrolled"], true);
    assert_eq!(status["tenant_id"], "acme");
    assert_eq!(status["server_url"], url.as_str());
    assert_eq!(status["spool_depth"], 0);
    assert!(status["last_seq"].as_u64().unwrap() >= 6);
    assert!(status["last_upload_ms"].as_u64().is_some());
    assert_eq!(status["last_error"], Value::Null);
    assert_eq!(status["events_dropped"], 0);
    assert_eq!(status["events_rejected"], 0);

    // A second run over the same file records nothing twice; appended lines are picked up.
    let more = format!(
        r#"{{"kind":"work_item","item_id":"CLM-5","action":"completed","at_ms":{now},"source":"app"}}"#
    );
    std::fs::write(&input, lines.join("\n") + "\n" + &more + "\n").unwrap();
    let out = output(dir.path(), &run_args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        work_items(&fake),
        ["CLM-0", "CLM-1", "CLM-2", "CLM-3", "CLM-4", "CLM-5"]
    );
    let seqs: Vec<u64> = fake.events.lock().unwrap().iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs increase: {seqs:?}"
    );

    let forced = output(
        dir.path(),
        &["enroll", "--server", &url, "--key", KEY, "--force"],
    );
    assert!(forced.status.success(), "{}", stderr(&forced));
}

#[test]
fn enroll_prints_the_servers_refusal() {
    let (url, _fake) = start_server();
    let dir = tempfile::tempdir().unwrap();
    let out = output(
        dir.path(),
        &["enroll", "--server", &url, "--key", REVOKED_KEY],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("enrollment key revoked"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("credentials.json").exists());
    assert_eq!(status_json(dir.path())["enrolled"], false);
}

#[test]
fn enroll_waits_out_a_busy_server() {
    let (url, fake) = start_server();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = output(dir.path(), &["enroll", "--server", &url, "--key", BUSY_KEY]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it did not wait"
    );
    assert_eq!(fake.enrollments.lock().unwrap().len(), 1);
    assert!(stderr(&out).contains("busy"), "{}", stderr(&out));
}

#[test]
fn enroll_refuses_plain_http_to_another_computer() {
    let dir = tempfile::tempdir().unwrap();
    let out = output(
        dir.path(),
        &[
            "enroll",
            "--server",
            "http://backlight.example:8080",
            "--key",
            KEY,
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("plain http:// is allowed only for a server on this computer"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("credentials.json").exists());
}

#[test]
fn run_requires_enrollment() {
    let dir = tempfile::tempdir().unwrap();
    let out = output(dir.path(), &["run", "--exit-when-drained"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not enrolled"), "{}", stderr(&out));
}

#[cfg(unix)]
#[test]
fn sigterm_stops_run_cleanly_and_status_works_meanwhile() {
    use std::process::Stdio;

    let (url, fake) = start_server();
    let dir = tempfile::tempdir().unwrap();
    assert!(
        output(dir.path(), &["enroll", "--server", &url, "--key", KEY])
            .status
            .success()
    );
    let mut child = agent(
        dir.path(),
        &[
            "run",
            "--source",
            "synthetic",
            "--rate",
            "200",
            "--batch-max-age",
            "200ms",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.events.lock().unwrap().len() < 100 {
        assert!(
            Instant::now() < deadline,
            "the agent should upload synthetic events"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status_json(dir.path());
    assert!(status["last_seq"].as_u64().unwrap() >= 100, "{status}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the agent should stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "clean exit expected, got {exit}");

    // Everything recorded was either uploaded or is still in the spool. (A batch in flight
    // at the signal may be both: the server counts a resent identity once.)
    let status = status_json(dir.path());
    let uploaded: std::collections::BTreeSet<u64> =
        fake.events.lock().unwrap().iter().map(|e| e.seq).collect();
    let spooled = status["spool_depth"].as_u64().unwrap();
    let last_seq = status["last_seq"].as_u64().unwrap();
    assert!(uploaded.len() as u64 + spooled >= last_seq, "{status}");
    assert!(uploaded.iter().all(|&seq| (1..=last_seq).contains(&seq)));
}

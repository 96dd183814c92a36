//! The desktop side through the real binary against a small fake server: the policy (ETag,
//! hot reload, refusal of a bad one), consent through the local page and the command line, the
//! local item API and `item`, and `show`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use backlight_shared::api::{EnrollResponse, IngestResponse, ENROLL_PATH, INGEST_PATH};
use backlight_shared::batch::Batch;
use backlight_shared::event::{Event, EventBody, ItemAction, ItemSource};
use backlight_shared::policy::POLICY_PATH;
use serde_json::Value;
use uuid::Uuid;

const KEY: &str = "ble_1_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

#[derive(Default)]
struct Fake {
    events: Mutex<Vec<Event>>,
    /// The policy JSON served, and its ETag.
    policy: Mutex<(String, String)>,
    policy_requests: Mutex<Vec<Option<String>>>,
}

impl Fake {
    fn serve_policy(&self, json: Value) {
        let text = json.to_string();
        let etag = format!(
            "\"{}\"",
            text.len() * 31 + text.bytes().map(usize::from).sum::<usize>()
        );
        *self.policy.lock().unwrap() = (text, etag);
    }

    fn work_items(&self) -> Vec<(String, ItemAction, ItemSource)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::WorkItem(w) => Some((w.item_id.clone(), w.action, w.source)),
                _ => None,
            })
            .collect()
    }
}

async fn enroll() -> Response {
    Json(EnrollResponse {
        device_id: Uuid::new_v4(),
        tenant_id: "acme".into(),
        device_credential: format!("bld_3_{}", "c".repeat(64)),
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

async fn policy(State(fake): State<Arc<Fake>>, headers: HeaderMap) -> Response {
    let (json, etag) = fake.policy.lock().unwrap().clone();
    let sent = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    fake.policy_requests.lock().unwrap().push(sent.clone());
    if sent.as_deref() == Some(etag.as_str()) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        [
            (header::ETAG, etag),
            (header::CONTENT_TYPE, "application/json".into()),
        ],
        json,
    )
        .into_response()
}

fn start_server() -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    fake.serve_policy(serde_json::json!({"version": 1, "notice": "We record claims work."}));
    let app = Router::new()
        .route(ENROLL_PATH, post(enroll))
        .route(INGEST_PATH, post(ingest))
        .route(POLICY_PATH, get(policy))
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
        // No display: capture is unavailable whatever backends are built in.
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env("BACKLIGHT_LOG", "info");
    command
}

fn output(dir: &Path, args: &[&str]) -> Output {
    agent(dir, args).stdin(Stdio::null()).output().unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = output(dir, args);
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(dir: &Path) -> Value {
    serde_json::from_str(&ok(dir, &["status", "--json"])).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One raw HTTP/1.1 request; returns (status, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        #[cfg(unix)]
        unsafe {
            libc_kill(self.0.id());
        }
        let _ = self.0.wait();
    }
}

#[cfg(unix)]
unsafe fn libc_kill(pid: u32) {
    // SIGTERM: the agent's clean shutdown.
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    kill(pid as i32, 15);
}

fn run(dir: &Path, api_port: u16) -> Running {
    let api = format!("127.0.0.1:{api_port}");
    let child = agent(
        dir,
        &[
            "run",
            "--no-browser",
            "--batch-max-age",
            "100ms",
            "--policy-interval",
            "300ms",
            "--local-api",
            &api,
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    Running(child)
}

#[test]
fn items_need_consent_through_the_page_the_api_and_the_command_line() {
    let (url, fake) = start_server();
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["enroll", "--server", &url, "--key", KEY]);
    let api_port = free_port();
    let _agent = run(dir.path(), api_port);

    // The page is up and the agent waits for consent.
    wait_until("the consent page", || {
        status(dir.path())["capture"]
            .as_str()
            .is_some_and(|c| c.contains("waiting for consent"))
    });
    let shown = ok(dir.path(), &["consent", "show"]);
    assert!(shown.contains("We record claims work."), "{shown}");
    let page_url = shown
        .lines()
        .find_map(|l| l.strip_prefix("Local page (while the agent runs): "))
        .expect("the page address")
        .to_string();
    let (page_port, token) = {
        let rest = page_url.strip_prefix("http://127.0.0.1:").unwrap();
        let (port, query) = rest.split_once("/?token=").unwrap();
        (port.parse::<u16>().unwrap(), query.to_string())
    };

    // The local API refuses without the token, and without consent.
    let token_file = std::fs::read_to_string(dir.path().join("local-api.token")).unwrap();
    let bearer = format!("Bearer {}", token_file.trim());
    let (code, _) = http(api_port, "POST", "/v1/items/CLM-1/start", &[], "");
    assert_eq!(code, 401);
    let (code, body) = http(
        api_port,
        "POST",
        "/v1/items/CLM-1/start",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("no_consent"), "{body}");
    let refused = output(dir.path(), &["item", "start", "CLM-9"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("consent"));

    // The page: a wrong token or a foreign origin is refused; the right form grants.
    let (code, _) = http(page_port, "GET", "/?token=nope", &[], "");
    assert_eq!(code, 403);
    let (code, page) = http(page_port, "GET", &format!("/?token={token}"), &[], "");
    assert_eq!(code, 200);
    assert!(
        page.contains("We record claims work.") && page.contains("I agree"),
        "{page}"
    );
    let form = format!("token={token}&version=1&answer=grant");
    let form_headers = [("Content-Type", "application/x-www-form-urlencoded")];
    let (code, _) = http(
        page_port,
        "POST",
        "/answer",
        &[form_headers[0], ("Origin", "https://evil.example")],
        &form,
    );
    assert_eq!(code, 403);
    let (code, _) = http(
        page_port,
        "POST",
        "/answer",
        &form_headers,
        "token=nope&version=1&answer=grant",
    );
    assert_eq!(code, 403);
    let (code, page) = http(page_port, "POST", "/answer", &form_headers, &form);
    assert_eq!(code, 200);
    assert!(page.contains("Recording starts now"), "{page}");
    assert_eq!(status(dir.path())["consent_granted"], true);

    // Now the API and the command line record.
    let (code, body) = http(
        api_port,
        "POST",
        "/v1/items/CLM-1/start",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        r#"{"step":"intake"}"#,
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = http(
        api_port,
        "POST",
        "/v1/items/%20/start",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("item_id"), "{body}");
    ok(dir.path(), &["item", "done", "CLM-1"]);
    wait_until("both reports at the server", || {
        fake.work_items().len() == 2
    });
    assert_eq!(
        fake.work_items(),
        [
            ("CLM-1".to_string(), ItemAction::Started, ItemSource::App),
            (
                "CLM-1".to_string(),
                ItemAction::Completed,
                ItemSource::Manual
            ),
        ]
    );

    // `show` lists them; the page's view too.
    let today: Value = serde_json::from_str(&ok(dir.path(), &["show", "--json"])).unwrap();
    let kinds: Vec<&str> = today["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"consent") && kinds.iter().filter(|k| **k == "work_item").count() == 2,
        "{kinds:?}"
    );
    let (code, view) = http(page_port, "GET", &format!("/show?token={token}"), &[], "");
    assert_eq!(code, 200);
    assert!(view.contains("CLM-1"), "{view}");

    // Revoke from the command line: reports are refused again.
    let revoked = ok(dir.path(), &["consent", "revoke"]);
    assert!(revoked.contains("consent withdrawn"), "{revoked}");
    let (code, _) = http(
        api_port,
        "POST",
        "/v1/items/CLM-2/start",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(code, 403);
    wait_until("the withdrawal at the server", || {
        fake.events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(&e.body, EventBody::Consent(c) if !c.granted))
    });
}

#[test]
fn policy_changes_apply_without_restart_and_bad_ones_are_refused() {
    let (url, fake) = start_server();
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["enroll", "--server", &url, "--key", KEY]);
    ok(dir.path(), &["consent", "grant", "--yes"]);
    let _agent = run(dir.path(), free_port());
    // Consent to version 1 holds: capture is on (unavailable here: no display).
    wait_until("capture under policy version 1", || {
        status(dir.path())["capture"]
            .as_str()
            .is_some_and(|c| c.starts_with("unavailable"))
    });
    assert_eq!(status(dir.path())["policy_version"], 1);

    fake.serve_policy(serde_json::json!({"version": 2, "notice": "New notice."}));
    wait_until("policy version 2", || {
        status(dir.path())["policy_version"] == 2
    });
    // A new notice: capture waits for a new consent.
    wait_until("the new question", || {
        status(dir.path())["capture"]
            .as_str()
            .is_some_and(|c| c.contains("waiting for consent to policy version 2"))
    });
    // Unchanged policies cost a 304: the agent sends the ETag it has.
    let requests = fake.policy_requests.lock().unwrap().clone();
    assert!(requests.iter().any(Option::is_some), "{requests:?}");

    fake.serve_policy(serde_json::json!({"version": 3, "notice": "x", "rules": [{"name": "r", "title": "Claim (unclosed"}]}));
    wait_until("the refusal", || {
        status(dir.path())["policy_error"]
            .as_str()
            .is_some_and(|e| e.contains("rules[0].title"))
    });
    assert_eq!(
        status(dir.path())["policy_version"],
        2,
        "the previous policy stays"
    );
    let text = ok(dir.path(), &["status"]);
    assert!(text.contains("policy refused:"), "{text}");
}

#[test]
fn pause_and_resume_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let paused = ok(dir.path(), &["pause", "30m"]);
    assert!(paused.contains("paused until"), "{paused}");
    assert!(status(dir.path())["paused_until_ms"].as_u64().is_some());
    ok(dir.path(), &["pause", "--resume"]);
    assert!(status(dir.path())["paused_until_ms"].is_null());
}

//! Live status across servers (issue 11): a status stream open on one server sees changes
//! ingested through another — two real `backlight-server` processes on one ClickHouse — and
//! the stream's guards (issue 10): a per-key limit on open streams (429 + Retry-After), and a
//! revoked key ends its open streams.

use std::time::{Duration, Instant};

use backlight_e2e::harness::http_client;
use backlight_e2e::*;

/// Creates an API key with `role` and returns the token (`blk_<id>_<secret>`).
pub async fn api_key(server: &Server, tenant: &str, role: &str) -> String {
    let out = server
        .admin(&[
            "api-key", "create", "--tenant", tenant, "--role", role, "--name", "e2e",
        ])
        .await;
    out.trim().to_string()
}

/// The key id of a token `blk_<id>_<secret>`.
fn key_id(token: &str) -> &str {
    token.split('_').nth(1).expect("a blk_<id>_<secret> token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_one_server_sees_changes_ingested_by_another_until_its_key_is_revoked() {
    let ch = ClickHouse::start().await;
    let db = ch.fresh_db();
    let a = Server::start_with(
        db.clone(),
        ServerOptions {
            extra_args: vec!["--max-streams-per-key".into(), "2".into()],
            ..ServerOptions::default()
        },
    )
    .await;
    let b = Server::start_with(db.clone(), ServerOptions::default()).await;
    let tenant = a.create_tenant("live").await;
    let enrollment = a.create_enrollment_key(&tenant).await;
    let device = b.enroll_device(&enrollment).await;
    let agent_key = api_key(&a, &tenant, "cc_agent").await;
    let http = http_client();
    let stream_url = format!("{}/v1/items/CLM-1/events", a.url());

    let t0 = now_ms();
    b.send_batch(
        &device,
        &batch(
            &device,
            vec![work_item(1, "CLM-1", ItemAction::Started, t0)],
        ),
    )
    .await
    .assert_ok();
    let mut stream = SseStream::open(&http, &stream_url, &agent_key)
        .await
        .unwrap_or_else(|(s, _, body)| panic!("opening the stream: {s} {body}"));
    let first = stream.next_status(secs(10)).await;
    assert_eq!(first["status"], "in_progress", "{first}");

    // Each change is uploaded to server B; the stream on A shows it. Measured from B's 200.
    let mut latencies = Vec::new();
    for (seq, action, status) in [
        (2, ItemAction::Paused, "paused"),
        (3, ItemAction::Resumed, "in_progress"),
        (4, ItemAction::Paused, "paused"),
    ] {
        let change = batch(
            &device,
            vec![work_item(seq, "CLM-1", action, t0 + seq * 1_000)],
        );
        b.send_batch(&device, &change).await.assert_ok();
        let stored = Instant::now();
        let doc = stream.next_status(secs(10)).await;
        latencies.push(stored.elapsed());
        assert_eq!(doc["status"], status, "{doc}");
    }
    latencies.sort();
    // The promise is 1 s; the slowest may be slower on a loaded test machine, never by much.
    assert!(
        latencies[1] <= Duration::from_secs(1) && latencies[2] <= Duration::from_secs(2),
        "a change ingested on server B reached the stream on server A after {latencies:?}"
    );

    // Per-key limit: a second stream of the key is fine, a third is refused with 429.
    let _second = SseStream::open(&http, &stream_url, &agent_key)
        .await
        .unwrap_or_else(|(s, _, body)| panic!("the second stream was refused: {s} {body}"));
    let Err((status, headers, body)) = SseStream::open(&http, &stream_url, &agent_key).await else {
        panic!("a third stream of a key limited to 2 was accepted");
    };
    assert_eq!(status.as_u16(), 429, "{body}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert!(body.contains("too_many_streams"), "{body}");
    // Another key of the tenant is not affected.
    let other_key = api_key(&a, &tenant, "wfm").await;
    let _other = SseStream::open(&http, &stream_url, &other_key)
        .await
        .unwrap_or_else(|(s, _, body)| panic!("another key's stream was refused: {s} {body}"));

    // Revoking the key (through the admin command, not through server A) ends its streams.
    a.admin(&["api-key", "revoke", "--tenant", &tenant, key_id(&agent_key)])
        .await;
    let revoked = Instant::now();
    let ended = loop {
        let event = stream
            .next(secs(15))
            .await
            .expect("the stream closed without an `end` event");
        if event.event == "end" {
            break event;
        }
    };
    assert_eq!(ended.data["reason"], "API key revoked", "{}", ended.data);
    assert!(
        revoked.elapsed() < secs(10),
        "the stream of a revoked key ended only after {:?}",
        revoked.elapsed()
    );
    assert!(
        stream.next(secs(5)).await.is_none(),
        "the stream goes on after `end`"
    );
}

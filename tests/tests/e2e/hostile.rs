//! Hostile and broken clients: one enrolled desktop (or anyone who can reach the port) must not
//! hurt anyone else. Each test attacks a real server the way issue 10 describes and checks that
//! the attacker is bounded and the others are served.
//!
//! Every test here failed against the server before the fix. Settings are given as environment
//! variables (`ServerOptions::env`), which an older build ignores instead of refusing, so the
//! same tests run against any build: `BACKLIGHT_E2E_SERVER_BIN=<old backlight-server> cargo test
//! -p backlight-e2e --test e2e hostile`.
//!
//! Raw TCP clients play the attackers where an HTTP client would be too polite (unfinished
//! headers, announced bodies that never come).

use std::time::Duration;

use backlight_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::{events, Spine};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn options(pairs: &[(&str, &str)]) -> ServerOptions {
    ServerOptions {
        env: env(pairs),
        ..ServerOptions::default()
    }
}

/// A connection to the server on `port` from the loopback address `source` (all of 127/8 is
/// loopback on Linux), so one test can be several clients.
async fn connect_from(source: [u8; 4], port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind((source, 0).into())
        .unwrap_or_else(|e| panic!("binding to {source:?}: {e}"));
    socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .unwrap_or_else(|e| panic!("connecting to the server from {source:?}: {e}"))
}

/// Whether the server closes `stream` (end of stream or reset) within `within`; whatever it
/// sends before that is read and dropped.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// The status line of the next answer on `stream`, if one comes within `within`.
async fn status_line(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&seen);
    text.lines().next().map(str::to_string)
}

fn ingest_head(device: &Device, encoding: Option<&str>, length: usize) -> String {
    let encoding = encoding
        .map(|e| format!("Content-Encoding: {e}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /v1/ingest HTTP/1.1\r\nHost: backlight\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\n{encoding}Content-Length: {length}\r\n\r\n",
        device.credential
    )
}

/// Slowloris: connections that never finish their headers, send nothing, or sit idle after a
/// request are closed after the header-read timeout; one client address cannot take more than
/// its number of connections. Before: still open after 75 s, and no cap.
#[tokio::test]
async fn slow_silent_and_idle_connections_are_closed_and_capped() {
    let spine = Spine::start_with(
        "slowloris",
        options(&[
            ("BACKLIGHT_HEADER_READ_TIMEOUT", "1s"),
            ("BACKLIGHT_MAX_CONNECTIONS_PER_IP", "8"),
        ]),
    )
    .await;
    let port = spine.server.port();

    let mut unfinished = connect_from([127, 0, 0, 2], port).await;
    unfinished
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut silent = connect_from([127, 0, 0, 2], port).await;
    let mut idle = connect_from([127, 0, 0, 2], port).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: backlight\r\n\r\n")
        .await
        .unwrap();
    let answer = status_line(&mut idle, secs(5)).await;
    assert_eq!(
        answer.as_deref(),
        Some("HTTP/1.1 200 OK"),
        "the idle connection's one request"
    );
    for (what, stream) in [
        ("unfinished headers", &mut unfinished),
        ("no bytes at all", &mut silent),
        ("idle after a request", &mut idle),
    ] {
        assert!(
            closed_within(stream, secs(6)).await,
            "{what}: still open 6 s after connecting, with a 1 s header-read timeout"
        );
    }

    // Per client address: a server whose connections time out slowly, so the first ones are
    // surely still open when the one too many arrives.
    let capped = Server::start_with(
        spine.ch.fresh_db(),
        options(&[("BACKLIGHT_MAX_CONNECTIONS_PER_IP", "8")]),
    )
    .await;
    // Nine from one address: the server takes them in any order, so which one is refused is
    // not known, only that one is (the others wait 10 s for their headers).
    let mut nine = Vec::new();
    for _ in 0..9 {
        let mut stream = connect_from([127, 0, 0, 3], capped.port()).await;
        let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\n").await;
        nine.push(stream);
    }
    let closed = futures_join(nine.into_iter().map(|mut stream| async move {
        let closed = closed_within(&mut stream, secs(3)).await;
        (closed, stream)
    }))
    .await;
    let refused = closed.iter().filter(|(closed, _)| *closed).count();
    assert_eq!(
        refused, 1,
        "nine connections from one address with --max-connections-per-ip 8: one must be closed at once"
    );
    let mut other = connect_from([127, 0, 0, 4], capped.port()).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: backlight\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        status_line(&mut other, secs(5)).await.as_deref(),
        Some("HTTP/1.1 200 OK"),
        "another address is served while one is at its cap"
    );
    drop(closed);
}

/// Budget starvation: uploads that announce 4 MiB of zstd and send nothing used to hold the
/// whole group-commit budget (each reserved 4 × Content-Length before reading): another
/// device's one-event batch got 503 after 2 s, and the stalled uploads were answered only by the
/// 60 s request timeout. A body trickling in byte by byte was waited for just as long.
#[tokio::test]
async fn announced_bodies_that_never_come_hold_nothing() {
    let spine = Spine::start_with(
        "stalled",
        options(&[
            ("BACKLIGHT_BODY_READ_TIMEOUT", "2s"),
            ("BACKLIGHT_MIN_BODY_RATE", "1KiB"),
        ]),
    )
    .await;
    let attacker = spine.server.enroll_device(&spine.key).await;
    let trickler = spine.server.enroll_device(&spine.key).await;
    let other = spine.server.enroll_device(&spine.key).await;
    let port = spine.server.port();

    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from([127, 0, 0, 1], port).await;
        stream
            .write_all(ingest_head(&attacker, Some("zstd"), 4 * 1024 * 1024).as_bytes())
            .await
            .unwrap();
        stalled.push(stream);
    }
    // Let the stalled uploads get as far as they can.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let answer = spine
        .server
        .send_batch(&other, &batch(&other, events(1, 1)))
        .await;
    answer.assert_ok();

    // A body of 2,048 bytes sent 16 bytes every 250 ms (64 bytes/s, over 30 s in all), where
    // 1 KiB/s is the minimum: it may take 2 s + 2 s.
    let mut trickle = connect_from([127, 0, 0, 1], port).await;
    trickle
        .write_all(ingest_head(&trickler, None, 2048).as_bytes())
        .await
        .unwrap();
    let (mut trickle_read, mut trickle_write) = trickle.into_split();
    let trickling = tokio::spawn(async move {
        for _ in 0..128 {
            if trickle_write.write_all(&[b' '; 16]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let started = Instant::now();
    for (i, stream) in stalled.iter_mut().enumerate() {
        let status = status_line(stream, secs(12)).await;
        assert!(
            status
                .as_deref()
                .is_some_and(|s| s.starts_with("HTTP/1.1 408") || s.starts_with("HTTP/1.1 429")),
            "stalled upload {i}: expected 408 (or 429 for one over the device's share) within \
             12 s, got {status:?} after {:?}",
            started.elapsed()
        );
    }
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(secs(12), trickle_read.read(&mut buf))
        .await
        .expect("the trickling upload was not answered within 12 s")
        .expect("reading the trickling upload's answer");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    trickling.abort();
    let db = spine.server.db();
    assert_eq!(
        (
            db.events_final(attacker.id).await,
            db.events_final(trickler.id).await
        ),
        (0, 0)
    );
}

/// Decompression amplification: zstd bodies of a few KB that inflate to just under 16 MiB of
/// JSON with an unknown field full of zeros. serde used to keep a node per zero before refusing
/// the field (over 1 GB of RSS for four of them); now the name alone refuses it.
#[tokio::test]
async fn decompression_bombs_cost_little_memory() {
    let spine = Spine::start("bombs").await;
    let devices = [
        spine.server.enroll_device(&spine.key).await,
        spine.server.enroll_device(&spine.key).await,
    ];
    let other = spine.server.enroll_device(&spine.key).await;

    let head = format!(
        r#"{{"protocol":1,"device_id":"{}","events":[{{"seq":1,"id":"{}","kind":"health","pad":[0"#,
        devices[0].id,
        uuid::Uuid::new_v4()
    );
    let tail = "]}]}";
    let limit = limits::MAX_DECOMPRESSED_BODY_BYTES;
    let zeros = (limit - head.len() - tail.len() - 16) / 2;
    let mut json = String::with_capacity(limit);
    json.push_str(&head);
    for _ in 0..zeros {
        json.push_str(",0");
    }
    json.push_str(tail);
    assert!(json.len() < limit);
    let bomb = zstd(json.as_bytes());
    drop(json);
    println!("bomb: {} bytes of zstd", bomb.len());
    let before = spine.server.peak_rss_bytes();

    let url = spine.server.url();
    let answers = futures_join(devices.iter().flat_map(|d| [d, d]).map(|d| {
        post_ingest(
            url.clone(),
            d.credential.clone(),
            Some("zstd"),
            bomb.clone(),
        )
    }))
    .await;
    for answer in &answers {
        match answer.status.as_u16() {
            422 => assert!(answer.error().message.contains("pad"), "{answer}"),
            429 => {}
            _ => panic!("a bomb must be refused with 422 (or 429 over the share): {answer}"),
        }
    }
    let peak = spine.server.peak_rss_bytes();
    println!(
        "server peak RSS: {} MB before, {} MB after four bombs",
        before >> 20,
        peak >> 20
    );
    assert!(
        peak < 300 << 20,
        "server peak RSS {} MB after four bombs (limit 300 MB)",
        peak >> 20
    );
    spine
        .server
        .send_batch(&other, &batch(&other, events(1, 2)))
        .await
        .assert_ok();
}

/// `POST /v1/ingest` on its own (for requests sent at once from spawned tasks).
async fn post_ingest(
    server: String,
    credential: String,
    encoding: Option<&'static str>,
    body: Vec<u8>,
) -> Posted {
    let mut request = backlight_e2e::harness::http_client()
        .post(format!("{server}/v1/ingest"))
        .bearer_auth(credential)
        .header("content-type", "application/json")
        .body(body);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    let response = request.send().await.expect("POST /v1/ingest");
    Posted::read(response).await
}

/// Waits for all the futures (the harness's client is async; no extra crate for `join_all`).
async fn futures_join<F, T>(futures: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("a request task panicked"));
    }
    out
}

/// One device flooding the server gets 429 with `Retry-After` beyond its share; another
/// device's batch is stored, and the flooder is served again after waiting. Before: every
/// request was taken on, however many.
#[tokio::test]
async fn a_device_over_its_share_gets_429_and_the_others_go_on() {
    let spine = Spine::start_with(
        "flood",
        options(&[
            ("BACKLIGHT_INGEST_DEVICE_RATE", "2"),
            ("BACKLIGHT_INGEST_DEVICE_BURST", "4"),
        ]),
    )
    .await;
    let flooder = spine.server.enroll_device(&spine.key).await;
    let other = spine.server.enroll_device(&spine.key).await;

    let url = spine.server.url();
    let answers = futures_join((0..16u64).map(|i| {
        let body = serde_json::to_vec(&batch(&flooder, events(1 + i * 10, 10))).unwrap();
        post_ingest(url.clone(), flooder.credential.clone(), None, body)
    }))
    .await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
    println!("flood statuses: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "a flood gets 200 or 429, never another status: {statuses:?}"
    );
    let limited: Vec<&Posted> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(
        limited.len() >= 8,
        "16 requests at once with 2 at a time and a burst of 4: expected most to get 429, got {statuses:?}"
    );
    for answer in &limited {
        answer.assert_error(429, "rate_limited", None);
        let retry_after: u64 = answer
            .header("retry-after")
            .unwrap_or_else(|| panic!("429 without Retry-After: {answer}"))
            .parse()
            .expect("Retry-After in seconds");
        assert!((1..=5).contains(&retry_after), "Retry-After {retry_after}");
    }

    spine
        .server
        .send_batch(&other, &batch(&other, events(1, 3)))
        .await
        .assert_ok();
    tokio::time::sleep(secs(2)).await;
    spine
        .server
        .send_batch(&flooder, &batch(&flooder, events(1_000, 1)))
        .await
        .assert_ok();
}

/// A re-sent seq with other content (another item, another month, so another partition) used
/// to be stored beside the first copy and win merges: a device could rewrite its history.
#[tokio::test]
async fn the_first_copy_of_a_seq_wins() {
    let spine = Spine::start("first-copy").await;
    let device = spine.server.enroll_device(&spine.key).await;
    let now = now_ms();
    let first = batch(
        &device,
        vec![
            work_item(1, "CLM-FIRST", ItemAction::Started, now - 60_000),
            activity_span(2, "claims-desk", now - 50_000, now - 40_000),
        ],
    );
    spine.server.send_batch(&device, &first).await.assert_ok();

    let forty_days_ago = now - 40 * 86_400_000;
    let rewrite = batch(
        &device,
        vec![
            work_item(1, "CLM-REWRITTEN", ItemAction::Completed, forty_days_ago),
            work_item(3, "CLM-THIRD", ItemAction::Started, now - 30_000),
        ],
    );
    let answer: IngestResponse = spine.server.send_batch(&device, &rewrite).await.ok_json();
    assert_eq!((answer.accepted, answer.max_seq), (2, 3));
    // The same batch again (a lost answer): acknowledged, nothing more stored.
    spine.server.send_batch(&device, &rewrite).await.assert_ok();

    let db = spine.server.db();
    let d = device.id;
    let copies = db
        .tsv(&format!(
            "SELECT item_id, action FROM events WHERE device_id = '{d}' AND seq = 1"
        ))
        .await;
    assert_eq!(
        copies,
        vec![vec!["CLM-FIRST".to_string(), "started".to_string()]],
        "seq 1 must be stored once, as first sent"
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count() FROM events WHERE device_id = '{d}'"
        ))
        .await,
        3,
        "seqs 1, 2, 3 once each (no FINAL: no second copy at all)"
    );
    assert_eq!(
        db.count("SELECT count() FROM item_lookup WHERE item_id = 'CLM-REWRITTEN'")
            .await,
        0,
        "the rewritten item is nowhere"
    );
}

/// What a device may claim is bounded, and numbers near the top of their type are refused with
/// the field named instead of overflowing. Before: an item completed 2 h in the future, a seq
/// of u64::MAX and a 2-day span were stored; a time of u64::MAX overflowed (500 in a debug build).
#[tokio::test]
async fn impossible_claims_are_refused_with_the_field_named() {
    let spine = Spine::start("claims").await;
    let device = spine.server.enroll_device(&spine.key).await;
    let now = now_ms();
    let cases = [
        (
            work_item(1, "CLM-1", ItemAction::Completed, now + 2 * 3_600_000),
            "events[0].at_ms",
        ),
        (
            work_item(u64::MAX, "CLM-1", ItemAction::Started, now),
            "events[0].seq",
        ),
        (
            work_item(1, "CLM-1", ItemAction::Started, u64::MAX),
            "events[0].at_ms",
        ),
        (
            activity_span(1, "claims-desk", now - 2 * 86_400_000, now),
            "events[0].end_ms",
        ),
    ];
    for (event, field) in cases {
        let answer = spine
            .server
            .send_batch(&device, &batch(&device, vec![event.clone()]))
            .await;
        answer
            .check_error(422, "invalid_field", Some(field))
            .unwrap_or_else(|e| panic!("{event:?}: {e}"));
    }
    assert_eq!(spine.server.db().events_final(device.id).await, 0);
}

/// ClickHouse's own error text (hosts, users, tables, queries) never reaches a client: `/readyz`
/// (no credential needed) and ingest's 503 give an error id, which the log has with the text.
#[tokio::test]
async fn clickhouse_errors_stay_in_the_log() {
    let mut spine = Spine::start("ch-errors").await;
    let device = spine.server.enroll_device(&spine.key).await;
    spine.ch.stop().await;

    let ready = reqwest::get(format!("{}/readyz", spine.server.url()))
        .await
        .expect("GET /readyz");
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.expect("/readyz answers JSON");
    assert_eq!(body["reason"], "storage not ready", "{body}");
    let error_id = body["error_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no error_id: {body}"))
        .to_string();

    let answer = spine
        .server
        .send_batch(&device, &batch(&device, events(1, 1)))
        .await;
    let error = answer.assert_error(503, "unavailable", None);
    assert!(
        error
            .message
            .starts_with("storage unavailable, retry later (error id "),
        "{error:?}"
    );
    let log = spine.server.log_tail(200);
    assert!(log.contains(&error_id), "the log has /readyz's error id");
    let ingest_id = error
        .message
        .trim_end_matches(')')
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    assert!(
        log.contains(&ingest_id),
        "the log has ingest's error id {ingest_id}"
    );
}

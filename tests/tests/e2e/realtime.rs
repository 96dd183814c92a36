//! Work-item changes travel at once: not held for the span batch, woken across processes by the
//! `item` command, and first in line after an outage. The bounds asserted here are generous
//! (seconds against a batch age of ten minutes) so a slow machine does not fail them; the
//! latency users see is measured by `scripts/bench-realtime.sh`, not here.

use std::time::Instant;

use backlight_e2e::harness::agent::describe;
use backlight_e2e::*;

use crate::Spine;

/// Spans and health wait this long for their batch in these tests: far beyond any bound below,
/// so only the urgent path can deliver a work item in time.
const SPAN_BATCH_AGE: &str = "10m";

/// When the work item `item` reached ClickHouse (its `received_ms`), if it has.
async fn received_ms(db: &Db, device: uuid::Uuid, item: &str) -> Option<u64> {
    let rows = db
        .tsv(&format!(
            "SELECT received_ms FROM events WHERE device_id = '{device}' \
             AND kind = 'work_item' AND item_id = '{item}'"
        ))
        .await;
    rows.first().and_then(|row| row[0].parse().ok())
}

/// Waits (bounded) until work item `item` is stored; returns how long that took.
async fn wait_stored(db: &Db, device: uuid::Uuid, item: &str, what: &str) -> std::time::Duration {
    let started = Instant::now();
    wait_until(secs(10), what, async || {
        received_ms(db, device, item).await.is_some()
    })
    .await;
    started.elapsed()
}

#[tokio::test]
async fn work_items_are_uploaded_at_once_and_the_item_command_wakes_the_agent() {
    let spine = Spine::start("realtime").await;
    let db = spine.server.db();
    let mut agent = Agent::new();
    agent.enroll(&spine.server.url(), &spine.key).await;
    let granted = agent.command(&["consent", "grant", "--yes"]).await;
    assert!(granted.status.success(), "{}", describe(&granted));
    let device = agent.status().await.device_id.expect("enrolled");
    let api_port = backlight_e2e::harness::free_port();
    // No timer of the agent's own looks at the spool within the test: policy and health
    // intervals are as long as the span batch.
    agent.spawn_run(&[
        "--source",
        "none",
        "--batch-max-age",
        SPAN_BATCH_AGE,
        "--policy-interval",
        SPAN_BATCH_AGE,
        "--health-interval",
        SPAN_BATCH_AGE,
        "--local-api",
        &format!("127.0.0.1:{api_port}"),
        "--no-browser",
    ]);
    wait_until(secs(30), "the agent's wake address", async || {
        agent.data_dir().join("agent.wake").exists()
    })
    .await;
    let stored = async || {
        db.count(&format!(
            "SELECT count() FROM events WHERE device_id = '{device}'"
        ))
        .await
    };
    // The consent answer and the start-up health report wait for their batch.
    assert_eq!(agent.status().await.spool_depth, 2);
    assert_eq!(stored().await, 0);

    // A separate `item` process: it commits to the spool and wakes the running agent.
    let done = agent.command(&["item", "done", "CLM-RT-1"]).await;
    assert!(done.status.success(), "{}", describe(&done));
    let said = String::from_utf8_lossy(&done.stdout);
    assert!(said.contains("the running agent uploads it now"), "{said}");
    let took = wait_stored(&db, device, "CLM-RT-1", "the item command's report").await;
    println!("`item done` stored {took:?} after the command returned");
    // It took the waiting consent and health events along: no gap in the device's sequence.
    assert_eq!(stored().await, 3);

    // The local API (in the agent's own process).
    let token = std::fs::read_to_string(agent.data_dir().join("local-api.token")).unwrap();
    let started = Instant::now();
    let answer = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{api_port}/v1/items/CLM-RT-2/start"
        ))
        .bearer_auth(token.trim())
        .send()
        .await
        .expect("the local API answers");
    assert_eq!(answer.status(), 201);
    wait_stored(&db, device, "CLM-RT-2", "the local API's report").await;
    println!(
        "local API report stored {:?} after the call",
        started.elapsed()
    );
    wait_until(secs(10), "the spool to empty", async || {
        agent.status().await.spool_depth == 0
    })
    .await;
    agent.terminate(secs(20)).await;
}

#[tokio::test]
async fn an_item_change_made_while_the_server_is_down_arrives_first_when_it_returns() {
    let mut spine = Spine::start("realtime-outage").await;
    let db = spine.server.db();
    let mut agent = Agent::new();
    agent.enroll(&spine.server.url(), &spine.key).await;
    let granted = agent.command(&["consent", "grant", "--yes"]).await;
    assert!(granted.status.success(), "{}", describe(&granted));
    let device = agent.status().await.device_id.expect("enrolled");

    // A backlog of 3,000 activity spans, recorded while the server is down.
    let now = now_ms();
    let spans = (0..3_000u64).map(|i| {
        serde_json::to_string(&EventBody::ActivitySpan(ActivitySpan {
            app: "claims-desk".into(),
            title: None,
            start_ms: now - 3_600_000 + i * 1_000,
            end_ms: now - 3_600_000 + i * 1_000 + 900,
            state: ActivityState::Active,
            item_id: Some("CLM-BUSY".into()),
            step: None,
        }))
        .unwrap()
    });
    let input = agent.scratch("spans.jsonl");
    write_lines(&input, spans);
    spine.server.kill().await;
    agent.spawn_run(&[
        "--source",
        &format!("file:{}", input.display()),
        "--batch-max-events",
        "100",
        "--batch-max-age",
        SPAN_BATCH_AGE,
        "--local-api",
        "off",
        "--no-browser",
        "--exit-when-drained",
    ]);
    wait_for(secs(30), "the backlog in the spool", async || {
        let status = agent.status().await;
        if status.spool_depth >= 3_000 && status.last_error.is_some() {
            Ok(())
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await;
    let done = agent.command(&["item", "done", "CLM-RT-9"]).await;
    assert!(done.status.success(), "{}", describe(&done));

    spine.server.restart().await;
    // Within the agent's backoff after a few seconds of outage (1 s doubling, jittered).
    wait_until(secs(60), "the item after the outage", async || {
        received_ms(&db, device, "CLM-RT-9").await.is_some()
    })
    .await;
    let item_at = received_ms(&db, device, "CLM-RT-9").await.unwrap();
    let span_times = db
        .tsv(&format!(
            "SELECT min(received_ms), max(received_ms), count() FROM events \
             WHERE device_id = '{device}' AND kind = 'activity_span'"
        ))
        .await;
    println!("item received at {item_at}; spans (first, last, count): {span_times:?}");
    let first_span: u64 = span_times[0][0].parse().unwrap_or(0);
    let spans_stored: u64 = span_times[0][2].parse().unwrap();
    assert!(
        spans_stored == 0 || first_span >= item_at,
        "a span batch was stored at {first_span}, before the item at {item_at}"
    );
    // And the backlog follows: the agent exits once its spool is empty, every event stored
    // exactly once.
    agent.wait_success(secs(60)).await;
    let last_seq = agent.status().await.last_seq;
    crate::assert_every_seq_once(&db, device, last_seq).await;
}

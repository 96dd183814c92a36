//! Outages of the pieces behind the agent — ClickHouse stopped, the server killed — lose
//! nothing and duplicate nothing: the agent keeps its events until they are acknowledged.

use backlight_e2e::*;

use crate::{events, Spine};

/// Upload flags for these tests: small batches, so an upload is going on when the outage hits.
const UPLOAD: [&str; 5] = [
    "--batch-max-events",
    "50",
    "--batch-max-age",
    "50ms",
    "--exit-when-drained",
];

#[tokio::test]
async fn clickhouse_outage_loses_nothing() {
    // 240 batches of 50, INSERTs at least 150 ms apart: uploading takes over half a minute, so
    // ClickHouse stops (which may take seconds itself) while the agent still uploads, however
    // fast the machine.
    let mut spine = Spine::start_with(
        "ch-outage",
        ServerOptions {
            insert_min_interval: "150ms".into(),
            ..ServerOptions::default()
        },
    )
    .await;
    let probe = spine.server.enroll_device(&spine.key).await;
    let mut fa = FileAgent::enroll(&spine.server.url(), &spine.key, 12_000).await;
    let device = fa.device_id().await;
    let db = spine.server.db();

    fa.agent.spawn_run(&fa.args(&UPLOAD));
    wait_until(secs(30), "the agent's first rows", async || {
        db.try_count(&format!(
            "SELECT count() FROM events WHERE device_id = '{device}'"
        ))
        .await
        .unwrap_or(0)
            > 0
    })
    .await;

    spine.ch.stop().await;
    let outage = tokio::time::Instant::now();
    assert!(
        fa.agent.is_running(),
        "the agent finished before the outage: make the input bigger"
    );

    // The server says 503 + Retry-After, never 200 and never a 4xx the agent would drop data for.
    let answer = spine
        .server
        .send_batch(&probe, &batch(&probe, events(1, 3)))
        .await;
    answer.assert_error(503, "unavailable", None);
    let retry_after: u64 = answer
        .header("retry-after")
        .unwrap_or_else(|| panic!("503 without Retry-After: {answer:?}"))
        .parse()
        .expect("Retry-After in seconds");
    assert!(
        (1..=60).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    let ready = reqwest::get(format!("{}/readyz", spine.server.url()))
        .await
        .expect("GET /readyz");
    assert_eq!(ready.status(), 503, "/readyz while ClickHouse is down");

    // The agent notices, keeps its events and keeps running.
    let status = wait_for(secs(5), "the agent to report the outage", async || {
        let status = fa.agent.status().await;
        if status.last_error.is_some() {
            Ok(status)
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await;
    println!("agent during the outage: {status:?}");
    assert!(status.spool_depth > 0, "{status:?}");
    tokio::time::sleep(secs(5).saturating_sub(outage.elapsed())).await;
    assert!(
        fa.agent.is_running(),
        "the agent exited during the outage:\n{}",
        fa.agent.log_tail(30)
    );

    spine.ch.restart().await;
    // How much is left depends on how long ClickHouse took to stop (uploads go on meanwhile):
    // up to all 240 batches, each at least one 150 ms group commit, on a machine that may be
    // busy with other work.
    fa.assert_drained_once(&db, secs(120)).await;
    // Refused with 503 means not stored: the probe's batch is not there until it is resent.
    assert_eq!(
        db.events_final(probe.id).await,
        0,
        "the probe batch refused with 503"
    );
    spine
        .server
        .send_batch(&probe, &batch(&probe, events(1, 3)))
        .await
        .assert_ok();
    assert_eq!(db.events_final(probe.id).await, 3);
}

#[tokio::test]
async fn server_restart_mid_stream_loses_nothing() {
    let mut spine = Spine::start_with(
        "server-restart",
        ServerOptions {
            insert_min_interval: "20ms".into(),
            ..ServerOptions::default()
        },
    )
    .await;
    let mut fa = FileAgent::enroll(&spine.server.url(), &spine.key, 4_000).await;
    let device = fa.device_id().await;
    let db = spine.server.db();
    let stored = async || {
        db.count(&format!(
            "SELECT count() FROM events WHERE device_id = '{device}'"
        ))
        .await
    };

    fa.agent.spawn_run(&fa.args(&UPLOAD));
    for crash in 1..=2 {
        let before = stored().await;
        wait_until(secs(30), "the agent to upload more", async || {
            stored().await > before
        })
        .await;
        spine.server.kill().await;
        assert!(
            fa.agent.is_running(),
            "crash {crash}: the agent finished before the server was killed"
        );
        let status = fa.agent.status().await;
        println!(
            "crash {crash}: server killed with {} rows stored; agent {status:?}",
            stored().await
        );
        assert!(status.spool_depth > 0, "{status:?}");
        // Down long enough for the agent to notice.
        tokio::time::sleep(millis(700)).await;
        spine.server.restart().await;
    }
    fa.assert_drained_once(&db, secs(60)).await;
}

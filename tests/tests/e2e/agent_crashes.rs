//! The agent killed with SIGKILL at random moments while it uploads loses nothing and
//! duplicates nothing: every sequence number arrives once, every line of its input once.

use backlight_e2e::*;
use rand::{Rng, SeedableRng};

use crate::Spine;

#[tokio::test]
async fn agent_sigkilled_during_uploads_loses_nothing() {
    let spine = Spine::start_with(
        "sigkill",
        ServerOptions {
            // Short group-commit windows: many acknowledgements, many places to be killed between.
            insert_min_interval: "10ms".into(),
            ..ServerOptions::default()
        },
    )
    .await;
    let mut fa = FileAgent::enroll(&spine.server.url(), &spine.key, 5_000).await;
    let device = fa.device_id().await;
    let db = spine.server.db();
    let stored = async || {
        db.count(&format!(
            "SELECT count() FROM events WHERE device_id = '{device}'"
        ))
        .await
    };

    let seed: u64 = rand::rng().random();
    println!("random kill schedule seed: {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let args = fa.args(&["--batch-max-events", "50", "--batch-max-age", "50ms"]);
    let mut kills_mid_upload = 0;
    for round in 1..=6 {
        let before = stored().await;
        fa.agent.spawn_run(&args);
        // Let this run upload something, then kill it a random moment later.
        wait_until(
            secs(30),
            &format!("round {round}: new rows from the agent"),
            async || stored().await > before,
        )
        .await;
        tokio::time::sleep(millis(rng.random_range(0..250))).await;
        fa.agent.kill9().await;
        let status = fa.agent.status().await;
        println!(
            "round {round}: killed with {} rows stored (raw), spool depth {}",
            stored().await,
            status.spool_depth
        );
        if status.spool_depth > 0 {
            kills_mid_upload += 1;
        }
    }
    assert!(
        kills_mid_upload >= 5,
        "only {kills_mid_upload} kills landed while events were still waiting for upload: the input is too small for this machine's speed"
    );

    let mut drain = args.clone();
    drain.push("--exit-when-drained".into());
    fa.agent.run_until_drained(&drain, secs(90)).await;

    let status = fa.agent.status().await;
    assert_eq!(status.spool_depth, 0, "{status:?}");
    assert_eq!(
        (status.events_dropped, status.events_rejected),
        (0, 0),
        "{status:?}"
    );
    assert_every_seq_once(&db, device, status.last_seq).await;
    assert_file_stored_once(&db, device, &fa.lines).await;
    let entry = spine
        .server
        .device_entry(&spine.tenant, &device.to_string())
        .await;
    assert_eq!(entry["missing"], 0, "{entry}");
}

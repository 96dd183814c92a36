//! Events a device recorded that never arrived are visible: summed and (opted in) per device in
//! `/metrics`, and in `admin device list`.

use backlight_e2e::*;

use crate::{events, Spine};

#[tokio::test]
async fn gaps_are_visible_in_metrics_and_admin() {
    // Per-device series are opt-in; gaps are computed in the background at most once per
    // interval, here every second.
    let options = ServerOptions {
        extra_args: vec![
            "--metrics-per-device".into(),
            "--metrics-progress-interval".into(),
            "1s".into(),
        ],
        ..ServerOptions::default()
    };
    let mut spine = Spine::start_with("gaps", options).await;
    let device = spine.server.enroll_device(&spine.key).await;
    let healthy = spine.server.enroll_device(&spine.key).await;

    let server = &spine.server;
    server
        .send_batch(&device, &batch(&device, events(1, 10)))
        .await
        .assert_ok();
    server
        .send_batch(&device, &batch(&device, events(21, 10)))
        .await
        .assert_ok();
    server
        .send_batch(&healthy, &batch(&healthy, events(1, 5)))
        .await
        .assert_ok();

    let entry = server
        .device_entry(&spine.tenant, &device.id.to_string())
        .await;
    assert_eq!(
        (&entry["max_seq"], &entry["received"], &entry["missing"]),
        (&30.into(), &20.into(), &10.into()),
        "{entry}"
    );
    let entry = server
        .device_entry(&spine.tenant, &healthy.id.to_string())
        .await;
    assert_eq!(entry["missing"], 0, "{entry}");

    // The first scrape starts the computation in the background; a later one shows it.
    let series = format!(
        "backlight_device_sequence_missing{{tenant=\"{}\",device=\"{}\"}} 10",
        spine.tenant, device.id
    );
    let metrics = wait_for(secs(20), "the gap in /metrics", async || {
        let text = server.metrics().await;
        if text.lines().any(|l| l == series) {
            Ok(text)
        } else {
            Err(grep(&text, "missing"))
        }
    })
    .await;
    assert!(
        !metrics.contains(&format!("device=\"{}\"", healthy.id)),
        "a device without gaps must not get a series:\n{}",
        grep(&metrics, "missing")
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "backlight_sequence_missing_total 10"),
        "{}",
        grep(&metrics, "missing")
    );

    // Filling the gap (a late upload) clears it: immediately in admin, and in /metrics of a
    // fresh server (whose progress cache is empty).
    server
        .send_batch(&device, &batch(&device, events(11, 10)))
        .await
        .assert_ok();
    let entry = server
        .device_entry(&spine.tenant, &device.id.to_string())
        .await;
    assert_eq!(
        (&entry["received"], &entry["missing"]),
        (&30.into(), &0.into()),
        "{entry}"
    );
    spine.server.restart().await;
    let server = &spine.server;
    let metrics = wait_for(secs(20), "the filled gap in /metrics", async || {
        let text = server.metrics().await;
        if text
            .lines()
            .any(|l| l == "backlight_sequence_missing_total 0")
        {
            Ok(text)
        } else {
            Err(grep(&text, "missing"))
        }
    })
    .await;
    assert!(
        !metrics.contains(&format!("device=\"{}\"", device.id)),
        "the filled gap still shows:\n{}",
        grep(&metrics, "missing")
    );
}

fn grep(text: &str, word: &str) -> String {
    text.lines()
        .filter(|l| l.contains(word))
        .collect::<Vec<_>>()
        .join("\n")
}

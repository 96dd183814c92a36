//! The spine working as intended: an agent enrolls, records a file of events, uploads them,
//! and every one is in ClickHouse once, with its fields.

use backlight_e2e::*;

use crate::Spine;

#[tokio::test]
async fn happy_path_agent_to_clickhouse() {
    let spine = Spine::start("happy").await;
    let mut fa = FileAgent::enroll(&spine.server.url(), &spine.key, 400).await;

    let status = fa.agent.status().await;
    assert!(status.enrolled, "{status:?}");
    assert_eq!(
        status.tenant_id.as_deref(),
        Some(spine.tenant.as_str()),
        "{status:?}"
    );
    assert_eq!(
        status.server_url.as_deref(),
        Some(spine.server.url().as_str()),
        "{status:?}"
    );
    let device = status.device_id.expect("device id after enrollment");

    let args = fa.args(&[
        "--exit-when-drained",
        "--batch-max-events",
        "100",
        "--batch-max-age",
        "200ms",
    ]);
    fa.agent.run_until_drained(&args, secs(60)).await;

    let status = fa.agent.status().await;
    assert_eq!(status.spool_depth, 0, "{status:?}");
    assert_eq!(
        (status.events_dropped, status.events_rejected),
        (0, 0),
        "{status:?}"
    );
    assert_eq!(status.last_error, None, "{status:?}");
    assert!(status.last_upload_ms.is_some(), "{status:?}");
    assert!(status.last_seq >= fa.lines.len() as u64, "{status:?}");

    let db = spine.server.db();
    assert_eq!(
        db.count(&format!(
            "SELECT count() FROM events FINAL WHERE device_id = '{device}' AND kind != 'health'"
        ))
        .await,
        fa.lines.len() as u64
    );
    assert_eq!(
        db.count(&format!(
            "SELECT uniqExact(seq) FROM events WHERE device_id = '{device}' AND kind != 'health'"
        ))
        .await,
        fa.lines.len() as u64
    );
    assert_every_seq_once(&db, device, status.last_seq).await;
    assert_file_stored_once(&db, device, &fa.lines).await;
    assert_eq!(
        db.count(&format!(
            "SELECT count() FROM events WHERE device_id = '{device}' AND tenant_id != '{}'",
            spine.tenant
        ))
        .await,
        0,
        "rows filed under another tenant"
    );

    let entry = spine
        .server
        .device_entry(&spine.tenant, &device.to_string())
        .await;
    assert_eq!(entry["missing"], 0, "{entry}");
    assert_eq!(entry["received"], status.last_seq, "{entry}");
    assert_eq!(entry["max_seq"], status.last_seq, "{entry}");
    assert_eq!(entry["revoked"], false, "{entry}");
}

//! Enrollment: only a live enrollment key of a tenant yields a device credential.

use backlight_e2e::*;

use crate::{events, Spine};

#[tokio::test]
async fn enrollment_refuses_revoked_and_unknown_keys() {
    let spine = Spine::start("enroll").await;
    let server = &spine.server;

    // A good key works, and the device it yields can upload.
    let device = server.enroll_device(&spine.key).await;
    assert_eq!(device.tenant, spine.tenant);
    assert!(
        device.credential.starts_with("bld_"),
        "credential {:?}",
        device.credential
    );

    // Unknown: well-formed but never issued; a real key's id with a wrong secret; garbage; a
    // device credential in place of a key.
    let key_id = spine
        .key
        .split('_')
        .nth(1)
        .expect("ble_<id>_<secret>")
        .to_string();
    let never_issued = format!("ble_{}_{}", "0123456789abcdef", "c".repeat(64));
    let wrong_secret = format!("ble_{key_id}_{}", "d".repeat(64));
    for (what, key) in [
        ("never issued", never_issued.as_str()),
        ("wrong secret", wrong_secret.as_str()),
        ("garbage", "hello"),
        ("device credential", device.credential.as_str()),
    ] {
        server
            .enroll(key)
            .await
            .check_error(401, "unauthorized", Some("enrollment_key"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }

    // Revoked: refused with 403, and devices enrolled before keep working.
    server
        .admin(&[
            "enrollment-key",
            "revoke",
            "--tenant",
            &spine.tenant,
            &key_id,
        ])
        .await;
    server.enroll(&spine.key).await.assert_error(
        403,
        "enrollment_key_unusable",
        Some("enrollment_key"),
    );
    server
        .send_batch(&device, &batch(&device, events(1, 2)))
        .await
        .assert_ok();

    // Expired: refused with 403 too.
    let short = server
        .admin(&[
            "enrollment-key",
            "create",
            "--tenant",
            &spine.tenant,
            "--expires-in",
            "1ms",
        ])
        .await;
    tokio::time::sleep(millis(5)).await;
    server.enroll(short.trim()).await.assert_error(
        403,
        "enrollment_key_unusable",
        Some("enrollment_key"),
    );

    // The real agent is refused the same way, and stays unenrolled.
    let agent = Agent::new();
    let output = agent.try_enroll(&server.url(), &spine.key).await;
    assert!(
        !output.status.success(),
        "the agent enrolled with a revoked key: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let status = agent.status().await;
    assert!(!status.enrolled, "{status:?}");

    // Nothing but the one good enrollment reached the registry.
    let devices = server.device_list(&spine.tenant).await;
    assert_eq!(devices.len(), 1, "devices: {devices:?}");
    assert_eq!(devices[0]["device_id"], device.id.to_string());
}
